//! Hashing files beside a scan.
//!
//! A scan looks at its paths one after the other, and a file's hash costs far more than its
//! metadata: its content must be read, often from a cold disk. One thread hashing everything is
//! the limit on a tree of large files (`/usr`), and on small files it waits for the disk one
//! file at a time while the disk could serve several and the machine has other cores. So the
//! scan hands each file that needs hashing to one of a few threads here, goes on with the paths
//! after it, and takes the results back in its own order ([`super::scan`] keeps the window).
//! Every file is hashed once, by exactly one thread; nothing here decides anything about the
//! result.
//!
//! The threads are scoped to the scan: they end when the [`Hashers`] is dropped (a file being
//! hashed then is finished, or given up at once when the agent is stopping, as the scan's own
//! hashing is) and the scope joins them.

use std::collections::HashMap;
use std::fs::Metadata;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::Scope;

use outpost_common::event::FileState;

use super::scan::Engine;

/// What looking at a path found: its state and the bytes hashed, `None` if it is gone.
pub(super) type Observed = io::Result<Option<(FileState, u64)>>;

/// A file to look at: the root it is under, its path and `lstat`, and its baseline state.
pub(super) struct Job {
    pub root: usize,
    pub path: PathBuf,
    pub meta: Metadata,
    pub previous: Option<FileState>,
}

/// The hashing threads of one scan, and the results they have sent back.
pub(super) struct Hashers {
    /// `None` when no thread could be started: the scan then hashes everything itself.
    jobs: Option<Sender<(u64, Job)>>,
    results: Receiver<(u64, Observed)>,
    arrived: HashMap<u64, Observed>,
    next_ticket: u64,
}

impl Hashers {
    /// Starts `threads` threads in `scope`, looking at files as `engine` does.
    pub(super) fn start<'scope, 'env>(
        scope: &'scope Scope<'scope, 'env>,
        threads: usize,
        engine: &'env Engine,
    ) -> Hashers {
        let (jobs, queue) = channel::<(u64, Job)>();
        let (done, results) = channel();
        let queue = Arc::new(Mutex::new(queue));
        let mut started = 0;
        for i in 0..threads {
            let (queue, done) = (Arc::clone(&queue), done.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("fim-hash-{i}"))
                .spawn_scoped(scope, move || work(engine, &queue, &done));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => tracing::warn!(
                    error = %e,
                    "Cannot start a hashing thread; the scan hashes what it would have."
                ),
            }
        }
        Hashers {
            jobs: (started > 0).then_some(jobs),
            results,
            arrived: HashMap::new(),
            next_ticket: 0,
        }
    }

    /// Hands `job` to a thread; answers its ticket, or `None` when there is no thread (the
    /// caller then looks at the file itself).
    pub(super) fn submit(&mut self, job: Job) -> Option<u64> {
        let ticket = self.next_ticket;
        if self.jobs.as_ref()?.send((ticket, job)).is_err() {
            self.jobs = None;
            return None;
        }
        self.next_ticket += 1;
        Some(ticket)
    }

    /// The result of `ticket` if it has arrived.
    pub(super) fn poll(&mut self, ticket: u64) -> Option<Observed> {
        while let Ok((t, found)) = self.results.try_recv() {
            self.arrived.insert(t, found);
        }
        self.arrived.remove(&ticket)
    }

    /// The result of `ticket`, waiting for it.
    pub(super) fn wait(&mut self, ticket: u64) -> Observed {
        loop {
            if let Some(found) = self.arrived.remove(&ticket) {
                return found;
            }
            match self.results.recv() {
                Ok((t, found)) => {
                    self.arrived.insert(t, found);
                }
                // Every thread has ended (only a panic ends one early, and the scope then
                // panics too).
                Err(_) => return Err(io::Error::other("the hashing threads stopped")),
            }
        }
    }
}

fn work(engine: &Engine, queue: &Mutex<Receiver<(u64, Job)>>, done: &Sender<(u64, Observed)>) {
    loop {
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok((ticket, job)) = next else { return };
        let found = engine.observe_meta(job.root, &job.path, &job.meta, job.previous.as_ref());
        if done.send((ticket, found)).is_err() {
            return;
        }
    }
}
