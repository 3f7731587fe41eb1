//! Builders shared by the store's tests.

use outpost_common::event::{
    AgentStatus, CHAIN_GENESIS, Event, FileKind, FileState, FimChange, FimDetection, FimEvent,
    HostFacts, LogRecord, MetricKind, MetricPoint, Severity, chain_hash,
};
use outpost_common::time::NANOS_PER_SEC;
use outpost_common::wire::{Hello, PROTOCOL_VERSION};

use super::{
    CPU_UTILIZATION as CPU, FILESYSTEM_UTILIZATION as FILESYSTEM, IncomingBatch,
    MEMORY_UTILIZATION as MEMORY, PackedEvents,
};

/// A fixed "now": 2023-11-14T22:13:20Z.
pub(crate) const T0: i64 = 1_700_000_000 * NANOS_PER_SEC;

pub(crate) fn secs(n: i64) -> i64 {
    n * NANOS_PER_SEC
}

/// A log record whose body is `body_bytes` long.
pub(crate) fn log(time_ns: i64, body_bytes: usize) -> Event {
    Event::Log(LogRecord {
        time_ns,
        source: "/var/log/syslog".to_owned(),
        severity: Some(Severity::Info),
        body: "x".repeat(body_bytes),
        attributes: vec![("unit".to_owned(), "sshd.service".to_owned())],
    })
}

pub(crate) fn metric(time_ns: i64, value: f64) -> Event {
    Event::Metric(MetricPoint {
        name: "system.memory.usage".to_owned(),
        unit: "By".to_owned(),
        attributes: vec![("state".to_owned(), "used".to_owned())],
        time_ns,
        value,
        kind: MetricKind::Gauge,
    })
}

/// The first event of an agent's file-integrity trail, chained from the genesis.
pub(crate) fn fim(time_ns: i64) -> Event {
    let mut event = FimEvent {
        time_ns,
        path: "/etc/passwd".to_owned(),
        change: FimChange::Modified,
        changed: vec!["hash".to_owned(), "size".to_owned()],
        moved_from: None,
        before: Some(Box::new(file_state(1))),
        after: Some(Box::new(file_state(2))),
        detected_by: FimDetection::Realtime,
        seq: 1,
        chain: String::new(),
    };
    event.chain = chain_hash(CHAIN_GENESIS, &event);
    Event::Fim(event)
}

/// The file-integrity event after `previous` in its trail, at `time_ns`.
pub(crate) fn fim_next(previous: &Event, time_ns: i64) -> Event {
    let Event::Fim(previous) = previous else {
        panic!("not a file-integrity event: {previous:?}")
    };
    let mut event = FimEvent {
        time_ns,
        seq: previous.seq + 1,
        chain: String::new(),
        ..previous.clone()
    };
    event.chain = chain_hash(&previous.chain, &event);
    Event::Fim(event)
}

/// A trail of `n` file-integrity events from seq 1, each chained to the one before, a second
/// apart from `time_ns`.
pub(crate) fn fim_chain(n: usize, time_ns: i64) -> Vec<Event> {
    let mut trail: Vec<Event> = Vec::with_capacity(n);
    for i in 0..n {
        let t = time_ns + secs(i as i64);
        let next = match trail.last() {
            None => fim(t),
            Some(previous) => fim_next(previous, t),
        };
        trail.push(next);
    }
    trail
}

pub(crate) fn status_event(time_ns: i64) -> Event {
    Event::Status(AgentStatus {
        time_ns,
        ..AgentStatus::default()
    })
}

fn file_state(size: u64) -> FileState {
    FileState {
        kind: FileKind::File,
        size,
        mode: 0o100644,
        uid: 0,
        gid: 0,
        mtime_ns: T0,
        ctime_ns: T0,
        inode: 42,
        device: 2049,
        nlink: 1,
        link_target: None,
        xattrs: None,
        hash: Some(format!("sha256:{}", "ab".repeat(32))),
        too_large_to_hash: false,
    }
}

/// A batch from `agent`, spool `spool`, with the given events, arrived compressed as agents
/// send them (so log bodies go to a block), unless compression does not shrink them.
pub(crate) fn batch(agent: &str, spool: u64, seq: u64, events: Vec<Event>) -> IncomingBatch {
    IncomingBatch {
        packed: pack(&events),
        ..unpacked_batch(agent, spool, seq, events)
    }
}

/// `events` encoded and compressed as an agent does, or `None` if compression would not make
/// them smaller.
pub(crate) fn pack(events: &[Event]) -> Option<PackedEvents> {
    use outpost_common::wire::{Codec, Packer, encode_events};
    let raw = encode_events(events).ok()?;
    let data = Packer::new(Codec::Zstd).ok()?.pack(&raw).ok()??;
    Some(PackedEvents {
        codec: Codec::Zstd,
        raw_bytes: u32::try_from(raw.len()).ok()?,
        data,
    })
}

/// [`batch`], arrived uncompressed: log bodies stay in their rows.
pub(crate) fn unpacked_batch(
    agent: &str,
    spool: u64,
    seq: u64,
    events: Vec<Event>,
) -> IncomingBatch {
    IncomingBatch {
        agent_id: agent.to_owned(),
        spool_id: spool,
        seq,
        low_water_seq: 0,
        received_ns: T0,
        events,
        packed: None,
    }
}

/// A batch sent when it was the oldest its agent held: its low-water mark is its own `seq`, so
/// every earlier batch was stored before it.
pub(crate) fn oldest_batch(agent: &str, spool: u64, seq: u64, events: Vec<Event>) -> IncomingBatch {
    IncomingBatch {
        low_water_seq: seq,
        ..batch(agent, spool, seq, events)
    }
}

/// A batch of `n` small log events.
pub(crate) fn logs(agent: &str, spool: u64, seq: u64, n: usize) -> IncomingBatch {
    batch(agent, spool, seq, (0..n).map(|_| log(T0, 20)).collect())
}

pub(crate) fn hello(spool_id: u64, status: AgentStatus) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        agent_version: "1.2.3".to_owned(),
        spool_id,
        host: HostFacts {
            hostname: "web-1.example".to_owned(),
            os: "Debian GNU/Linux 12".to_owned(),
            kernel: "6.1.0".to_owned(),
            arch: "x86_64".to_owned(),
            cpus: 2,
            memory_bytes: 4 << 30,
            boot_time_ns: T0 - secs(3600),
        },
        status,
        labels: vec![("env".to_owned(), "prod".to_owned())],
    }
}

/// A log event of about 200 bytes on the wire, for benchmarks.
pub(crate) fn bench_event(i: i64) -> Event {
    Event::Log(LogRecord {
        time_ns: T0 + i,
        source: "/var/log/syslog".into(),
        severity: Some(Severity::Info),
        body: format!(
            "{i:>10} sshd[1234]: Accepted publickey for deploy from 10.0.0.1 port 52144 ssh2 \
             (session 8812734): RSA SHA256:abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGH"
        ),
        attributes: vec![("host".into(), "web-1".into())],
    })
}

/// A batch of `n` benchmark events.
pub(crate) fn bench_batch(agent: &str, seq: u64, n: usize) -> IncomingBatch {
    let mut b = batch(
        agent,
        1,
        seq,
        (0..n).map(|i| bench_event(i as i64)).collect(),
    );
    b.received_ns = T0 + seq as i64;
    b
}

/// A gauge point with unit `1`.
pub(crate) fn point(
    name: &str,
    attributes: &[(&str, &str)],
    time_ns: i64,
    value: f64,
) -> MetricPoint {
    MetricPoint {
        name: name.to_owned(),
        unit: "1".to_owned(),
        attributes: attributes
            .iter()
            .map(|&(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        time_ns,
        value,
        kind: MetricKind::Gauge,
    }
}

/// A gauge point with unit `1`, as an event.
pub(crate) fn gauge(name: &str, attributes: &[(&str, &str)], time_ns: i64, value: f64) -> Event {
    Event::Metric(point(name, attributes, time_ns, value))
}

/// One collection of the three summarised gauges at `time_ns`, with per-core and other-state
/// points beside them, and one filesystem point per `(mountpoint, fraction)`.
pub(crate) fn collection(
    time_ns: i64,
    idle: f64,
    used: f64,
    filesystems: &[(&str, f64)],
) -> Vec<Event> {
    let mut events = vec![
        gauge(CPU, &[("cpu", "cpu0"), ("state", "idle")], time_ns, 0.01),
        gauge(CPU, &[("state", "user")], time_ns, 1.0 - idle),
        gauge(CPU, &[("state", "idle")], time_ns, idle),
        gauge(MEMORY, &[("state", "used")], time_ns, used),
        gauge(MEMORY, &[("state", "free")], time_ns, 1.0 - used),
        log(time_ns, 10),
    ];
    for &(mountpoint, fraction) in filesystems {
        let attributes = [
            ("device", "/dev/sda1"),
            ("type", "ext4"),
            ("mountpoint", mountpoint),
        ];
        events.push(gauge(FILESYSTEM, &attributes, time_ns, fraction));
    }
    events
}
