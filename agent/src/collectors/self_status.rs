//! Periodic snapshots of the agent's own status, spooled as history.
//!
//! The live status travels in heartbeats; these snapshots keep its history centrally. They are
//! samples, so when the spool is full the oldest are evicted like metrics.

use std::sync::Arc;
use std::time::Duration;

use outpost_common::event::Event;
use tokio::sync::watch;

use crate::internal_events::SamplesLost;
use crate::spool::{Class, SpoolHandle, Submission};
use crate::telemetry::Telemetry;

/// Writes a status snapshot every `interval` until shutdown.
pub async fn run(
    interval: Duration,
    spool: SpoolHandle,
    telemetry: Arc<Telemetry>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let stats = spool.stats();
        let sub = Submission::new(Class::Drop, vec![Event::Status(telemetry.status(&stats))]);
        if let Err(e) = spool.submit(sub).await {
            telemetry.emit(SamplesLost {
                what: "a status snapshot",
                events: 1,
                error: &e.to_string(),
            });
        }
    }
}
