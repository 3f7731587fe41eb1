//! Facts about the host, reported in Hello.

use outpost_common::event::HostFacts;
use sysinfo::{MemoryRefreshKind, RefreshKind, System};

/// Reads the host's name, OS, kernel, architecture, CPU count, memory and boot time.
pub fn facts() -> HostFacts {
    let sys = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    HostFacts {
        hostname: System::host_name().unwrap_or_default(),
        os: System::long_os_version().unwrap_or_default(),
        kernel: System::kernel_version().unwrap_or_default(),
        arch: System::cpu_arch(),
        cpus: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
        memory_bytes: sys.map(|s| s.total_memory()).unwrap_or(0),
        boot_time_ns: System::boot_time()
            .ok()
            .and_then(|t| i64::try_from(t).ok())
            .unwrap_or(0)
            .saturating_mul(1_000_000_000),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_host() {
        let f = super::facts();
        assert!(!f.hostname.is_empty());
        assert!(f.cpus >= 1);
        assert!(f.memory_bytes > 0);
        assert!(f.boot_time_ns > 0);
    }
}
