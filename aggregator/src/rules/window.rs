//! A metric series' recent samples, and the aggregates a threshold rule compares: last, avg,
//! min, max, and for counters increase and rate.
//!
//! A window spans `span_ns` back from the series' newest sample, on the agent's clock: an agent
//! whose clock is off still has its samples compared with each other, and a series that stops
//! keeps its last window (absence is a rule of its own). Counters are cumulative (as agents send
//! them); a value lower than the one before is a reset, after which the new value is all increase,
//! as Prometheus counts it. Increase and rate take the samples in the window as they are, without
//! Prometheus's extrapolation to the window's edges: a rate over a window is the increase between
//! its first and last sample divided by the time between them.

use std::collections::VecDeque;

use serde::Deserialize;

/// What a threshold rule compares of a series' window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// The newest sample.
    Last,
    Avg,
    Min,
    Max,
    /// A counter's increase over the window.
    Increase,
    /// A counter's increase per second over the window.
    Rate,
}

impl Aggregate {
    /// Whether it needs two samples at least (a change between them).
    fn needs_two(self) -> bool {
        matches!(self, Aggregate::Increase | Aggregate::Rate)
    }
}

/// The comparison of a threshold rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Op {
    /// Whether `value op threshold` holds. NaN compares as nothing holds, `!=` included.
    pub fn holds(self, value: f64, threshold: f64) -> bool {
        if value.is_nan() || threshold.is_nan() {
            return false;
        }
        match self {
            Op::Gt => value > threshold,
            Op::Ge => value >= threshold,
            Op::Lt => value < threshold,
            Op::Le => value <= threshold,
            Op::Eq => value == threshold,
            Op::Ne => value != threshold,
        }
    }
}

/// One series' samples within `span_ns` of its newest, oldest first.
#[derive(Debug, Clone, Default)]
pub struct Window {
    samples: VecDeque<(i64, f64)>,
}

impl Window {
    /// Adds a sample and forgets those more than `span_ns` older than the newest. A sample older
    /// than the newest takes its place in time order; one at the same time as another replaces it
    /// (an agent's resent sample).
    pub fn push(&mut self, time_ns: i64, value: f64, span_ns: i64) {
        let at = self.samples.partition_point(|&(t, _)| t < time_ns);
        match self.samples.get_mut(at) {
            Some(same) if same.0 == time_ns => same.1 = value,
            _ => self.samples.insert(at, (time_ns, value)),
        }
        let Some(&(newest, _)) = self.samples.back() else {
            return;
        };
        let oldest_kept = newest.saturating_sub(span_ns.max(0));
        while self.samples.front().is_some_and(|&(t, _)| t < oldest_kept) {
            self.samples.pop_front();
        }
    }

    /// How many samples the window holds.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The aggregate over the window; `None` when it has too few samples for it (none, or one for
    /// increase and rate, or no time between first and last for rate).
    pub fn aggregate(&self, aggregate: Aggregate) -> Option<f64> {
        if self.samples.is_empty() || (aggregate.needs_two() && self.samples.len() < 2) {
            return None;
        }
        let values = || self.samples.iter().map(|&(_, v)| v);
        Some(match aggregate {
            Aggregate::Last => self.samples.back()?.1,
            Aggregate::Avg => values().sum::<f64>() / self.samples.len() as f64,
            Aggregate::Min => values().fold(f64::INFINITY, f64::min),
            Aggregate::Max => values().fold(f64::NEG_INFINITY, f64::max),
            Aggregate::Increase => self.increase(),
            Aggregate::Rate => {
                let span = self.samples.back()?.0 - self.samples.front()?.0;
                if span <= 0 {
                    return None;
                }
                self.increase() / (span as f64 / 1e9)
            }
        })
    }

    /// A counter's increase from the first sample to the last, resets counted as starting from
    /// zero.
    fn increase(&self) -> f64 {
        self.samples
            .iter()
            .zip(self.samples.iter().skip(1))
            .map(|(&(_, a), &(_, b))| if b >= a { b - a } else { b })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn window(samples: &[(i64, f64)], span_s: i64) -> Window {
        let mut w = Window::default();
        for &(t, v) in samples {
            w.push(t * S, v, span_s * S);
        }
        w
    }

    #[test]
    fn gauges_aggregate_over_the_samples_within_the_span_of_the_newest() {
        // 0 and 10 fall out once 80 arrives with a span of 60 s.
        let w = window(&[(0, 9.0), (10, 1.0), (20, 2.0), (40, 4.0), (80, 6.0)], 60);
        assert_eq!(w.len(), 3);
        assert_eq!(w.aggregate(Aggregate::Last), Some(6.0));
        assert_eq!(w.aggregate(Aggregate::Avg), Some(4.0));
        assert_eq!(w.aggregate(Aggregate::Min), Some(2.0));
        assert_eq!(w.aggregate(Aggregate::Max), Some(6.0));
        assert_eq!(Window::default().aggregate(Aggregate::Last), None);
    }

    #[test]
    fn a_late_sample_takes_its_place_and_a_resent_one_replaces_its_twin() {
        let w = window(&[(10, 1.0), (30, 3.0), (20, 2.0), (30, 3.5)], 60);
        assert_eq!(w.len(), 3);
        assert_eq!(w.aggregate(Aggregate::Last), Some(3.5));
        assert_eq!(w.aggregate(Aggregate::Increase), Some(2.5));
        // Too old for the window already: kept out.
        let w = window(&[(100, 1.0), (10, 50.0)], 60);
        assert_eq!(w.aggregate(Aggregate::Max), Some(1.0));
    }

    #[test]
    fn counters_increase_across_resets_and_their_rate_is_per_second() {
        // 100 → 160 (+60), reset to 30 (+30), → 50 (+20): 110 over 30 s.
        let w = window(&[(0, 100.0), (10, 160.0), (20, 30.0), (30, 50.0)], 300);
        assert_eq!(w.aggregate(Aggregate::Increase), Some(110.0));
        let rate = w.aggregate(Aggregate::Rate).unwrap();
        assert!((rate - 110.0 / 30.0).abs() < 1e-9, "{rate}");
        let one = window(&[(0, 5.0)], 60);
        assert_eq!(one.aggregate(Aggregate::Increase), None);
        assert_eq!(one.aggregate(Aggregate::Rate), None);
    }

    #[test]
    fn comparisons_hold_as_written_and_never_on_nan() {
        let cases = [
            (Op::Gt, [false, false, true]),
            (Op::Ge, [false, true, true]),
            (Op::Lt, [true, false, false]),
            (Op::Le, [true, true, false]),
            (Op::Eq, [false, true, false]),
            (Op::Ne, [true, false, true]),
        ];
        for (op, expected) in cases {
            let got = [0.5, 0.9, 1.0].map(|v| op.holds(v, 0.9));
            assert_eq!(got, expected, "{op:?}");
            assert!(!op.holds(f64::NAN, 0.9), "{op:?} on NaN");
        }
    }
}
