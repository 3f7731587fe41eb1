//! Reading ahead of a baseline scan.
//!
//! A baseline hashes every file, one after the other, on the scan thread. With a cold page cache
//! each file then costs the disk's latency twice (its inode, its content) with one request in
//! flight, and the scan waits on the disk far longer than it hashes. While it hashes one file,
//! a few threads here open the next ones (which reads their inodes) and ask the kernel to read
//! their content (`posix_fadvise(WILLNEED)`, which queues the reads and returns), so the disk has
//! many requests at once and the scan finds most files already in the page cache.
//!
//! It is only a hint: it changes no result, a file it could not open is simply read later by the
//! scan, and it stays at most [`WINDOW`] files ahead of the scan, so it neither reads much faster
//! than the scan's hashing budget allows nor pushes out of the cache what the scan has yet to
//! read. Files larger than [`MAX_FILE`] are left to the kernel's own sequential read-ahead.
//! Scans that are not baselines do not use it: they hash only the files whose metadata changed.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;

use rustix::fs::{Advice, Mode, OFlags};

/// Files read ahead of the scan at most.
pub(super) const WINDOW: u64 = 512;

/// Once the window is full, the threads wait until the scan has made this much room again, so
/// that they are woken once per this many files rather than once per file.
const REFILL: u64 = WINDOW / 8;

/// Files larger than this are not read ahead.
pub(super) const MAX_FILE: u64 = 8 << 20;

/// Threads opening files ahead of the scan: opening a file with a cold inode waits for the disk,
/// so several of them keep several requests in flight.
const THREADS: usize = 4;

/// The read-ahead threads of one scan; they end when it is dropped.
#[derive(Debug)]
pub(super) struct Prefetch {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Queue {
    paths: VecDeque<PathBuf>,
    /// Paths taken by the threads so far.
    taken: u64,
    /// Paths the scan has reached so far.
    reached: u64,
    /// Threads waiting for room in the window and not woken yet.
    waiting: usize,
    closed: bool,
}

impl Prefetch {
    /// Starts the threads. They inherit the calling thread's priority (nice value and I/O
    /// class), which the scan thread has lowered.
    pub(super) fn start() -> Prefetch {
        let shared = Arc::new(Shared::default());
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
    pub(super) fn queue(&self, paths: impl IntoIterator<Item = PathBuf>) {
        let mut q = lock(&self.shared.queue);
        q.paths.extend(paths);
        drop(q);
        self.shared.wake.notify_all();
    }

    /// The scan has reached one more of the queued entries.
    pub(super) fn reached(&self) {
        let mut q = lock(&self.shared.queue);
        q.reached += 1;
        let room = q.taken + REFILL <= q.reached + WINDOW;
        if q.waiting > 0 && room && !q.paths.is_empty() {
            q.waiting = 0;
            drop(q);
            self.shared.wake.notify_all();
        }
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
        let path = {
            let mut q = lock(&shared.queue);
            loop {
                if q.closed {
                    return;
                }
                if q.taken < q.reached + WINDOW
                    && let Some(path) = q.paths.pop_front()
                {
                    q.taken += 1;
                    break path;
                }
                if !q.paths.is_empty() {
                    // The window is full: [`Prefetch::reached`] wakes it once there is room.
                    q.waiting += 1;
                }
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        read_ahead(&path);
    }
}

/// Opens `path` (never following a symlink, never waiting on a FIFO) and, if it is a regular file
/// no larger than [`MAX_FILE`], asks the kernel to read it into the page cache; a directory it
/// lists.
fn read_ahead(path: &std::path::Path) {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
    let Ok(fd) = rustix::fs::open(path, flags, Mode::empty()) else {
        return;
    };
    let Ok(stat) = rustix::fs::fstat(&fd) else {
        return;
    };
    let kind = rustix::fs::FileType::from_raw_mode(stat.st_mode);
    let size = u64::try_from(stat.st_size).unwrap_or(0);
    if kind.is_file() && size > 0 && size <= MAX_FILE {
        let _ = rustix::fs::fadvise(&fd, 0, std::num::NonZeroU64::new(size), Advice::WillNeed);
    } else if kind.is_dir() {
        // Listing it reads its blocks into the cache, so the scan's own listing when it gets
        // there does not wait for the disk.
        if let Ok(mut dir) = rustix::fs::Dir::read_from(&fd) {
            while let Some(Ok(_)) = dir.next() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits (10 s at most) until the threads have taken `want` paths; answers how many they took.
    fn wait_taken(prefetch: &Prefetch, want: u64) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let taken = lock(&prefetch.shared.queue).taken;
            if taken >= want || std::time::Instant::now() > deadline {
                return taken;
            }
            std::thread::yield_now();
        }
    }

    /// The threads never take more than `WINDOW` paths beyond what the scan reached, are woken
    /// again once it has made `REFILL` room, take them all once it reaches them, and end when
    /// dropped.
    #[test]
    fn the_threads_stay_within_the_window_of_the_scan() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for i in 0..(WINDOW * 2 + 10) {
            let p = dir.path().join(format!("f{i:05}"));
            std::fs::write(&p, b"content").unwrap();
            paths.push(p);
        }
        let prefetch = Prefetch::start();
        prefetch.queue(paths.clone());
        assert_eq!(wait_taken(&prefetch, WINDOW), WINDOW);
        // Less room than REFILL wakes no thread (one coming back from a file may take some).
        for _ in 0..REFILL - 1 {
            prefetch.reached();
        }
        assert!(lock(&prefetch.shared.queue).taken < WINDOW + REFILL);
        prefetch.reached();
        assert_eq!(wait_taken(&prefetch, WINDOW + REFILL), WINDOW + REFILL);
        assert_eq!(
            lock(&prefetch.shared.queue).taken,
            WINDOW + REFILL,
            "no more than the window"
        );
        for _ in 0..WINDOW + 10 {
            prefetch.reached();
        }
        let total = paths.len() as u64;
        assert_eq!(wait_taken(&prefetch, total), total);
        assert!(lock(&prefetch.shared.queue).paths.is_empty());
        drop(prefetch);
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
        read_ahead(&fifo);
        read_ahead(&link);
        read_ahead(dir.path());
        read_ahead(&dir.path().join("missing"));
    }
}
