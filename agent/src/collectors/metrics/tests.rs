use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};

use outpost_common::event::MetricKind;

use super::*;

/// A family that returns one point per collection and counts its collections.
struct Ticking(Arc<AtomicUsize>);

impl Family for Ticking {
    fn name(&self) -> &'static str {
        "ticking"
    }

    fn collect(&mut self, now_ns: i64) -> Result<Vec<MetricPoint>, String> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let mut p = Points::new(now_ns);
        p.gauge("test.tick", "1", 1.0, &[]);
        Ok(p.points)
    }
}

/// A family whose collection never returns until the test drops `release`'s sender.
struct Stuck {
    started: Arc<AtomicUsize>,
    release: std::sync::mpsc::Receiver<()>,
}

impl Family for Stuck {
    fn name(&self) -> &'static str {
        "stuck"
    }

    fn collect(&mut self, _now_ns: i64) -> Result<Vec<MetricPoint>, String> {
        self.started.fetch_add(1, Ordering::SeqCst);
        let _ = self.release.recv();
        Err("released".to_owned())
    }
}

/// Fails on its first collection, succeeds afterwards.
struct FailsOnce(bool);

impl Family for FailsOnce {
    fn name(&self) -> &'static str {
        "flaky"
    }

    fn collect(&mut self, now_ns: i64) -> Result<Vec<MetricPoint>, String> {
        if !std::mem::replace(&mut self.0, true) {
            return Err("first read failed".to_owned());
        }
        let mut p = Points::new(now_ns);
        p.counter("test.flaky", "1", 1.0, &[]);
        Ok(p.points)
    }
}

fn scheduled(family: impl Family, ms: u64) -> Scheduled {
    Scheduled {
        family: Box::new(family),
        interval: Duration::from_millis(ms),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_family_is_reported_and_does_not_delay_the_others() {
    let ticks = Arc::new(AtomicUsize::new(0));
    let stuck_started = Arc::new(AtomicUsize::new(0));
    let (release, blocked) = std::sync::mpsc::channel();
    let telemetry = Arc::new(Telemetry::new());
    let (out, mut points) = mpsc::channel(64);
    let (stop_tx, stop) = watch::channel(false);
    let runner = tokio::spawn(run(
        vec![
            scheduled(Ticking(ticks.clone()), 10),
            scheduled(
                Stuck {
                    started: stuck_started.clone(),
                    release: blocked,
                },
                10,
            ),
        ],
        Duration::from_millis(30),
        out,
        Reporter::new("metrics", telemetry.clone()),
        stop,
    ));
    // Real time, waiting on conditions: the ticking family's batches arrive while the stuck one
    // is reported as still running, however slow the machine is.
    let stuck_reason = || {
        telemetry
            .collector_errors()
            .into_iter()
            .find(|e| e.collector == "metrics.stuck")
            .map(|e| e.reason)
    };
    let mut batches = 0;
    let waited = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(batch) = points.recv().await {
            assert!(batch.iter().all(|p| p.name == "test.tick"), "{batch:?}");
            batches += 1;
            let skipped = stuck_reason().is_some_and(|r| r.contains("still running since"));
            if batches >= 10 && skipped {
                break;
            }
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "batches {batches}, stuck: {:?}",
        stuck_reason()
    );
    assert_eq!(
        stuck_started.load(Ordering::SeqCst),
        1,
        "a hung collection must not be started again"
    );
    assert!(
        telemetry
            .collector_errors()
            .iter()
            .all(|e| e.collector != "metrics.ticking")
    );
    assert!(
        telemetry
            .collector_durations()
            .iter()
            .any(|(c, _)| c == "metrics.ticking")
    );
    stop_tx.send(true).unwrap();
    runner.await.unwrap();
    drop(release);
}

#[tokio::test(start_paused = true)]
async fn a_failing_family_is_reported_then_recovered() {
    let telemetry = Arc::new(Telemetry::new());
    let (out, mut points) = mpsc::channel(8);
    let (stop_tx, stop) = watch::channel(false);
    let runner = tokio::spawn(run(
        vec![scheduled(FailsOnce(false), 1000)],
        Duration::from_secs(5),
        out,
        Reporter::new("metrics", telemetry.clone()),
        stop,
    ));
    // Collections complete before their deadline, so paused time only skips the intervals.
    let first = points.recv().await.unwrap();
    assert_eq!(first[0].name, "test.flaky");
    // The first collection failed before this success, which cleared the report.
    assert!(telemetry.collector_errors().is_empty());
    assert_eq!(telemetry.collector_durations()[0].0, "metrics.flaky");
    stop_tx.send(true).unwrap();
    runner.await.unwrap();
}

#[test]
fn a_family_failure_is_visible_before_recovery() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async {
        let telemetry = Arc::new(Telemetry::new());
        let (out, _points) = mpsc::channel(8);
        let (_stop_tx, stop) = watch::channel(false);
        // The next collection, which would recover, is an hour of paused time away.
        let family = scheduled(FailsOnce(false), 3_600_000);
        let task = tokio::spawn(drive(
            family,
            Duration::from_secs(5),
            out,
            Reporter::new("metrics.flaky", telemetry.clone()),
            stop,
        ));
        // Wait on the condition, advancing paused time between looks.
        for _ in 0..1_000_000 {
            if !telemetry.collector_errors().is_empty() {
                break;
            }
            tokio::task::yield_now().await;
            tokio::time::advance(Duration::from_micros(1)).await;
        }
        let e = &telemetry.collector_errors()[0];
        assert_eq!(e.collector, "metrics.flaky");
        assert_eq!(e.reason, "first read failed");
        task.abort();
    });
}

fn parse(text: &str) -> MetricsConfig {
    toml::from_str(text).unwrap()
}

fn names(families: &[Scheduled]) -> Vec<(&'static str, u64)> {
    families
        .iter()
        .map(|s| (s.family.name(), s.interval.as_secs()))
        .collect()
}

#[test]
fn defaults_and_per_family_overrides() {
    let d = MetricsConfig::default();
    assert!(d.enabled);
    assert_eq!(d.interval, Duration::from_secs(10));
    assert_eq!(d.deadline, Duration::from_secs(5));
    let all = d.families(agent::Sources::none()).unwrap();
    assert_eq!(
        names(&all),
        [
            ("cpu", 10),
            ("memory", 10),
            ("filesystem", 10),
            ("disk", 10),
            ("network", 10),
            ("system", 10),
            ("agent", 10)
        ]
    );
    let c = parse(
        "interval = \"20s\"\n[cpu]\ninterval = \"1s\"\n[disk]\nenabled = false\n\
         [process]\nenabled = true\nnames = [\"sshd\"]\n",
    );
    let names = names(&c.families(agent::Sources::none()).unwrap());
    assert!(names.contains(&("cpu", 1)), "{names:?}");
    assert!(names.contains(&("memory", 20)), "{names:?}");
    assert!(names.contains(&("process", 20)), "{names:?}");
    assert!(!names.iter().any(|(n, _)| *n == "disk"), "{names:?}");
    let off = parse("enabled = false\n");
    assert!(off.families(agent::Sources::none()).unwrap().is_empty());
}

#[test]
fn bad_options_are_refused_with_their_section() {
    let e = parse("[network]\nexclude = [\"a[\"]\n")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("metrics.network.exclude: glob `a[`"), "{e}");
    let e = parse("[process]\nenabled = true\n")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("metrics.process.names"), "{e}");
    let e = parse("deadline = \"0s\"\n")
        .validate()
        .unwrap_err()
        .to_string();
    assert!(e.contains("above zero"), "{e}");
    assert!(toml::from_str::<MetricsConfig>("[cpu]\ninclude = []\n").is_err());
}

#[test]
fn filters_apply_includes_excludes_and_default_excludes() {
    let f = Filter::new("i", None, "e", None, defaults::DISK_EXCLUDE).unwrap();
    assert!(f.matches("sda") && f.matches("nvme0n1"));
    assert!(!f.matches("loop3") && !f.matches("ram0"));
    let include = vec!["sd*".to_owned()];
    let f = Filter::new("i", Some(&include), "e", Some(&[]), &["sda"]).unwrap();
    assert!(f.matches("sda") && !f.matches("vda"));
    // A section that only sets the interval keeps the family's default excludes.
    let c = parse("[network]\ninterval = \"5s\"\n");
    let f = c
        .network
        .filter("network", defaults::NETWORK_EXCLUDE)
        .unwrap();
    assert!(!f.matches("lo") && f.matches("eth0"));
}

/// Runs `family` twice back to back (for the deltas) and returns the second collection.
fn collect_twice(family: &mut dyn Family) -> Vec<MetricPoint> {
    family.collect(now_ns()).unwrap();
    family.collect(now_ns()).unwrap()
}

/// Collects cpu until the kernel has ticked between two collections (a tick is 10 ms at most),
/// so utilization is present; returns that collection.
fn cpu_with_utilization() -> Vec<MetricPoint> {
    let mut cpu = cpu::Cpu::default();
    cpu.collect(now_ns()).unwrap();
    for _ in 0..1_000_000 {
        let points = cpu.collect(now_ns()).unwrap();
        let util = |n| {
            points
                .iter()
                .any(|p| p.name == "system.cpu.utilization" && p.attributes.len() == n)
        };
        if util(1) && util(2) {
            return points;
        }
    }
    panic!("no CPU tick in a million reads of /proc/stat");
}

fn value(points: &[MetricPoint], name: &str, attrs: &[(&str, &str)]) -> Option<f64> {
    points
        .iter()
        .find(|p| {
            p.name == name
                && attrs
                    .iter()
                    .all(|(k, v)| p.attributes.iter().any(|(pk, pv)| pk == k && pv == v))
        })
        .map(|p| p.value)
}

fn meminfo_bytes(field: &str) -> f64 {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap();
    let kib: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024.0
}

#[test]
fn memory_matches_proc_meminfo() {
    let points = memory::Memory.collect(now_ns()).unwrap();
    let total = meminfo_bytes("MemTotal");
    // Memory moves between the two reads: allow 5 % of the total or 64 MiB, whichever is more.
    let tolerance = (total * 0.05).max(64.0 * 1024.0 * 1024.0);
    let free = value(&points, "system.memory.usage", &[("state", "free")]).unwrap();
    assert!(
        (free - meminfo_bytes("MemFree")).abs() <= tolerance,
        "{free}"
    );
    let states = ["used", "free", "cached", "buffered"];
    let sum: f64 = states
        .iter()
        .map(|s| value(&points, "system.memory.usage", &[("state", s)]).unwrap())
        .sum();
    assert!((sum - total).abs() <= tolerance, "{sum} vs {total}");
    let used = value(&points, "system.memory.usage", &[("state", "used")]).unwrap();
    let expected = total
        - meminfo_bytes("MemFree")
        - meminfo_bytes("Buffers")
        - meminfo_bytes("Cached")
        - meminfo_bytes("SReclaimable");
    assert!((used - expected).abs() <= tolerance, "{used} vs {expected}");
    let u = value(&points, "system.memory.utilization", &[("state", "used")]).unwrap();
    assert!(
        (u - used / total).abs() < 0.01 && (0.0..=1.0).contains(&u),
        "{u}"
    );
}

#[test]
fn cpu_count_and_utilization_match_proc_stat() {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let cores = stat
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .count();
    let points = cpu_with_utilization();
    assert_eq!(
        value(&points, "system.cpu.logical.count", &[]),
        Some(cores as f64)
    );
    let total: f64 = points
        .iter()
        .filter(|p| p.name == "system.cpu.utilization" && p.attributes.len() == 1)
        .map(|p| p.value)
        .sum();
    assert!((total - 1.0).abs() < 1e-9, "{total}");
    let per_core: f64 = points
        .iter()
        .filter(|p| p.name == "system.cpu.utilization" && p.attributes.len() == 2)
        .map(|p| p.value)
        .sum();
    // Each core that ticked sums to 1; cores that did not tick are left out.
    assert!(per_core <= cores as f64 + 1e-9, "{per_core}");
    let load = std::fs::read_to_string("/proc/loadavg").unwrap();
    let one: f64 = load.split_whitespace().next().unwrap().parse().unwrap();
    let got = value(&points, "system.cpu.load_average.1m", &[]).unwrap();
    assert!((got - one).abs() < 0.5, "{got} vs {one}");
}

#[test]
fn root_filesystem_matches_statvfs() {
    let filter = |ex: &[&str]| Filter::new("i", None, "e", None, ex).unwrap();
    let mut fs = filesystem::Filesystem::new(filter(&[]), filter(&[]));
    let points = fs.collect(now_ns()).unwrap();
    let s = nix::sys::statvfs::statvfs("/").unwrap();
    let size = (s.blocks() * s.fragment_size()) as f64;
    let root = [("mountpoint", "/")];
    let state = |st| {
        value(
            &points,
            "system.filesystem.usage",
            &[("mountpoint", "/"), ("state", st)],
        )
        .unwrap()
    };
    let (used, free, reserved) = (state("used"), state("free"), state("reserved"));
    let expect_used = ((s.blocks() - s.blocks_free()) * s.fragment_size()) as f64;
    let expect_free = (s.blocks_available() * s.fragment_size()) as f64;
    let within = |a: f64, b: f64| (a - b).abs() <= size * 0.01;
    assert!(within(used, expect_used), "{used} vs {expect_used}");
    assert!(within(free, expect_free), "{free} vs {expect_free}");
    assert!(within(used + free + reserved, size));
    let u = value(&points, "system.filesystem.utilization", &root).unwrap();
    assert!((u - used / (used + free)).abs() < 0.01, "{u}");
    let inodes_free = value(
        &points,
        "system.filesystem.inodes.usage",
        &[("mountpoint", "/"), ("state", "free")],
    )
    .unwrap();
    let files = s.files() as f64;
    assert!((inodes_free - s.files_free() as f64).abs() <= files * 0.01 + 1.0);
    if files > 0.0 {
        let iu = value(&points, "system.filesystem.inodes.utilization", &root).unwrap();
        let expected = (files - s.files_free() as f64) / files;
        assert!((iu - expected).abs() < 0.01, "{iu} vs {expected}");
    }
}

#[test]
fn pseudo_filesystems_are_excluded_by_default() {
    let families = MetricsConfig::default()
        .families(agent::Sources::none())
        .unwrap();
    let mut fs = families
        .into_iter()
        .find(|s| s.family.name() == "filesystem")
        .unwrap()
        .family;
    let points = fs.collect(now_ns()).unwrap();
    for p in &points {
        let t = &p.attributes.iter().find(|(k, _)| k == "type").unwrap().1;
        assert!(
            !defaults::FILESYSTEM_EXCLUDE_TYPES.contains(&t.as_str()),
            "{p:?}"
        );
    }
}

#[test]
fn uptime_matches_proc_uptime() {
    let points = system::System.collect(now_ns()).unwrap();
    let text = std::fs::read_to_string("/proc/uptime").unwrap();
    let kernel: f64 = text.split_whitespace().next().unwrap().parse().unwrap();
    let got = value(&points, "system.uptime", &[]).unwrap();
    assert!((got - kernel).abs() <= 2.0, "{got} vs {kernel}");
    let counted: f64 = points
        .iter()
        .filter(|p| p.name == "system.processes.count")
        .map(|p| p.value)
        .sum();
    let listed = std::fs::read_dir("/proc")
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().bytes().all(|b| b.is_ascii_digit())
        })
        .count() as f64;
    // Processes come and go between the two listings.
    assert!(
        counted >= 1.0 && (counted - listed).abs() <= 50.0,
        "{counted} vs {listed}"
    );
}

/// Every family with everything included, collected twice; the points of the second round.
fn everything() -> Vec<MetricPoint> {
    let c = parse(
        "[disk]\nexclude = []\n[network]\nexclude = []\n\
         [process]\nenabled = true\nnames = [\"outpost*\"]\n",
    );
    let telemetry = Arc::new(Telemetry::new());
    telemetry.record_ack_latency(Duration::from_millis(3));
    telemetry.record_collector_duration("metrics.cpu", Duration::from_millis(2));
    telemetry.collector_failed("metrics.filesystem", "timeout".to_owned());
    let stats: agent::SpoolStatsFn = Box::new(|| {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let spool = crate::spool::Spool::open(crate::spool::SpoolConfig {
            max_batch_events: 10,
            max_batch_bytes: 1 << 16,
            ..crate::spool::SpoolConfig::new(dir.path().join("spool.db"), 1 << 20)
        })
        .map_err(|e| e.to_string())?;
        Ok(spool.stats())
    });
    let sources = agent::Sources {
        telemetry: Some(telemetry),
        spool: Some(stats),
    };
    let mut out = Vec::new();
    for mut s in c.families(sources).unwrap() {
        if s.family.name() == "cpu" {
            out.extend(cpu_with_utilization());
        } else {
            out.extend(collect_twice(s.family.as_mut()));
        }
    }
    out
}

#[test]
fn every_metric_has_its_name_unit_kind_and_attributes() {
    use MetricKind::{Counter, Gauge};
    let points = everything();
    // Name -> (unit, kind, attribute key sets).
    let mut seen: BTreeMap<&str, (&str, MetricKind, BTreeSet<Vec<&str>>)> = BTreeMap::new();
    for p in &points {
        let keys: Vec<&str> = p.attributes.iter().map(|(k, _)| k.as_str()).collect();
        let e = seen
            .entry(p.name.as_str())
            .or_insert((p.unit.as_str(), p.kind, BTreeSet::new()));
        assert_eq!(e.0, p.unit, "{} has two units", p.name);
        assert_eq!(e.1, p.kind, "{} has two kinds", p.name);
        e.2.insert(keys);
        assert!(p.value.is_finite(), "{p:?}");
    }
    let fs = ["device", "type", "mountpoint", "state"];
    let expected: &[(&str, &str, MetricKind, &[&[&str]])] = &[
        (
            "system.cpu.utilization",
            "1",
            Gauge,
            &[&["state"], &["cpu", "state"]],
        ),
        ("system.cpu.load_average.1m", "{thread}", Gauge, &[&[]]),
        ("system.cpu.load_average.5m", "{thread}", Gauge, &[&[]]),
        ("system.cpu.load_average.15m", "{thread}", Gauge, &[&[]]),
        ("system.cpu.logical.count", "{cpu}", Gauge, &[&[]]),
        ("system.memory.usage", "By", Gauge, &[&["state"]]),
        ("system.memory.utilization", "1", Gauge, &[&["state"]]),
        ("system.paging.usage", "By", Gauge, &[&["state"]]),
        ("system.filesystem.usage", "By", Gauge, &[&fs]),
        ("system.filesystem.utilization", "1", Gauge, &[&fs[..3]]),
        ("system.filesystem.inodes.usage", "{inode}", Gauge, &[&fs]),
        (
            "system.filesystem.inodes.utilization",
            "1",
            Gauge,
            &[&fs[..3]],
        ),
        ("system.disk.io", "By", Counter, &[&["device", "direction"]]),
        (
            "system.disk.operations",
            "{operation}",
            Counter,
            &[&["device", "direction"]],
        ),
        ("system.disk.io_time", "s", Counter, &[&["device"]]),
        (
            "system.network.io",
            "By",
            Counter,
            &[&["device", "direction"]],
        ),
        (
            "system.network.packets",
            "{packet}",
            Counter,
            &[&["device", "direction"]],
        ),
        (
            "system.network.errors",
            "{error}",
            Counter,
            &[&["device", "direction"]],
        ),
        (
            "system.network.dropped",
            "{packet}",
            Counter,
            &[&["device", "direction"]],
        ),
        ("system.processes.count", "{process}", Gauge, &[&["status"]]),
        ("system.uptime", "s", Gauge, &[&[]]),
        (
            "process.cpu.utilization",
            "1",
            Gauge,
            &[&["process.name", "process.pid"]],
        ),
        (
            "process.memory.rss",
            "By",
            Gauge,
            &[&["process.name", "process.pid"]],
        ),
        (
            "process.threads",
            "{thread}",
            Gauge,
            &[&["process.name", "process.pid"]],
        ),
        (
            "process.open_file_descriptors",
            "{file_descriptor}",
            Gauge,
            &[&["process.name", "process.pid"]],
        ),
        ("outpost.agent.cpu.time", "s", Counter, &[&[]]),
        ("outpost.agent.memory.rss", "By", Gauge, &[&[]]),
        ("outpost.agent.spool.bytes", "By", Gauge, &[&[]]),
        ("outpost.agent.spool.events", "{event}", Gauge, &[&[]]),
        ("outpost.agent.batches.sent", "{batch}", Counter, &[&[]]),
        ("outpost.agent.batches.acked", "{batch}", Counter, &[&[]]),
        ("outpost.agent.failovers", "{failover}", Counter, &[&[]]),
        ("outpost.agent.send.latency", "s", Gauge, &[&["quantile"]]),
        ("outpost.agent.drops", "{event}", Counter, &[&["reason"]]),
        (
            "outpost.agent.journal.skipped",
            "{entry}",
            Counter,
            &[&["reason"]],
        ),
        ("outpost.agent.fim.paths_scanned", "{path}", Counter, &[&[]]),
        ("outpost.agent.fim.bytes_hashed", "By", Counter, &[&[]]),
        ("outpost.agent.fim.events", "{event}", Counter, &[&[]]),
        ("outpost.agent.fim.scans", "{scan}", Counter, &[&[]]),
        ("outpost.agent.fim.rescans", "{scan}", Counter, &[&[]]),
        ("outpost.agent.fim.unreadable", "{path}", Counter, &[&[]]),
        (
            "outpost.agent.certificate.renewals",
            "{renewal}",
            Counter,
            &[&["result"]],
        ),
        (
            "outpost.agent.collector.errors",
            "{error}",
            Gauge,
            &[&["collector"]],
        ),
        (
            "outpost.agent.collector.duration",
            "s",
            Gauge,
            &[&["collector"]],
        ),
    ];
    let mut expected_names: BTreeSet<&str> = BTreeSet::new();
    for (name, unit, kind, attrs) in expected {
        expected_names.insert(name);
        let Some((u, k, got)) = seen.get(name) else {
            panic!("{name} missing; seen {:?}", seen.keys())
        };
        assert_eq!(u, unit, "{name}");
        assert_eq!(k, kind, "{name}");
        let want: BTreeSet<Vec<&str>> = attrs.iter().map(|a| a.to_vec()).collect();
        assert_eq!(got, &want, "{name}");
    }
    if std::path::Path::new("/proc/pressure").exists() {
        for r in ["cpu", "memory", "io"] {
            let name = format!("system.pressure.{r}");
            let (u, k, attrs) = seen.get(name.as_str()).unwrap();
            assert_eq!((*u, *k), ("%", Gauge));
            assert_eq!(attrs, &BTreeSet::from([vec!["type", "window"]]));
        }
    }
    let unexpected: Vec<&&str> = seen
        .keys()
        .filter(|n| !expected_names.contains(*n) && !n.starts_with("system.pressure."))
        .collect();
    assert!(unexpected.is_empty(), "{unexpected:?}");
    // Values that must hold whatever the host.
    let v = |n, a: &[(&str, &str)]| value(&points, n, a).unwrap();
    let p50 = v("outpost.agent.send.latency", &[("quantile", "0.5")]);
    assert!((p50 - 0.003).abs() < 0.00001, "{p50}");
    assert_eq!(
        v(
            "outpost.agent.collector.errors",
            &[("collector", "metrics.filesystem")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "outpost.agent.collector.errors",
            &[("collector", "metrics.cpu")]
        ),
        0.0
    );
    let states: BTreeSet<&str> = points
        .iter()
        .filter(|p| p.name == "system.cpu.utilization" && p.attributes.len() == 1)
        .map(|p| p.attributes[0].1.as_str())
        .collect();
    for s in [
        "user", "system", "idle", "nice", "iowait", "irq", "softirq", "steal",
    ] {
        assert!(states.contains(s), "{s} missing from {states:?}");
    }
}

#[tokio::test]
async fn collections_finishing_together_share_one_spool_batch() {
    let dir = tempfile::tempdir().unwrap();
    let spool = crate::spool::Spool::open(crate::spool::SpoolConfig::new(
        dir.path().join("spool.db"),
        1 << 20,
    ))
    .unwrap();
    let (handle, join) = crate::spool::spawn(spool);
    let (tx, rx) = mpsc::channel(8);
    let point = |name: &str| MetricPoint {
        name: name.to_owned(),
        unit: "1".to_owned(),
        attributes: vec![],
        time_ns: 1,
        value: 1.0,
        kind: MetricKind::Gauge,
    };
    tx.send(vec![point("a"), point("b")]).await.unwrap();
    tx.send(vec![point("c")]).await.unwrap();
    drop(tx);
    submit(
        rx,
        handle.clone(),
        Reporter::new("metrics", Arc::new(Telemetry::new())),
    )
    .await;
    let stats = handle.stats();
    assert_eq!((stats.events, stats.batches), (3, 1), "{stats:?}");
    drop(handle);
    join.join().unwrap();
}
