//! What one run measured, and the tables printed at the end.
//!
//! Everything here is pure (text in, text out), so the arithmetic that ends up in
//! `BENCHMARKS.md` — medians, MiB, percentages, the ack-latency aggregation — is unit-tested.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::agent_log::ShipperSummary;

/// The figures of one run of one configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// Concurrent agents.
    pub agents: usize,
    /// 1-based run number within the configuration.
    pub run: usize,
    /// Log events committed (pre-filled into the spools, found in the store).
    pub events: u64,
    /// Encoded payload bytes of those events, as the spools hold and the wire carries them.
    pub payload_bytes: u64,
    /// From spawning the first agent to seeing the last event committed (t1 - t0).
    pub elapsed: Duration,
    /// From spawning the first agent to seeing the first event committed: the start-up share.
    pub first_commit: Duration,
    /// The highest commit rate over any [`PEAK_WINDOW`] of the run, events per second: what the
    /// pipeline does while everything flows, next to the average over the whole run.
    pub peak_events_per_sec: f64,
    /// Acknowledgement latency over all agents, see [`AckLatency::over_agents`].
    pub ack: AckLatency,
    /// The agents' connection times (handshake until Welcome): the median and the slowest.
    pub connect_p50: Duration,
    pub connect_max: Duration,
    /// Aggregator CPU over [t0, t1], percent of one core (200 % is both cores of this machine).
    pub aggregator_cpu_pct: f64,
    /// The same, split by thread name (tokio workers share one name).
    pub aggregator_threads_pct: BTreeMap<String, f64>,
    /// Aggregator peak resident set (VmHWM), MiB.
    pub aggregator_rss_mib: f64,
    /// All agents together over [t0, t1], percent of one core.
    pub agents_cpu_pct: f64,
    /// This benchmark process (mostly polling the store) over [t0, t1], percent of one core.
    pub bench_cpu_pct: f64,
    /// The machine's busy time in the second before t0, percent of one core: the load other
    /// processes put on the machine as the run started.
    pub background_pct: f64,
    /// The whole machine's busy time over [t0, t1], percent of one core; what is neither the
    /// aggregator nor the agents is this benchmark itself and whatever else runs on the machine.
    pub machine_busy_pct: f64,
    /// Time the machine's cores spent idle waiting for I/O, percent of one core.
    pub machine_iowait_pct: f64,
    /// Datagrams the kernel dropped at the aggregator's UDP socket for want of receive buffer.
    pub udp_drops: u64,
    /// Datagrams the machine received over [t0, t1], all sockets (with GSO/GRO on loopback, one
    /// counted datagram may carry several QUIC packets).
    pub udp_datagrams_in: u64,
}

impl RunResult {
    /// Committed events per second over [t0, t1].
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / secs(self.elapsed)
    }

    /// Committed payload MiB per second over [t0, t1].
    pub fn mib_per_sec(&self) -> f64 {
        self.payload_bytes as f64 / MIB / secs(self.elapsed)
    }

    /// Events per second from the first commit on, leaving out process start and handshakes;
    /// 0 when everything was committed at once and there is no span to divide by.
    pub fn steady_events_per_sec(&self) -> f64 {
        let span = self.elapsed.saturating_sub(self.first_commit);
        if span.is_zero() {
            return 0.0;
        }
        self.events as f64 / span.as_secs_f64()
    }

    /// Dropped datagrams as a percentage of those that reached the machine's sockets or were
    /// dropped at the aggregator's.
    pub fn udp_drop_pct(&self) -> f64 {
        let total = self.udp_datagrams_in + self.udp_drops;
        if total == 0 {
            return 0.0;
        }
        self.udp_drops as f64 * 100.0 / total as f64
    }

    /// CPU of everything but the aggregator, the agents and this benchmark: other processes,
    /// and kernel work not charged to any process (such as some loopback packet processing).
    pub fn other_cpu_pct(&self) -> f64 {
        (self.machine_busy_pct - self.aggregator_cpu_pct - self.agents_cpu_pct - self.bench_cpu_pct)
            .max(0.0)
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// Seconds, never zero, so a rate is always finite.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1e-9)
}

/// Acknowledgement latency of a run, aggregated over its agents' summaries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AckLatency {
    /// The median of the agents' own p50s, in microseconds.
    pub p50_us: f64,
    /// The largest of the agents' own p99s: the worst agent's tail.
    pub p99_us: f64,
    /// The largest single latency any agent saw.
    pub max_us: f64,
}

impl AckLatency {
    /// Each agent keeps its own histogram and reports only percentiles, which cannot be merged
    /// exactly; the median of p50s is the typical agent, the max of p99s bounds every agent's tail.
    pub fn over_agents(summaries: &[ShipperSummary]) -> AckLatency {
        let p50s: Vec<f64> = summaries.iter().map(|s| s.p50_us as f64).collect();
        let max_of =
            |f: fn(&ShipperSummary) -> u64| summaries.iter().map(f).max().unwrap_or(0) as f64;
        AckLatency {
            p50_us: median(&p50s),
            p99_us: max_of(|s| s.p99_us),
            max_us: max_of(|s| s.max_us),
        }
    }
}

/// The span over which [`peak_rate`] measures.
pub const PEAK_WINDOW: Duration = Duration::from_millis(250);

/// The highest rate between two samples at least `window` apart, given `(time, count)` samples
/// of a growing count in time order; 0 if the samples never span `window`.
pub fn peak_rate(samples: &[(Duration, u64)], window: Duration) -> f64 {
    let mut best = 0.0f64;
    let mut j = 0;
    for &(t, count) in samples {
        // Advance to the latest sample still at least `window` before this one.
        while j + 1 < samples.len() && t.saturating_sub(samples[j + 1].0) >= window {
            j += 1;
        }
        let (tj, cj) = samples[j];
        let span = t.saturating_sub(tj);
        if span >= window {
            best = best.max(count.saturating_sub(cj) as f64 / span.as_secs_f64());
        }
    }
    best
}

/// The median duration of a set; zero for none.
pub fn median_duration(values: &[Duration]) -> Duration {
    let secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    Duration::from_secs_f64(median(&secs))
}

/// The median (the mean of the middle two for an even count); 0 for no values.
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// One column of the medians table: its heading and how to read it from a run.
type Column = (&'static str, fn(&RunResult) -> f64, usize);

const MEDIAN_COLUMNS: &[Column] = &[
    ("events/s", RunResult::events_per_sec, 0),
    ("MiB/s", RunResult::mib_per_sec, 1),
    ("ack p50 ms", |r| r.ack.p50_us / 1000.0, 1),
    ("ack p99 ms", |r| r.ack.p99_us / 1000.0, 1),
    ("aggregator CPU %", |r| r.aggregator_cpu_pct, 0),
    ("aggregator peak RSS MiB", |r| r.aggregator_rss_mib, 0),
    ("agents CPU %", |r| r.agents_cpu_pct, 0),
];

/// The medians per agent count, one row each, in the order the counts first appear. Each column's
/// median is taken on its own, so a row need not be any single run.
pub fn medians_table(results: &[RunResult]) -> String {
    let mut out = String::from("| agents | runs |");
    let mut rule = String::from("|---:|---:|");
    for (name, _, _) in MEDIAN_COLUMNS {
        let _ = write!(out, " {name} |");
        rule.push_str("---:|");
    }
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for agents in agent_counts(results) {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.agents == agents).collect();
        let _ = write!(out, "| {agents} | {} |", runs.len());
        for (_, read, decimals) in MEDIAN_COLUMNS {
            let values: Vec<f64> = runs.iter().map(|r| read(r)).collect();
            let _ = write!(out, " {} |", number(median(&values), *decimals));
        }
        out.push('\n');
    }
    out
}

/// One column of the table of every run: heading, right-aligned, and the cell of a run.
type RawColumn = (&'static str, bool, fn(&RunResult) -> String);

const RAW_COLUMNS: &[RawColumn] = &[
    ("agents", true, |r| r.agents.to_string()),
    ("run", true, |r| r.run.to_string()),
    ("events", true, |r| r.events.to_string()),
    ("seconds", true, |r| number(r.elapsed.as_secs_f64(), 2)),
    ("first commit s", true, |r| {
        number(r.first_commit.as_secs_f64(), 2)
    }),
    ("events/s", true, |r| number(r.events_per_sec(), 0)),
    ("steady events/s", true, |r| {
        number(r.steady_events_per_sec(), 0)
    }),
    ("peak events/s", true, |r| number(r.peak_events_per_sec, 0)),
    ("MiB/s", true, |r| number(r.mib_per_sec(), 1)),
    ("ack p50 ms", true, |r| number(r.ack.p50_us / 1000.0, 1)),
    ("ack p99 ms", true, |r| number(r.ack.p99_us / 1000.0, 1)),
    ("ack max ms", true, |r| number(r.ack.max_us / 1000.0, 1)),
    ("connect p50 ms", true, |r| millis(r.connect_p50)),
    ("connect max ms", true, |r| millis(r.connect_max)),
    ("aggregator CPU %", true, |r| {
        number(r.aggregator_cpu_pct, 0)
    }),
    ("of which threads %", false, |r| {
        let threads: Vec<String> = r
            .aggregator_threads_pct
            .iter()
            .map(|(name, pct)| format!("{name} {pct:.0}"))
            .collect();
        threads.join(", ")
    }),
    ("peak RSS MiB", true, |r| number(r.aggregator_rss_mib, 0)),
    ("agents CPU %", true, |r| number(r.agents_cpu_pct, 0)),
    ("bench CPU %", true, |r| number(r.bench_cpu_pct, 0)),
    ("other CPU %", true, |r| number(r.other_cpu_pct(), 0)),
    ("machine busy %", true, |r| number(r.machine_busy_pct, 0)),
    ("iowait %", true, |r| number(r.machine_iowait_pct, 0)),
    ("busy before %", true, |r| number(r.background_pct, 0)),
    ("UDP drops", true, |r| r.udp_drops.to_string()),
    ("UDP drop %", true, |r| number(r.udp_drop_pct(), 1)),
];

/// Every run's figures, including those the medians table leaves out: start-up time, the rate
/// after the first commit, the aggregator's threads, where the rest of the CPU went, and the
/// datagrams dropped at the aggregator's socket.
pub fn raw_table(results: &[RunResult]) -> String {
    let mut out = String::from("|");
    let mut rule = String::from("|");
    for (name, right, _) in RAW_COLUMNS {
        let _ = write!(out, " {name} |");
        rule.push_str(if *right { "---:|" } else { "---|" });
    }
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for agents in agent_counts(results) {
        for r in results.iter().filter(|r| r.agents == agents) {
            out.push('|');
            for (_, _, cell) in RAW_COLUMNS {
                let _ = write!(out, " {} |", cell(r));
            }
            out.push('\n');
        }
    }
    out
}

/// The agent counts present, in first-seen order.
fn agent_counts(results: &[RunResult]) -> Vec<usize> {
    let mut counts = Vec::new();
    for r in results {
        if !counts.contains(&r.agents) {
            counts.push(r.agents);
        }
    }
    counts
}

fn millis(d: Duration) -> String {
    number(d.as_secs_f64() * 1000.0, 0)
}

fn number(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(agents: usize, run: usize, secs: f64, rss: f64) -> RunResult {
        RunResult {
            agents,
            run,
            events: 1_000_000,
            payload_bytes: 200 * 1_000_000,
            elapsed: Duration::from_secs_f64(secs),
            first_commit: Duration::from_secs_f64(secs / 4.0),
            peak_events_per_sec: 600_000.0,
            connect_p50: Duration::from_millis(20),
            connect_max: Duration::from_millis(3020),
            ack: AckLatency {
                p50_us: 2000.0,
                p99_us: 8000.0,
                max_us: 9000.0,
            },
            aggregator_cpu_pct: 100.0,
            aggregator_threads_pct: BTreeMap::from([("store-writer".to_owned(), 60.0)]),
            aggregator_rss_mib: rss,
            agents_cpu_pct: 50.0,
            bench_cpu_pct: 5.0,
            background_pct: 10.0,
            machine_busy_pct: 190.0,
            machine_iowait_pct: 3.0,
            udp_drops: 50,
            udp_datagrams_in: 950,
        }
    }

    #[test]
    fn peak_rate_is_the_steepest_stretch_of_at_least_the_window() {
        let ms = Duration::from_millis;
        let samples = [
            (ms(0), 0),
            (ms(100), 0),
            (ms(200), 1000),
            (ms(300), 5000),
            (ms(400), 9000),
            (ms(500), 10_000),
        ];
        // Steepest 250 ms or more: 100 ms -> 400 ms, 9000 events in 0.3 s.
        assert!((peak_rate(&samples, ms(250)) - 30_000.0).abs() < 1e-6);
        assert!((peak_rate(&samples, ms(500)) - 20_000.0).abs() < 1e-6);
        assert_eq!(peak_rate(&samples, ms(600)), 0.0);
        assert_eq!(peak_rate(&[], ms(250)), 0.0);
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
        let ms = Duration::from_millis;
        assert_eq!(median_duration(&[ms(30), ms(10), ms(20)]), ms(20));
    }

    #[test]
    fn ack_latency_is_the_median_p50_and_the_worst_p99() {
        let s = |p50, p99, max| ShipperSummary {
            events_acked: 1,
            p50_us: p50,
            p99_us: p99,
            max_us: max,
        };
        let a = AckLatency::over_agents(&[s(10, 900, 950), s(30, 100, 120), s(20, 500, 5000)]);
        assert_eq!(
            a,
            AckLatency {
                p50_us: 20.0,
                p99_us: 900.0,
                max_us: 5000.0
            }
        );
    }

    #[test]
    fn rates_come_from_events_bytes_and_elapsed_time() {
        let r = result(1, 1, 4.0, 50.0);
        assert_eq!(r.events_per_sec(), 250_000.0);
        assert!((r.mib_per_sec() - 200e6 / MIB / 4.0).abs() < 1e-9);
        assert_eq!(r.steady_events_per_sec(), 1_000_000.0 / 3.0);
        let at_once = RunResult {
            first_commit: r.elapsed,
            ..r.clone()
        };
        assert_eq!(at_once.steady_events_per_sec(), 0.0);
        assert_eq!(r.other_cpu_pct(), 35.0);
        assert_eq!(r.udp_drop_pct(), 5.0);
    }

    #[test]
    fn medians_are_taken_per_agent_count_and_per_column() {
        let results = [
            result(1, 1, 5.0, 40.0),
            result(10, 1, 2.0, 90.0),
            result(1, 2, 4.0, 60.0),
            result(1, 3, 10.0, 50.0),
        ];
        let table = medians_table(&results);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 4, "{table}");
        assert!(rows[0].starts_with("| agents | runs | events/s | MiB/s |"));
        // Runs of 1 agent took 4, 5 and 10 s: the median rate is that of the 5 s run, and the
        // median RSS (50) comes from another run than the median rate.
        assert!(
            rows[2].starts_with("| 1 | 3 | 200000 | 38.1 | 2.0 | 8.0 | 100 | 50 | 50 |"),
            "{table}"
        );
        assert!(rows[3].starts_with("| 10 | 1 | 500000 |"), "{table}");
    }

    #[test]
    fn the_raw_table_has_a_row_per_run_grouped_by_agent_count() {
        let results = [
            result(1, 1, 5.0, 40.0),
            result(10, 1, 2.0, 90.0),
            result(1, 2, 4.0, 60.0),
        ];
        let table = raw_table(&results);
        let rows: Vec<&str> = table.lines().skip(2).collect();
        assert_eq!(rows.len(), 3);
        assert!(rows[0].starts_with(
            "| 1 | 1 | 1000000 | 5.00 | 1.25 | 200000 | 266667 | 600000 | 38.1 | 2.0 | 8.0 | 9.0 \
             | 20 | 3020 |"
        ), "{table}");
        assert!(rows[1].starts_with("| 1 | 2 |"));
        assert!(rows[2].starts_with("| 10 | 1 |"));
        assert!(rows[0].contains("| store-writer 60 |"), "{table}");
        assert!(rows[0].ends_with("| 50 | 5.0 |"), "{table}");
        let header_cells = table.lines().next().unwrap().matches('|').count();
        assert_eq!(rows[0].matches('|').count(), header_cells);
    }
}
