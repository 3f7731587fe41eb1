//! Reading and hashing ahead of a baseline scan.
//!
//! A baseline hashes every file. Done one after the other on the scan thread, each file costs the
//! disk's latency (its inode, its content) with one request in flight when the page cache is
//! cold, and one core's hashing speed when it is warm. Instead, a few threads here take the files
//! of each directory as the scan lists it, open them (reading their inodes), and hash the
//! regular ones, within the scan's hashing budget; the scan then takes the hash of a file whose
//! device, inode, size, mtime and ctime are still those the thread saw before and after reading
//! it — the same test by which a scan keeps a baseline's hash — and hashes the file itself
//! otherwise. The disk thus has several requests at once, and hashing uses every core.
//!
//! It changes no result: a hash is taken only for a file that provably did not change since it
//! was read, and a file a thread could not read is read by the scan. The threads stay at most
//! [`WINDOW`] files ahead of the scan, so what they hold is bounded. Scans that are not baselines
//! do not use it: they hash only the files whose metadata changed.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use rustix::fs::{Mode, OFlags};

use super::HashAlgorithm;
use super::state::{self, Budget};

/// Files taken ahead of the scan at most.
pub(super) const WINDOW: u64 = 512;

/// Threads reading ahead of the scan: opening a file with a cold inode waits for the disk, so
/// several of them keep several requests in flight.
const THREADS: usize = 4;

/// What identifies a file's content without reading it: device, inode, size, mtime, ctime (a
/// write changes ctime, which nothing can set back).
pub(super) type Stamp = (u64, u64, u64, i64, i64);

/// How to hash the files of a directory: the algorithm, and the largest file to hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct HashWith {
    pub algorithm: HashAlgorithm,
    pub max_size: u64,
}

/// The read-ahead threads of one scan; they end when it is dropped.
#[derive(Debug)]
pub(super) struct Prefetch {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    budget: Arc<Budget>,
}

#[derive(Debug, Default)]
struct Queue {
    paths: VecDeque<(PathBuf, HashWith)>,
    /// Hashes made ahead, by path, with the stamp of the content they are of and the bytes read.
    hashed: HashMap<PathBuf, (Stamp, String, u64)>,
    /// Paths taken by the threads so far.
    taken: u64,
    /// Paths the scan has reached so far.
    reached: u64,
    closed: bool,
}

impl Prefetch {
    /// Starts the threads, hashing within `budget`. They inherit the calling thread's priority
    /// (nice value and I/O class), which the scan thread has lowered.
    pub(super) fn start(budget: Arc<Budget>) -> Prefetch {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            budget,
        });
        let threads = (0..THREADS)
            .filter_map(|i| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("fim-readahead-{i}"))
                    .spawn(move || run(&shared))
                    .ok()
            })
            .collect();
        Prefetch { shared, threads }
    }

    /// Queues the entries of a directory just listed, in the order the scan visits them.
    pub(super) fn queue(&self, paths: impl IntoIterator<Item = PathBuf>, with: HashWith) {
        let mut q = lock(&self.shared.queue);
        q.paths.extend(paths.into_iter().map(|p| (p, with)));
        drop(q);
        self.shared.wake.notify_all();
    }

    /// The hash made ahead of `path` if it is of the content `stamp` identifies (the file's
    /// `lstat` now), with the bytes read for it.
    pub(super) fn take(&self, path: &Path, stamp: Stamp) -> Option<(String, u64)> {
        let (seen, hash, bytes) = lock(&self.shared.queue).hashed.remove(path)?;
        (seen == stamp).then_some((hash, bytes))
    }

    /// The scan has reached one more of the queued entries.
    pub(super) fn reached(&self) {
        let mut q = lock(&self.shared.queue);
        q.reached += 1;
        drop(q);
        self.shared.wake.notify_all();
    }
}

impl Drop for Prefetch {
    fn drop(&mut self) {
        lock(&self.shared.queue).closed = true;
        self.shared.wake.notify_all();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn run(shared: &Shared) {
    loop {
        let (path, with) = {
            let mut q = lock(&shared.queue);
            loop {
                if q.closed {
                    return;
                }
                if q.taken < q.reached + WINDOW
                    && let Some(path) = q.paths.pop_front()
                {
                    q.taken += 1;
                    drop(q);
                    shared.wake.notify_all();
                    break path;
                }
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        if let Some(done) = hash_ahead(&path, with, &shared.budget) {
            let mut q = lock(&shared.queue);
            // Bounded: the scan takes what it reaches, and what it passes over (excluded, gone)
            // is not kept beyond twice the window.
            if (q.hashed.len() as u64) < 2 * WINDOW {
                q.hashed.insert(path, done);
            }
        }
    }
}

/// Opens `path` (never following a symlink, never waiting on a FIFO) and, if it is a regular file
/// within `with.max_size`, hashes it: the hash, the stamp of the content it is of (the same
/// before and after reading, or nothing), and the bytes read.
fn hash_ahead(path: &Path, with: HashWith, budget: &Budget) -> Option<(Stamp, String, u64)> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let fd = rustix::fs::open(path, flags, Mode::empty()).ok()?;
    let before = stamp(&fd)?;
    if before.2 > with.max_size || budget.stopped() {
        return None;
    }
    let mut file = File::from(fd);
    let (hash, bytes) = state::hash_reader(&mut file, with.algorithm, budget).ok()?;
    let after = stamp(&file)?;
    (after == before).then_some((before, hash, bytes))
}

/// The stamp of an open regular file; `None` for anything else.
fn stamp(fd: impl rustix::fd::AsFd) -> Option<Stamp> {
    let st = rustix::fs::fstat(fd).ok()?;
    if !rustix::fs::FileType::from_raw_mode(st.st_mode).is_file() {
        return None;
    }
    Some((
        st.st_dev,
        st.st_ino,
        u64::try_from(st.st_size).ok()?,
        st.st_mtime
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::try_from(st.st_mtime_nsec).ok()?),
        st.st_ctime
            .saturating_mul(1_000_000_000)
            .saturating_add(i64::try_from(st.st_ctime_nsec).ok()?),
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const SHA256: HashWith = HashWith {
        algorithm: HashAlgorithm::Sha256,
        max_size: u64::MAX,
    };

    fn stamp_of(path: &Path) -> Stamp {
        let m = std::fs::symlink_metadata(path).unwrap();
        (
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        )
    }

    /// The threads never take more than `WINDOW` paths beyond what the scan reached, take them
    /// all once it reaches them, and end when dropped.
    #[test]
    fn the_threads_stay_within_the_window_of_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for i in 0..(WINDOW * 2 + 10) {
            let p = dir.path().join(format!("f{i:05}"));
            std::fs::write(&p, b"content").unwrap();
            paths.push(p);
        }
        let prefetch = Prefetch::start(Arc::new(Budget::per_second(0)));
        prefetch.queue(paths.clone(), SHA256);
        let wait_taken = |want: u64| {
            let mut q = lock(&prefetch.shared.queue);
            while q.taken < want {
                q = prefetch.shared.wake.wait(q).unwrap();
            }
            assert_eq!(q.taken, want, "no more than the window");
        };
        wait_taken(WINDOW);
        for _ in 0..10 {
            prefetch.reached();
        }
        wait_taken(WINDOW + 10);
        for _ in 0..WINDOW {
            prefetch.reached();
        }
        let total = paths.len() as u64;
        let mut q = lock(&prefetch.shared.queue);
        while q.taken < total {
            q = prefetch.shared.wake.wait(q).unwrap();
        }
        assert!(q.paths.is_empty());
        drop(q);
        drop(prefetch);
    }

    /// A hash made ahead is the scan's own, and is taken only for the content it is of.
    #[test]
    fn a_hash_made_ahead_is_taken_only_for_unchanged_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"the content").unwrap();
        let budget = Budget::per_second(0);
        let (stamp, hash, bytes) = hash_ahead(&path, SHA256, &budget).unwrap();
        assert_eq!(stamp, stamp_of(&path));
        assert_eq!(
            (hash.clone(), bytes),
            state::hash_file(&path, HashAlgorithm::Sha256, &budget).unwrap()
        );

        let prefetch = Prefetch::start(Arc::new(Budget::per_second(0)));
        lock(&prefetch.shared.queue)
            .hashed
            .insert(path.clone(), (stamp, hash.clone(), bytes));
        let changed = (stamp.0, stamp.1, stamp.2, stamp.3, stamp.4 + 1);
        assert_eq!(prefetch.take(&path, changed), None, "another ctime");
        lock(&prefetch.shared.queue)
            .hashed
            .insert(path.clone(), (stamp, hash.clone(), bytes));
        assert_eq!(prefetch.take(&path, stamp), Some((hash, bytes)));
        assert_eq!(prefetch.take(&path, stamp), None, "taken once");
        let small = HashWith {
            max_size: 3,
            ..SHA256
        };
        assert_eq!(
            hash_ahead(&path, small, &budget),
            None,
            "above the size limit"
        );
    }

    /// A FIFO, a symlink, a directory and a missing path are passed over without blocking.
    #[test]
    fn what_is_not_a_regular_file_is_passed_over() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&fifo, &link).unwrap();
        let budget = Budget::per_second(0);
        for path in [
            fifo,
            link,
            dir.path().to_owned(),
            dir.path().join("missing"),
        ] {
            assert_eq!(
                hash_ahead(&path, SHA256, &budget),
                None,
                "{}",
                path.display()
            );
        }
    }
}
