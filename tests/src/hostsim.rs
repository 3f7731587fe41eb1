//! The default host metrics of this machine's agent, as templates that simulated hosts send
//! with moving values: the API benchmark fills a store with them, the fleet simulator's agents
//! ship them.

use std::time::Duration;

use anyhow::Context;
use outpost_common::event::{Event, MetricKind, MetricPoint};

const SEC: i64 = 1_000_000_000;

/// One family of the default host metrics: what one collection sends, and how often.
#[derive(Debug, Clone)]
pub struct Family {
    pub interval_ns: i64,
    pub points: Vec<MetricPoint>,
}

/// The default host-metric families of this machine's agent: two collections a second apart,
/// keeping the second (rates and utilisations need a first to compare with).
pub fn host_template() -> anyhow::Result<Vec<Family>> {
    use outpost_agent::collectors::metrics::{MetricsConfig, agent::Sources};
    let mut families = MetricsConfig::default()
        .families(Sources::none())
        .context("the default metric families")?;
    let now = outpost_common::time::now_ns();
    for f in &mut families {
        let _ = f.family.collect(now);
    }
    std::thread::sleep(Duration::from_secs(1));
    let mut out = Vec::new();
    for f in &mut families {
        match f.family.collect(now + SEC) {
            Ok(points) if !points.is_empty() => out.push(Family {
                interval_ns: i64::try_from(f.interval.as_nanos()).unwrap_or(i64::MAX),
                points,
            }),
            Ok(_) => {}
            Err(e) => eprintln!("family {} failed: {e}", f.family.name()),
        }
    }
    Ok(out)
}

/// A value the way the agent's would move: fractions as tick ratios, counters rising by whole
/// numbers, byte gauges by pages, anything else by a hundredth.
pub fn next_value(p: &MetricPoint, previous: f64, rng: &mut u64) -> f64 {
    *rng = rng
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    let r = (*rng >> 33) as f64 / (1u64 << 31) as f64; // 0..1
    match (p.kind, p.unit.as_str()) {
        (MetricKind::Counter, _) => previous.max(0.0) + (r * 10_000.0).floor(),
        (_, "1") => (r * 2000.0).floor() / 2000.0,
        (_, "By") => (previous + ((r - 0.5) * 64.0).floor() * 4096.0).max(0.0),
        _ => ((previous + (r - 0.5)) * 100.0).round() / 100.0,
    }
}

/// The batches of one collection round of host `h` at `t`: every family due then.
pub fn round_points(
    template: &[Family],
    values: &mut [Vec<f64>],
    rng: &mut u64,
    t: i64,
) -> Vec<Event> {
    let mut events = Vec::new();
    for (fi, f) in template.iter().enumerate() {
        if t % f.interval_ns != 0 {
            continue;
        }
        for (pi, p) in f.points.iter().enumerate() {
            let v = next_value(p, values[fi][pi], rng);
            values[fi][pi] = v;
            events.push(Event::Metric(MetricPoint {
                time_ns: t,
                value: v,
                ..p.clone()
            }));
        }
    }
    events
}
