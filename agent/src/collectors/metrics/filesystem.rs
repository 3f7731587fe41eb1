//! `system.filesystem.*` from `/proc/mounts` and `statvfs`.
//!
//! States follow df: `used = blocks - bfree`, `free = bavail` (what unprivileged users can
//! still write), `reserved = bfree - bavail` (kept for root), so the three sum to the size.
//! Utilization is df's `Use%`: `used / (used + free)`, that is, leaving the reserved blocks out.
//! statvfs can hang on a dead network mount: the runner's deadline covers that.

use std::collections::HashSet;

use outpost_common::event::MetricPoint;
use procfs::Current;

use super::{Family, Filter, Points};

/// The filesystem family.
#[derive(Debug)]
pub struct Filesystem {
    mountpoints: Filter,
    types: Filter,
}

impl Filesystem {
    pub fn new(mountpoints: Filter, types: Filter) -> Self {
        Filesystem { mountpoints, types }
    }
}

/// Sizes of one filesystem, in bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub used: u64,
    pub free: u64,
    pub reserved: u64,
    pub inodes_used: u64,
    pub inodes_free: u64,
}

impl Usage {
    /// Reads the filesystem mounted at `path`.
    pub fn of(path: &str) -> Result<Usage, String> {
        let s = nix::sys::statvfs::statvfs(path).map_err(|e| format!("statvfs {path}: {e}"))?;
        let frsize = s.fragment_size();
        let (blocks, bfree, bavail) = (s.blocks(), s.blocks_free(), s.blocks_available());
        Ok(Usage {
            used: blocks.saturating_sub(bfree) * frsize,
            free: bavail * frsize,
            reserved: bfree.saturating_sub(bavail) * frsize,
            inodes_used: s.files().saturating_sub(s.files_free()),
            inodes_free: s.files_free(),
        })
    }

    /// df's `Use%`, as a fraction.
    pub fn utilization(&self) -> f64 {
        let denominator = self.used + self.free;
        if denominator == 0 {
            0.0
        } else {
            self.used as f64 / denominator as f64
        }
    }
}

impl Family for Filesystem {
    fn name(&self) -> &'static str {
        "filesystem"
    }

    fn collect(&mut self, now_ns: i64) -> Result<Vec<MetricPoint>, String> {
        let mounts =
            Vec::<procfs::MountEntry>::current().map_err(|e| format!("/proc/mounts: {e}"))?;
        let mut p = Points::new(now_ns);
        let mut seen = HashSet::new();
        for m in mounts {
            let mountpoint = unescape(&m.fs_file);
            if !self.types.matches(&m.fs_vfstype)
                || !self.mountpoints.matches(&mountpoint)
                || !seen.insert(mountpoint.clone())
            {
                continue;
            }
            let u = match Usage::of(&mountpoint) {
                Ok(u) => u,
                Err(e) => {
                    // One unreadable mount (permissions, a vanished bind mount) must not hide
                    // the others.
                    tracing::debug!(error = %e, "filesystem skipped");
                    continue;
                }
            };
            let device = unescape(&m.fs_spec);
            let attrs = |state| {
                [
                    ("device", device.as_str()),
                    ("type", m.fs_vfstype.as_str()),
                    ("mountpoint", mountpoint.as_str()),
                    ("state", state),
                ]
            };
            p.gauge(
                "system.filesystem.usage",
                "By",
                u.used as f64,
                &attrs("used"),
            );
            p.gauge(
                "system.filesystem.usage",
                "By",
                u.free as f64,
                &attrs("free"),
            );
            p.gauge(
                "system.filesystem.usage",
                "By",
                u.reserved as f64,
                &attrs("reserved"),
            );
            p.gauge(
                "system.filesystem.utilization",
                "1",
                u.utilization(),
                &attrs("")[..3],
            );
            let used = u.inodes_used as f64;
            p.gauge(
                "system.filesystem.inodes.usage",
                "{inode}",
                used,
                &attrs("used"),
            );
            let free = u.inodes_free as f64;
            p.gauge(
                "system.filesystem.inodes.usage",
                "{inode}",
                free,
                &attrs("free"),
            );
            // A file system with no inode table (btrfs reports zero) has no ratio to watch.
            if used + free > 0.0 {
                p.gauge(
                    "system.filesystem.inodes.utilization",
                    "1",
                    used / (used + free),
                    &attrs("")[..3],
                );
            }
        }
        Ok(p.points)
    }
}

/// Undoes the octal escapes (`\040` for a space) of `/proc/mounts`.
fn unescape(s: &str) -> String {
    if !s.contains('\\') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (b[i], octal) {
            (b'\\', Some(c)) => {
                out.push(c);
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mount_escapes_are_undone() {
        assert_eq!(super::unescape("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(super::unescape("/plain"), "/plain");
        assert_eq!(super::unescape("/odd\\"), "/odd\\");
    }
}
