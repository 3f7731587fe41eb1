//! A generator of numbered events, for tests and benchmarks.
//!
//! Log event `n` carries `n` in its body and in the attribute `synthetic.seq`; metric point `n`
//! is the value `n` of one counter series (`synthetic.counter`, no attributes: a number per
//! series would make every point a series of its own). The next number is the
//! source's checkpoint, committed with the events, so across crashes and restarts every number is
//! produced exactly once: the central store must end up holding `0..produced` with no gap (unless a
//! drop was counted) and no repeat.

use std::time::Duration;

use outpost_common::event::{Event, LogRecord, MetricKind, MetricPoint, Severity};
use outpost_common::time::now_ns;
use serde::Deserialize;
use tracing::{info, warn};

use super::{Context, Source, SourceError};
use crate::spool::{Checkpoint, Class, Submission};

/// What a synthetic event looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Log records: the source waits when the spool is full.
    Log,
    /// Metric points: the oldest are evicted when the spool is full.
    Metric,
}

/// `[synthetic]`: a generator of numbered events for tests and benchmarks. Off by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Run the generator (default: off).
    pub enabled: bool,
    /// Events per second (0: as fast as the spool takes them).
    pub rate: u32,
    /// Stop after this many events in total across restarts (0: never).
    pub total: u64,
    /// Approximate encoded size of each event in bytes, 32 to 65536.
    pub size: usize,
    /// Log records or metric points.
    pub kind: Kind,
    /// Events handed to the spool per submission, at least 1.
    pub chunk: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            rate: 100,
            total: 0,
            size: 200,
            kind: Kind::Log,
            chunk: 100,
        }
    }
}

/// The synthetic source.
#[derive(Debug)]
pub struct Synthetic {
    config: Config,
}

impl Source for Synthetic {
    type Config = Config;
    const NAME: &'static str = "synthetic";

    fn new(config: Config) -> Result<Self, SourceError> {
        if config.chunk == 0 {
            return Err(SourceError::new("synthetic.chunk", "must be at least 1"));
        }
        if !(32..=64 * 1024).contains(&config.size) {
            return Err(SourceError::new(
                "synthetic.size",
                "must be between 32 and 65536",
            ));
        }
        Ok(Synthetic { config })
    }

    /// Produces events until `total` is reached or shutdown.
    async fn run(self, mut ctx: Context) {
        let mut next = match ctx.checkpoint(Self::NAME).await {
            Ok(Some(v)) => decode_checkpoint(&v),
            Ok(None) => 0,
            Err(e) => {
                ctx.reporter()
                    .failed(format!("cannot read its checkpoint: {e}"));
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
        let class = match c.kind {
            Kind::Log => Class::Wait,
            Kind::Metric => Class::Drop,
        };
        loop {
            if c.total > 0 && next >= c.total {
                info!(produced = next, "synthetic source reached its total");
                return;
            }
            if !chunk_time.is_zero() {
                tokio::select! {
                    _ = ticker.tick() => {}
                    () = ctx.stopped() => return,
                }
            } else if ctx.is_shutting_down() {
                return;
            }
            let mut n = c.chunk as u64;
            if c.total > 0 {
                n = n.min(c.total - next);
            }
            let events: Vec<Event> = (next..next + n).map(|i| self.event(i)).collect();
            let sub = Submission::new(class, events)
                .with_checkpoint(Checkpoint::new(Self::NAME, (next + n).to_le_bytes()));
            match ctx.submit(sub).await {
                None => return,
                Some(Ok(_)) => {
                    next += n;
                    ctx.reporter().recovered();
                }
                Some(Err(e)) => {
                    ctx.reporter()
                        .failed(format!("cannot write to the spool: {e}"));
                    if ctx.sleep(Duration::from_secs(1)).await {
                        return;
                    }
                }
            }
        }
    }
}

impl Synthetic {
    /// Event number `n`, padded to about the configured size.
    pub fn event(&self, n: u64) -> Event {
        let time_ns = now_ns();
        let seq = n.to_string();
        match self.config.kind {
            Kind::Log => {
                // Attributes, source and framing take about 60 bytes of the encoded size.
                let mut body = format!("synthetic event {n:012} ");
                let target = self.config.size.saturating_sub(60).max(body.len());
                body.extend(std::iter::repeat_n('x', target - body.len()));
                Event::Log(LogRecord {
                    time_ns,
                    source: Self::NAME.to_owned(),
                    severity: Some(Severity::Info),
                    body,
                    attributes: vec![("synthetic.seq".to_owned(), seq)],
                })
            }
            Kind::Metric => Event::Metric(MetricPoint {
                name: "synthetic.counter".to_owned(),
                unit: "{event}".to_owned(),
                attributes: Vec::new(),
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
        let s = Synthetic::new(Config {
            size: 200,
            ..Config::default()
        })
        .unwrap();
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

    #[test]
    fn a_configuration_it_cannot_run_with_is_refused_by_name() {
        let e = Synthetic::new(Config {
            chunk: 0,
            ..Config::default()
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "synthetic.chunk: must be at least 1");
        let e = Synthetic::new(Config {
            size: 31,
            ..Config::default()
        })
        .unwrap_err();
        assert_eq!(e.option, "synthetic.size");
    }
}
