//! A generator of numbered events, for tests and benchmarks.
//!
//! Event `n` carries `n` in its body and in the attribute `synthetic.seq`. The next number is the
//! source's checkpoint, committed with the events, so across crashes and restarts every number is
//! produced exactly once: the central store must end up holding `0..produced` with no gap (unless a
//! drop was counted) and no repeat.

use std::time::Duration;

use outpost_common::event::{Event, LogRecord, MetricKind, MetricPoint, Severity};
use outpost_common::time::now_ns;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::{SyntheticKind, SyntheticSection};
use crate::spool::{Checkpoint, Class, SpoolHandle, Submission};

/// The checkpoint key of this source.
pub const SOURCE: &str = "synthetic";

/// The synthetic source.
#[derive(Debug)]
pub struct Synthetic {
    config: SyntheticSection,
}

impl Synthetic {
    pub fn new(config: SyntheticSection) -> Self {
        Synthetic { config }
    }

    /// Produces events until `total` is reached or shutdown.
    pub async fn run(self, spool: SpoolHandle, mut shutdown: watch::Receiver<bool>) {
        let mut next = match spool.checkpoint(SOURCE).await {
            Ok(Some(v)) => decode_checkpoint(&v),
            Ok(None) => 0,
            Err(e) => {
                warn!(error = %e, "synthetic source cannot read its checkpoint; not starting");
                return;
            }
        };
        let c = &self.config;
        info!(
            next,
            rate = c.rate,
            total = c.total,
            "synthetic source starting"
        );
        let chunk_time = if c.rate == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(c.chunk as f64 / f64::from(c.rate))
        };
        let mut ticker = tokio::time::interval(chunk_time.max(Duration::from_micros(1)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if c.total > 0 && next >= c.total {
                info!(produced = next, "synthetic source reached its total");
                return;
            }
            if !chunk_time.is_zero() {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            } else if *shutdown.borrow() {
                return;
            }
            let mut n = c.chunk as u64;
            if c.total > 0 {
                n = n.min(c.total - next);
            }
            let events: Vec<Event> = (next..next + n).map(|i| self.event(i)).collect();
            let class = match c.kind {
                SyntheticKind::Log => Class::Wait,
                SyntheticKind::Metric => Class::Drop,
            };
            let sub = Submission::new(class, events)
                .with_checkpoint(Checkpoint::new(SOURCE, (next + n).to_le_bytes()));
            let result = tokio::select! {
                r = spool.submit(sub) => r,
                _ = shutdown.wait_for(|s| *s) => return,
            };
            match result {
                Ok(_) => next += n,
                Err(e) => {
                    warn!(error = %e, "synthetic source cannot write to the spool; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.wait_for(|s| *s) => return,
                    }
                }
            }
        }
    }

    /// Event number `n`, padded to about the configured size.
    pub fn event(&self, n: u64) -> Event {
        let time_ns = now_ns();
        let seq = n.to_string();
        match self.config.kind {
            SyntheticKind::Log => {
                // Attributes, source and framing take about 60 bytes of the encoded size.
                let mut body = format!("synthetic event {n:012} ");
                let target = self.config.size.saturating_sub(60).max(body.len());
                body.extend(std::iter::repeat_n('x', target - body.len()));
                Event::Log(LogRecord {
                    time_ns,
                    source: SOURCE.to_owned(),
                    severity: Some(Severity::Info),
                    body,
                    attributes: vec![("synthetic.seq".to_owned(), seq)],
                })
            }
            SyntheticKind::Metric => Event::Metric(MetricPoint {
                name: "synthetic.counter".to_owned(),
                unit: "{event}".to_owned(),
                attributes: vec![("synthetic.seq".to_owned(), seq)],
                time_ns,
                value: n as f64,
                kind: MetricKind::Counter,
            }),
        }
    }
}

fn decode_checkpoint(v: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = v.len().min(8);
    b[..n].copy_from_slice(&v[..n]);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_about_the_configured_size_and_numbered() {
        let s = Synthetic::new(SyntheticSection {
            size: 200,
            ..SyntheticSection::default()
        });
        let e = s.event(42);
        let len = outpost_common::wire::encode_events(std::slice::from_ref(&e))
            .unwrap()
            .len();
        assert!((150..=260).contains(&len), "encoded size {len}");
        let Event::Log(l) = e else {
            panic!("log expected")
        };
        assert!(l.body.contains("000000000042"));
        assert_eq!(l.attributes[0].1, "42");
        assert_eq!(decode_checkpoint(&42u64.to_le_bytes()), 42);
        assert_eq!(decode_checkpoint(&[]), 0);
    }
}
