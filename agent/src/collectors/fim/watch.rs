//! Realtime watching for file-integrity monitoring: which paths under the monitored roots may
//! have changed, so the checker compares just those with its baseline instead of rescanning
//! everything.
//!
//! The watcher never decides what changed: it names paths ([`Dirty::Path`]), renames the kernel
//! paired ([`Dirty::Moved`]) and subtrees ([`Dirty::Tree`]) for the checker to compare with its
//! baseline. It errs on the side of naming too much: a change that produces no [`Dirty`] at all
//! is the one failure it must not have.
//!
//! # Who recurses
//!
//! The watcher walks the roots itself and gives notify one non-recursive watch per directory
//! (`RecursiveMode::NonRecursive`), rather than letting notify recurse, because:
//!
//! - the watch count is exact ([`WatchStats::watches`]) and `max_watches` is enforced before the
//!   kernel's `max_user_watches` is reached, leaving watches for the rest of the host;
//! - excluded directories are never watched nor walked (notify would watch the whole tree and
//!   only the events would be filtered);
//! - a directory that cannot be watched is known by name, so it comes back as a
//!   [`Dirty::Tree`] for exactly that subtree; notify's recursive `watch` fails as a whole at the
//!   first refusal, leaving an unknown part of the tree watched, and for directories created
//!   later it reports the first refusal and silently leaves the rest of the new tree unwatched;
//! - a directory created or moved in is watched here *before* it is listed, so whatever was
//!   written into it before the watch took is still covered by its [`TreeReason::NewDirectory`].
//!
//! notify keeps its own map of watched paths and drops a path's watch, and those of every path
//! below it, when the kernel reports it deleted or moved away (`IN_DELETE`, `IN_DELETE_SELF`,
//! `IN_MOVED_FROM`). The watcher mirrors that in its own bookkeeping, and re-adds watches under
//! the new name of a directory renamed within a recursive root.
//!
//! # What comes back
//!
//! - Writes, attribute changes, creations and deletions: [`Dirty::Path`].
//! - Renames: [`Dirty::Moved`]; a side outside the roots (or excluded) is `None`. A rename that
//!   the kernel did not pair (moved in from or out to an unwatched place) has one side `None`.
//!   A [`Dirty::Path`] or [`Dirty::Moved`] naming a directory stands for its whole subtree: if the
//!   directory is gone, so is everything the baseline had below it.
//! - A directory created or moved in under a recursive root (including one renamed within the
//!   roots, after its [`Dirty::Moved`]): [`Dirty::Tree`] with [`TreeReason::NewDirectory`]. For a
//!   renamed directory this also covers changes made in it between the rename and the new watch,
//!   which inotify reports under the old name or not at all.
//! - A lost event queue (the kernel's, or this watcher's own channel): [`TreeReason::Overflow`]
//!   for every root, since the kernel does not say where; the roots are walked again so that
//!   directories created meanwhile are watched, and watches of directories gone are dropped.
//! - A directory left unwatched: [`TreeReason::WatchLimit`] (at `max_watches` or the kernel's
//!   `max_user_watches`) or [`TreeReason::WatchFailed`] (with the reason; a root that does not
//!   exist, or was removed or moved away, is reported so too).
//!
//! A `Tree` covers its own path and everything below it; paths below it reported in the same
//! batch are folded into it. Entries come in the order of their first occurrence, except that a
//! `Tree` reported again moves to the end: the last `Tree` naming a path tells its state.
//!
//! # Unwatched subtrees: what the consumer must do
//!
//! A subtree reported with [`TreeReason::WatchLimit`] or [`TreeReason::WatchFailed`] is *blind*:
//! changes in it produce nothing. **The consumer rescans it on its periodic schedule until a
//! later [`TreeReason::NewDirectory`] or [`TreeReason::Overflow`] names it or an ancestor.** The
//! watcher tries again on its own: a directory refused at the limit is retried whenever watches
//! have been released (a watched directory deleted or moved out), and comes back as
//! `NewDirectory` once it is watched; a root that was missing, removed or moved away is looked
//! for at the end of each batch and every `max_delay` (of [`Watcher::next`]) while nothing else
//! happens, and comes back as `NewDirectory` once it exists again (followed by a refusal if it
//! cannot be watched); after an overflow every root is walked again. A root or directory refused
//! for another reason (permissions, say) is tried again only after an overflow.
//!
//! # Roots
//!
//! A recursive directory root watches every directory below it that no exclude glob matches
//! (symbolic links are not followed). A non-recursive root watches only the directory's own
//! entries. A root that is a single file watches that file (which also sees writes through its
//! other hard links) and its parent directory, which sees it replaced by a rename (editors and
//! package managers do that); after such a replacement the file's own watch is added again.
//! Exclude globs are matched against full paths; an excluded path produces nothing.
//!
//! # Costs
//!
//! notify's inotify backend also asks for open and close-without-write events, which the watcher
//! drops; on a busy directory they still take room in the kernel queue, so reads there make an
//! overflow likelier. Adding watches (at start, for new directories, after an overflow) walks the
//! directories on the calling task: [`Watcher::start`] blocks, and [`Watcher::next`] may briefly
//! block while a large directory tree is moved in.
//!
//! [`Watcher::next`] is cancel-safe (it can sit in a `select!` with shutdown): what it collected
//! before being dropped comes back from the next call.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use globset::GlobSet;
use notify::Watcher as _;
use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

/// How many notify events wait for [`Watcher::next`] before further ones count as an overflow.
const QUEUE: usize = 65_536;

/// A path to watch.
#[derive(Debug, Clone)]
pub struct WatchRoot {
    /// A directory, or a single file.
    pub path: PathBuf,
    /// Whether to watch the directories below a directory root too (ignored for a file).
    pub recursive: bool,
    /// Paths (matched in full) that produce nothing and are not watched.
    pub exclude: GlobSet,
}

/// Watches the roots with inotify and reports what may have changed; see the module
/// documentation.
#[derive(Debug)]
pub struct Watcher {
    backend: Backend,
    events: mpsc::Receiver<notify::Result<notify::Event>>,
    /// Set when an event did not fit in `events`: handled as an overflow.
    dropped: Arc<AtomicBool>,
    state: State,
}

impl Watcher {
    /// Starts watching; never fails as a whole: a root or directory that cannot be watched comes back as a Dirty::Tree with the reason.
    pub fn start(roots: Vec<WatchRoot>, max_watches: usize) -> Watcher {
        let (tx, events) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicBool::new(false));
        let overflowed = dropped.clone();
        let inner = notify::recommended_watcher(move |event| match tx.try_send(event) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(_)) => overflowed.store(true, Ordering::Release),
        })
        .map_err(|e| {
            warn!(error = %e, "cannot use inotify; file-integrity roots are not watched");
            format!("cannot use inotify: {e}")
        });
        // Without inotify nothing will ever send: `next` reports the roots once, then ends.
        Watcher::with_backend(Backend { inner }, events, dropped, roots, max_watches)
    }

    /// Waits for changes, then coalesces until `quiet` passes with nothing already collected
    /// changing again (at most `max_delay` after the first); None once it has ended.
    ///
    /// Changes to paths not yet collected join the batch without extending it: under a steady
    /// stream of changes to different files, each is reported about `quiet` after it happened,
    /// not `max_delay`; a path that keeps changing (an editor's burst) is held until it settles.
    pub async fn next(&mut self, quiet: Duration, max_delay: Duration) -> Option<Vec<Dirty>> {
        // Cancel-safe: what was collected stays in `self.state` for the next call.
        loop {
            let ended = !self.wait_for_change(max_delay).await;
            if !ended {
                let last = Instant::now() + max_delay;
                let mut changed = Instant::now();
                loop {
                    let deadline = (changed + quiet).min(last);
                    match tokio::time::timeout_at(deadline, self.events.recv()).await {
                        Ok(Some(event)) => {
                            let (pushes, entries) = self.state.dirt.counts();
                            if self.take(event) && self.state.dirt.changed_again(pushes, entries) {
                                changed = Instant::now();
                            }
                        }
                        Ok(None) | Err(_) => break,
                    }
                }
            }
            self.state.finish_batch(&mut self.backend);
            let batch = self.state.dirt.take();
            // A batch can come out empty: a rename half of a sibling of a file root, say.
            if !batch.is_empty() {
                return Some(batch);
            }
            if ended {
                return None;
            }
        }
    }

    pub fn stats(&self) -> WatchStats {
        WatchStats {
            watches: self.state.watched.len(),
            ..self.state.stats
        }
    }

    fn with_backend(
        mut backend: Backend,
        events: mpsc::Receiver<notify::Result<notify::Event>>,
        dropped: Arc<AtomicBool>,
        roots: Vec<WatchRoot>,
        max_watches: usize,
    ) -> Watcher {
        let mut state = State::new(roots, max_watches);
        for i in 0..state.roots.len() {
            state.watch_root(&mut backend, i);
        }
        Watcher {
            backend,
            events,
            dropped,
            state,
        }
    }

    /// Waits until something is to be reported; false if no event will ever come.
    async fn wait_for_change(&mut self, max_delay: Duration) -> bool {
        while !self.state.has_changes() {
            let event = if self.state.lost.is_empty() {
                self.events.recv().await
            } else {
                // Nothing reports a lost root coming back: look for it every `max_delay`.
                match tokio::time::timeout(max_delay, self.events.recv()).await {
                    Ok(event) => event,
                    Err(_) => {
                        self.state.retry_lost(&mut self.backend);
                        continue;
                    }
                }
            };
            match event {
                Some(event) => {
                    self.take(event);
                }
                None => return false,
            }
        }
        true
    }

    /// Handles one notify event; returns whether it concerned the roots.
    fn take(&mut self, event: notify::Result<notify::Event>) -> bool {
        let changed = match event {
            Ok(event) => self.state.handle(&mut self.backend, event),
            Err(e) => {
                // notify reports failures to read the inotify queue here: events may be lost.
                warn!(error = %e, "inotify failed; rescanning the file-integrity roots");
                self.state.overflow(&mut self.backend);
                true
            }
        };
        if self.dropped.swap(false, Ordering::Acquire) {
            warn!("file-integrity events arrived faster than they were read; rescanning the roots");
            self.state.overflow(&mut self.backend);
            return true;
        }
        changed
    }
}

/// The watcher's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WatchStats {
    /// Watches held now (directories, plus each file root).
    pub watches: usize,
    /// Times events were lost (the kernel queue or the watcher's own overflowed).
    pub overflows: u64,
    /// Directories (or roots) reported as [`TreeReason::WatchLimit`].
    pub limit_hits: u64,
}

/// Something the checker should compare with its baseline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dirty {
    /// Check this one path against the baseline.
    Path(PathBuf),
    /// A rename the kernel paired (a side outside the roots is None).
    Moved {
        from: Option<PathBuf>,
        to: Option<PathBuf>,
    },
    /// Rescan this whole subtree (the path itself included) against the baseline.
    Tree { path: PathBuf, reason: TreeReason },
}

/// Why a subtree must be rescanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeReason {
    /// A directory was created or moved in (or renamed) and is watched now.
    NewDirectory,
    /// Events were lost; the kernel does not say where.
    Overflow,
    /// The directory is not watched: `max_watches` or the kernel's `max_user_watches` was reached.
    WatchLimit,
    /// The directory (or root) is not watched, for this reason.
    WatchFailed(String),
}

/// Why a watch was not added.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// `max_watches` or the kernel's limit.
    Limit,
    /// The path is gone; whatever removed it is reported on its own.
    Gone,
    Failed(String),
}

/// Adds and removes single, non-recursive watches.
trait Watches {
    fn add(&mut self, path: &Path) -> Result<(), Refusal>;
    /// Removes `path`'s watch; one notify already dropped is no error.
    fn remove(&mut self, path: &Path);
}

/// notify's watcher, or why there is none.
#[derive(Debug)]
struct Backend {
    inner: Result<notify::RecommendedWatcher, String>,
}

impl Watches for Backend {
    fn add(&mut self, path: &Path) -> Result<(), Refusal> {
        let watcher = self
            .inner
            .as_mut()
            .map_err(|e| Refusal::Failed(e.clone()))?;
        watcher
            .watch(path, notify::RecursiveMode::NonRecursive)
            .map_err(|e| match &e.kind {
                notify::ErrorKind::MaxFilesWatch => Refusal::Limit,
                notify::ErrorKind::PathNotFound => Refusal::Gone,
                notify::ErrorKind::Io(io) if io.kind() == io::ErrorKind::NotFound => Refusal::Gone,
                _ => Refusal::Failed(e.to_string()),
            })
    }

    fn remove(&mut self, path: &Path) {
        if let Ok(watcher) = &mut self.inner {
            // An error means notify no longer watches it, which is what is wanted.
            let _ = watcher.unwatch(path);
        }
    }
}

#[derive(Debug)]
struct Root {
    path: PathBuf,
    recursive: bool,
    exclude: GlobSet,
    /// Whether the root was a file (not a directory) when last watched.
    file: bool,
}

impl Root {
    /// Whether a change at `path` concerns this root.
    fn covers(&self, path: &Path) -> bool {
        let inside = if self.file {
            path == self.path
        } else if self.recursive {
            path.starts_with(&self.path)
        } else {
            path == self.path || path.parent() == Some(self.path.as_path())
        };
        inside && !self.exclude.is_match(path)
    }

    /// Whether a directory at `path` is to be watched for this root.
    fn grows(&self, path: &Path) -> bool {
        !self.file && self.recursive && path.starts_with(&self.path) && !self.exclude.is_match(path)
    }

    /// The directory whose watch the root cannot do without.
    fn anchor(&self) -> &Path {
        if self.file {
            self.path.parent().unwrap_or(&self.path)
        } else {
            &self.path
        }
    }
}

/// A rename half waiting for its other half.
#[derive(Debug)]
enum Pending {
    /// `IN_MOVED_FROM`; notify sends the paired `To` and `Both` right after, if there are any.
    From { tracker: usize, path: PathBuf },
    /// An `IN_MOVED_TO`; notify sends `Both` right after it if it paired it.
    To { tracker: usize, path: PathBuf },
}

/// The watcher's bookkeeping: what is watched, what is blind, what is dirty.
#[derive(Debug)]
struct State {
    roots: Vec<Root>,
    max_watches: usize,
    /// The paths holding a watch.
    watched: BTreeSet<PathBuf>,
    /// Directories refused at the watch limit, retried when watches are released.
    blind: BTreeSet<PathBuf>,
    /// Set when watches were released since `blind` was last retried.
    released: bool,
    /// Set by an overflow: the roots are walked again at the end of the batch.
    resync: bool,
    /// Roots (by index) that are unwatched because they were missing, removed or moved away;
    /// looked for at the end of each batch and every `max_delay` while there is none.
    lost: BTreeSet<usize>,
    /// File roots (by index) replaced or removed in this batch, whose own watch is re-added.
    touched: BTreeSet<usize>,
    pending: Option<Pending>,
    dirt: Dirt,
    stats: WatchStats,
}

impl State {
    fn new(roots: Vec<WatchRoot>, max_watches: usize) -> State {
        let cwd = std::env::current_dir().unwrap_or_default();
        let roots = roots
            .into_iter()
            .map(|r| Root {
                // notify names events by absolute paths.
                path: cwd.join(r.path),
                recursive: r.recursive,
                exclude: r.exclude,
                file: false,
            })
            .collect();
        State {
            roots,
            max_watches,
            watched: BTreeSet::new(),
            blind: BTreeSet::new(),
            released: false,
            resync: false,
            lost: BTreeSet::new(),
            touched: BTreeSet::new(),
            pending: None,
            dirt: Dirt::default(),
            stats: WatchStats::default(),
        }
    }

    fn has_changes(&self) -> bool {
        !self.dirt.is_empty() || self.pending.is_some()
    }

    fn relevant(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| r.covers(path))
    }

    fn grows(&self, path: &Path) -> bool {
        self.roots.iter().any(|r| r.grows(path))
    }

    fn file_roots<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = usize> + 'a {
        self.roots
            .iter()
            .enumerate()
            .filter(move |(_, r)| r.file && r.path == path)
            .map(|(i, _)| i)
    }

    /// Handles one event; returns whether it concerned the roots.
    fn handle(&mut self, w: &mut dyn Watches, event: notify::Event) -> bool {
        let before = self.dirt.pushes;
        let had_pending = self.pending.is_some();
        if event.need_rescan() {
            self.resolve(w);
            self.overflow(w);
            return true;
        }
        let tracker = event.attrs.tracker();
        let mut paths = event.paths.into_iter();
        match event.kind {
            EventKind::Modify(ModifyKind::Name(mode)) => match (mode, tracker) {
                (RenameMode::From, Some(tracker)) => {
                    self.resolve(w);
                    if let Some(path) = paths.next() {
                        self.pending = Some(Pending::From { tracker, path });
                    }
                }
                (RenameMode::From, None) => {
                    // `IN_MOVE_SELF`: the parent's watch, if any, reports the rename itself.
                    self.resolve(w);
                    for path in paths {
                        self.moved_self(w, &path);
                    }
                }
                (RenameMode::To, Some(tracker)) => {
                    let paired = matches!(&self.pending,
                        Some(Pending::From { tracker: t, .. }) if *t == tracker);
                    if !paired {
                        self.resolve(w);
                        if let Some(path) = paths.next() {
                            self.pending = Some(Pending::To { tracker, path });
                        }
                    }
                }
                (RenameMode::Both, _) => {
                    let matches = match &self.pending {
                        Some(Pending::From { tracker: t, .. } | Pending::To { tracker: t, .. }) => {
                            Some(*t) == tracker
                        }
                        None => false,
                    };
                    if matches {
                        self.pending = None;
                    } else {
                        self.resolve(w);
                    }
                    let from = paths.next();
                    let to = paths.next();
                    self.moved(w, from, to);
                }
                (RenameMode::To, None) => {
                    self.resolve(w);
                    for path in paths {
                        self.moved(w, None, Some(path));
                    }
                }
                (RenameMode::Any | RenameMode::Other, _) => {
                    self.resolve(w);
                    for path in paths {
                        self.changed(&path);
                    }
                }
            },
            EventKind::Create(kind) => {
                self.resolve(w);
                for path in paths {
                    self.created(w, path, kind == CreateKind::Folder);
                }
            }
            EventKind::Remove(_) => {
                self.resolve(w);
                for path in paths {
                    self.removed(w, &path);
                }
            }
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Modify(_)
            | EventKind::Any => {
                self.resolve(w);
                for path in paths {
                    self.changed(&path);
                }
            }
            // Opens and reads change nothing.
            EventKind::Access(_) | EventKind::Other => {}
        }
        self.dirt.pushes != before || (self.pending.is_some() && !had_pending)
    }

    fn changed(&mut self, path: &Path) {
        if self.relevant(path) {
            self.dirt.push(Dirty::Path(path.to_owned()));
        }
    }

    fn created(&mut self, w: &mut dyn Watches, path: PathBuf, dir: bool) {
        if dir && self.grows(&path) {
            self.new_directory(w, path);
            return;
        }
        let files: Vec<usize> = self.file_roots(&path).collect();
        self.touched.extend(files);
        self.changed(&path);
    }

    fn removed(&mut self, w: &mut dyn Watches, path: &Path) {
        self.release(w, path);
        let files: Vec<usize> = self.file_roots(path).collect();
        self.touched.extend(files);
        self.changed(path);
    }

    /// A watched path was moved: a root (or a file root's directory) is lost; a file root may
    /// have been replaced.
    fn moved_self(&mut self, w: &mut dyn Watches, path: &Path) {
        let anchored: Vec<usize> = (0..self.roots.len())
            .filter(|&i| self.roots[i].anchor() == path && !self.lost.contains(&i))
            .collect();
        for i in anchored {
            self.lose(w, i);
        }
        let files: Vec<usize> = self.file_roots(path).collect();
        if !files.is_empty() {
            self.touched.extend(files);
            self.changed(path);
        }
    }

    /// A rename; `None` for a side the kernel did not report.
    fn moved(&mut self, w: &mut dyn Watches, from: Option<PathBuf>, to: Option<PathBuf>) {
        if let Some(from) = &from {
            self.release(w, from);
            let files: Vec<usize> = self.file_roots(from).collect();
            self.touched.extend(files);
        }
        let from = from.filter(|p| self.relevant(p));
        let to_relevant = to.clone().filter(|p| self.relevant(p));
        if from.is_some() || to_relevant.is_some() {
            self.dirt.push(Dirty::Moved {
                from,
                to: to_relevant,
            });
        }
        if let Some(to) = to {
            let files: Vec<usize> = self.file_roots(&to).collect();
            self.touched.extend(files);
            if self.grows(&to) && fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir()) {
                self.new_directory(w, to);
            }
        }
    }

    /// A directory to watch with what is below it. `NewDirectory` comes first, so that the
    /// refusals the walk reports after it prevail.
    fn new_directory(&mut self, w: &mut dyn Watches, path: PathBuf) {
        self.dirt.push(Dirty::Tree {
            path: path.clone(),
            reason: TreeReason::NewDirectory,
        });
        self.watch_tree(w, path);
    }

    /// Resolves a rename half whose other half did not come: it was a move out of or into the
    /// watched directories.
    fn resolve(&mut self, w: &mut dyn Watches) {
        match self.pending.take() {
            Some(Pending::From { path, .. }) => self.moved(w, Some(path), None),
            Some(Pending::To { path, .. }) => self.moved(w, None, Some(path)),
            None => {}
        }
    }

    /// Events were lost: every root is dirty, and is walked again at the end of the batch (once,
    /// however many overflows a storm brings).
    fn overflow(&mut self, w: &mut dyn Watches) {
        self.stats.overflows += 1;
        self.resolve(w);
        for root in &self.roots {
            self.dirt.push(Dirty::Tree {
                path: root.path.clone(),
                reason: TreeReason::Overflow,
            });
        }
        self.resync = true;
    }

    /// Watches the directories created while events were lost and drops the watches of those
    /// gone meanwhile.
    fn resync(&mut self, w: &mut dyn Watches) {
        let gone: Vec<PathBuf> = self
            .watched
            .iter()
            .filter(|p| fs::symlink_metadata(p).is_err())
            .cloned()
            .collect();
        for path in gone {
            self.release(w, &path);
        }
        self.blind.clear();
        for i in 0..self.roots.len() {
            if !self.lost.contains(&i) {
                self.watch_root(w, i);
            }
        }
    }

    /// The end of a batch: pending renames resolved, the roots walked again after an overflow,
    /// lost roots and blind directories retried, replaced file roots watched again.
    fn finish_batch(&mut self, w: &mut dyn Watches) {
        self.resolve(w);
        if std::mem::take(&mut self.resync) {
            self.resync(w);
        }
        self.retry_lost(w);
        for i in std::mem::take(&mut self.touched) {
            let path = self.roots[i].path.clone();
            if self.roots[i].file && !self.lost.contains(&i) && fs::symlink_metadata(&path).is_ok()
            {
                self.watch_file(w, &path);
            }
        }
        if std::mem::take(&mut self.released) {
            for path in self.blind.clone() {
                if self.watched.len() >= self.max_watches {
                    break;
                }
                self.blind.remove(&path);
                match self.roots.iter().position(|r| r.path == path) {
                    Some(i) => {
                        self.dirt.push(Dirty::Tree {
                            path,
                            reason: TreeReason::NewDirectory,
                        });
                        self.watch_root(w, i);
                    }
                    None => self.new_directory(w, path),
                }
            }
        }
    }

    /// Watches again the roots that were missing, removed or moved away and exist now.
    fn retry_lost(&mut self, w: &mut dyn Watches) {
        for i in self.lost.clone() {
            let path = self.roots[i].path.clone();
            if fs::symlink_metadata(&path).is_ok() {
                self.lost.remove(&i);
                self.dirt.push(Dirty::Tree {
                    path,
                    reason: TreeReason::NewDirectory,
                });
                self.watch_root(w, i);
            }
        }
    }

    /// Watches root `i`; returns whether it is watched. A refusal is reported.
    fn watch_root(&mut self, w: &mut dyn Watches, i: usize) -> bool {
        let path = self.roots[i].path.clone();
        let is_dir = match fs::metadata(&path) {
            Ok(meta) => meta.is_dir(),
            Err(e) => {
                if e.kind() == io::ErrorKind::NotFound {
                    self.lost.insert(i);
                }
                self.dirt.push(Dirty::Tree {
                    path,
                    reason: TreeReason::WatchFailed(e.to_string()),
                });
                return false;
            }
        };
        self.roots[i].file = !is_dir;
        if is_dir && self.roots[i].recursive {
            self.watch_tree(w, path.clone());
            return self.watched.contains(&path);
        }
        let anchor = self.roots[i].anchor().to_owned();
        if let Err(refusal) = self.add(w, &anchor) {
            self.refuse_root(i, refusal);
            return false;
        }
        if !is_dir {
            self.watch_file(w, &path);
        }
        true
    }

    /// Watches a file root's file itself, for writes through its other hard links; without it
    /// the directory's watch still sees changes made through this path.
    fn watch_file(&mut self, w: &mut dyn Watches, path: &Path) {
        if let Err(e) = self.add(w, path) {
            debug!(path = %path.display(), error = ?e, "cannot watch a file-integrity file");
        }
    }

    fn refuse_root(&mut self, i: usize, refusal: Refusal) {
        let path = self.roots[i].path.clone();
        match refusal {
            Refusal::Limit => self.refuse(path, Refusal::Limit),
            Refusal::Gone => {
                self.lost.insert(i);
            }
            Refusal::Failed(reason) => self.refuse(path, Refusal::Failed(reason)),
        }
    }

    /// Reports a directory left unwatched.
    fn refuse(&mut self, path: PathBuf, refusal: Refusal) {
        let reason = match refusal {
            Refusal::Gone => return,
            Refusal::Limit => {
                self.stats.limit_hits += 1;
                self.blind.insert(path.clone());
                TreeReason::WatchLimit
            }
            Refusal::Failed(reason) => TreeReason::WatchFailed(reason),
        };
        debug!(path = %path.display(), ?reason, "not watching a file-integrity directory");
        self.dirt.push(Dirty::Tree { path, reason });
    }

    /// Watches `top` and the directories below it that a recursive root wants, each before it
    /// is listed; the ones refused are reported, and not descended into.
    fn watch_tree(&mut self, w: &mut dyn Watches, top: PathBuf) {
        let mut stack = vec![top];
        while let Some(dir) = stack.pop() {
            if !self.grows(&dir) {
                continue;
            }
            if let Err(refusal) = self.add(w, &dir) {
                self.refuse(dir, refusal);
                continue;
            }
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    let reason = format!("cannot list the directory: {e}");
                    self.refuse(dir, Refusal::Failed(reason));
                    continue;
                }
            };
            let mut subdirs: Vec<PathBuf> = entries
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            // Popped in name order.
            subdirs.sort_by(|a, b| b.cmp(a));
            stack.extend(subdirs);
        }
    }

    fn add(&mut self, w: &mut dyn Watches, path: &Path) -> Result<(), Refusal> {
        if !self.watched.contains(path) && self.watched.len() >= self.max_watches {
            return Err(Refusal::Limit);
        }
        w.add(path)?;
        self.watched.insert(path.to_owned());
        Ok(())
    }

    /// `path` was deleted or moved away: its watches and those below it are gone (notify drops
    /// them itself; this keeps the bookkeeping in step), and roots that depended on them are lost.
    fn release(&mut self, w: &mut dyn Watches, path: &Path) {
        let gone: Vec<PathBuf> = self
            .watched
            .range(path.to_path_buf()..)
            .take_while(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in &gone {
            self.watched.remove(p);
            w.remove(p);
        }
        self.blind.retain(|p| !p.starts_with(path));
        if gone.is_empty() {
            return;
        }
        self.released = true;
        let anchored: Vec<usize> = (0..self.roots.len())
            .filter(|&i| {
                !self.lost.contains(&i) && gone.iter().any(|p| p == self.roots[i].anchor())
            })
            .collect();
        for i in anchored {
            self.lose(w, i);
        }
    }

    /// Root `i` was removed or moved away: it is unwatched until it exists again.
    fn lose(&mut self, w: &mut dyn Watches, i: usize) {
        if !self.lost.insert(i) {
            return;
        }
        let path = self.roots[i].path.clone();
        // A root moved away keeps its watches, which would name events by the old paths.
        self.release(w, &path);
        warn!(root = %path.display(), "a file-integrity root was removed or moved away");
        self.dirt.push(Dirty::Tree {
            path,
            reason: TreeReason::WatchFailed("the root was removed or moved away".to_owned()),
        });
    }
}

/// The batch being collected: deduplicated, in the order of first occurrence, with paths below
/// a [`Dirty::Tree`] folded into it.
#[derive(Debug, Default)]
struct Dirt {
    entries: Vec<Dirty>,
    paths: HashSet<PathBuf>,
    moves: HashSet<(Option<PathBuf>, Option<PathBuf>)>,
    trees: Vec<PathBuf>,
    /// Calls to `push`, deduplicated or not: whether something happened.
    pushes: u64,
}

impl Dirt {
    fn push(&mut self, dirty: Dirty) {
        self.pushes += 1;
        match &dirty {
            Dirty::Path(path) => {
                if self.trees.iter().any(|t| path.starts_with(t))
                    || !self.paths.insert(path.clone())
                {
                    return;
                }
            }
            Dirty::Tree { path, .. } => {
                // A later report on a subtree supersedes an earlier one: it moves to the end.
                self.entries.retain(|e| *e != dirty);
                self.entries
                    .retain(|e| !matches!(e, Dirty::Path(p) if p.starts_with(path)));
                self.paths.retain(|p| !p.starts_with(path));
                self.trees.push(path.clone());
            }
            Dirty::Moved { from, to } => {
                if !self.moves.insert((from.clone(), to.clone())) {
                    return;
                }
            }
        }
        self.entries.push(dirty);
    }

    fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Pushes so far and entries held, to tell afterwards what a change did.
    fn counts(&self) -> (u64, usize) {
        (self.pushes, self.entries.len())
    }

    /// Whether what was pushed since `counts` gave `(pushes, entries)` concerned something the
    /// batch already held (a repeat, or a subtree replacing entries), rather than only adding new
    /// entries.
    fn changed_again(&self, pushes: u64, entries: usize) -> bool {
        let pushed = self.pushes - pushes;
        let added = self.entries.len().saturating_sub(entries) as u64;
        pushed > added
    }

    fn take(&mut self) -> Vec<Dirty> {
        self.paths.clear();
        self.moves.clear();
        self.trees.clear();
        std::mem::take(&mut self.entries)
    }
}

#[cfg(test)]
mod tests {
    use std::fs::OpenOptions;
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt;
    use std::sync::{PoisonError, RwLock};

    use globset::{Glob, GlobSetBuilder};
    use notify::event::Flag;

    use super::*;

    /// A watcher takes the kernel's queue size when it is created: the overflow test lowers it
    /// under the write lock, every other test creates its watcher under the read lock.
    static QUEUE_SIZE: RwLock<()> = RwLock::new(());

    /// What extends a batch: a change to something it holds, not a change to a new path.
    #[test]
    fn only_a_change_to_what_the_batch_holds_delays_it() {
        let mut dirt = Dirt::default();
        let (p, e) = dirt.counts();
        dirt.push(Dirty::Path("/w/a".into()));
        assert!(!dirt.changed_again(p, e), "a new path");
        let (p, e) = dirt.counts();
        dirt.push(Dirty::Path("/w/a".into()));
        assert!(dirt.changed_again(p, e), "the same path again");
        let (p, e) = dirt.counts();
        dirt.push(Dirty::Path("/w/b".into()));
        assert!(!dirt.changed_again(p, e), "another new path");
        let (p, e) = dirt.counts();
        dirt.push(Dirty::Tree {
            path: "/w".into(),
            reason: TreeReason::NewDirectory,
        });
        assert!(dirt.changed_again(p, e), "a subtree over what it holds");
        let (p, e) = dirt.counts();
        dirt.push(Dirty::Moved {
            from: Some("/x/c".into()),
            to: Some("/x/d".into()),
        });
        assert!(!dirt.changed_again(p, e), "a new rename");
    }
    const MAX_QUEUED_EVENTS: &str = "/proc/sys/fs/inotify/max_queued_events";

    const QUIET: Duration = Duration::from_millis(50);
    const MAX_DELAY: Duration = Duration::from_secs(2);
    const DEADLINE: Duration = Duration::from_secs(30);

    fn root(path: &Path, recursive: bool, exclude: &[&str]) -> WatchRoot {
        let mut globs = GlobSetBuilder::new();
        for glob in exclude {
            globs.add(Glob::new(glob).unwrap());
        }
        WatchRoot {
            path: path.to_owned(),
            recursive,
            exclude: globs.build().unwrap(),
        }
    }

    fn start(roots: Vec<WatchRoot>, max_watches: usize) -> Watcher {
        let _shared = QUEUE_SIZE.read().unwrap_or_else(PoisonError::into_inner);
        Watcher::start(roots, max_watches)
    }

    fn tempdir() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().canonicalize().unwrap();
        (dir, path)
    }

    fn append(path: &Path, text: &str) {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        file.write_all(text.as_bytes()).unwrap();
    }

    fn tree(path: &Path, reason: TreeReason) -> Dirty {
        Dirty::Tree {
            path: path.to_owned(),
            reason,
        }
    }

    fn moved(from: Option<&Path>, to: Option<&Path>) -> Dirty {
        Dirty::Moved {
            from: from.map(Path::to_owned),
            to: to.map(Path::to_owned),
        }
    }

    fn has_path(seen: &[Dirty], path: &Path) -> bool {
        seen.contains(&Dirty::Path(path.to_owned()))
    }

    /// Whether any entry names `path` or a path below it.
    fn mentions(seen: &[Dirty], path: &Path) -> bool {
        let below = |p: &Option<PathBuf>| p.as_deref().is_some_and(|p| p.starts_with(path));
        seen.iter().any(|d| match d {
            Dirty::Path(p) | Dirty::Tree { path: p, .. } => p.starts_with(path),
            Dirty::Moved { from, to } => below(from) || below(to),
        })
    }

    /// Collects batches until `done` holds for all of them together; panics at the deadline.
    async fn until(w: &mut Watcher, done: impl Fn(&[Dirty]) -> bool) -> Vec<Dirty> {
        let mut seen = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while !done(&seen) {
            match tokio::time::timeout_at(deadline, w.next(QUIET, MAX_DELAY)).await {
                Ok(Some(batch)) => seen.extend(batch),
                Ok(None) => panic!("the watcher ended; collected {seen:#?}"),
                Err(_) => panic!("the expected changes did not come; collected {seen:#?}"),
            }
        }
        seen
    }

    #[tokio::test]
    async fn created_modified_chmodded_and_deleted_files_come_back_as_paths() {
        let (_dir, dir) = tempdir();
        let (created, modified, chmodded, deleted) = (
            dir.join("created"),
            dir.join("modified"),
            dir.join("chmodded"),
            dir.join("deleted"),
        );
        for path in [&modified, &chmodded, &deleted] {
            fs::write(path, "before").unwrap();
        }
        let mut w = start(vec![root(&dir, true, &[])], 100);
        assert_eq!(w.stats().watches, 1);

        fs::write(&created, "new").unwrap();
        append(&modified, "after");
        fs::set_permissions(&chmodded, fs::Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(&deleted).unwrap();

        until(&mut w, |seen| {
            [&created, &modified, &chmodded, &deleted]
                .iter()
                .all(|p| has_path(seen, p))
        })
        .await;
    }

    #[tokio::test]
    async fn a_rename_within_the_root_comes_back_paired() {
        let (_dir, dir) = tempdir();
        let (a, b) = (dir.join("a"), dir.join("b"));
        fs::write(&a, "x").unwrap();
        let mut w = start(vec![root(&dir, true, &[])], 100);

        fs::rename(&a, &b).unwrap();

        let seen = until(&mut w, |seen| !seen.is_empty()).await;
        assert_eq!(seen, [moved(Some(&a), Some(&b))]);
    }

    #[tokio::test]
    async fn a_file_moved_in_from_outside_comes_back_with_its_new_name() {
        let (_dir, dir) = tempdir();
        let (_outside, outside) = tempdir();
        let (from, to) = (outside.join("x"), dir.join("x"));
        fs::write(&from, "x").unwrap();
        let mut w = start(vec![root(&dir, true, &[])], 100);

        fs::rename(&from, &to).unwrap();

        let seen = until(&mut w, |seen| !seen.is_empty()).await;
        assert!(
            seen == [moved(None, Some(&to))] || seen == [Dirty::Path(to.clone())],
            "{seen:#?}"
        );
    }

    #[tokio::test]
    async fn a_new_directory_is_watched_and_comes_back_as_a_tree() {
        let (_dir, dir) = tempdir();
        let mut w = start(vec![root(&dir, true, &[])], 100);
        let new = dir.join("new");
        let deep = dir.join("deep");
        let deepest = deep.join("er").join("est");

        fs::create_dir(&new).unwrap();
        // Written before the watcher can have watched the directory: the tree covers it.
        fs::write(new.join("early"), "x").unwrap();
        fs::create_dir_all(&deepest).unwrap();
        fs::write(deepest.join("early"), "x").unwrap();
        until(&mut w, |seen| {
            seen.contains(&tree(&new, TreeReason::NewDirectory))
                && seen.contains(&tree(&deep, TreeReason::NewDirectory))
        })
        .await;

        let late = [new.join("late"), deepest.join("late")];
        for path in &late {
            fs::write(path, "x").unwrap();
        }
        until(&mut w, |seen| late.iter().all(|p| has_path(seen, p))).await;
        assert_eq!(w.stats().watches, 5);
    }

    #[tokio::test]
    async fn a_renamed_directory_stays_watched_under_its_new_name() {
        let (_dir, dir) = tempdir();
        let (old, new) = (dir.join("old"), dir.join("new"));
        fs::create_dir_all(old.join("sub")).unwrap();
        let mut w = start(vec![root(&dir, true, &[])], 100);
        assert_eq!(w.stats().watches, 3);

        fs::rename(&old, &new).unwrap();
        let seen = until(&mut w, |seen| {
            seen.contains(&moved(Some(&old), Some(&new)))
                && seen.contains(&tree(&new, TreeReason::NewDirectory))
        })
        .await;
        assert_eq!(seen.len(), 2, "{seen:#?}");

        let written = [new.join("x"), new.join("sub").join("y")];
        for path in &written {
            fs::write(path, "x").unwrap();
        }
        let seen = until(&mut w, |seen| written.iter().all(|p| has_path(seen, p))).await;
        assert!(!mentions(&seen, &old), "{seen:#?}");
        assert_eq!(w.stats().watches, 3);
    }

    #[tokio::test]
    async fn excluded_paths_produce_nothing_and_are_not_watched() {
        let (_dir, dir) = tempdir();
        let cache = dir.join("cache");
        fs::create_dir(&cache).unwrap();
        let mut w = start(vec![root(&dir, true, &["**/*.tmp", "**/cache"])], 100);
        assert_eq!(w.stats().watches, 1);

        fs::write(dir.join("a.tmp"), "x").unwrap();
        fs::write(cache.join("y"), "x").unwrap();
        fs::remove_dir_all(&cache).unwrap();
        // After the excluded changes: inotify reports in order, so theirs came first.
        let marker = dir.join("marker");
        fs::write(&marker, "x").unwrap();

        let seen = until(&mut w, |seen| has_path(seen, &marker)).await;
        assert_eq!(seen, [Dirty::Path(marker)]);
        assert_eq!(w.stats().watches, 1);
    }

    #[tokio::test]
    async fn a_non_recursive_root_ignores_its_subdirectories() {
        let (_dir, dir) = tempdir();
        let sub = dir.join("sub");
        fs::create_dir(&sub).unwrap();
        let mut w = start(vec![root(&dir, false, &[])], 100);
        assert_eq!(w.stats().watches, 1);

        fs::write(sub.join("f"), "x").unwrap();
        let new = dir.join("new");
        fs::create_dir(&new).unwrap();
        fs::write(new.join("f"), "x").unwrap();
        let marker = dir.join("marker");
        fs::write(&marker, "x").unwrap();

        let seen = until(&mut w, |seen| has_path(seen, &marker)).await;
        assert_eq!(seen, [Dirty::Path(new), Dirty::Path(marker)]);
        assert_eq!(w.stats().watches, 1);
    }

    #[tokio::test]
    async fn a_file_root_sees_its_file_replaced_and_written_through_other_links() {
        let (_dir, dir) = tempdir();
        let (_other, other) = tempdir();
        let file = dir.join("passwd");
        fs::write(&file, "root").unwrap();
        let mut w = start(vec![root(&file, false, &[])], 100);
        assert_eq!(w.stats().watches, 2);

        fs::write(dir.join("sibling"), "x").unwrap();
        append(&file, "1");
        let seen = until(&mut w, |seen| has_path(seen, &file)).await;
        assert_eq!(seen, [Dirty::Path(file.clone())]);

        // An editor's save: a new file renamed over the old one.
        let temp = dir.join(".passwd.swp");
        fs::write(&temp, "root2").unwrap();
        fs::rename(&temp, &file).unwrap();
        let seen = until(&mut w, |seen| seen.contains(&moved(None, Some(&file)))).await;
        // The replaced file's own watch may report it too (its link count dropped).
        assert!(
            seen.iter()
                .all(|d| *d == moved(None, Some(&file)) || *d == Dirty::Path(file.clone())),
            "{seen:#?}"
        );

        // Only the file's own watch sees writes through another hard link; it was re-added.
        let link = other.join("link");
        fs::hard_link(&file, &link).unwrap();
        until(&mut w, |seen| has_path(seen, &file)).await;
        append(&link, "2");
        until(&mut w, |seen| has_path(seen, &file)).await;
        assert_eq!(w.stats().watches, 2);
    }

    #[tokio::test]
    async fn a_burst_of_writes_coalesces_to_one_entry_a_file() {
        let (_dir, dir) = tempdir();
        let files: Vec<PathBuf> = (0..10).map(|i| dir.join(format!("f{i}"))).collect();
        for path in &files {
            fs::write(path, "").unwrap();
        }
        let mut w = start(vec![root(&dir, true, &[])], 100);

        for round in 0..100 {
            for path in &files {
                append(path, &format!("{round}\n"));
            }
        }

        let mut seen = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        while !files.iter().all(|p| has_path(&seen, p)) {
            let batch = tokio::time::timeout_at(
                deadline,
                w.next(Duration::from_secs(1), Duration::from_secs(20)),
            )
            .await
            .unwrap()
            .unwrap();
            seen.extend(batch);
        }
        assert!(seen.len() <= 10, "{seen:#?}");
    }

    #[tokio::test]
    async fn directories_beyond_the_watch_limit_come_back_and_are_watched_once_room_is_made() {
        let (_dir, dir) = tempdir();
        let subdirs: Vec<PathBuf> = (0..4).map(|i| dir.join(format!("d{i}"))).collect();
        for path in &subdirs {
            fs::create_dir(path).unwrap();
        }
        let mut w = start(vec![root(&dir, true, &[])], 2);
        assert_eq!(
            w.stats(),
            WatchStats {
                watches: 2,
                overflows: 0,
                limit_hits: 3
            }
        );
        let seen = until(&mut w, |seen| !seen.is_empty()).await;
        // The root and d0 are watched (directories are walked in name order).
        let limited: Vec<Dirty> = subdirs[1..]
            .iter()
            .map(|p| tree(p, TreeReason::WatchLimit))
            .collect();
        assert_eq!(seen, limited);

        // Removing d0 releases its watch: d1 is watched in its place.
        fs::remove_dir(&subdirs[0]).unwrap();
        until(&mut w, |seen| {
            seen.contains(&tree(&subdirs[1], TreeReason::NewDirectory))
        })
        .await;
        let written = subdirs[1].join("x");
        fs::write(&written, "x").unwrap();
        until(&mut w, |seen| has_path(seen, &written)).await;
        assert_eq!(w.stats().watches, 2);
    }

    #[tokio::test]
    async fn a_removed_root_is_reported_and_watched_again_once_it_is_back() {
        let (_dir, parent) = tempdir();
        let dir = parent.join("root");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("f"), "x").unwrap();
        let mut w = start(vec![root(&dir, true, &[])], 100);
        assert_eq!(w.stats().watches, 1);

        fs::remove_dir_all(&dir).unwrap();
        let failed = |seen: &[Dirty]| {
            seen.iter().any(|d| {
                matches!(d, Dirty::Tree { path, reason: TreeReason::WatchFailed(_) } if *path == dir)
            })
        };
        until(&mut w, failed).await;
        assert_eq!(w.stats().watches, 0);

        fs::create_dir(&dir).unwrap();
        until(&mut w, |seen| {
            seen.contains(&tree(&dir, TreeReason::NewDirectory))
        })
        .await;
        let written = dir.join("g");
        fs::write(&written, "x").unwrap();
        until(&mut w, |seen| has_path(seen, &written)).await;
        assert_eq!(w.stats().watches, 1);
    }

    #[tokio::test]
    async fn without_inotify_every_root_comes_back_unwatched_and_the_watcher_ends() {
        let (_dir, dir) = tempdir();
        let file = dir.join("f");
        fs::write(&file, "x").unwrap();
        let missing = dir.join("missing");
        let (tx, events) = mpsc::channel(1);
        drop(tx);
        let backend = Backend {
            inner: Err("cannot use inotify: too many instances".to_owned()),
        };
        let roots = vec![
            root(&dir, true, &[]),
            root(&file, false, &[]),
            root(&missing, true, &[]),
        ];
        let mut w = Watcher::with_backend(backend, events, Arc::default(), roots, 100);

        let failed = |path: &Path| {
            tree(
                path,
                TreeReason::WatchFailed("cannot use inotify: too many instances".to_owned()),
            )
        };
        let batch = w.next(QUIET, MAX_DELAY).await.unwrap();
        assert_eq!(batch.len(), 3, "{batch:#?}");
        assert_eq!(batch[..2], [failed(&dir), failed(&file)]);
        assert!(
            matches!(&batch[2], Dirty::Tree { path, reason: TreeReason::WatchFailed(_) } if *path == missing)
        );
        assert_eq!(w.next(QUIET, MAX_DELAY).await, None);
        assert_eq!(w.stats(), WatchStats::default());
    }

    #[tokio::test]
    async fn directories_moved_out_or_deleted_release_their_watches() {
        let (_dir, dir) = tempdir();
        let (_outside, outside) = tempdir();
        let (leaving, deleted) = (dir.join("leaving"), dir.join("deleted"));
        fs::create_dir_all(leaving.join("sub")).unwrap();
        fs::create_dir_all(deleted.join("sub")).unwrap();
        let mut w = start(vec![root(&dir, true, &[])], 100);
        assert_eq!(w.stats().watches, 5);

        let gone = outside.join("leaving");
        fs::rename(&leaving, &gone).unwrap();
        fs::remove_dir_all(&deleted).unwrap();
        until(&mut w, |seen| {
            seen.contains(&moved(Some(&leaving), None)) && has_path(seen, &deleted)
        })
        .await;
        assert_eq!(w.stats().watches, 1);

        // No longer watched: writes there produce nothing, and the marker comes after them.
        fs::write(gone.join("x"), "x").unwrap();
        fs::write(gone.join("sub").join("y"), "x").unwrap();
        let marker = dir.join("marker");
        fs::write(&marker, "x").unwrap();
        let seen = until(&mut w, |seen| has_path(seen, &marker)).await;
        assert_eq!(seen, [Dirty::Path(marker)]);
    }

    /// Lowers the kernel's inotify queue size while it lives.
    struct LoweredQueue {
        old: String,
    }

    impl LoweredQueue {
        fn to(events: u32) -> io::Result<LoweredQueue> {
            let old = fs::read_to_string(MAX_QUEUED_EVENTS)?;
            fs::write(MAX_QUEUED_EVENTS, events.to_string())?;
            Ok(LoweredQueue { old })
        }
    }

    impl Drop for LoweredQueue {
        fn drop(&mut self) {
            if let Err(e) = fs::write(MAX_QUEUED_EVENTS, self.old.trim()) {
                let message = format!("cannot restore {MAX_QUEUED_EVENTS} to {}: {e}", self.old);
                // A second panic while unwinding would abort the tests.
                if std::thread::panicking() {
                    eprintln!("{message}");
                } else {
                    panic!("{message}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_queue_overflow_marks_every_root_and_watching_goes_on() {
        let (_dir, dir) = tempdir();
        let (_other, other) = tempdir();
        let mut w = {
            let _exclusive = QUEUE_SIZE.write().unwrap_or_else(PoisonError::into_inner);
            // Root may lower it (as the tests run). A watcher takes the size when it starts, so
            // it is restored as soon as this one has: other processes' watchers started at the
            // same instant are the only others to get the small queue.
            let _lowered = LoweredQueue::to(16).expect("lowering the inotify queue size");
            Watcher::start(vec![root(&dir, true, &[]), root(&other, true, &[])], 100)
        };

        let mut seen = Vec::new();
        let deadline = Instant::now() + DEADLINE;
        let mut round = 0;
        while !seen.contains(&tree(&dir, TreeReason::Overflow)) {
            for i in 0..500 {
                fs::write(dir.join(format!("f{round}-{i}")), "x").unwrap();
            }
            round += 1;
            let batch = tokio::time::timeout_at(deadline, w.next(QUIET, MAX_DELAY))
                .await
                .unwrap()
                .unwrap();
            seen.extend(batch);
        }
        assert!(
            seen.contains(&tree(&other, TreeReason::Overflow)),
            "{seen:#?}"
        );
        assert!(w.stats().overflows > 0);

        let marker = dir.join("sub").join("marker");
        fs::create_dir(dir.join("sub")).unwrap();
        until(&mut w, |seen| {
            seen.contains(&tree(&dir.join("sub"), TreeReason::NewDirectory))
                || seen.contains(&tree(&dir, TreeReason::Overflow))
        })
        .await;
        fs::write(&marker, "x").unwrap();
        until(&mut w, |seen| has_path(seen, &marker)).await;
    }

    /// Records the watches asked for; refuses those beyond `kernel_limit` as the kernel does.
    #[derive(Debug, Default)]
    struct Recorded {
        added: Vec<PathBuf>,
        kernel_limit: Option<usize>,
    }

    impl Watches for Recorded {
        fn add(&mut self, path: &Path) -> Result<(), Refusal> {
            if self
                .kernel_limit
                .is_some_and(|limit| self.added.len() >= limit)
            {
                return Err(Refusal::Limit);
            }
            self.added.push(path.to_owned());
            Ok(())
        }

        fn remove(&mut self, _path: &Path) {}
    }

    #[test]
    fn notifys_rescan_event_is_an_overflow_of_every_root() {
        let (_dir, dir) = tempdir();
        let (_other, other) = tempdir();
        fs::create_dir(dir.join("sub")).unwrap();
        let mut watches = Recorded::default();
        let mut state = State::new(vec![root(&dir, true, &[]), root(&other, false, &[])], 100);
        for i in 0..state.roots.len() {
            assert!(state.watch_root(&mut watches, i));
        }
        assert_eq!(state.watched.len(), 3);
        state.dirt.push(Dirty::Path(dir.join("sub").join("x")));
        // Created while events were lost.
        fs::create_dir(dir.join("sub").join("new")).unwrap();

        // What notify's inotify backend sends for IN_Q_OVERFLOW.
        let event = notify::Event::new(EventKind::Other).set_flag(Flag::Rescan);
        assert!(state.handle(&mut watches, event.clone()));
        assert!(state.handle(&mut watches, event));
        assert_eq!(state.stats.overflows, 2);
        state.finish_batch(&mut watches);
        assert_eq!(
            state.dirt.take(),
            [
                tree(&dir, TreeReason::Overflow),
                tree(&other, TreeReason::Overflow)
            ]
        );
        assert!(state.watched.contains(&dir.join("sub").join("new")));
        assert_eq!(state.watched.len(), 4);
        // Walked again once for the two overflows: the three watches again, and the new one.
        assert_eq!(watches.added.len(), 3 + 4);
    }

    #[test]
    fn the_kernels_watch_limit_is_reported_like_max_watches() {
        let (_dir, dir) = tempdir();
        for name in ["a", "b", "c"] {
            fs::create_dir(dir.join(name)).unwrap();
        }
        let mut watches = Recorded {
            kernel_limit: Some(2),
            ..Recorded::default()
        };
        let mut state = State::new(vec![root(&dir, true, &[])], 100);
        assert!(state.watch_root(&mut watches, 0));
        assert_eq!(watches.added, [dir.clone(), dir.join("a")]);
        assert_eq!(
            state.dirt.take(),
            [
                tree(&dir.join("b"), TreeReason::WatchLimit),
                tree(&dir.join("c"), TreeReason::WatchLimit)
            ]
        );
        assert_eq!(state.stats.limit_hits, 2);
        assert_eq!(state.watched.len(), 2);
    }

    #[test]
    fn a_batch_is_deduplicated_in_first_occurrence_order_and_folded_into_trees() {
        let dir = Path::new("/etc");
        let (swap, file, new) = (dir.join(".f.swp"), dir.join("f"), dir.join("new"));
        let mut dirt = Dirt::default();
        for _ in 0..3 {
            dirt.push(Dirty::Path(swap.clone()));
            dirt.push(Dirty::Path(new.join("early")));
        }
        dirt.push(moved(Some(&swap), Some(&file)));
        dirt.push(moved(Some(&swap), Some(&file)));
        dirt.push(Dirty::Path(file.clone()));
        dirt.push(tree(&new, TreeReason::NewDirectory));
        dirt.push(Dirty::Path(new.join("late")));
        dirt.push(Dirty::Path(file.clone()));
        assert_eq!(
            dirt.take(),
            [
                Dirty::Path(swap.clone()),
                moved(Some(&swap), Some(&file)),
                Dirty::Path(file.clone()),
                tree(&new, TreeReason::NewDirectory),
            ]
        );
        assert!(dirt.is_empty());
        dirt.push(Dirty::Path(new.join("late")));
        assert_eq!(dirt.take(), [Dirty::Path(new.join("late"))]);
    }
}
