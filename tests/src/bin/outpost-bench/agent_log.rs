//! What an agent's log says about its run: the `shipper summary` it writes on SIGTERM, and how
//! long it took to connect.
//!
//! Lines look like `2025-06-01T10:00:00.123456Z  INFO <message> key=value ...` (tracing's plain
//! format, no colours in files).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// The fields of one agent's `shipper summary` log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShipperSummary {
    pub events_acked: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

/// What one agent's log told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentLog {
    pub summary: ShipperSummary,
    /// From `outpost-agent starting` to the first `connected to the aggregator`: the QUIC and
    /// TLS handshake plus Hello/Welcome, including any retransmissions of lost packets.
    pub connect: Duration,
}

/// Reads the agent's log files (`outpost-agent.log.<date>`) in `dir`.
pub fn read(dir: &Path) -> anyhow::Result<AgentLog> {
    let entries =
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot list", dir.display()))?;
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("outpost-agent"))
        })
        .collect();
    // Date-stamped names sort in time order.
    paths.sort();
    let mut text = String::new();
    for p in &paths {
        text.push_str(
            &std::fs::read_to_string(p).with_context(|| format!("{}: cannot read", p.display()))?,
        );
    }
    let summary = parse_shipper_summary(&text).with_context(|| {
        format!(
            "{}: no complete `shipper summary` line in the agent's log",
            dir.display()
        )
    })?;
    let connect = parse_connect_time(&text).with_context(|| {
        format!(
            "{}: no `outpost-agent starting` followed by `connected to the aggregator`",
            dir.display()
        )
    })?;
    Ok(AgentLog { summary, connect })
}

/// Finds the last `shipper summary` line and reads its fields; `None` if there is no such line
/// or it lacks a field (the agent did not shut down cleanly, or the format changed).
pub fn parse_shipper_summary(log: &str) -> Option<ShipperSummary> {
    let line = log.lines().rev().find(|l| l.contains("shipper summary"))?;
    let fields: BTreeMap<&str, u64> = line
        .split_whitespace()
        .filter_map(|token| token.split_once('='))
        .filter_map(|(k, v)| Some((k, v.parse().ok()?)))
        .collect();
    Some(ShipperSummary {
        events_acked: *fields.get("events_acked")?,
        p50_us: *fields.get("ack_latency_p50_us")?,
        p99_us: *fields.get("ack_latency_p99_us")?,
        max_us: *fields.get("ack_latency_max_us")?,
    })
}

/// The time between the first `outpost-agent starting` line and the first `connected to the
/// aggregator` line after it.
pub fn parse_connect_time(log: &str) -> Option<Duration> {
    let mut lines = log.lines();
    let start = lines
        .by_ref()
        .find(|l| l.contains("outpost-agent starting"))
        .and_then(line_time_ns)?;
    let connected = lines
        .find(|l| l.contains("connected to the aggregator"))
        .and_then(line_time_ns)?;
    let ns = u64::try_from(connected - start).ok()?;
    Some(Duration::from_nanos(ns))
}

/// The timestamp opening a log line, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, as ns since the epoch.
fn line_time_ns(line: &str) -> Option<i64> {
    let stamp = line.split_whitespace().next()?.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|v| v.parse::<i64>().ok());
    let (year, month, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.splitn(3, ':').map(|v| v.parse::<i64>().ok());
    let (h, m, s) = (t.next()??, t.next()??, t.next()??);
    if fraction.len() > 9 || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac_ns = format!("{fraction:0<9}").parse::<i64>().ok()?;
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s;
    Some(secs * 1_000_000_000 + frac_ns)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "2025-06-01T10:00:00.000001Z  INFO shipper summary batches_sent=12 \
                           batches_acked=12 events_acked=10001 ack_latency_p50_us=1500 \
                           ack_latency_p99_us=9000 ack_latency_max_us=12000";

    #[test]
    fn the_last_summary_line_is_read() {
        let earlier = SUMMARY.replace("=1500", "=1");
        let log = format!("x INFO outpost-agent starting\n{earlier}\n{SUMMARY}\nx INFO stopped\n");
        let s = parse_shipper_summary(&log).unwrap();
        assert_eq!(
            s,
            ShipperSummary {
                events_acked: 10001,
                p50_us: 1500,
                p99_us: 9000,
                max_us: 12000
            }
        );
    }

    #[test]
    fn a_missing_summary_line_or_field_is_none() {
        assert_eq!(
            parse_shipper_summary("x INFO outpost-agent stopped\n"),
            None
        );
        let cut = SUMMARY.replace(" ack_latency_max_us=12000", "");
        assert_eq!(parse_shipper_summary(&cut), None);
        let garbled = SUMMARY.replace("=9000", "=nine");
        assert_eq!(parse_shipper_summary(&garbled), None);
    }

    #[test]
    fn timestamps_are_read_to_the_nanosecond() {
        assert_eq!(line_time_ns("1970-01-01T00:00:00Z x"), Some(0));
        assert_eq!(
            line_time_ns("1970-01-02T00:00:01.5Z  INFO x"),
            Some(86_401_500_000_000)
        );
        // 2000-03-01 is day 11017 (after a leap day in a year divisible by 400).
        assert_eq!(
            line_time_ns("2000-03-01T00:00:00.000000001Z"),
            Some(11_017 * 86_400 * 1_000_000_000 + 1)
        );
        assert_eq!(line_time_ns("2000-03-01T00:00:00"), None);
        assert_eq!(line_time_ns("2000-03-01T00:00:00.x1Z"), None);
        assert_eq!(line_time_ns("INFO shutting down"), None);
    }

    #[test]
    fn connect_time_spans_start_to_first_connection_even_across_midnight() {
        let log = "2025-06-01T23:59:59.900000Z  INFO outpost-agent starting agent_id=a\n\
                   2025-06-02T00:00:01.150000Z  INFO connected to the aggregator max_in_flight=32\n\
                   2025-06-02T00:00:09.000000Z  INFO connected to the aggregator max_in_flight=32\n";
        assert_eq!(parse_connect_time(log), Some(Duration::from_millis(1250)));
        let never = "2025-06-01T23:59:59.900000Z  INFO outpost-agent starting agent_id=a\n";
        assert_eq!(parse_connect_time(never), None);
    }
}
