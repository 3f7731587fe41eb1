//! Each host's latest load at a glance (CPU, memory, fullest filesystem), derived from its
//! metric points. Pure: no store, no clock.

use outpost_common::event::MetricPoint;
use serde::Serialize;

/// The OpenTelemetry name of the CPU utilisation gauge (0..1, attribute `state`; per-core points
/// also carry `cpu`).
pub const CPU_UTILIZATION: &str = "system.cpu.utilization";
/// The OpenTelemetry name of the memory utilisation gauge (0..1, attribute `state`).
pub const MEMORY_UTILIZATION: &str = "system.memory.utilization";
/// The OpenTelemetry name of the filesystem utilisation gauge (0..1, attributes `device`, `type`,
/// `mountpoint`).
pub const FILESYSTEM_UTILIZATION: &str = "system.filesystem.utilization";

/// A host's latest load at a glance, kept beside the registry so fleet status needs no query
/// over the metrics table. Each value carries the agent's time of the point it came from.
///
/// Built by [`HostSummary::observe`] from metric points in any order: a point older than the
/// value held is ignored, so batches resent or delivered late cannot roll the summary back.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostSummary {
    /// Busy fraction of all CPUs (1 − idle of the host total) and its time.
    pub cpu_busy: Option<(f64, i64)>,
    /// Used fraction of memory and its time.
    pub memory_used: Option<(f64, i64)>,
    /// The fullest filesystem of the latest collection: mountpoint, used fraction, time.
    pub fullest_fs: Option<(String, f64, i64)>,
}

impl HostSummary {
    /// Takes in one metric point; points that are not one of the three summarised gauges, that
    /// are per-core, or whose value is not finite change nothing.
    pub fn observe(&mut self, m: &MetricPoint) {
        if !m.value.is_finite() {
            return;
        }
        let attr = |key: &str| {
            m.attributes
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        match m.name.as_str() {
            CPU_UTILIZATION if attr("cpu").is_none() && attr("state") == Some("idle") => {
                // Rounding in the agent can put idle a hair above 1.
                let busy = (1.0 - m.value).clamp(0.0, 1.0);
                keep_latest(&mut self.cpu_busy, busy, m.time_ns);
            }
            MEMORY_UTILIZATION if attr("state") == Some("used") => {
                keep_latest(&mut self.memory_used, m.value, m.time_ns);
            }
            FILESYSTEM_UTILIZATION => {
                if let Some(mountpoint) = attr("mountpoint") {
                    self.observe_filesystem(mountpoint, m.value, m.time_ns);
                }
            }
            _ => {}
        }
    }

    /// Takes in another summary as if its points had been observed here.
    pub fn merge(&mut self, other: &HostSummary) {
        if let Some((value, time_ns)) = other.cpu_busy {
            keep_latest(&mut self.cpu_busy, value, time_ns);
        }
        if let Some((value, time_ns)) = other.memory_used {
            keep_latest(&mut self.memory_used, value, time_ns);
        }
        if let Some((mountpoint, value, time_ns)) = &other.fullest_fs {
            self.observe_filesystem(mountpoint, *value, *time_ns);
        }
    }

    /// Whether nothing is known.
    pub fn is_empty(&self) -> bool {
        self.cpu_busy.is_none() && self.memory_used.is_none() && self.fullest_fs.is_none()
    }

    /// The points of one time form one collection: a newer collection replaces the fullest
    /// filesystem, within the same one the largest value wins (the first seen on a tie).
    fn observe_filesystem(&mut self, mountpoint: &str, value: f64, time_ns: i64) {
        let replace = match &self.fullest_fs {
            None => true,
            Some((_, held, held_ns)) => {
                time_ns > *held_ns || (time_ns == *held_ns && value > *held)
            }
        };
        if replace {
            self.fullest_fs = Some((mountpoint.to_owned(), value, time_ns));
        }
    }
}

/// Replaces `slot` unless it holds a newer value; on equal times the later observed wins.
fn keep_latest(slot: &mut Option<(f64, i64)>, value: f64, time_ns: i64) {
    if slot.is_none_or(|(_, held_ns)| time_ns >= held_ns) {
        *slot = Some((value, time_ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testutil::point;

    fn observed(points: &[MetricPoint]) -> HostSummary {
        let mut s = HostSummary::default();
        for p in points {
            s.observe(p);
        }
        s
    }

    #[test]
    fn cpu_is_one_minus_the_idle_share_of_the_host_total() {
        let s = observed(&[
            point(CPU_UTILIZATION, &[("state", "user")], 10, 0.6),
            point(
                CPU_UTILIZATION,
                &[("cpu", "cpu0"), ("state", "idle")],
                10,
                0.1,
            ),
            point(CPU_UTILIZATION, &[("state", "idle")], 10, 0.75),
            point(
                CPU_UTILIZATION,
                &[("cpu", "cpu1"), ("state", "idle")],
                20,
                0.9,
            ),
        ]);
        assert_eq!(s.cpu_busy, Some((0.25, 10)));
        // An idle share a hair above 1 reads as not busy at all.
        let s = observed(&[point(CPU_UTILIZATION, &[("state", "idle")], 10, 1.000_001)]);
        assert_eq!(s.cpu_busy, Some((0.0, 10)));
    }

    #[test]
    fn memory_is_the_used_share() {
        let s = observed(&[
            point(MEMORY_UTILIZATION, &[("state", "free")], 10, 0.3),
            point(MEMORY_UTILIZATION, &[("state", "used")], 10, 0.43),
            point(MEMORY_UTILIZATION, &[("state", "cached")], 10, 0.2),
        ]);
        assert_eq!(s.memory_used, Some((0.43, 10)));
        assert_eq!((s.cpu_busy, s.fullest_fs), (None, None));
    }

    #[test]
    fn older_points_do_not_replace_newer_ones() {
        let s = observed(&[
            point(MEMORY_UTILIZATION, &[("state", "used")], 20, 0.5),
            point(MEMORY_UTILIZATION, &[("state", "used")], 10, 0.9),
            point(CPU_UTILIZATION, &[("state", "idle")], 20, 0.5),
            point(CPU_UTILIZATION, &[("state", "idle")], 10, 0.0),
        ]);
        assert_eq!(s.memory_used, Some((0.5, 20)));
        assert_eq!(s.cpu_busy, Some((0.5, 20)));
    }

    #[test]
    fn the_fullest_filesystem_comes_from_the_latest_collection() {
        let fs = |mountpoint, time_ns, value| {
            point(
                FILESYSTEM_UTILIZATION,
                &[
                    ("device", "/dev/sda1"),
                    ("type", "ext4"),
                    ("mountpoint", mountpoint),
                ],
                time_ns,
                value,
            )
        };
        let first = [fs("/", 10, 0.5), fs("/var", 10, 0.87), fs("/home", 10, 0.2)];
        assert_eq!(
            observed(&first).fullest_fs,
            Some(("/var".to_owned(), 0.87, 10))
        );
        // The next collection: /var was cleaned up, so / is now the fullest, even though /var's
        // old value is higher.
        let mut both = first.to_vec();
        both.extend([fs("/", 20, 0.6), fs("/var", 20, 0.3)]);
        assert_eq!(observed(&both).fullest_fs, Some(("/".to_owned(), 0.6, 20)));
        // Late points of the older collection change nothing.
        both.push(fs("/home", 10, 0.99));
        assert_eq!(observed(&both).fullest_fs, Some(("/".to_owned(), 0.6, 20)));
        // Without a mountpoint a point cannot be named, so it is skipped.
        let s = observed(&[point(FILESYSTEM_UTILIZATION, &[("device", "x")], 30, 0.9)]);
        assert_eq!(s.fullest_fs, None);
    }

    #[test]
    fn other_metrics_and_non_finite_values_change_nothing() {
        let s = observed(&[
            point("system.memory.usage", &[("state", "used")], 10, 1e9),
            point(MEMORY_UTILIZATION, &[("state", "used")], 10, f64::NAN),
            point(CPU_UTILIZATION, &[("state", "idle")], 10, f64::INFINITY),
            point(FILESYSTEM_UTILIZATION, &[("mountpoint", "/")], 10, f64::NAN),
        ]);
        assert!(s.is_empty(), "{s:?}");
    }

    #[test]
    fn merging_equals_observing_everything_in_one() {
        let points = [
            point(CPU_UTILIZATION, &[("state", "idle")], 20, 0.5),
            point(MEMORY_UTILIZATION, &[("state", "used")], 20, 0.4),
            point(FILESYSTEM_UTILIZATION, &[("mountpoint", "/")], 20, 0.3),
            point(FILESYSTEM_UTILIZATION, &[("mountpoint", "/var")], 20, 0.8),
            point(CPU_UTILIZATION, &[("state", "idle")], 10, 0.9),
            point(FILESYSTEM_UTILIZATION, &[("mountpoint", "/srv")], 10, 0.95),
        ];
        let whole = observed(&points);
        for split in 0..=points.len() {
            let (a, b) = points.split_at(split);
            let mut merged = observed(a);
            merged.merge(&observed(b));
            assert_eq!(merged, whole, "split at {split}");
            let mut merged = observed(b);
            merged.merge(&observed(a));
            assert_eq!(merged, whole, "split at {split}, reversed");
        }
    }
}
