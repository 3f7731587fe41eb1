//! Sources of events, all behind one contract.
//!
//! A source is one module with:
//!
//! - a `Config` (serde, `deny_unknown_fields`, a doc comment on every field, defaults in its
//!   `Default` impl and nowhere else), which is its section of `agent.toml`;
//! - a validating constructor, [`Source::new`], which refuses a configuration it could not run
//!   with; the configuration loader calls it, so `check-config` and start-up fail on the same
//!   errors;
//! - [`Source::run`], which takes the source and a [`Context`] and returns when the agent shuts
//!   down (or the source has nothing more to do).
//!
//! The context gives the source the spool, the shutdown signal and a [`Reporter`]. A source hands
//! the spool its events together with its checkpoints and its keyed state changes in one
//! [`Submission`], which the spool commits in one transaction: after a crash the source resumes
//! from its last committed checkpoint, so nothing between the source and the spool is lost or
//! produced twice.
//!
//! A new source goes in a module of its own here, with its `Config` added to
//! [`crate::config::AgentConfig`] and its task started in [`crate::run`].
//!
//! ```no_run
//! use outpost_agent::collectors::{Context, Source, SourceError};
//! use outpost_agent::spool::{Checkpoint, Class, Submission};
//! use outpost_common::event::Event;
//!
//! #[derive(Debug, Default, serde::Deserialize)]
//! #[serde(deny_unknown_fields, default)]
//! struct Config {
//!     /// Lines per submission.
//!     chunk: usize,
//! }
//!
//! struct Lines {
//!     chunk: usize,
//! }
//!
//! impl Source for Lines {
//!     type Config = Config;
//!     const NAME: &'static str = "lines";
//!
//!     fn new(config: Config) -> Result<Self, SourceError> {
//!         if config.chunk == 0 {
//!             return Err(SourceError::new("lines.chunk", "must be at least 1"));
//!         }
//!         Ok(Lines { chunk: config.chunk })
//!     }
//!
//!     async fn run(self, mut ctx: Context) {
//!         while !ctx.is_shutting_down() {
//!             let events: Vec<Event> = Vec::new(); // read up to `self.chunk` lines here
//!             let sub = Submission::new(Class::Wait, events)
//!                 .with_checkpoint(Checkpoint::new(Self::NAME, *b"offset"));
//!             if ctx.submit(sub).await.is_none() {
//!                 return; // shutting down
//!             }
//!         }
//!     }
//! }
//! ```

pub mod fim;
pub mod journal;
pub mod logs;
pub mod metrics;
pub mod self_status;
pub mod synthetic;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::internal_events::{CollectionFinished, CollectorFailed, CollectorRecovered};
use crate::spool::{SpoolError, SpoolHandle, Submission, SubmitOutcome};
use crate::telemetry::Telemetry;

/// A source of events: see the module documentation for the contract.
pub trait Source: Sized + Send + 'static {
    /// The source's section of `agent.toml`.
    type Config;

    /// The source's stable name: the collector name in the agent's status, and the prefix of
    /// its checkpoints and state.
    const NAME: &'static str;

    /// Checks `config` and builds the source; nothing is read or started yet.
    fn new(config: Self::Config) -> Result<Self, SourceError>;

    /// Produces events until the agent shuts down (or the source is done).
    fn run(self, ctx: Context) -> impl Future<Output = ()> + Send;
}

/// A configuration a source cannot run with, naming the option.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option}: {reason}")]
pub struct SourceError {
    /// The option, as written in `agent.toml` (for example `synthetic.chunk`).
    pub option: String,
    pub reason: String,
}

impl SourceError {
    pub fn new(option: impl Into<String>, reason: impl Into<String>) -> SourceError {
        SourceError {
            option: option.into(),
            reason: reason.into(),
        }
    }
}

/// What a running source works with.
#[derive(Debug, Clone)]
pub struct Context {
    spool: SpoolHandle,
    shutdown: watch::Receiver<bool>,
    reporter: Reporter,
}

impl Context {
    /// A context for the source `name`.
    pub fn new(
        name: &str,
        spool: SpoolHandle,
        shutdown: watch::Receiver<bool>,
        telemetry: Arc<Telemetry>,
    ) -> Context {
        Context {
            spool,
            shutdown,
            reporter: Reporter::new(name, telemetry),
        }
    }

    /// The spool, for reads (checkpoints, state, statistics) and submissions that must not be
    /// given up at shutdown.
    pub fn spool(&self) -> &SpoolHandle {
        &self.spool
    }

    /// The source's reporter.
    pub fn reporter(&self) -> &Reporter {
        &self.reporter
    }

    /// Whether the agent is shutting down.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Resolves once the agent is shutting down.
    pub async fn stopped(&mut self) {
        // An error means the sender is gone, which also means stop.
        let _ = self.shutdown.wait_for(|stop| *stop).await;
    }

    /// Waits for `duration`, or less if the agent shuts down first; returns whether it is
    /// shutting down.
    pub async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(duration) => self.is_shutting_down(),
            () = self.stopped() => true,
        }
    }

    /// Hands `sub` to the spool and waits until it is committed; `None` if the agent shuts down
    /// first, in which case it was not written (a Wait-class submission held for space is given
    /// up), and the source resumes from its last committed checkpoint at the next start.
    pub async fn submit(&mut self, sub: Submission) -> Option<Result<SubmitOutcome, SpoolError>> {
        let spool = self.spool.clone();
        tokio::select! {
            result = spool.submit(sub) => Some(result),
            () = self.stopped() => None,
        }
    }

    /// The spool's last committed checkpoint of `source`.
    pub async fn checkpoint(&self, source: &str) -> Result<Option<Vec<u8>>, SpoolError> {
        self.spool.checkpoint(source).await
    }

    /// The shutdown signal, for tasks the source starts.
    pub fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }
}

/// How a source reports its health and its cost; reported in the agent's status (collector
/// errors) and metrics (`outpost.agent.collector.*`).
#[derive(Debug, Clone)]
pub struct Reporter {
    name: Arc<str>,
    telemetry: Arc<Telemetry>,
}

impl Reporter {
    pub fn new(name: &str, telemetry: Arc<Telemetry>) -> Reporter {
        Reporter {
            name: name.into(),
            telemetry,
        }
    }

    /// The collector name reports carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A reporter for a part of this source, named `<source>.<part>` (`metrics.cpu`).
    pub fn part(&self, part: &str) -> Reporter {
        Reporter::new(&format!("{}.{part}", self.name), self.telemetry.clone())
    }

    /// The source is failing, for `reason`; replaces an earlier reason until it recovers.
    pub fn failed(&self, reason: String) {
        self.telemetry.emit(CollectorFailed {
            collector: &self.name,
            reason,
        });
    }

    /// The source works again.
    pub fn recovered(&self) {
        self.telemetry.emit(CollectorRecovered {
            collector: &self.name,
        });
    }

    /// A collection succeeded in `took`: the source works.
    pub fn collected(&self, took: Duration) {
        self.telemetry.emit(CollectionFinished {
            collector: &self.name,
            took,
        });
    }

    /// The agent's telemetry, to emit the source's own internal events.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::spool::{Class, Spool, SpoolConfig};

    #[test]
    fn a_reporter_names_its_parts_and_reports_through_telemetry() {
        let telemetry = Arc::new(Telemetry::recording());
        let metrics = Reporter::new("metrics", telemetry.clone());
        let cpu = metrics.part("cpu");
        assert_eq!(cpu.name(), "metrics.cpu");
        cpu.failed("no /proc/stat".to_owned());
        assert_eq!(telemetry.collector_errors()[0].collector, "metrics.cpu");
        cpu.collected(Duration::from_millis(2));
        assert!(telemetry.collector_errors().is_empty());
        assert_eq!(
            telemetry.recorded(),
            ["collector_failed", "collection_finished"]
        );
    }

    #[tokio::test]
    async fn a_submission_held_at_shutdown_is_given_up_unwritten() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path().join("spool.db"), 1)).unwrap();
        let (handle, join) = crate::spool::spawn(spool);
        let (stop, shutdown) = watch::channel(false);
        let mut ctx = Context::new("test", handle.clone(), shutdown, Arc::new(Telemetry::new()));
        let event = |n| {
            outpost_common::event::Event::Log(outpost_common::event::LogRecord {
                time_ns: n,
                source: "test".to_owned(),
                severity: None,
                body: "x".repeat(100),
                attributes: Vec::new(),
            })
        };
        // The first fills the one-byte cap (an empty spool always takes one), the second waits.
        let first = ctx
            .submit(Submission::new(Class::Wait, vec![event(1)]))
            .await;
        assert!(matches!(
            first,
            Some(Ok(SubmitOutcome::Committed { events: 1 }))
        ));
        let mut waiting = ctx.clone();
        let held = tokio::spawn(async move {
            waiting
                .submit(Submission::new(Class::Wait, vec![event(2)]))
                .await
        });
        stop.send(true).unwrap();
        assert!(held.await.unwrap().is_none());
        assert!(ctx.is_shutting_down());
        assert!(ctx.sleep(Duration::from_secs(3600)).await);
        assert_eq!(handle.stats().events, 1);
        drop((ctx, handle));
        join.join().unwrap();
    }
}
