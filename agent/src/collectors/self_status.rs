//! Periodic snapshots of the agent's own status, spooled as history.
//!
//! The live status travels in heartbeats; these snapshots keep its history centrally. They are
//! samples, so when the spool is full the oldest are evicted like metrics.

use std::sync::Arc;
use std::time::Duration;

use outpost_common::event::Event;
use serde::Deserialize;

use super::{Context, Source, SourceError};
use crate::internal_events::SamplesLost;
use crate::spool::{Class, Submission};
use crate::telemetry::Telemetry;

/// `[status]`: the history of the agent's own status.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// How often a snapshot of the agent's status is spooled (kept as history centrally); the
    /// first is taken at start-up.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interval: Duration::from_secs(60),
        }
    }
}

/// The status-snapshot source; it reads the agent's telemetry.
#[derive(Debug)]
pub struct SelfStatus {
    interval: Duration,
}

impl Source for SelfStatus {
    type Config = Config;
    const NAME: &'static str = "status";

    fn new(config: Config) -> Result<Self, SourceError> {
        if config.interval.is_zero() {
            return Err(SourceError::new("status.interval", "must be above zero"));
        }
        Ok(SelfStatus {
            interval: config.interval,
        })
    }

    /// Writes a status snapshot every interval until shutdown.
    async fn run(self, mut ctx: Context) {
        let telemetry: Arc<Telemetry> = ctx.reporter().telemetry().clone();
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = ctx.stopped() => return,
            }
            let status = telemetry.status(&ctx.spool().stats());
            let sub = Submission::new(Class::Drop, vec![Event::Status(status)]);
            match ctx.submit(sub).await {
                None => return,
                Some(Ok(_)) => {}
                Some(Err(e)) => telemetry.emit(SamplesLost {
                    what: "a status snapshot",
                    events: 1,
                    error: &e.to_string(),
                }),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::watch;

    use super::*;
    use crate::spool::{Spool, SpoolConfig};

    #[test]
    fn a_zero_interval_is_refused() {
        let e = SelfStatus::new(Config {
            interval: Duration::ZERO,
        })
        .unwrap_err();
        assert_eq!(e.option, "status.interval");
    }

    #[tokio::test(start_paused = true)]
    async fn a_snapshot_is_spooled_at_start_and_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path().join("spool.db"), 1 << 20)).unwrap();
        let (handle, join) = crate::spool::spawn(spool);
        let (stop, shutdown) = watch::channel(false);
        let ctx = Context::new(
            "status",
            handle.clone(),
            shutdown,
            Arc::new(Telemetry::new()),
        );
        let source = SelfStatus::new(Config {
            interval: Duration::from_secs(60),
        })
        .unwrap();
        let task = tokio::spawn(source.run(ctx));
        let mut committed = handle.subscribe();
        committed.changed().await.unwrap();
        assert_eq!(handle.stats().events, 1, "one at start-up");
        committed.changed().await.unwrap();
        assert_eq!(handle.stats().events, 2, "one an interval later");
        stop.send(true).unwrap();
        task.await.unwrap();
        drop(handle);
        join.join().unwrap();
    }
}
