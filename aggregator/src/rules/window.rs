//! A metric series' recent samples, and the aggregates a threshold rule compares: last, avg,
//! min, max; for counters increase and rate; for change and trend the change over the window, the
//! slope of a least-squares line, and the time until that line reaches a target (a filesystem
//! full within a day); and for anomalies the z-score of the newest sample against the others.
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
    /// The newest sample minus the oldest: the change over the window.
    Delta,
    /// The slope of the least-squares line through the window, per second.
    Slope,
    /// Seconds until the least-squares line reaches the rule's `target`, from the newest sample;
    /// none once it is past the target, while it moves away from it, or when it is flat (that a
    /// filesystem is full now is a `last` rule's to say).
    Forecast,
    /// How many standard deviations the newest sample lies from the mean of the others.
    Zscore,
}

impl Aggregate {
    /// The fewest samples it is computed from, unless a rule asks for more.
    pub fn least_samples(self) -> usize {
        match self {
            Aggregate::Last | Aggregate::Avg | Aggregate::Min | Aggregate::Max => 1,
            Aggregate::Increase
            | Aggregate::Rate
            | Aggregate::Delta
            | Aggregate::Slope
            | Aggregate::Forecast => 2,
            Aggregate::Zscore => 10,
        }
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

    /// The aggregate over the window, with the least samples it needs; see [`Window::measure`].
    pub fn aggregate(&self, aggregate: Aggregate) -> Option<f64> {
        self.measure(aggregate, aggregate.least_samples(), None)
    }

    /// The aggregate over the window; `None` when it has fewer than `min_samples` (or than the
    /// aggregate needs), or cannot be computed (no time between the samples, a forecast without
    /// a `target` or moving away from it, a z-score of samples that never vary).
    pub fn measure(
        &self,
        aggregate: Aggregate,
        min_samples: usize,
        target: Option<f64>,
    ) -> Option<f64> {
        if self.samples.len() < min_samples.max(aggregate.least_samples()) {
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
            Aggregate::Delta => self.samples.back()?.1 - self.samples.front()?.1,
            Aggregate::Slope => self.line()?.0,
            Aggregate::Forecast => {
                let (slope, at_newest) = self.line()?;
                let seconds = (target? - at_newest) / slope;
                // Negative: the line is past the target or moves away from it; infinite or NaN:
                // flat.
                return (seconds.is_finite() && seconds >= 0.0).then_some(seconds);
            }
            Aggregate::Zscore => {
                let newest = self.samples.back()?.1;
                let others = self
                    .samples
                    .range(..self.samples.len() - 1)
                    .map(|&(_, v)| v);
                let n = (self.samples.len() - 1) as f64;
                let mean = others.clone().sum::<f64>() / n;
                let var = others.map(|x| (x - mean).powi(2)).sum::<f64>() / n;
                if var <= 0.0 {
                    return None;
                }
                (newest - mean) / var.sqrt()
            }
        })
    }

    /// The least-squares line through the samples: its slope per second, and its value at the
    /// newest sample's time. `None` when every sample has the same time.
    fn line(&self) -> Option<(f64, f64)> {
        let t0 = self.samples.back()?.0;
        let points = || {
            self.samples
                .iter()
                .map(move |&(t, v)| ((t - t0) as f64 / 1e9, v))
        };
        let n = self.samples.len() as f64;
        let (mean_t, mean_v) = points().fold((0.0, 0.0), |(a, b), (t, v)| (a + t / n, b + v / n));
        let (cov, var) = points().fold((0.0, 0.0), |(c, w), (t, v)| {
            (c + (t - mean_t) * (v - mean_v), w + (t - mean_t).powi(2))
        });
        if var <= 0.0 {
            return None;
        }
        let slope = cov / var;
        Some((slope, mean_v - slope * mean_t))
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
    fn change_slope_and_forecast_follow_the_line_through_the_window() {
        // A filesystem filling by 0.01 an hour from 0.5, sampled every 10 minutes for 6 hours.
        let hour = 3600;
        let samples: Vec<(i64, f64)> = (0..=36)
            .map(|i| (i * 600, 0.5 + 0.01 * (i * 600) as f64 / hour as f64))
            .collect();
        let w = window(&samples, 6 * hour);
        let close = |got: Option<f64>, want: f64| {
            let got = got.unwrap();
            assert!(
                (got - want).abs() < 1e-6 * want.abs().max(1.0),
                "{got} against {want}"
            );
        };
        close(w.aggregate(Aggregate::Delta), 0.06);
        close(w.aggregate(Aggregate::Slope), 0.01 / hour as f64);
        // At 0.56 now, 0.44 to go at 0.01 an hour: 44 hours.
        close(
            w.measure(Aggregate::Forecast, 2, Some(1.0)),
            44.0 * hour as f64,
        );
        // Past the target, moving away from one, or flat: no forecast.
        assert_eq!(w.measure(Aggregate::Forecast, 2, Some(0.3)), None);
        let falling = window(&[(0, 0.5), (600, 0.4)], hour);
        assert_eq!(falling.measure(Aggregate::Forecast, 2, Some(1.0)), None);
        let flat = window(&[(0, 0.5), (600, 0.5)], hour);
        assert_eq!(flat.measure(Aggregate::Forecast, 2, Some(1.0)), None);
        // More samples asked for than the window holds: nothing yet.
        assert_eq!(w.measure(Aggregate::Slope, 100, None), None);
        assert_eq!(w.measure(Aggregate::Forecast, 2, None), None);
    }

    #[test]
    fn a_zscore_says_how_far_the_newest_sample_is_from_the_others() {
        // Ten samples alternating 9 and 11 (mean 10, deviation 1), then 14: four deviations.
        let mut samples: Vec<(i64, f64)> = (0..10)
            .map(|i| (i, if i % 2 == 0 { 9.0 } else { 11.0 }))
            .collect();
        samples.push((10, 14.0));
        let w = window(&samples, 60);
        assert_eq!(w.aggregate(Aggregate::Zscore), Some(4.0));
        // Too few samples for a baseline, or a baseline that never varies: none.
        assert_eq!(window(&samples[..5], 60).aggregate(Aggregate::Zscore), None);
        let steady: Vec<(i64, f64)> = (0..12).map(|i| (i, 1.0)).collect();
        assert_eq!(window(&steady, 60).aggregate(Aggregate::Zscore), None);
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
