//! The fleet as the API shows it, built once and shared by requests until it is out of date.
//!
//! Building the view reads every agent's registry row and works out its status, which is linear
//! in the fleet: a few milliseconds for a thousand agents, far longer for a hundred thousand. So
//! the view is kept, with the store's registry generation it was built at
//! ([`crate::store::StateStore::registry_generation`]), and a request uses it while nothing was
//! written since and it is younger than [`MAX_AGE`] (statuses also change with time alone:
//! an agent that stays silent goes offline).
//!
//! When it is out of date:
//! - a small fleet's view (built in under [`SMALL_BUILD`]) is rebuilt before answering, so
//!   answers are exact;
//! - a large fleet's view is rebuilt in the background, at most one build at a time and no more
//!   often than every few of its build times, and requests meanwhile answer from the previous
//!   view: never more than seconds old, at a latency that does not grow with the fleet.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::fleet::FleetSummary;
use super::{Api, ApiError};
use crate::fleet::{self, FleetEntry, HostStatus};
use crate::store;

/// A view is current for at most this long, even with nothing written.
pub const MAX_AGE: Duration = Duration::from_secs(1);
/// A fleet whose view builds faster than this is rebuilt before answering.
pub const SMALL_BUILD: Duration = Duration::from_millis(25);

/// The fleet at one moment, in the orders the API pages through.
#[derive(Debug)]
pub struct FleetView {
    /// Every agent, by id.
    pub entries: Vec<FleetEntry>,
    /// Indexes into `entries`, most recently seen first, with their sort keys (ascending).
    pub by_last_seen: Vec<(String, usize)>,
    pub summary: FleetSummary,
    built: Instant,
    took: Duration,
    generation: Option<u64>,
}

impl FleetView {
    /// The entry of `agent_id`.
    pub fn entry(&self, agent_id: &str) -> Option<&FleetEntry> {
        self.entries
            .binary_search_by(|e| e.agent_id.as_str().cmp(agent_id))
            .ok()
            .map(|i| &self.entries[i])
    }

    fn build(
        store: &dyn super::Backend,
        issued: &[String],
        policy: &fleet::FleetPolicy,
    ) -> Result<FleetView, store::StoreError> {
        let started = Instant::now();
        let generation = store.registry_generation();
        let mut agents = store.agents()?;
        store::join_host_summaries(&mut agents, store.host_summaries()?);
        let now = outpost_common::time::now_ns();
        let mut entries = fleet::fleet_status(&agents, issued, policy, now);
        entries.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        let mut by_last_seen: Vec<(String, usize)> = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (last_seen_key(e), i))
            .collect();
        by_last_seen.sort_unstable();
        let summary = summarize(&entries);
        Ok(FleetView {
            entries,
            by_last_seen,
            summary,
            built: Instant::now(),
            took: started.elapsed(),
            generation,
        })
    }

    fn current(&self, generation: Option<u64>, max_age: Duration) -> bool {
        generation.is_some() && generation == self.generation && self.built.elapsed() < max_age
    }
}

/// The sort key of the `last_seen` order: most recent first, then by id.
pub fn last_seen_key(e: &FleetEntry) -> String {
    format!(
        "{}:{}",
        super::page::newest_first(e.last_seen_ns),
        e.agent_id
    )
}

fn summarize(entries: &[FleetEntry]) -> FleetSummary {
    let mut by_status: BTreeMap<String, u64> = [
        HostStatus::Online,
        HostStatus::Degraded,
        HostStatus::Offline,
        HostStatus::NeverSeen,
    ]
    .into_iter()
    .map(|s| (super::fleet::status_name(s), 0))
    .collect();
    let mut by_version = BTreeMap::new();
    let mut by_os = BTreeMap::new();
    for e in entries {
        *by_status
            .entry(super::fleet::status_name(e.status))
            .or_default() += 1;
        let unknown = || "unknown".to_owned();
        *by_version
            .entry(e.version.clone().unwrap_or_else(unknown))
            .or_default() += 1;
        *by_os
            .entry(e.os.clone().unwrap_or_else(unknown))
            .or_default() += 1;
    }
    FleetSummary {
        total: entries.len() as u64,
        by_status,
        by_version,
        by_os,
    }
}

/// The view kept between requests.
#[derive(Debug)]
pub struct Cache {
    state: Mutex<State>,
    /// [`MAX_AGE`] and [`SMALL_BUILD`]; tests shorten them.
    max_age: Duration,
    small_build: Duration,
}

impl Default for Cache {
    fn default() -> Self {
        Cache {
            state: Mutex::default(),
            max_age: MAX_AGE,
            small_build: SMALL_BUILD,
        }
    }
}

#[derive(Debug, Default)]
struct State {
    view: Option<Arc<FleetView>>,
    /// A background build is running.
    building: bool,
}

impl Api {
    /// The fleet view to answer from (see the module's documentation).
    pub(crate) async fn fleet_view(self: &Arc<Self>) -> Result<Arc<FleetView>, ApiError> {
        let generation = self.store.registry_generation();
        let kept = {
            let state = self
                .fleet_cache
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.view.clone()
        };
        match kept {
            Some(view) if view.current(generation, self.fleet_cache.max_age) => Ok(view),
            Some(view) if view.took >= self.fleet_cache.small_build => {
                self.rebuild_in_background(&view);
                Ok(view)
            }
            _ => self.rebuild().await,
        }
    }

    /// Builds the view now and keeps it.
    async fn rebuild(self: &Arc<Self>) -> Result<Arc<FleetView>, ApiError> {
        let api = Arc::clone(self);
        let view = self
            .store("reading the fleet", move |s| api.build_view(s))
            .await?;
        let view = Arc::new(view);
        self.keep(&view);
        Ok(view)
    }

    /// Starts a build unless one runs, or the kept view is younger than a few of its build
    /// times (so a large fleet under constant heartbeats is not rebuilt back to back).
    fn rebuild_in_background(self: &Arc<Self>, kept: &FleetView) {
        {
            let mut state = self
                .fleet_cache
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if state.building
                || kept.built.elapsed() < (kept.took * 4).max(self.fleet_cache.max_age)
            {
                return;
            }
            state.building = true;
        }
        let api = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let built = api.build_view(api.store.as_ref());
            let mut state = api
                .fleet_cache
                .state
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            state.building = false;
            match built {
                Ok(view) => state.view = Some(Arc::new(view)),
                Err(e) => {
                    tracing::warn!(error = %e, "rebuilding the fleet view failed; the previous one stays")
                }
            }
        });
    }

    fn keep(&self, view: &Arc<FleetView>) {
        let mut state = self
            .fleet_cache
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let newer = state
            .view
            .as_ref()
            .is_none_or(|kept| kept.built <= view.built);
        if newer {
            state.view = Some(Arc::clone(view));
        }
    }

    fn build_view(&self, store: &dyn super::Backend) -> Result<FleetView, store::StoreError> {
        let issued: Vec<String> = self
            .tls_dir
            .as_deref()
            .and_then(|dir| crate::pki::issued_agents(dir).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|c| !c.revoked)
            .map(|c| c.agent_id)
            .collect();
        FleetView::build(store, &issued, &self.fleet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::tests_support::{api_over, register};

    #[tokio::test]
    async fn a_view_is_kept_until_the_registry_changes_and_then_rebuilt_before_answering() {
        let (_dir, store, api) = api_over(Cache::default());
        register(&store, "a");
        let first = api.fleet_view().await.unwrap();
        assert_eq!(first.entries.len(), 1);
        let again = api.fleet_view().await.unwrap();
        assert!(
            Arc::ptr_eq(&first, &again),
            "nothing changed: the same view"
        );
        register(&store, "b");
        let after = api.fleet_view().await.unwrap();
        assert_eq!(after.entries.len(), 2, "a small fleet is rebuilt at once");
        assert_eq!(after.summary.total, 2);
        assert!(after.entry("b").is_some() && after.entry("c").is_none());
    }

    #[tokio::test]
    async fn a_large_fleet_answers_from_the_previous_view_while_one_builds_behind() {
        // Every build counts as slow, and views age at once.
        let cache = Cache {
            small_build: Duration::ZERO,
            max_age: Duration::ZERO,
            ..Cache::default()
        };
        let (_dir, store, api) = api_over(cache);
        register(&store, "a");
        assert_eq!(api.fleet_view().await.unwrap().entries.len(), 1);
        register(&store, "b");
        // The stale view answers at once; the new one arrives from the background.
        assert_eq!(api.fleet_view().await.unwrap().entries.len(), 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if api.fleet_view().await.unwrap().entries.len() == 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the background build never landed"
            );
            tokio::task::yield_now().await;
        }
    }
}
