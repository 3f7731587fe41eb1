//! Changes a watcher reports on the realtime paths, checked against the baseline.
//!
//! A watcher tells which paths may have changed ([`Dirty`]); it never decides what changed. Each
//! is checked like a scan checks it, so a realtime event and a scan's event of the same change
//! are the same, and a change the watcher missed is found by the next scan:
//!
//! - [`Dirty::Path`]: the path is compared with its row (and, if it is or was a directory, what
//!   lies below it is scanned).
//! - [`Dirty::Moved`] with both sides watched and `from` in the baseline: one
//!   [`FimChange::Moved`] event per path of the moved subtree, the directory first, then its
//!   descendants in key order, their rows re-keyed; a path the rename replaced is reported
//!   deleted first. With a side unknown or unwatched, the other side is checked as a path.
//! - [`Dirty::Tree`]: the subtree is scanned as a merge join ([`FimDetection::Realtime`] for a
//!   new directory, [`FimDetection::Rescan`] when notifications were lost, which the agent's
//!   status reports).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_common::event::{FileKind, FimChange, FimDetection};
use outpost_common::time::now_ns;

use super::compare;
use super::key;
use super::scan::{BASELINE, Engine, Out, PAGE, Stop, Store, Summary, Target};
use super::state;
use crate::collectors::Context;
use crate::internal_events::{FimScanFinished, FimScanKind};

pub use super::watch::{Dirty, TreeReason};

/// A realtime path to watch: the fields of the watcher's `WatchRoot`.
#[derive(Debug, Clone)]
pub struct RealtimeRoot {
    pub path: PathBuf,
    pub recursive: bool,
    pub exclude: globset::GlobSet,
}

/// What reports the realtime paths' changes: the watcher.
pub trait Feed: Send + 'static {
    /// Waits for changes, then coalesces until `quiet` passes with no new one (at most
    /// `max_delay`); `None` once it has ended.
    fn next(
        &mut self,
        quiet: Duration,
        max_delay: Duration,
    ) -> impl Future<Output = Option<Vec<Dirty>>> + Send;
}

impl Feed for super::watch::Watcher {
    fn next(
        &mut self,
        quiet: Duration,
        max_delay: Duration,
    ) -> impl Future<Output = Option<Vec<Dirty>>> + Send {
        super::watch::Watcher::next(self, quiet, max_delay)
    }
}

/// Subtrees the watcher does not watch (refused at the watch limit, or failed), until a later
/// [`TreeReason::NewDirectory`] or [`TreeReason::Overflow`] names them or an ancestor: the
/// scheduled scans alone check them meanwhile, and the agent's status says so.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Blind {
    paths: std::collections::BTreeMap<PathBuf, String>,
}

impl Blind {
    /// Takes a batch of changes into account, in order.
    pub fn update(&mut self, changes: &[Dirty]) {
        for d in changes {
            if let Dirty::Tree { path, reason } = d {
                match reason {
                    TreeReason::WatchLimit | TreeReason::WatchFailed(_) => {
                        self.paths.insert(path.clone(), describe(reason));
                    }
                    TreeReason::NewDirectory | TreeReason::Overflow => {
                        self.paths.retain(|p, _| !p.starts_with(path));
                    }
                }
            }
        }
    }

    /// What the status reports: the subtrees not watched, or `None`.
    pub fn report(&self) -> Option<String> {
        const SHOWN: usize = 5;
        if self.paths.is_empty() {
            return None;
        }
        let mut shown: Vec<String> = self
            .paths
            .iter()
            .take(SHOWN)
            .map(|(p, why)| format!("{} ({why})", p.display()))
            .collect();
        if self.paths.len() > SHOWN {
            shown.push(format!("and {} more", self.paths.len() - SHOWN));
        }
        Some(format!(
            "not watched in realtime, checked by the scheduled scans only: {}",
            shown.join(", ")
        ))
    }
}

/// Checks `changes` on the job thread, reporting lost notifications and unwatched subtrees in
/// the agent's status (collector `fim.realtime`): lost notifications until their rescan is
/// done, unwatched subtrees until the watcher watches them again.
pub(super) async fn handle(
    engine: &Arc<Engine>,
    ctx: &Context,
    blind: &mut Blind,
    changes: Vec<Dirty>,
) -> Result<(), Stop> {
    let lost: Vec<String> = changes
        .iter()
        .filter_map(|d| match d {
            Dirty::Tree {
                path,
                reason: TreeReason::Overflow,
            } => Some(path.display().to_string()),
            _ => None,
        })
        .collect();
    let realtime = ctx.reporter().part("realtime");
    if !lost.is_empty() {
        // Never silent: the status shows the loss until the rescan has found what it hid.
        realtime.failed(format!(
            "notifications lost (the event queue overflowed), rescanning {}",
            lost.join(", ")
        ));
    }
    let was_blind = blind.report().is_some();
    blind.update(&changes);
    let summary = super::job(engine, ctx, move |e, store| {
        apply(e, store, &changes, now_ns())
    })
    .await?;
    ctx.reporter().telemetry().emit(FimScanFinished {
        kind: if lost.is_empty() {
            FimScanKind::Realtime
        } else {
            FimScanKind::Rescan
        },
        paths: summary.paths,
        bytes_hashed: summary.bytes_hashed,
        events: summary.events,
        unreadable: summary.unreadable,
        took: summary.took,
    });
    match blind.report() {
        Some(reason) => realtime.failed(reason),
        None if was_blind || !lost.is_empty() => realtime.recovered(),
        None => {}
    }
    Ok(())
}

fn describe(reason: &TreeReason) -> String {
    match reason {
        TreeReason::NewDirectory => "new directory".to_owned(),
        TreeReason::Overflow => "the event queue overflowed".to_owned(),
        TreeReason::WatchLimit => "the watch limit was reached".to_owned(),
        TreeReason::WatchFailed(e) => format!("watching failed: {e}"),
    }
}

/// Checks `changes` in order against the baseline, committing their events.
pub fn apply(
    engine: &Engine,
    store: &mut impl Store,
    changes: &[Dirty],
    now_ns: i64,
) -> Result<Summary, Stop> {
    let started = Instant::now();
    let mut total = Summary::default();
    for d in changes {
        let s = match d {
            Dirty::Path(p) => path(engine, store, p, now_ns)?,
            Dirty::Moved {
                from: Some(from),
                to: Some(to),
            } => moved(engine, store, from, to, now_ns)?,
            Dirty::Moved { from, to } => match from.as_ref().or(to.as_ref()) {
                Some(p) => path(engine, store, p, now_ns)?,
                None => Summary::default(),
            },
            Dirty::Tree { path, reason } => {
                let detection = match reason {
                    TreeReason::NewDirectory => FimDetection::Realtime,
                    _ => FimDetection::Rescan,
                };
                tree(engine, store, path, detection, now_ns)?
            }
        };
        total.paths += s.paths;
        total.bytes_hashed += s.bytes_hashed;
        total.events += s.events;
        total.unreadable += s.unreadable;
    }
    total.took = started.elapsed();
    Ok(total)
}

/// The root `p` lies in and its key; `None` for a path outside every root.
fn watched(engine: &Engine, p: &std::path::Path) -> Option<(usize, Vec<u8>)> {
    let k = key::of(p)?;
    Some((engine.root_of(&k)?, k))
}

/// One path; and what lies below it when a directory appeared or vanished there. A directory
/// that is one before and after is checked alone: its entries are reported on their own, and a
/// directory replaced by a new one comes as a [`TreeReason::NewDirectory`] (inode numbers are
/// reused at once, so they cannot tell).
fn path(
    engine: &Engine,
    store: &mut impl Store,
    p: &std::path::Path,
    now_ns: i64,
) -> Result<Summary, Stop> {
    let Some((root, k)) = watched(engine, p) else {
        return Ok(Summary::default());
    };
    let was_dir = store
        .row(BASELINE, &k)?
        .and_then(|v| state::decode(&v))
        .is_some_and(|s| s.kind == FileKind::Directory);
    let is_dir = std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let target = Target::Subtree {
        root,
        key: k,
        descend: was_dir != is_dir,
    };
    engine.scan(store, &target, FimDetection::Realtime, now_ns)
}

fn tree(
    engine: &Engine,
    store: &mut impl Store,
    p: &std::path::Path,
    detection: FimDetection,
    now_ns: i64,
) -> Result<Summary, Stop> {
    let Some((root, k)) = watched(engine, p) else {
        return Ok(Summary::default());
    };
    let target = Target::Subtree {
        root,
        key: k,
        descend: true,
    };
    engine.scan(store, &target, detection, now_ns)
}

/// A rename of `from` to `to`.
fn moved(
    engine: &Engine,
    store: &mut impl Store,
    from: &std::path::Path,
    to: &std::path::Path,
    now_ns: i64,
) -> Result<Summary, Stop> {
    let (Some(fk), Some(tk)) = (key::of(from), key::of(to)) else {
        return Ok(Summary::default());
    };
    let (from_root, to_root) = (engine.root_of(&fk), engine.root_of(&tk));
    let known = store.row(BASELINE, &fk)?.is_some();
    let (Some(_), Some(to_root), true) = (from_root, to_root, known) else {
        let mut s = path(engine, store, from, now_ns)?;
        let t = path(engine, store, to, now_ns)?;
        s.paths += t.paths;
        s.events += t.events;
        s.bytes_hashed += t.bytes_hashed;
        return Ok(s);
    };
    let started = Instant::now();
    let (trail, _) = engine.load(store)?;
    let mut out = Out::new(engine.chunk(), trail, now_ns, FimDetection::Realtime);
    let mut summary = Summary::default();
    // What the rename replaced is gone.
    for_rows_within(store, &tk, |store, k, value| {
        if let Some(was) = state::decode(&value) {
            out.emit(&k, FimChange::Deleted, Vec::new(), None, Some(was), None);
        }
        out.delete(k);
        out.flush_if_full(store)
    })?;
    out.flush(store)?;
    let compare = engine.roots()[to_root].compare;
    for_rows_within(store, &fk, |store, old, value| {
        let new = key::rebase(&old, &fk, &tk);
        let was = state::decode(&value);
        summary.paths += 1;
        let now = engine
            .observe(to_root, &key::path(&new), was.as_ref())
            .unwrap_or(None);
        match (was, now) {
            (Some(was), Some((now, hashed))) => {
                summary.bytes_hashed += hashed;
                let changed = compare::changed(&was, &now, compare);
                out.emit(
                    &new,
                    FimChange::Moved,
                    changed,
                    Some(&old),
                    Some(was),
                    Some(now.clone()),
                );
                out.put(new, &now);
            }
            (Some(was), None) => {
                out.emit(&old, FimChange::Deleted, Vec::new(), None, Some(was), None);
            }
            (None, _) => {}
        }
        out.delete(old);
        out.flush_if_full(store)
    })?;
    out.flush(store)?;
    summary.events = out.emitted;
    summary.took = started.elapsed();
    Ok(summary)
}

/// Calls `f` with each baseline row within `within`, in key order, a page at a time.
fn for_rows_within<S: Store>(
    store: &mut S,
    within: &[u8],
    mut f: impl FnMut(&mut S, Vec<u8>, Vec<u8>) -> Result<(), Stop>,
) -> Result<(), Stop> {
    if let Some(value) = store.row(BASELINE, within)? {
        f(store, within.to_vec(), value)?;
    }
    let mut after = within.to_vec();
    loop {
        let page = store.page(BASELINE, Some(&after), PAGE)?;
        let full = page.len() == PAGE;
        for (k, v) in page {
            if !key::within(&k, within) {
                return Ok(());
            }
            after.clone_from(&k);
            f(store, k, v)?;
        }
        if !full {
            return Ok(());
        }
    }
}
