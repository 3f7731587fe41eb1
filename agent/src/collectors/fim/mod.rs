//! File integrity: the watched paths compared with a baseline of their state, every difference
//! reported once as a [`FimEvent`](outpost_common::event::FimEvent) in a numbered, chained trail.
//!
//! - [`key`]: how a path is keyed in the baseline, so that key order is walk order.
//! - [`state`]: what a path is (metadata, symlink target, extended attributes, content hash).
//! - [`compare`]: two states to a change and the attributes that changed.
//! - [`scan`]: the engine — merge-join scans, move pairing, the trail, chunked commits.
//! - [`realtime`]: changes reported by a watcher, checked against the baseline.
//! - [`schedule`]: when the scheduled scans run.
//!
//! The baseline, the trail and the scans' progress are spool state ([`scan::BASELINE`],
//! [`scan::META`]), committed in the same transaction as the events they explain: after a crash
//! the source resumes from what was committed, so a change is reported exactly once.
//!
//! At its first start the source records the initial baseline (no events; one summary log
//! record), resuming it if a crash interrupted it. At every later start it scans everything once
//! ([`FimDetection::Rescan`]) to find what changed while it was stopped, then every
//! `scan_interval` ([`FimDetection::Scheduled`]). Scans run on a thread of their own at a lower
//! CPU priority (nice 10, which also lowers the I/O priority of a thread with none set), within a
//! hashing and a file budget.

pub mod compare;
mod hashers;
pub mod key;
mod prefetch;
pub mod realtime;
pub mod scan;
pub mod schedule;
pub mod state;
pub mod watch;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytesize::ByteSize;
use globset::{Glob, GlobSet, GlobSetBuilder};
use outpost_common::event::FimDetection;
use outpost_common::time::now_ns;
use serde::Deserialize;
use tracing::{info, warn};

use self::compare::{Attr, Attrs};
use self::realtime::Feed;
use self::scan::{Engine, Root, Stop, Store, Summary, Target};
use self::state::{Budget, Observe};
use super::{Context, Source, SourceError};
use crate::internal_events::{FimScanFinished, FimScanKind};
use crate::spool::{StateRow, Submission, SubmitOutcome};

/// How a path is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Watched for changes as they happen (inotify), and scanned on schedule too.
    Realtime,
    /// Scanned on schedule only.
    Scheduled,
}

/// The algorithm of content hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    Sha256,
    Blake3,
}

impl HashAlgorithm {
    /// The prefix of its hashes: `sha256:`.
    pub fn prefix(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256:",
            HashAlgorithm::Blake3 => "blake3:",
        }
    }
}

/// One `[[fim.paths]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PathConfig {
    /// The absolute path to watch: a directory (with what lies below it) or a single file. A
    /// symlink is watched as the link itself.
    pub path: PathBuf,
    /// Watch everything below a directory; `false`: the directory and its own entries only.
    pub recursive: bool,
    /// Globs of paths not to watch, matched against the full path (`/etc/*.swp`, `**/cache`);
    /// an excluded directory is not entered.
    pub exclude: Vec<String>,
    /// "realtime" (inotify, and the scheduled scans) or "scheduled" (scans only).
    pub mode: Mode,
    /// The attributes compared: `kind`, `size`, `mode`, `uid`, `gid`, `mtime`, `ctime`,
    /// `inode`, `device`, `nlink`, `link_target`, `xattrs`, `hash`. A change of kind is always
    /// reported. A directory's size, nlink, mtime and ctime follow its entries (which are
    /// reported themselves) and are never compared.
    pub compare: Vec<Attr>,
    /// Hash regular files' content.
    pub hash: bool,
    /// "sha256" or "blake3".
    pub hash_algorithm: HashAlgorithm,
    /// Larger files are not hashed: they are compared by their metadata and marked
    /// `too_large_to_hash`.
    pub max_hash_size: ByteSize,
    /// Hash at every scan; otherwise a file whose size, mtime, ctime and inode did not change
    /// keeps its hash (a write changes ctime, even when `touch -r` restores mtime).
    pub always_hash: bool,
}

impl Default for PathConfig {
    fn default() -> Self {
        PathConfig {
            path: PathBuf::new(),
            recursive: true,
            exclude: Vec::new(),
            mode: Mode::Scheduled,
            compare: Attr::ALL.to_vec(),
            hash: true,
            hash_algorithm: HashAlgorithm::Sha256,
            max_hash_size: ByteSize::gib(1),
            always_hash: false,
        }
    }
}

/// The `[fim]` section.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Whether file integrity is monitored.
    pub enabled: bool,
    /// The watched paths. When none is given: `/etc` in realtime; `/usr/bin`, `/usr/sbin`,
    /// `/bin`, `/sbin`, `/usr/lib/systemd` and `/boot` scheduled (a default path that does not
    /// exist, or is a symlink to another default path, is skipped).
    pub paths: Vec<PathConfig>,
    /// Time between full scans.
    #[serde(with = "humantime_serde")]
    pub scan_interval: Duration,
    /// Scans start at a fixed offset within each interval, between zero and this, derived from
    /// the host's identity, so that a fleet does not scan all at once (at most `scan_interval`).
    #[serde(with = "humantime_serde")]
    pub scan_jitter: Duration,
    /// Realtime changes are checked once none came for this long to a path already collected
    /// (changes to other paths join the batch without delaying it).
    #[serde(with = "humantime_serde")]
    pub coalesce: Duration,
    /// … but no later than this after the first.
    #[serde(with = "humantime_serde")]
    pub coalesce_max: Duration,
    /// Content hashing reads at most this many MiB a second (0: unlimited).
    pub hash_mib_per_sec: u32,
    /// Scans look at most at this many paths a second (0: unlimited).
    pub files_per_sec: u32,
    /// Threads that hash files beside a scan, so that several files are read from the disk at
    /// once and hashed on several cores (0: the scan hashes on its own thread). They share the
    /// hashing budget.
    pub hash_threads: usize,
    /// Filesystem types not entered below a watched path (a watched path that is itself such a
    /// mount point is scanned); a trailing `*` matches any suffix (`fuse.*`).
    pub skip_fs_types: Vec<String>,
    /// Inotify watches the realtime paths may use at most; beyond, what is left is scanned on
    /// schedule only, and the agent's status says so.
    pub max_watches: usize,
    /// The agent's own state and log directories, never watched (its own writes would be
    /// reported): set from `data_dir` and `log.dir`, not read from the file.
    #[serde(skip)]
    pub own_paths: Vec<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: true,
            paths: Vec::new(),
            scan_interval: Duration::from_secs(12 * 3600),
            scan_jitter: Duration::from_secs(3600),
            coalesce: Duration::from_millis(200),
            coalesce_max: Duration::from_millis(500),
            hash_mib_per_sec: 50,
            files_per_sec: 5000,
            hash_threads: 4,
            skip_fs_types: [
                "proc",
                "sysfs",
                "devtmpfs",
                "devpts",
                "tmpfs",
                "cgroup",
                "cgroup2",
                "securityfs",
                "debugfs",
                "tracefs",
                "pstore",
                "bpf",
                "mqueue",
                "hugetlbfs",
                "configfs",
                "fusectl",
                "autofs",
                "nfs",
                "nfs4",
                "cifs",
                "smb3",
                "fuse.*",
            ]
            .map(str::to_owned)
            .to_vec(),
            max_watches: 65_536,
            own_paths: Vec::new(),
        }
    }
}

/// The paths watched when `[[fim.paths]]` gives none, and whether in realtime.
pub const DEFAULT_PATHS: [(&str, Mode); 7] = [
    ("/etc", Mode::Realtime),
    ("/usr/bin", Mode::Scheduled),
    ("/usr/sbin", Mode::Scheduled),
    ("/bin", Mode::Scheduled),
    ("/sbin", Mode::Scheduled),
    ("/usr/lib/systemd", Mode::Scheduled),
    ("/boot", Mode::Scheduled),
];

/// Events and rows per submission at most.
const CHUNK: usize = 1000;
/// `hash_threads` at most.
const MAX_HASH_THREADS: usize = 16;

/// The file-integrity source.
#[derive(Debug)]
pub struct Fim {
    config: Config,
    /// Validated roots; `defaults` when they are the built-in ones.
    roots: Vec<Root>,
    defaults: bool,
}

impl Source for Fim {
    type Config = Config;
    const NAME: &'static str = "fim";

    fn new(config: Config) -> Result<Self, SourceError> {
        let defaults = config.paths.is_empty();
        let paths: Vec<PathConfig> = if defaults {
            DEFAULT_PATHS
                .iter()
                .map(|(p, mode)| PathConfig {
                    path: PathBuf::from(p),
                    mode: *mode,
                    ..PathConfig::default()
                })
                .collect()
        } else {
            config.paths.clone()
        };
        let mut roots: Vec<Root> = Vec::new();
        for (i, p) in paths.iter().enumerate() {
            let option = |name: &str| format!("fim.paths[{i}].{name}");
            let Some(key) = key::of(&p.path) else {
                return Err(SourceError::new(
                    option("path"),
                    format!(
                        "`{}` is not an absolute path without `..`",
                        p.path.display()
                    ),
                ));
            };
            if let Some((j, other)) = roots
                .iter()
                .enumerate()
                .find(|(_, r)| key::within(&key, &r.key) || key::within(&r.key, &key))
            {
                return Err(SourceError::new(
                    option("path"),
                    format!(
                        "`{}` overlaps fim.paths[{j}].path `{}`; watch each path once",
                        p.path.display(),
                        other.path.display()
                    ),
                ));
            }
            let exclude = globs(&p.exclude).map_err(|e| SourceError::new(option("exclude"), e))?;
            if p.compare.is_empty() {
                return Err(SourceError::new(
                    option("compare"),
                    "must name at least one attribute",
                ));
            }
            roots.push(Root {
                path: key::path(&key),
                key,
                recursive: p.recursive,
                exclude,
                realtime: p.mode == Mode::Realtime,
                compare: Attrs::of(&p.compare),
                observe: Observe {
                    hash: p.hash.then_some(p.hash_algorithm),
                    max_hash_size: p.max_hash_size.as_u64(),
                    always_hash: p.always_hash,
                    xattrs: p.compare.contains(&Attr::Xattrs),
                },
            });
        }
        let option = |name: &str| format!("fim.{name}");
        if config.scan_interval < Duration::from_secs(1) {
            return Err(SourceError::new(
                option("scan_interval"),
                "must be at least 1s",
            ));
        }
        if config.scan_jitter > config.scan_interval {
            return Err(SourceError::new(
                option("scan_jitter"),
                "must not exceed fim.scan_interval",
            ));
        }
        if config.coalesce.is_zero() || config.coalesce > config.coalesce_max {
            return Err(SourceError::new(
                option("coalesce"),
                "must be above zero and at most fim.coalesce_max",
            ));
        }
        if config.coalesce_max > Duration::from_secs(60) {
            return Err(SourceError::new(
                option("coalesce_max"),
                "must be at most 60s",
            ));
        }
        if config.hash_mib_per_sec > 4095 {
            return Err(SourceError::new(
                option("hash_mib_per_sec"),
                "must be at most 4095 (0: unlimited)",
            ));
        }
        if config.hash_threads > MAX_HASH_THREADS {
            return Err(SourceError::new(
                option("hash_threads"),
                format!("must be at most {MAX_HASH_THREADS}"),
            ));
        }
        if config.skip_fs_types.iter().any(|t| t.trim().is_empty()) {
            return Err(SourceError::new(
                option("skip_fs_types"),
                "a type must not be empty",
            ));
        }
        Ok(Fim {
            config,
            roots,
            defaults,
        })
    }

    async fn run(self, ctx: Context) {
        let max_watches = self.config.max_watches;
        self.run_with(ctx, move |roots| {
            let roots = roots
                .into_iter()
                .map(|root| watch::WatchRoot {
                    path: root.path,
                    recursive: root.recursive,
                    exclude: root.exclude,
                })
                .collect();
            Some(watch::Watcher::start(roots, max_watches))
        })
        .await;
    }
}

impl Fim {
    /// Runs the source. `start_feed` is given the realtime roots (if there are any) before the
    /// first scan, on a blocking thread, and returns what reports their changes (the watcher),
    /// or `None` if there is nothing to watch them with.
    pub async fn run_with<F: Feed>(
        self,
        mut ctx: Context,
        start_feed: impl FnOnce(Vec<realtime::RealtimeRoot>) -> Option<F> + Send + 'static,
    ) {
        let stop = Arc::new(AtomicBool::new(false));
        let mut stopped = ctx.clone();
        let flag = stop.clone();
        tokio::spawn(async move {
            stopped.stopped().await;
            flag.store(true, Ordering::Relaxed);
        });
        let engine = Arc::new(self.engine(stop));
        let realtime_roots: Vec<realtime::RealtimeRoot> = engine
            .roots()
            .iter()
            .filter(|r| r.realtime)
            .map(|r| realtime::RealtimeRoot {
                path: r.path.clone(),
                recursive: r.recursive,
                exclude: r.exclude.clone(),
            })
            .collect();
        let realtime = !realtime_roots.is_empty();
        // Watching starts before the first scan, so nothing changed during it goes unseen.
        let feed = if realtime {
            tokio::task::spawn_blocking(move || start_feed(realtime_roots))
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        if realtime && feed.is_none() {
            warn!("fim: the realtime paths cannot be watched; they are checked by the scans");
        }
        let mut feed = feed;
        let mut blind = realtime::Blind::default();
        let phase = schedule::phase(&schedule::host_identity(), self.config.scan_jitter);
        // The first scan: the initial baseline, or a rescan of what changed while stopped.
        let mut kind = FimDetection::Rescan;
        loop {
            let outcome = run_job(&engine, &ctx, Target::All, kind).await;
            match outcome {
                Ok(summary) => report_scan(&ctx, &summary, kind),
                Err(Stop::Shutdown) => return,
                Err(Stop::Failed(reason)) => {
                    warn!(%reason, "fim: a scan failed; it is tried again later");
                    ctx.reporter().failed(format!("scan failed: {reason}"));
                    if ctx.sleep(Duration::from_secs(60)).await {
                        return;
                    }
                    continue;
                }
            }
            kind = FimDetection::Scheduled;
            let wait = schedule::until_next(now_ns(), self.config.scan_interval, phase);
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                let changes = match feed.as_mut() {
                    Some(f) => {
                        tokio::select! {
                            c = f.next(self.config.coalesce, self.config.coalesce_max) => c,
                            () = tokio::time::sleep_until(deadline) => break,
                            () = ctx.stopped() => return,
                        }
                    }
                    None => {
                        tokio::select! {
                            () = tokio::time::sleep_until(deadline) => break,
                            () = ctx.stopped() => return,
                        }
                    }
                };
                let Some(changes) = changes else {
                    // The watcher ended: the scans carry on alone.
                    feed = None;
                    ctx.reporter().part("realtime").failed(
                        "the watcher ended: realtime paths are checked by the scheduled scans only"
                            .to_owned(),
                    );
                    continue;
                };
                match realtime::handle(&engine, &ctx, &mut blind, changes).await {
                    Ok(()) => {}
                    Err(Stop::Shutdown) => return,
                    Err(Stop::Failed(reason)) => {
                        warn!(%reason, "fim: realtime changes could not be recorded; the next scan finds them");
                        ctx.reporter()
                            .failed(format!("realtime check failed: {reason}"));
                    }
                }
            }
        }
    }

    /// The engine over the roots as they are on this host now: a default path that does not
    /// exist, or is a symlink to another default path, is left out.
    fn engine(&self, stop: Arc<AtomicBool>) -> Engine {
        let mut roots = self.roots.clone();
        if self.defaults {
            let canon: Vec<Option<PathBuf>> = roots
                .iter()
                .map(|r| std::fs::canonicalize(&r.path).ok())
                .collect();
            let keep: Vec<bool> = roots
                .iter()
                .enumerate()
                .map(|(i, r)| match std::fs::symlink_metadata(&r.path) {
                    Err(_) => false,
                    Ok(m) if m.file_type().is_symlink() => {
                        let target = &canon[i];
                        !roots
                            .iter()
                            .enumerate()
                            .any(|(j, o)| j != i && target.as_deref().is_some_and(|t| t == o.path))
                    }
                    Ok(_) => true,
                })
                .collect();
            let mut k = keep.into_iter();
            roots.retain(|_| k.next().unwrap_or(false));
        }
        let skip = skip_mounts(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
            &self.config.skip_fs_types,
            &roots,
        );
        let own: Vec<PathBuf> = self
            .config
            .own_paths
            .iter()
            .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
            .chain(self.config.own_paths.iter().cloned())
            .collect();
        Engine::new(
            roots,
            skip,
            Budget::stoppable(
                self.config.hash_mib_per_sec.saturating_mul(1024 * 1024),
                stop.clone(),
            ),
            Budget::stoppable(self.config.files_per_sec, stop),
            CHUNK,
        )
        .excluding(&own)
        .hashing_on(self.config.hash_threads)
    }
}

fn globs(patterns: &[String]) -> Result<GlobSet, String> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        b.add(Glob::new(p).map_err(|e| format!("`{p}`: {e}"))?);
    }
    b.build().map_err(|e| e.to_string())
}

/// The mount points in `mountinfo` (the format of `/proc/self/mountinfo`) of a type in
/// `types`, but the roots themselves.
pub fn skip_mounts(mountinfo: &str, types: &[String], roots: &[Root]) -> HashSet<PathBuf> {
    let matches = |t: &str| {
        types.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => t.starts_with(prefix),
            None => t == p,
        })
    };
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split(' ').nth(4)?;
            let fs_type = right.split(' ').next()?;
            matches(fs_type).then(|| PathBuf::from(unescape(mount_point)))
        })
        .filter(|p| !roots.iter().any(|r| r.path == *p))
        .collect()
}

/// A mountinfo field with its octal escapes (`\040` for a space) decoded.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The store of a job: the spool, from the job's own thread.
#[derive(Debug)]
struct SpoolStore {
    rt: tokio::runtime::Handle,
    ctx: Context,
}

impl Store for SpoolStore {
    fn page(
        &mut self,
        source: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StateRow>, Stop> {
        self.rt
            .block_on(
                self.ctx
                    .spool()
                    .state_page(source, after.map(<[u8]>::to_vec), limit),
            )
            .map_err(|e| Stop::Failed(e.to_string()))
    }

    fn row(&mut self, source: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Stop> {
        self.rt
            .block_on(self.ctx.spool().state(source, key))
            .map_err(|e| Stop::Failed(e.to_string()))
    }

    fn commit(&mut self, sub: Submission) -> Result<(), Stop> {
        match self.rt.block_on(self.ctx.submit(sub)) {
            None => Err(Stop::Shutdown),
            Some(Ok(SubmitOutcome::Committed { .. })) => Ok(()),
            Some(Ok(other)) => Err(Stop::Failed(format!("the spool refused: {other:?}"))),
            Some(Err(e)) => Err(Stop::Failed(e.to_string())),
        }
    }

    fn stopping(&self) -> bool {
        self.ctx.is_shutting_down()
    }
}

/// Runs `job` on a thread of its own at a lower priority, with the spool as its store.
async fn job<T: Send + 'static>(
    engine: &Arc<Engine>,
    ctx: &Context,
    job: impl FnOnce(&Engine, &mut SpoolStore) -> Result<T, Stop> + Send + 'static,
) -> Result<T, Stop> {
    let engine = engine.clone();
    let mut store = SpoolStore {
        rt: tokio::runtime::Handle::current(),
        ctx: ctx.clone(),
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("fim-scan".to_owned())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(job(&engine, &mut store));
        });
    if let Err(e) = spawned {
        return Err(Stop::Failed(format!("cannot start a scan thread: {e}")));
    }
    rx.await
        .unwrap_or_else(|_| Err(Stop::Failed("the scan thread ended early".to_owned())))
}

async fn run_job(
    engine: &Arc<Engine>,
    ctx: &Context,
    target: Target,
    detection: FimDetection,
) -> Result<Summary, Stop> {
    job(engine, ctx, move |e, store| {
        e.scan(store, &target, detection, now_ns())
    })
    .await
}

/// Nice 10 for the calling thread (Linux applies `setpriority` to a thread id alone); its I/O
/// priority, unless set otherwise, follows the nice value. Best effort: a system call filter
/// may forbid it (the packaged unit allows it back from `@resources`); the budgets bound the cost
/// then.
/// The first failure is logged.
fn lower_priority() {
    static SAID: AtomicBool = AtomicBool::new(false);
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), 10)
        && !SAID.swap(true, Ordering::Relaxed)
    {
        info!(error = %e, "fim: cannot lower the scans' priority; the hashing and file budgets still bound them");
    }
}

fn report_scan(ctx: &Context, summary: &Summary, detection: FimDetection) {
    let kind = if summary.initial {
        FimScanKind::Baseline
    } else if detection == FimDetection::Scheduled {
        FimScanKind::Scheduled
    } else {
        FimScanKind::Rescan
    };
    if summary.initial {
        info!(
            paths = summary.paths,
            bytes_hashed = summary.bytes_hashed,
            took_s = summary.took.as_secs_f64(),
            "fim: baseline complete"
        );
    }
    ctx.reporter().telemetry().emit(FimScanFinished {
        kind,
        paths: summary.paths,
        bytes_hashed: summary.bytes_hashed,
        events: summary.events,
        unreadable: summary.unreadable,
        took: summary.took,
    });
    ctx.reporter().collected(summary.took);
    // Paths a scan could not read keep their baseline rows; the status says so until a scan
    // reads everything again.
    let unreadable = ctx.reporter().part("scan");
    if summary.unreadable > 0 {
        unreadable.failed(format!(
            "{} paths could not be read (their baseline is kept; the agent's log names them)",
            summary.unreadable
        ));
    } else {
        unreadable.recovered();
    }
}

#[cfg(test)]
mod tests;
