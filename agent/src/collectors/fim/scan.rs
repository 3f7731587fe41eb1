//! The integrity engine: a walk of the watched paths compared with the baseline as a merge
//! join, the events of the differences, and the trail that numbers and chains them.
//!
//! Call order: [`Engine::new`] once the roots are resolved, then any number of jobs —
//! [`Engine::scan`] (a full scan or a subtree) and the realtime handlers in
//! [`super::realtime`] — one at a time, on a blocking thread. Each job reads the trail and the
//! baseline through a [`Store`] and hands it submissions of at most `chunk` events and rows, each
//! carrying the trail row as it stands after its events, so a crash between two submissions
//! loses nothing and repeats nothing: the next job starts from what was committed.
//!
//! Memory does not grow with the number of files: the walk holds the names of the directories
//! it is in, and the baseline is read one page at a time in key order ([`super::key`]). Only the
//! paths that appeared or vanished during one scan are held until its end, to pair them into
//! moves (up to [`PENDING_CAP`]; beyond, they are reported as created and deleted).

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::Metadata;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use globset::GlobSet;
use outpost_common::event::{
    CHAIN_GENESIS, Event, FileKind, FileState, FimChange, FimDetection, FimEvent, LogRecord,
    Severity, chain_hash,
};
use serde::{Deserialize, Serialize};

use super::compare::{self, Attrs};
use super::hashers::{Hashers, Job, Observed};
use super::key;
use super::prefetch::Prefetch;
use super::state::{self, Budget, Observe};
use crate::spool::{Class, StateChange, StateRow, Submission};

/// The spool state of the baseline: one row per path, keyed by [`key`].
pub const BASELINE: &str = "fim";
/// The spool state of the trail and the scans' progress.
pub const META: &str = "fim.meta";
const TRAIL_KEY: &[u8] = b"trail";
const PROGRESS_KEY: &[u8] = b"progress";

/// Baseline rows read at a time.
pub const PAGE: usize = 512;
/// Appeared and vanished paths held for move pairing at most.
pub const PENDING_CAP: usize = 10_000;
/// Paths a scan may look at beyond the oldest one whose hash it is still waiting for.
const WINDOW: usize = 4096;

/// Why a job stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The agent is shutting down.
    Shutdown,
    /// The spool failed.
    Failed(String),
}

/// Where the engine reads the baseline and commits its submissions.
pub trait Store {
    /// Up to `limit` rows of `source` after `after`, in key order.
    fn page(
        &mut self,
        source: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StateRow>, Stop>;
    /// The row `key` of `source`.
    fn row(&mut self, source: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Stop>;
    /// Commits `sub` in one transaction.
    fn commit(&mut self, sub: Submission) -> Result<(), Stop>;
    /// Whether the job should stop (the agent is shutting down).
    fn stopping(&self) -> bool;
}

/// One watched path, validated.
#[derive(Debug, Clone)]
pub struct Root {
    pub path: PathBuf,
    pub key: Vec<u8>,
    pub recursive: bool,
    pub exclude: GlobSet,
    pub realtime: bool,
    pub compare: Attrs,
    pub observe: Observe,
}

/// The trail: the last event's seq and chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trail {
    pub seq: u64,
    pub chain: String,
}

impl Default for Trail {
    fn default() -> Self {
        Trail {
            seq: 0,
            chain: CHAIN_GENESIS.to_owned(),
        }
    }
}

/// How far the scans have got.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Progress {
    /// The keys of the roots whose initial baseline is complete: paths that appear below them
    /// from now on are new. A root added to the configuration later gets its own baseline,
    /// without events, at the next full scan.
    pub baselined: Vec<Vec<u8>>,
    /// When the last full scan ended.
    pub last_scan_ns: i64,
}

/// What one job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Summary {
    /// Paths looked at.
    pub paths: u64,
    pub bytes_hashed: u64,
    pub events: u64,
    /// Paths that could not be read (permissions, I/O errors): their rows were kept.
    pub unreadable: u64,
    /// It recorded (or finished recording) the initial baseline of a root.
    pub initial: bool,
    /// Paths below roots whose initial baseline it recorded.
    pub baseline_paths: u64,
    pub took: Duration,
}

/// What a scan covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every root: a full scan. Rows of paths no root covers any more are dropped silently.
    All,
    /// The path `key` of root `root`, and what lies below it when `descend`.
    Subtree {
        root: usize,
        key: Vec<u8>,
        descend: bool,
    },
}

/// The integrity engine: see the module documentation.
#[derive(Debug)]
pub struct Engine {
    roots: Vec<Root>,
    skip_mounts: HashSet<PathBuf>,
    /// Keys of paths never watched: the agent's own state and logs.
    own: Vec<Vec<u8>>,
    hash_budget: Budget,
    file_budget: Budget,
    chunk: usize,
    /// Threads hashing files beside a scan ([`super::hashers`]); 0: the scan hashes them itself.
    hash_threads: usize,
    /// Paths a scan may look at beyond the oldest one whose hash it is still waiting for.
    window: usize,
}

impl Engine {
    /// An engine over `roots` (which must not overlap), skipping the mount points in
    /// `skip_mounts` (but a root itself), committing at most `chunk` events and rows at once.
    pub fn new(
        mut roots: Vec<Root>,
        skip_mounts: HashSet<PathBuf>,
        hash_budget: Budget,
        file_budget: Budget,
        chunk: usize,
    ) -> Engine {
        roots.sort_by(|a, b| a.key.cmp(&b.key));
        Engine {
            roots,
            skip_mounts,
            own: Vec::new(),
            hash_budget,
            file_budget,
            chunk: chunk.max(2),
            hash_threads: 0,
            window: WINDOW,
        }
    }

    /// Hashes the files of a scan on `threads` threads beside it (0: on the scan's own).
    pub fn hashing_on(mut self, threads: usize) -> Engine {
        self.hash_threads = threads;
        self
    }

    /// [`Engine::hashing_on`] with a window of `window` paths instead of [`WINDOW`].
    #[cfg(test)]
    pub(super) fn hashing_within(mut self, threads: usize, window: usize) -> Engine {
        self.hash_threads = threads;
        self.window = window.max(1);
        self
    }

    /// Never watches `paths` (absolute) or what lies below them: the agent's own state and
    /// logs, which change all the time and would report the agent's own writes.
    pub fn excluding(mut self, paths: &[PathBuf]) -> Engine {
        self.own = paths.iter().filter_map(|p| key::of(p)).collect();
        self
    }

    fn own(&self, path_key: &[u8]) -> bool {
        self.own.iter().any(|o| key::within(path_key, o))
    }

    pub fn roots(&self) -> &[Root] {
        &self.roots
    }

    /// Events and rows per submission at most.
    pub fn chunk(&self) -> usize {
        self.chunk
    }

    /// The root covering `path`, if any, and whether the path itself is watched (not excluded,
    /// not below a non-recursive root's entries or a skipped mount point).
    pub fn root_of(&self, path_key: &[u8]) -> Option<usize> {
        let i = self
            .roots
            .iter()
            .position(|r| key::within(path_key, &r.key))?;
        self.covers(i, path_key).then_some(i)
    }

    fn covers(&self, i: usize, path_key: &[u8]) -> bool {
        if self.own(path_key) {
            return false;
        }
        let root = &self.roots[i];
        let depth = key::depth_below(path_key, &root.key);
        if !root.recursive && depth > 1 {
            return false;
        }
        let path = key::path(path_key);
        for (n, ancestor) in path.ancestors().enumerate().take(depth + 1) {
            if root.exclude.is_match(ancestor) {
                return false;
            }
            // A skipped mount point's own entry is watched; what lies below it is not.
            if n > 0
                && n < depth + 1
                && ancestor != root.path
                && self.skip_mounts.contains(ancestor)
            {
                return false;
            }
        }
        true
    }

    /// The committed trail and progress.
    pub fn load(&self, store: &mut impl Store) -> Result<(Trail, Progress), Stop> {
        let trail = store
            .row(META, TRAIL_KEY)?
            .and_then(|v| decode(&v))
            .unwrap_or_default();
        let progress = store
            .row(META, PROGRESS_KEY)?
            .and_then(|v| decode(&v))
            .unwrap_or_default();
        Ok((trail, progress))
    }

    /// Compares `target` with the baseline, committing events and rows. Below a root whose
    /// initial baseline is not complete (a first start, a start after a crash interrupted it, a
    /// root added since) new paths are recorded without events; a full scan completes it.
    pub fn scan(
        &self,
        store: &mut impl Store,
        target: &Target,
        detection: FimDetection,
        now_ns: i64,
    ) -> Result<Summary, Stop> {
        std::thread::scope(|scope| {
            let hashers =
                (self.hash_threads > 0).then(|| Hashers::start(scope, self.hash_threads, self));
            self.scan_with(store, target, detection, now_ns, hashers)
        })
    }

    fn scan_with(
        &self,
        store: &mut impl Store,
        target: &Target,
        detection: FimDetection,
        now_ns: i64,
        hashers: Option<Hashers>,
    ) -> Result<Summary, Stop> {
        let started = Instant::now();
        let (trail, progress) = self.load(store)?;
        let fresh: Vec<bool> = self
            .roots
            .iter()
            .map(|r| !progress.baselined.contains(&r.key))
            .collect();
        let initial = *target == Target::All && fresh.iter().any(|&f| f);
        let mut out = Out::new(self.chunk, trail, now_ns, detection);
        let mut merge = Merge {
            engine: self,
            fresh,
            pending: Pending::default(),
            keep: None,
            summary: Summary {
                initial,
                ..Summary::default()
            },
            hashers,
            slots: VecDeque::new(),
        };
        let mut walk = Walk::new(self, target);
        if initial {
            walk.read_ahead = Some((Prefetch::start(), merge.fresh.clone()));
        }
        let mut rows = Rows::new(target);
        let mut entry = walk.next();
        loop {
            if store.stopping() {
                return Err(Stop::Shutdown);
            }
            let row_key = rows.peek(store)?.map(|r| r.0.clone());
            let order = match (&entry, &row_key) {
                (None, None) => None,
                (Some(_), None) => Some(std::cmp::Ordering::Less),
                (None, Some(_)) => Some(std::cmp::Ordering::Greater),
                (Some(e), Some(r)) => Some(e.key.as_slice().cmp(r.as_slice())),
            };
            match order {
                Some(std::cmp::Ordering::Less) => {
                    merge.push(entry.take(), None);
                    entry = walk.next();
                }
                Some(std::cmp::Ordering::Equal) => {
                    let row = rows.pop();
                    merge.push(entry.take(), Some(row));
                    entry = walk.next();
                }
                Some(std::cmp::Ordering::Greater) => {
                    merge.push(None, Some(rows.pop()));
                }
                None => {}
            }
            // Everything looked at so far is decided in walk order; the scan waits for a hash
            // only when it is too far ahead of it, or at its end.
            let finishing = order.is_none();
            while let Some((step, found)) = merge.next_ready(finishing) {
                merge.decide(step, found, &mut out);
                merge.resolve_if_full(&mut out, store)?;
                out.flush_if_full(store)?;
            }
            if finishing {
                break;
            }
        }
        merge.pending.resolve(&mut out, &self.roots, store)?;
        let mut summary = merge.summary;
        summary.paths += walk.visited;
        summary.events = out.emitted;
        summary.took = started.elapsed();
        if *target == Target::All {
            let done = Progress {
                baselined: self.roots.iter().map(|r| r.key.clone()).collect(),
                last_scan_ns: now_ns,
            };
            out.state.push(StateChange::Put {
                source: META.to_owned(),
                key: PROGRESS_KEY.to_vec(),
                value: encode(&done),
            });
            if initial {
                out.events.push(Event::Log(LogRecord {
                    time_ns: now_ns,
                    source: BASELINE.to_owned(),
                    severity: Some(Severity::Info),
                    body: format!(
                        "baseline complete: {} paths, {} bytes hashed in {:.1} s",
                        summary.baseline_paths,
                        summary.bytes_hashed,
                        summary.took.as_secs_f64()
                    ),
                    attributes: Vec::new(),
                }));
            }
        }
        out.flush(store)?;
        Ok(summary)
    }

    /// The state of `path` now (`None` if it is gone), with the baseline's `previous` lending
    /// its hash; errors other than a vanished path are returned.
    pub(super) fn observe(
        &self,
        root: usize,
        path: &Path,
        previous: Option<&FileState>,
    ) -> io::Result<Option<(FileState, u64)>> {
        let meta = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        self.observe_meta(root, path, &meta, previous)
    }

    pub(super) fn observe_meta(
        &self,
        root: usize,
        path: &Path,
        meta: &Metadata,
        previous: Option<&FileState>,
    ) -> io::Result<Option<(FileState, u64)>> {
        match state::observe(
            path,
            meta,
            &self.roots[root].observe,
            previous,
            &self.hash_budget,
        ) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// The events and rows of the submission being filled, and the trail after them.
#[derive(Debug)]
pub(super) struct Out {
    chunk: usize,
    pub(super) events: Vec<Event>,
    pub(super) state: Vec<StateChange>,
    trail: Trail,
    trail_changed: bool,
    pub(super) emitted: u64,
    now_ns: i64,
    detection: FimDetection,
}

impl Out {
    pub(super) fn new(chunk: usize, trail: Trail, now_ns: i64, detection: FimDetection) -> Out {
        Out {
            chunk,
            events: Vec::new(),
            state: Vec::new(),
            trail,
            trail_changed: false,
            emitted: 0,
            now_ns,
            detection,
        }
    }

    pub(super) fn put(&mut self, key: Vec<u8>, state: &FileState) {
        self.state.push(StateChange::Put {
            source: BASELINE.to_owned(),
            key,
            value: state::encode(state),
        });
    }

    pub(super) fn delete(&mut self, key: Vec<u8>) {
        self.state.push(StateChange::Delete {
            source: BASELINE.to_owned(),
            key,
        });
    }

    /// Adds the event, numbered and chained after the last.
    pub(super) fn emit(
        &mut self,
        path_key: &[u8],
        change: FimChange,
        changed: Vec<String>,
        moved_from: Option<&[u8]>,
        before: Option<FileState>,
        after: Option<FileState>,
    ) {
        let mut event = FimEvent {
            time_ns: self.now_ns,
            path: key::path(path_key).to_string_lossy().into_owned(),
            change,
            changed,
            moved_from: moved_from.map(|k| key::path(k).to_string_lossy().into_owned()),
            before: before.map(Box::new),
            after: after.map(Box::new),
            detected_by: self.detection,
            seq: self.trail.seq + 1,
            chain: String::new(),
        };
        event.chain = chain_hash(&self.trail.chain, &event);
        self.trail = Trail {
            seq: event.seq,
            chain: event.chain.clone(),
        };
        self.trail_changed = true;
        self.emitted += 1;
        self.events.push(Event::Fim(event));
    }

    pub(super) fn flush_if_full(&mut self, store: &mut impl Store) -> Result<(), Stop> {
        if self.events.len() + self.state.len() >= self.chunk {
            self.flush(store)?;
        }
        Ok(())
    }

    /// Commits what was gathered, with the trail row if events were numbered.
    pub(super) fn flush(&mut self, store: &mut impl Store) -> Result<(), Stop> {
        if self.trail_changed {
            self.state.push(StateChange::Put {
                source: META.to_owned(),
                key: TRAIL_KEY.to_vec(),
                value: encode(&self.trail),
            });
            self.trail_changed = false;
        }
        if self.events.is_empty() && self.state.is_empty() {
            return Ok(());
        }
        let mut sub = Submission::new(Class::Wait, std::mem::take(&mut self.events));
        sub.state = std::mem::take(&mut self.state);
        store.commit(sub)
    }
}

/// Paths that appeared and vanished during a scan, held to pair them into moves.
#[derive(Debug, Default)]
pub(super) struct Pending {
    appeared: Vec<(Vec<u8>, FileState)>,
    vanished: Vec<(Vec<u8>, FileState)>,
}

impl Pending {
    fn len(&self) -> usize {
        self.appeared.len() + self.vanished.len()
    }

    /// Emits the held paths: an appeared path with the (device, inode) and kind of a vanished
    /// one (and the same hash when both were hashed) as moved from it, the others as created
    /// and deleted. Appeared paths go in key order (a moved directory before its entries).
    pub(super) fn resolve(
        &mut self,
        out: &mut Out,
        roots: &[Root],
        store: &mut impl Store,
    ) -> Result<(), Stop> {
        let mut vanished: Vec<Option<(Vec<u8>, FileState)>> = std::mem::take(&mut self.vanished)
            .into_iter()
            .map(Some)
            .collect();
        let mut by_inode: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
        for (i, v) in vanished.iter().enumerate() {
            if let Some((_, s)) = v {
                by_inode.entry((s.device, s.inode)).or_default().push(i);
            }
        }
        let mut appeared = std::mem::take(&mut self.appeared);
        appeared.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, now) in appeared {
            let candidates = by_inode.get(&(now.device, now.inode));
            let found = candidates.and_then(|c| {
                c.iter().copied().find(|&i| {
                    vanished[i]
                        .as_ref()
                        .is_some_and(|(_, was)| same_object(was, &now))
                })
            });
            match found.and_then(|i| vanished[i].take()) {
                Some((old_key, was)) => {
                    let compare = compare_of(roots, &key);
                    let changed = compare::changed(&was, &now, compare);
                    out.emit(
                        &key,
                        FimChange::Moved,
                        changed,
                        Some(&old_key),
                        Some(was),
                        Some(now.clone()),
                    );
                    out.delete(old_key);
                    out.put(key, &now);
                }
                None => {
                    out.emit(
                        &key,
                        FimChange::Created,
                        Vec::new(),
                        None,
                        None,
                        Some(now.clone()),
                    );
                    out.put(key, &now);
                }
            }
            out.flush_if_full(store)?;
        }
        for (key, was) in vanished.into_iter().flatten() {
            out.emit(&key, FimChange::Deleted, Vec::new(), None, Some(was), None);
            out.delete(key);
            out.flush_if_full(store)?;
        }
        Ok(())
    }
}

fn same_object(was: &FileState, now: &FileState) -> bool {
    was.kind == now.kind
        && match (&was.hash, &now.hash) {
            (Some(a), Some(b)) => a == b,
            _ => was.kind != FileKind::File || was.size == now.size,
        }
}

fn compare_of(roots: &[Root], path_key: &[u8]) -> Attrs {
    roots
        .iter()
        .find(|r| key::within(path_key, &r.key))
        .map_or(Attrs::ALL, |r| r.compare)
}

/// The decisions of one merge join.
struct Merge<'e> {
    engine: &'e Engine,
    /// By root: its initial baseline is being recorded.
    fresh: Vec<bool>,
    pending: Pending,
    /// Rows below this key are kept: its directory could not be read.
    keep: Option<Vec<u8>>,
    summary: Summary,
    hashers: Option<Hashers>,
    /// The steps looked at and not decided yet, in walk order.
    slots: VecDeque<(Step, Look)>,
}

/// One step of the merge join.
#[derive(Debug)]
enum Step {
    /// A path that has no row.
    Appeared(Entry),
    /// A path with a row, and the row's state (`None`: unreadable).
    Both(Entry, Option<FileState>),
    /// A row whose path was not found.
    Vanished(StateRow),
}

/// What looking at a step's path found, or where it is being looked at.
#[derive(Debug)]
enum Look {
    /// Nothing to look at (a vanished row, a path whose `lstat` failed).
    Nothing,
    Found(Observed),
    /// With the hashing threads, under this ticket.
    Hashing(u64),
}

impl Merge<'_> {
    /// Looks at the path of the step the merge join came to (on this thread, or on the hashing
    /// threads for a file to hash), and queues the step to be decided in walk order.
    fn push(&mut self, entry: Option<Entry>, row: Option<Option<StateRow>>) {
        let step = match (entry, row) {
            (Some(entry), None) => Step::Appeared(entry),
            (Some(entry), Some(Some((_, value)))) => Step::Both(entry, state::decode(&value)),
            (None, Some(Some(row))) => Step::Vanished(row),
            _ => return,
        };
        let (entry, before) = match &step {
            Step::Appeared(entry) => (entry, None),
            Step::Both(entry, before) => (entry, before.as_ref()),
            Step::Vanished(_) => {
                self.slots.push_back((step, Look::Nothing));
                return;
            }
        };
        let Found::Meta { meta, .. } = &entry.found else {
            self.slots.push_back((step, Look::Nothing));
            return;
        };
        let observe = &self.engine.roots[entry.root].observe;
        let found = match &mut self.hashers {
            Some(hashers) if state::will_hash(meta, observe, before) => {
                let job = Job {
                    root: entry.root,
                    path: entry.path.clone(),
                    meta: meta.clone(),
                    previous: before.cloned(),
                };
                if let Some(ticket) = hashers.submit(job) {
                    self.slots.push_back((step, Look::Hashing(ticket)));
                    return;
                }
                self.engine
                    .observe_meta(entry.root, &entry.path, meta, before)
            }
            _ => self
                .engine
                .observe_meta(entry.root, &entry.path, meta, before),
        };
        self.slots.push_back((step, Look::Found(found)));
    }

    /// The oldest step not decided yet, once what was looked at for it is there; waiting for
    /// its hash when `finishing` or when the window is full.
    fn next_ready(&mut self, finishing: bool) -> Option<(Step, Option<Observed>)> {
        let must_wait = finishing || self.slots.len() > self.engine.window;
        let ticket = match self.slots.front()? {
            (_, Look::Hashing(ticket)) => *ticket,
            _ => {
                let (step, look) = self.slots.pop_front()?;
                let found = match look {
                    Look::Found(found) => Some(found),
                    _ => None,
                };
                return Some((step, found));
            }
        };
        let hashers = self.hashers.as_mut()?;
        let found = if must_wait {
            hashers.wait(ticket)
        } else {
            hashers.poll(ticket)?
        };
        let (step, _) = self.slots.pop_front()?;
        Some((step, Some(found)))
    }

    /// Decides a step in walk order, with what looking at its path found.
    fn decide(&mut self, step: Step, found: Option<Observed>, out: &mut Out) {
        match (step, found) {
            (Step::Appeared(entry), Some(found)) => self.appeared(entry, found, out),
            (Step::Both(entry, before), Some(found)) => self.both(entry, before, found, out),
            // Its `lstat` failed: counted, and a row below it kept.
            (Step::Appeared(entry) | Step::Both(entry, _), None) => {
                self.usable(&entry);
            }
            (Step::Vanished(row), _) => self.vanished(row, out),
        }
    }

    /// A path that has no row.
    fn appeared(&mut self, entry: Entry, found: Observed, out: &mut Out) {
        if self.usable(&entry).is_none() {
            return;
        }
        match found {
            Ok(Some((now, hashed))) => {
                self.summary.bytes_hashed += hashed;
                if self.fresh[entry.root] {
                    self.summary.baseline_paths += 1;
                    out.put(entry.key, &now);
                } else {
                    self.pending.appeared.push((entry.key, now));
                }
            }
            Ok(None) => {}
            Err(e) => self.unreadable(&entry.path, &e),
        }
    }

    /// A path with a row.
    fn both(&mut self, entry: Entry, before: Option<FileState>, found: Observed, out: &mut Out) {
        if self.usable(&entry).is_none() {
            return;
        }
        match found {
            Ok(Some((now, hashed))) => {
                self.summary.bytes_hashed += hashed;
                if self.fresh[entry.root] {
                    self.summary.baseline_paths += 1;
                }
                let Some(before) = before else {
                    out.put(entry.key, &now);
                    return;
                };
                let compare = self.engine.roots[entry.root].compare;
                match compare::classify(&before, &now, compare) {
                    Some((change, changed)) => {
                        out.emit(
                            &entry.key,
                            change,
                            changed,
                            None,
                            Some(before),
                            Some(now.clone()),
                        );
                        out.put(entry.key, &now);
                    }
                    None if now != before => out.put(entry.key, &now),
                    None => {}
                }
            }
            // Gone since it was listed: the next scan reports it.
            Ok(None) => {}
            Err(e) => self.unreadable(&entry.path, &e),
        }
    }

    /// A row whose path was not found.
    fn vanished(&mut self, row: StateRow, out: &mut Out) {
        let (k, value) = row;
        if self.keep.as_ref().is_some_and(|keep| key::within(&k, keep)) {
            return;
        }
        match (self.engine.root_of(&k), state::decode(&value)) {
            (Some(_), Some(was)) => self.pending.vanished.push((k, was)),
            // No longer watched (the configuration changed), or unreadable: dropped silently.
            _ => out.delete(k),
        }
    }

    fn resolve_if_full(&mut self, out: &mut Out, store: &mut impl Store) -> Result<(), Stop> {
        if self.pending.len() >= PENDING_CAP {
            self.pending.resolve(out, &self.engine.roots, store)?;
        }
        Ok(())
    }

    /// The entry's metadata, or `None` (keeping its rows) if it could not be read.
    fn usable<'a>(&mut self, entry: &'a Entry) -> Option<&'a Metadata> {
        match &entry.found {
            Found::Meta { meta, unreadable } => {
                if let Some(e) = unreadable {
                    self.keep = Some(entry.key.clone());
                    self.unreadable(&entry.path, e);
                }
                Some(meta)
            }
            Found::Error(e) => {
                self.keep = Some(entry.key.clone());
                self.unreadable(&entry.path, e);
                None
            }
        }
    }

    fn unreadable(&mut self, path: &Path, e: &io::Error) {
        if self.engine.hash_budget.stopped() {
            // Hashing gave up for the shutdown: the scan ends at the next step.
            return;
        }
        self.summary.unreadable += 1;
        // The first few of a scan are worth a warning; the rest are counted.
        if self.summary.unreadable <= 10 {
            tracing::warn!(path = %path.display(), error = %e, "fim: cannot read a path; its baseline is kept");
        } else {
            tracing::debug!(path = %path.display(), error = %e, "fim: cannot read a path; its baseline is kept");
        }
    }
}

/// A path the walk found.
#[derive(Debug)]
struct Entry {
    key: Vec<u8>,
    path: PathBuf,
    root: usize,
    found: Found,
}

#[derive(Debug)]
enum Found {
    /// Its `lstat`, and the error listing it if it is a directory that could not be listed.
    Meta {
        meta: Metadata,
        unreadable: Option<io::Error>,
    },
    Error(io::Error),
}

/// A directory being walked: its entries not visited yet, sorted by name bytes, last first.
#[derive(Debug)]
struct Level {
    dir: PathBuf,
    key: Vec<u8>,
    root: usize,
    depth: usize,
    names: Vec<OsString>,
}

/// A depth-first walk of a target in key order.
struct Walk<'e> {
    engine: &'e Engine,
    starts: VecDeque<(usize, Vec<u8>, bool)>,
    stack: Vec<Level>,
    visited: u64,
    /// During a baseline: the read-ahead, and by root whether its baseline is being recorded
    /// (the files of those roots are all hashed, so they are read ahead).
    read_ahead: Option<(Prefetch, Vec<bool>)>,
}

impl<'e> Walk<'e> {
    fn new(engine: &'e Engine, target: &Target) -> Walk<'e> {
        let starts = match target {
            Target::All => (0..engine.roots.len())
                .map(|i| (i, engine.roots[i].key.clone(), true))
                .collect(),
            Target::Subtree { root, key, descend } => {
                VecDeque::from([(*root, key.clone(), *descend)])
            }
        };
        Walk {
            engine,
            starts,
            stack: Vec::new(),
            visited: 0,
            read_ahead: None,
        }
    }

    fn next(&mut self) -> Option<Entry> {
        loop {
            if let Some(level) = self.stack.last_mut() {
                let Some(name) = level.names.pop() else {
                    self.stack.pop();
                    continue;
                };
                if let Some((prefetch, fresh)) = &self.read_ahead
                    && fresh[level.root]
                {
                    prefetch.reached();
                }
                let path = level.dir.join(&name);
                let key = key::child(&level.key, &name);
                let (root, depth) = (level.root, level.depth + 1);
                if self.engine.roots[root].exclude.is_match(&path) || self.engine.own(&key) {
                    continue;
                }
                if let Some(e) = self.visit(root, path, key, depth, true) {
                    return Some(e);
                }
                continue;
            }
            let (root, key, descend) = self.starts.pop_front()?;
            if !self.engine.covers(root, &key) {
                continue;
            }
            let depth = key::depth_below(&key, &self.engine.roots[root].key);
            let path = key::path(&key);
            if let Some(e) = self.visit(root, path, key, depth, descend) {
                return Some(e);
            }
        }
    }

    /// The entry of `path`, listing it to walk next if it is a directory to descend into;
    /// `None` if it is gone.
    fn visit(
        &mut self,
        root: usize,
        path: PathBuf,
        key: Vec<u8>,
        depth: usize,
        descend: bool,
    ) -> Option<Entry> {
        self.engine.file_budget.spend(1);
        self.visited += 1;
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                return Some(Entry {
                    key,
                    path,
                    root,
                    found: Found::Error(e),
                });
            }
        };
        let r = &self.engine.roots[root];
        let mut unreadable = None;
        let into = meta.is_dir()
            && descend
            && (depth == 0 || r.recursive)
            && (path == r.path || !self.engine.skip_mounts.contains(&path));
        if into {
            match list(&path) {
                Ok(mut names) => {
                    names.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
                    if let Some((prefetch, fresh)) = &self.read_ahead
                        && fresh[root]
                    {
                        prefetch.queue(names.iter().rev().map(|name| path.join(name)));
                    }
                    self.stack.push(Level {
                        dir: path.clone(),
                        key: key.clone(),
                        root,
                        depth,
                        names,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
                Err(e) => unreadable = Some(e),
            }
        }
        Some(Entry {
            key,
            path,
            root,
            found: Found::Meta { meta, unreadable },
        })
    }
}

fn list(dir: &Path) -> io::Result<Vec<OsString>> {
    std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect()
}

/// The baseline rows of a target, a page at a time.
struct Rows {
    first: Option<Vec<u8>>,
    buf: VecDeque<StateRow>,
    after: Option<Vec<u8>>,
    /// Rows must lie within this key (`None`: all rows).
    bound: Option<Vec<u8>>,
    /// Only the first row (`bound` itself) is of the target.
    exact: bool,
    done: bool,
}

impl Rows {
    fn new(target: &Target) -> Rows {
        match target {
            Target::All => Rows {
                first: None,
                buf: VecDeque::new(),
                after: None,
                bound: None,
                exact: false,
                done: false,
            },
            Target::Subtree { key, descend, .. } => Rows {
                first: Some(key.clone()),
                buf: VecDeque::new(),
                after: Some(key.clone()),
                bound: Some(key.clone()),
                exact: !descend,
                done: false,
            },
        }
    }

    fn peek(&mut self, store: &mut impl Store) -> Result<Option<&StateRow>, Stop> {
        if let Some(first) = self.first.take()
            && let Some(value) = store.row(BASELINE, &first)?
        {
            self.buf.push_back((first, value));
        }
        if self.buf.is_empty() && !self.done && !self.exact {
            let page = store.page(BASELINE, self.after.as_deref(), PAGE)?;
            self.done = page.len() < PAGE;
            if let Some((k, _)) = page.last() {
                self.after = Some(k.clone());
            }
            for row in page {
                if self.bound.as_ref().is_some_and(|b| !key::within(&row.0, b)) {
                    self.done = true;
                    break;
                }
                self.buf.push_back(row);
            }
        }
        Ok(self.buf.front())
    }

    fn pop(&mut self) -> Option<StateRow> {
        self.buf.pop_front()
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Encoding plain data into memory cannot fail.
    bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap_or_default()
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Option<T> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .ok()
        .map(|(v, _)| v)
}

#[cfg(test)]
pub(super) mod tests_support {
    use super::*;

    pub fn pending(
        appeared: Vec<(Vec<u8>, FileState)>,
        vanished: Vec<(Vec<u8>, FileState)>,
    ) -> Pending {
        Pending { appeared, vanished }
    }

    pub fn out(chunk: usize) -> Out {
        Out::new(chunk, Trail::default(), 1, FimDetection::Rescan)
    }

    pub fn events(out: &Out) -> Vec<FimEvent> {
        out.events
            .iter()
            .filter_map(|e| match e {
                Event::Fim(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }
}
