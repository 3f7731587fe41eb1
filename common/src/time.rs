//! Time as Outpost represents it: `i64` nanoseconds since the Unix epoch, UTC.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Nanoseconds per second.
pub const NANOS_PER_SEC: i64 = 1_000_000_000;

/// The current wall-clock time in nanoseconds since the Unix epoch.
///
/// A clock before 1970 reads as 0 and one past the year 2262 saturates at `i64::MAX`.
pub fn now_ns() -> i64 {
    to_ns(SystemTime::now())
}

/// Converts a [`SystemTime`] to nanoseconds since the epoch, saturating at the ends.
pub fn to_ns(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(_) => 0,
    }
}

/// A duration in nanoseconds, saturating at `i64::MAX`.
pub fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Formats nanoseconds since the epoch as RFC 3339 (UTC, seconds precision).
pub fn format_rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(NANOS_PER_SEC);
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime_serde::re::humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_epoch_and_saturates() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_rfc3339(1_700_000_000 * NANOS_PER_SEC),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(duration_ns(Duration::MAX), i64::MAX);
        assert!(now_ns() > 1_700_000_000 * NANOS_PER_SEC);
    }
}
