//! What one simulated host produces, and when: a pure generator driven by the caller's clock.
//!
//! - **Host metrics** every `metrics_interval` (10 s by default, the agent's default): the real
//!   default metric families of this machine's agent ([`crate::hostsim`]), values moving the way
//!   the agent's would, each host starting at a random phase so a fleet does not pulse.
//! - **Log lines** at `log_lines_per_sec` on average (Poisson arrivals), gathered the way the
//!   agent's file tailer gathers them: a submission is due `log_linger` (200 ms) after its first
//!   line. Each line carries its number in the attribute `sim.seq`, for the loss check.
//! - **File-integrity changes** at `fim_per_hour` on average, with the tamper-evident trail
//!   (`seq`, `chain`) the aggregator verifies; each path is unique (`/etc/sim/<n>.conf`).
//!
//! Heartbeats are the shipper's own (every 10 s, on the control stream).

use std::sync::Arc;
use std::time::{Duration, Instant};

use outpost_common::event::{
    CHAIN_GENESIS, Event, FileKind, FileState, FimChange, FimDetection, FimEvent, LogRecord,
    Severity, chain_hash,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::hostsim::{Family, round_points};

/// The source name of simulated log lines.
pub const LOG_SOURCE: &str = "sim";

/// How much a simulated host produces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    pub metrics_interval: Duration,
    pub log_lines_per_sec: f64,
    pub log_linger: Duration,
    pub fim_per_hour: f64,
}

impl Default for Rates {
    fn default() -> Self {
        Rates {
            metrics_interval: Duration::from_secs(10),
            log_lines_per_sec: 1.0,
            log_linger: Duration::from_millis(200),
            fim_per_hour: 6.0,
        }
    }
}

/// Typical log lines, by severity; the host's number and the line's are added to each.
const LINES: [(Severity, &str); 6] = [
    (
        Severity::Info,
        "sshd[2211]: Accepted publickey for deploy from 10.0.4.17 port 51234 ssh2: ED25519 SHA256:",
    ),
    (
        Severity::Info,
        "systemd[1]: Started Session 4711 of User deploy; CRON[88123]: (root) CMD (run-parts /etc/cron.hourly)",
    ),
    (
        Severity::Notice,
        "kernel: [ 8812.331245] EXT4-fs (vda1): re-mounted. Opts: errors=remount-ro. Quota mode: none.",
    ),
    (
        Severity::Warning,
        "nginx[1432]: upstream response is buffered to a temporary file /var/cache/nginx/proxy_temp/3/01/",
    ),
    (
        Severity::Info,
        "app[3321]: GET /api/orders?page=3 200 12.4ms user=4411 request_id=7f3e2a",
    ),
    (
        Severity::Error,
        "app[3321]: payment provider timeout after 5000ms, retrying (attempt 2 of 3) order=",
    ),
];

/// One simulated host's generator.
#[derive(Debug)]
pub struct SimHost {
    index: u64,
    hostname: String,
    template: Arc<Vec<Family>>,
    values: Vec<Vec<f64>>,
    value_rng: u64,
    rng: SmallRng,
    rates: Rates,
    next_metrics: Instant,
    next_line: Option<Instant>,
    /// The lines gathered for the next submission, and when it is due.
    gathered: Vec<Event>,
    gathered_due: Option<Instant>,
    next_fim: Option<Instant>,
    /// Metric rounds made.
    round: i64,
    lines: u64,
    fim_seq: u64,
    fim_chain: String,
}

/// An exponentially distributed wait with mean `1 / rate`; `None` for a rate of 0.
fn poisson_wait(rng: &mut SmallRng, rate_per_sec: f64) -> Option<Duration> {
    if rate_per_sec <= 0.0 || !rate_per_sec.is_finite() {
        return None;
    }
    let u: f64 = rng.random_range(f64::MIN_POSITIVE..1.0);
    Some(Duration::from_secs_f64(
        (-u.ln() / rate_per_sec).min(86_400.0),
    ))
}

impl SimHost {
    /// Host number `index`, starting at `now` with a random phase.
    pub fn new(
        index: u64,
        hostname: String,
        template: Arc<Vec<Family>>,
        rates: Rates,
        seed: u64,
        now: Instant,
    ) -> SimHost {
        let mut rng = SmallRng::seed_from_u64(seed);
        let phase = rates.metrics_interval.mul_f64(rng.random_range(0.0..1.0));
        let next_line = poisson_wait(&mut rng, rates.log_lines_per_sec).map(|w| now + w);
        let next_fim = poisson_wait(&mut rng, rates.fim_per_hour / 3600.0).map(|w| now + w);
        SimHost {
            index,
            hostname,
            values: template.iter().map(|f| vec![0.0; f.points.len()]).collect(),
            template,
            value_rng: seed | 1,
            rng,
            rates,
            next_metrics: now + phase,
            next_line,
            gathered: Vec::new(),
            gathered_due: None,
            next_fim,
            round: 0,
            lines: 0,
            fim_seq: 0,
            fim_chain: CHAIN_GENESIS.to_owned(),
        }
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    /// When the generator next has something to do.
    pub fn poll_timeout(&self) -> Instant {
        [
            Some(self.next_metrics),
            self.next_line,
            self.gathered_due,
            self.next_fim,
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.next_metrics)
    }

    /// Everything due at `now` (`now_ns` on the wall clock), as submissions for the spool.
    pub fn handle_timeout(&mut self, now: Instant, now_ns: i64) -> Vec<Vec<Event>> {
        let mut out = Vec::new();
        if self.next_metrics <= now {
            let points = self.metrics(now_ns);
            if !points.is_empty() {
                out.push(points);
            }
            // Keeps the phase; skips rounds missed by a stalled caller rather than bursting.
            while self.next_metrics <= now {
                self.next_metrics += self.rates.metrics_interval;
            }
        }
        while let Some(at) = self.next_line.filter(|at| *at <= now) {
            let line = self.line(now_ns);
            self.gathered.push(line);
            self.gathered_due.get_or_insert(at + self.rates.log_linger);
            self.next_line =
                poisson_wait(&mut self.rng, self.rates.log_lines_per_sec).map(|w| at + w);
        }
        if self.gathered_due.is_some_and(|due| due <= now) {
            self.gathered_due = None;
            out.push(std::mem::take(&mut self.gathered));
        }
        while let Some(at) = self.next_fim.filter(|at| *at <= now) {
            out.push(vec![self.fim(now_ns)]);
            self.next_fim =
                poisson_wait(&mut self.rng, self.rates.fim_per_hour / 3600.0).map(|w| at + w);
        }
        out
    }

    /// Lines gathered and not yet due, handed over at once (the host is stopping).
    pub fn flush(&mut self) -> Vec<Event> {
        self.gathered_due = None;
        std::mem::take(&mut self.gathered)
    }

    /// Stops making new events (the run's end); what is gathered is still due.
    pub fn stop(&mut self) {
        self.next_line = None;
        self.next_fim = None;
        self.next_metrics = Instant::now() + Duration::from_secs(86_400 * 365);
    }

    fn metrics(&mut self, now_ns: i64) -> Vec<Event> {
        // A round is the template's shortest interval; families with a longer one are due every
        // so many rounds.
        let tick = self
            .template
            .iter()
            .map(|f| f.interval_ns)
            .min()
            .unwrap_or(1)
            .max(1);
        let due = self.round.saturating_mul(tick);
        self.round += 1;
        let t = now_ns - now_ns.rem_euclid(1_000_000);
        let mut points = round_points(&self.template, &mut self.values, &mut self.value_rng, due);
        for p in &mut points {
            if let Event::Metric(m) = p {
                m.time_ns = t;
            }
        }
        points
    }

    fn line(&mut self, now_ns: i64) -> Event {
        let n = self.lines;
        self.lines += 1;
        let (severity, text) = LINES[self.rng.random_range(0..LINES.len())];
        Event::Log(LogRecord {
            time_ns: now_ns,
            source: LOG_SOURCE.to_owned(),
            severity: Some(severity),
            body: format!("{} {text}{n:08x}", self.hostname),
            attributes: vec![("sim.seq".to_owned(), n.to_string())],
        })
    }

    fn fim(&mut self, now_ns: i64) -> Event {
        self.fim_seq += 1;
        let state = |size: u64| {
            Box::new(FileState {
                kind: FileKind::File,
                size,
                mode: 0o100_644,
                uid: 0,
                gid: 0,
                mtime_ns: now_ns,
                ctime_ns: now_ns,
                inode: 1000 + self.fim_seq,
                device: 2049,
                nlink: 1,
                link_target: None,
                xattrs: None,
                hash: Some(format!("sha256:{:064x}", self.index << 32 | self.fim_seq)),
                too_large_to_hash: false,
            })
        };
        let mut event = FimEvent {
            time_ns: now_ns,
            path: format!("/etc/sim/{}.conf", self.fim_seq),
            change: FimChange::Created,
            changed: Vec::new(),
            moved_from: None,
            before: None,
            after: Some(state(512)),
            detected_by: FimDetection::Realtime,
            seq: self.fim_seq,
            chain: String::new(),
        };
        event.chain = chain_hash(&self.fim_chain, &event);
        self.fim_chain.clone_from(&event.chain);
        Event::Fim(event)
    }
}

#[cfg(test)]
mod tests {
    use outpost_common::event::{MetricKind, MetricPoint};

    use super::*;

    fn template() -> Arc<Vec<Family>> {
        let point = |name: &str| MetricPoint {
            name: name.to_owned(),
            unit: "1".to_owned(),
            attributes: Vec::new(),
            time_ns: 0,
            value: 0.0,
            kind: MetricKind::Gauge,
        };
        Arc::new(vec![Family {
            interval_ns: 10_000_000_000,
            points: vec![point("cpu.busy"), point("memory.used")],
        }])
    }

    /// Steps `host` from `start` to `end`, waking when it asks; the submissions made.
    fn drive(host: &mut SimHost, start: Instant, end: Instant) -> Vec<Vec<Event>> {
        let mut out = Vec::new();
        let mut now = start;
        while now < end {
            let ns = i64::try_from((now - start).as_nanos()).unwrap_or(i64::MAX) + 1_000_000_000;
            out.extend(host.handle_timeout(now, ns));
            now = host.poll_timeout().max(now + Duration::from_micros(1));
        }
        out
    }

    #[test]
    fn rates_over_an_hour_are_what_was_asked() {
        let t0 = Instant::now();
        let rates = Rates {
            log_lines_per_sec: 2.0,
            fim_per_hour: 60.0,
            ..Rates::default()
        };
        let mut host = SimHost::new(7, "h7".into(), template(), rates, 42, t0);
        let subs = drive(&mut host, t0, t0 + Duration::from_secs(3600));
        let all: Vec<&Event> = subs.iter().flatten().collect();
        let metrics = all.iter().filter(|e| matches!(e, Event::Metric(_))).count();
        let logs = all.iter().filter(|e| matches!(e, Event::Log(_))).count();
        let fim = all.iter().filter(|e| matches!(e, Event::Fim(_))).count();
        assert_eq!(metrics, 360 * 2, "two points every 10 s");
        assert!((6_800..=7_600).contains(&logs), "{logs} lines, about 7,200");
        assert!((40..=85).contains(&fim), "{fim} changes, about 60");
        // Lines are gathered: fewer submissions than lines, none later than the linger.
        let log_subs = subs
            .iter()
            .filter(|s| matches!(s[0], Event::Log(_)))
            .count();
        assert!(log_subs < logs, "{log_subs} submissions for {logs} lines");
    }

    #[test]
    fn lines_are_numbered_and_the_trail_chains() {
        let t0 = Instant::now();
        let rates = Rates {
            fim_per_hour: 600.0,
            ..Rates::default()
        };
        let mut host = SimHost::new(1, "h1".into(), template(), rates, 1, t0);
        let subs = drive(&mut host, t0, t0 + Duration::from_secs(600));
        let seqs: Vec<u64> = subs
            .iter()
            .flatten()
            .filter_map(|e| match e {
                Event::Log(l) => l.attributes[0].1.parse().ok(),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, (0..seqs.len() as u64).collect::<Vec<_>>());
        let mut chain = CHAIN_GENESIS.to_owned();
        let mut n = 0;
        for e in subs.iter().flatten() {
            if let Event::Fim(f) = e {
                n += 1;
                assert_eq!(f.seq, n);
                assert_eq!(f.chain, chain_hash(&chain, f));
                chain.clone_from(&f.chain);
            }
        }
        assert!(n > 0);
    }

    #[test]
    fn a_stopped_host_hands_over_what_it_gathered() {
        let t0 = Instant::now();
        let rates = Rates {
            log_lines_per_sec: 1000.0,
            ..Rates::default()
        };
        let mut host = SimHost::new(1, "h1".into(), template(), rates, 3, t0);
        let _ = host.handle_timeout(t0 + Duration::from_millis(50), 1);
        host.stop();
        assert!(!host.flush().is_empty());
        assert!(host.flush().is_empty());
    }
}
