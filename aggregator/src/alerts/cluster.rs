//! Alerting when several aggregators share one state store: one of them, the holder of the
//! alerting lease, evaluates every rule for the whole fleet and sends the notifications.
//!
//! - **The lease** lives in the state store ([`AlertingStore::claim_alerting`]), timed by the
//!   store's clock. The holder renews it every third of `lease_ttl`; another aggregator takes it
//!   once it has not been renewed for `lease_ttl`, with the next epoch. Every write of the
//!   engine carries the epoch ([`AlertingStore::save_alerting_fenced`]), so an aggregator that
//!   lost the lease without knowing it (paused, cut off from the store) writes nothing over its
//!   successor, and steps down at its next write or renewal.
//! - **The engine's input** is every aggregator's commits, read from the shared event store by
//!   cursor ([`EventStore::follow`]) from where the engine's state was last saved, and the
//!   agents' heartbeats from the registry. A new holder restores the alert records (pending
//!   ones keep the time their condition began), the dispatcher's groups and the silences, and
//!   continues from the saved cursor: what the previous holder evaluated but had not saved is
//!   evaluated again, and its outcome was never written, so each transition is recorded and
//!   notified once.
//! - **The outbox** is sent by the holder only. A notification whose sending was cut off by the
//!   holder's death before its receiver confirmed it is sent again by the next holder, as after
//!   a restart.
//!
//! Operators' requests (acknowledgements, silences, reloads) are served by the holder; another
//! aggregator answers them with the holder's name.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, mpsc, watch};
use tracing::{info, warn};

use super::figures::AlertingFigures;
use super::{Chores, Command, EngineTask, RulesStatus, kinds, load_rules, now_ns};
use crate::rules::engine::{Engine, Setup};
use crate::rules::file::Rule;
use crate::store::alerting::{AlertingStore, Claim};
use crate::store::{EventStore, StateStore};

/// Events read from the event store per request at most.
const FOLLOW_PAGE: usize = 10_000;
/// How often the event store is asked for new commits when the last answer had all there was.
const FOLLOW_EVERY: Duration = Duration::from_millis(500);
/// How often the registry is read for the agents' latest heartbeats.
const HEARTBEATS_EVERY: Duration = Duration::from_secs(2);

/// Who runs alerting, as this aggregator last learnt it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This aggregator: it holds the lease.
    Leading,
    /// Another aggregator, named as it named itself.
    Following(String),
    /// Not known: the state store did not answer.
    Unknown,
}

/// What the cluster's alerting needs besides the single-aggregator setup.
#[derive(Clone)]
pub struct ClusterOptions {
    /// The event store every aggregator commits to.
    pub events: Arc<dyn EventStore>,
    /// This aggregator's name for the lease: unique per running process.
    pub holder: String,
    pub lease_ttl: Duration,
}

impl std::fmt::Debug for ClusterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterOptions")
            .field("holder", &self.holder)
            .field("lease_ttl", &self.lease_ttl)
            .finish_non_exhaustive()
    }
}

/// A lease holder's name: the host, the process and a random part, so that a restarted
/// aggregator is a new holder (and its first claim a new epoch).
pub fn holder_name() -> String {
    let host = sysinfo::System::host_name().unwrap_or_else(|_| "unknown-host".to_owned());
    let tag: u16 = rand::random();
    format!("{host} pid {} ({tag:04x})", std::process::id())
}

/// How a term as holder ended.
enum Ended {
    Stopped,
    LeaseLost,
    /// The alert state could not be read to begin the term; tried again at the next claim.
    NotBegun,
}

/// The parts of the engine task that outlive one term as holder.
pub(super) struct ClusterTask<S> {
    pub options: ClusterOptions,
    pub store: Arc<S>,
    pub setup: Setup,
    /// The rules as last loaded; a new term starts with them.
    pub rules_now: Vec<Rule>,
    pub dir: std::path::PathBuf,
    pub reload_interval: Duration,
    pub rules: Arc<RwLock<RulesStatus>>,
    pub outbox_wake: Arc<Notify>,
    pub figures: Arc<AlertingFigures>,
    pub history_retention_ns: i64,
    pub leadership: Arc<RwLock<Leadership>>,
    pub leading: watch::Sender<bool>,
}

impl<S: AlertingStore + StateStore> ClusterTask<S> {
    fn lead_as(&self, now: Leadership) {
        self.leading.send_replace(now == Leadership::Leading);
        self.figures.set_leading(now == Leadership::Leading);
        *self
            .leadership
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = now;
    }

    async fn claim(&self) -> Result<Claim, crate::store::StoreError> {
        let store = self.store.clone();
        let holder = self.options.holder.clone();
        let ttl = self.options.lease_ttl;
        tokio::task::spawn_blocking(move || store.claim_alerting(&holder, ttl))
            .await
            .unwrap_or_else(|e| {
                Err(crate::store::StoreError::backend(
                    "claiming the alerting lease",
                    std::io::Error::other(e.to_string()),
                ))
            })
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut stop: watch::Receiver<bool>,
    ) {
        let renew_every = self.options.lease_ttl / 3;
        let mut last = None;
        loop {
            if *stop.borrow() {
                break;
            }
            match self.claim().await {
                Ok(Claim::Held { epoch, .. }) => {
                    info!(
                        epoch,
                        holder = %self.options.holder,
                        "This aggregator holds the alerting lease and runs alerting for the fleet."
                    );
                    self.lead_as(Leadership::Leading);
                    self.figures.took_lease();
                    match self.lead(epoch, &mut commands, &mut stop).await {
                        Ended::Stopped => {
                            self.release().await;
                            break;
                        }
                        Ended::LeaseLost => {
                            warn!(
                                epoch,
                                "The alerting lease passed to another aggregator; this one \
                                 stops evaluating rules and sending notifications."
                            );
                            self.lead_as(Leadership::Unknown);
                            last = None;
                        }
                        Ended::NotBegun => {
                            self.lead_as(Leadership::Unknown);
                            last = None;
                        }
                    }
                }
                Ok(Claim::Taken { holder, .. }) => {
                    if last.as_ref() != Some(&holder) {
                        info!(%holder, "Another aggregator runs alerting; this one stands by.");
                        last = Some(holder.clone());
                    }
                    self.lead_as(Leadership::Following(holder));
                }
                Err(e) => {
                    warn!(error = %e, "Could not claim the alerting lease; trying again.");
                    self.lead_as(Leadership::Unknown);
                    last = None;
                }
            }
            let wait = tokio::time::sleep(renew_every);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    () = &mut wait => break,
                    // Not the holder: the reply is dropped, and the handle names the holder.
                    Some(command) = commands.recv() => drop(command),
                }
            }
        }
        self.lead_as(Leadership::Unknown);
    }

    /// Gives the lease up at shutdown, so that another aggregator takes over at once.
    async fn release(&self) {
        let store = self.store.clone();
        let holder = self.options.holder.clone();
        match tokio::task::spawn_blocking(move || store.release_alerting(&holder)).await {
            Ok(Ok(())) => info!("Alerting lease released."),
            Ok(Err(e)) => {
                warn!(error = %e, "Could not release the alerting lease; it expires by itself.")
            }
            Err(e) => {
                warn!(error = %e, "Could not release the alerting lease; it expires by itself.")
            }
        }
    }

    /// One term as holder: restores the engine from the store, then follows the commits until
    /// stopped or the lease is lost.
    async fn lead(
        &mut self,
        epoch: i64,
        commands: &mut mpsc::Receiver<Command>,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        let now = now_ns();
        if let Ok(rules) = load_rules(&self.dir) {
            self.rules_now = rules;
        }
        let (loaded, agents, end) = {
            let store = self.store.clone();
            let events = self.options.events.clone();
            let read = tokio::task::spawn_blocking(move || {
                anyhow::Ok((store.load_alerting()?, store.agents()?, events.end()?))
            })
            .await;
            match read {
                Ok(Ok(read)) => read,
                Ok(Err(e)) => {
                    warn!(error = %e, "Could not read the alert state to take over alerting; trying again.");
                    return Ended::NotBegun;
                }
                Err(e) => {
                    warn!(error = %e, "Could not read the alert state to take over alerting; trying again.");
                    return Ended::NotBegun;
                }
            }
        };
        let mut engine = Engine::new(self.rules_now.clone(), self.setup.clone());
        let restored = loaded.saved.alerts.len();
        engine.restore(loaded.saved, now);
        for agent in &agents {
            engine.heard(&agent.agent_id, agent.last_seen_ns);
        }
        let cursor = loaded.cursor.unwrap_or(end);
        info!(restored, %cursor, "Alert state restored; following every aggregator's commits.");
        let mut task = EngineTask {
            engine,
            store: self.store.clone(),
            dir: self.dir.clone(),
            reload_interval: self.reload_interval,
            rules: self.rules.clone(),
            unsaved: None,
            cursor,
            saved_cursor: loaded.cursor,
            cursor_saved_at: tokio::time::Instant::now(),
            silences_changed: false,
            outbox_wake: self.outbox_wake.clone(),
            figures: self.figures.clone(),
            history_retention_ns: self.history_retention_ns,
            epoch: Some(epoch),
            lease_lost: false,
        };
        let ended = task.follow(&self.options, epoch, commands, stop).await;
        self.rules_now = task.engine.rules().cloned().collect();
        ended
    }
}

impl<S: AlertingStore + StateStore> EngineTask<S> {
    /// The holder's loop: the commits of every aggregator, the registry's heartbeats, the
    /// lease's renewal, operators' requests and the rules' reloads.
    async fn follow(
        &mut self,
        options: &ClusterOptions,
        epoch: i64,
        commands: &mut mpsc::Receiver<Command>,
        stop: &mut watch::Receiver<bool>,
    ) -> Ended {
        let mut chores = Chores::new(&self.dir, self.reload_interval);
        let mut heartbeats = tokio::time::interval(HEARTBEATS_EVERY);
        heartbeats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut renew = tokio::time::interval(options.lease_ttl / 3);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        renew.reset();
        let mut renewed_at = tokio::time::Instant::now();
        let mut heard: std::collections::HashMap<String, i64> = std::collections::HashMap::new();
        let mut follow_in = Duration::ZERO;
        loop {
            let wake_in = self.wake_in();
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    self.engine.tick(now_ns());
                    self.save().await;
                    return Ended::Stopped;
                }
                Some(command) = commands.recv() => self.command(command).await,
                _ = renew.tick() => {
                    let store = self.store.clone();
                    let holder = options.holder.clone();
                    let ttl = options.lease_ttl;
                    let claim = tokio::task::spawn_blocking(move || store.claim_alerting(&holder, ttl)).await;
                    match claim {
                        Ok(Ok(Claim::Held { epoch: now_epoch, .. })) if now_epoch == epoch => {
                            renewed_at = tokio::time::Instant::now();
                        }
                        Ok(Ok(_)) => return Ended::LeaseLost,
                        Ok(Err(e)) => {
                            warn!(error = %e, "Could not renew the alerting lease.");
                            // Past the lease's life, another aggregator may hold it.
                            if renewed_at.elapsed() >= options.lease_ttl {
                                return Ended::LeaseLost;
                            }
                        }
                        Err(e) => warn!(error = %e, "Could not renew the alerting lease."),
                    }
                }
                _ = heartbeats.tick() => {
                    let store = self.store.clone();
                    match tokio::task::spawn_blocking(move || store.agents()).await {
                        Ok(Ok(agents)) => {
                            for agent in agents {
                                let (Some(status), Some(at)) = (agent.status, agent.status_received_ns) else {
                                    continue;
                                };
                                if heard.get(&agent.agent_id).is_some_and(|&before| before >= at) {
                                    continue;
                                }
                                self.engine.heartbeat(&agent.agent_id, &status, at);
                                self.figures.evaluated_heartbeat(at);
                                heard.insert(agent.agent_id, at);
                            }
                        }
                        Ok(Err(e)) => warn!(error = %e, "Could not read the agents' heartbeats; trying again."),
                        Err(e) => warn!(error = %e, "Could not read the agents' heartbeats; trying again."),
                    }
                }
                () = tokio::time::sleep(follow_in) => {
                    let events = options.events.clone();
                    let from = self.cursor;
                    let page = tokio::task::spawn_blocking(move || events.follow(from, FOLLOW_PAGE)).await;
                    follow_in = FOLLOW_EVERY;
                    match page {
                        Ok(Ok(page)) => {
                            let now = now_ns();
                            for e in &page.events {
                                self.engine.observe(&e.agent_id, &e.event, now);
                            }
                            if !page.events.is_empty() {
                                self.figures.evaluated(page.events.len());
                                self.figures.evaluated_kinds(kinds(page.events.iter().map(|e| &e.event)), now);
                            }
                            if page.passed_over > 0 {
                                warn!(batches = page.passed_over, "Commits that never completed were passed over.");
                                self.figures.passed_over(page.passed_over);
                            }
                            if page.events.len() >= FOLLOW_PAGE {
                                follow_in = Duration::ZERO;
                            }
                            self.cursor = self.cursor.max(page.next);
                        }
                        Ok(Err(e)) => warn!(error = %e, "Could not read the commits to evaluate; trying again."),
                        Err(e) => warn!(error = %e, "Could not read the commits to evaluate; trying again."),
                    }
                }
                chore = chores.next() => self.chore(chore, &mut chores),
                () = tokio::time::sleep(wake_in) => {}
            }
            let now = now_ns();
            self.engine.tick(now);
            self.figures.stepped(now);
            self.save().await;
            if self.lease_lost {
                return Ended::LeaseLost;
            }
        }
    }
}
