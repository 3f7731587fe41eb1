//! `system.disk.*` from `/proc/diskstats`: cumulative counters per device.

use outpost_common::event::MetricPoint;
use procfs::Current;

use super::{Family, Filter, Points};

/// `/proc/diskstats` counts 512-byte sectors whatever the device's block size.
const SECTOR_BYTES: f64 = 512.0;

/// The disk family.
#[derive(Debug)]
pub struct Disk {
    devices: Filter,
}

impl Disk {
    pub fn new(devices: Filter) -> Self {
        Disk { devices }
    }
}

impl Family for Disk {
    fn name(&self) -> &'static str {
        "disk"
    }

    fn collect(&mut self, now_ns: i64) -> Result<Vec<MetricPoint>, String> {
        let stats = procfs::DiskStats::current().map_err(|e| format!("/proc/diskstats: {e}"))?;
        let mut p = Points::new(now_ns);
        for d in stats.0.iter().filter(|d| self.devices.matches(&d.name)) {
            let dev = d.name.as_str();
            let read = [("device", dev), ("direction", "read")];
            let write = [("device", dev), ("direction", "write")];
            p.counter(
                "system.disk.io",
                "By",
                d.sectors_read as f64 * SECTOR_BYTES,
                &read,
            );
            p.counter(
                "system.disk.io",
                "By",
                d.sectors_written as f64 * SECTOR_BYTES,
                &write,
            );
            p.counter(
                "system.disk.operations",
                "{operation}",
                d.reads as f64,
                &read,
            );
            p.counter(
                "system.disk.operations",
                "{operation}",
                d.writes as f64,
                &write,
            );
            p.counter(
                "system.disk.io_time",
                "s",
                d.time_in_progress as f64 / 1000.0,
                &[("device", dev)],
            );
        }
        Ok(p.points)
    }
}
