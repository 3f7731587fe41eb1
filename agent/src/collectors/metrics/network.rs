//! `system.network.*` from `/proc/net/dev`: cumulative counters per interface.

use outpost_common::event::MetricPoint;
use procfs::Current;

use super::{Family, Filter, Points};

/// The network family.
#[derive(Debug)]
pub struct Network {
    interfaces: Filter,
}

impl Network {
    pub fn new(interfaces: Filter) -> Self {
        Network { interfaces }
    }
}

impl Family for Network {
    fn name(&self) -> &'static str {
        "network"
    }

    fn collect(&mut self, now_ns: i64) -> Result<Vec<MetricPoint>, String> {
        let devs = procfs::net::InterfaceDeviceStatus::current()
            .map_err(|e| format!("/proc/net/dev: {e}"))?;
        let mut names: Vec<&String> = devs.0.keys().collect();
        names.sort();
        let mut p = Points::new(now_ns);
        for name in names.into_iter().filter(|n| self.interfaces.matches(n)) {
            let Some(d) = devs.0.get(name) else { continue };
            let rx = [("device", name.as_str()), ("direction", "receive")];
            let tx = [("device", name.as_str()), ("direction", "transmit")];
            let pairs = [
                ("system.network.io", "By", d.recv_bytes, d.sent_bytes),
                (
                    "system.network.packets",
                    "{packet}",
                    d.recv_packets,
                    d.sent_packets,
                ),
                ("system.network.errors", "{error}", d.recv_errs, d.sent_errs),
                (
                    "system.network.dropped",
                    "{packet}",
                    d.recv_drop,
                    d.sent_drop,
                ),
            ];
            for (metric, unit, r, t) in pairs {
                p.counter(metric, unit, r as f64, &rx);
                p.counter(metric, unit, t as f64, &tx);
            }
        }
        Ok(p.points)
    }
}
