//! When the scheduled scans run: every interval, at an offset within it fixed per host, so a
//! fleet spreads its scans instead of all hashing at the same moment. Pure but for
//! [`host_identity`].

use std::time::Duration;

/// The offset of this host's scans within each interval: in `[0, jitter)`, derived from
/// `identity` (the same host always gets the same one).
pub fn phase(identity: &[u8], jitter: Duration) -> Duration {
    let jitter_ns = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
    if jitter_ns == 0 {
        return Duration::ZERO;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, identity);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    Duration::from_nanos(u64::from_be_bytes(first) % jitter_ns)
}

/// How long from `now_ns` until the next scan: the next time `t > now` with
/// `t ≡ phase (mod interval)`, counted from the Unix epoch.
pub fn until_next(now_ns: i64, interval: Duration, phase: Duration) -> Duration {
    let interval_ns = i128::try_from(interval.as_nanos())
        .unwrap_or(i128::MAX)
        .max(1);
    let phase_ns = i128::try_from(phase.as_nanos()).unwrap_or(0) % interval_ns;
    let now = i128::from(now_ns);
    let since = (now - phase_ns).rem_euclid(interval_ns);
    let wait = interval_ns - since;
    Duration::from_nanos(u64::try_from(wait).unwrap_or(u64::MAX))
}

/// What identifies this host: its machine id, else its host name.
pub fn host_identity() -> Vec<u8> {
    for path in ["/etc/machine-id", "/proc/sys/kernel/hostname"] {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return s.trim().as_bytes().to_vec();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_phase_is_fixed_per_host_and_spread_across_hosts() {
        assert_eq!(phase(b"host-a", HOUR), phase(b"host-a", HOUR));
        assert!(phase(b"host-a", HOUR) < HOUR);
        let phases: std::collections::HashSet<Duration> = (0..50)
            .map(|i| phase(format!("host-{i}").as_bytes(), HOUR))
            .collect();
        assert!(phases.len() > 45, "{}", phases.len());
        assert_eq!(phase(b"host-a", Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn the_next_scan_falls_on_the_phase_of_an_interval() {
        let interval = 12 * HOUR;
        let phase = Duration::from_secs(600);
        let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap();
        // Just after the epoch's first interval began: wait for the phase.
        assert_eq!(until_next(0, interval, phase), phase);
        // At the phase exactly: a whole interval.
        assert_eq!(until_next(ns(phase), interval, phase), interval);
        // One second after it.
        assert_eq!(
            until_next(ns(phase) + 1_000_000_000, interval, phase),
            interval - Duration::from_secs(1)
        );
        // Far from the epoch, the wait still lands on the phase.
        let now = ns(1000 * interval) + ns(Duration::from_secs(5));
        let wait = until_next(now, interval, phase);
        assert_eq!(
            (now + ns(wait)) % ns(interval),
            ns(phase),
            "lands on the phase"
        );
        assert!(wait <= interval);
    }
}
