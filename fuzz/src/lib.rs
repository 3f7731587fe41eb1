//! Fuzz targets for Outpost's wire decoder, shared by the libFuzzer binaries in
//! `fuzz_targets/` (nightly, `cargo fuzz`) and the `replay` runner (any toolchain).
//!
//! Each target feeds arbitrary bytes to a decoder. The decoder must never panic; and whatever it
//! accepts must re-encode to bytes that decode to a message with the same encoding (encodings
//! are compared rather than values because a NaN metric is never equal to itself).

use outpost_common::event::{
    AgentStatus, Event, FileKind, FileState, FimChange, FimDetection, FimEvent, HostFacts,
    LogRecord, MetricKind, MetricPoint, Severity,
};
use outpost_common::wire::{
    self, Ack, Batch, Heartbeat, Hello, Message, PROTOCOL_VERSION, Reject, RejectCode, Welcome,
};

/// The frame limit the targets decode with: large enough for every seed, small enough that
/// an oversized length prefix is exercised.
pub const FRAME_LIMIT: u32 = 1 << 20;

/// A fuzz target: takes any bytes, panics only on a bug; returns whether a decoder accepted them.
pub type Target = fn(&[u8]) -> bool;

/// Every target by name, as `cargo fuzz` and `replay` know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("decode_frame", decode_frame),
    ("decode_events", decode_events),
];

/// Looks a target up by name.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// Decodes `data` as a whole frame (length prefix included) and as a bare frame body.
pub fn decode_frame(data: &[u8]) -> bool {
    let mut accepted = false;
    if let Ok(msg) = wire::decode_frame(data, FRAME_LIMIT) {
        assert_stable(&msg);
        unpack(msg);
        accepted = true;
    }
    if let Ok(msg) = wire::decode(data) {
        assert_stable(&msg);
        unpack(msg);
        accepted = true;
    }
    accepted
}

/// Unpacks a compressed batch as the aggregator does: never a panic, never more memory than the
/// limit; a batch it accepts holds events that encode.
fn unpack(msg: Message) {
    if let Message::PackedBatch(packed) = msg
        && let Ok(batch) = packed.unpack(FRAME_LIMIT)
    {
        assert_stable(&Message::Batch(batch));
    }
}

/// Decodes `data` as the encoded event list of a batch, and checks that a batch frame built
/// from the re-encoded list is exactly what the codec produces for the same batch.
pub fn decode_events(data: &[u8]) -> bool {
    let Ok(events) = wire::decode_events(data) else {
        return false;
    };
    let encoded = wire::encode_events(&events).expect("decoded events encode");
    let again = wire::decode_events(&encoded).expect("re-encoded events decode");
    assert_eq!(
        encoded,
        wire::encode_events(&again).expect("decoded events encode"),
        "event list encoding is not stable"
    );
    let raw = wire::encode_batch_frame(7, 3, -1, &encoded).expect("batch frame builds");
    let batch = Message::Batch(Batch {
        seq: 7,
        low_water_seq: 3,
        created_ns: -1,
        events: again,
    });
    assert_eq!(
        raw,
        wire::encode(&batch).expect("batch encodes"),
        "raw batch frame differs from the codec's"
    );
    true
}

fn assert_stable(msg: &Message) {
    let frame = wire::encode(msg).expect("a decoded message encodes");
    let again = wire::decode_frame(&frame, u32::MAX).expect("an encoded message decodes");
    assert_eq!(
        frame,
        wire::encode(&again).expect("a decoded message encodes"),
        "{} does not re-encode to the same bytes",
        msg.name()
    );
}

/// Seed inputs for a target: a few valid inputs, named for the files in `seeds/<target>/`.
pub fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    match target {
        "decode_frame" => sample_messages()
            .into_iter()
            .enumerate()
            .map(|(i, msg)| {
                let frame = wire::encode(&msg).expect("sample messages encode");
                (format!("{:02}-{}", i, msg.name().to_lowercase()), frame)
            })
            .collect(),
        "decode_events" => [
            ("empty", Vec::new()),
            ("one-of-each", sample_events()),
            ("metrics", sample_events()[..1].to_vec()),
        ]
        .into_iter()
        .map(|(name, events)| {
            let bytes = wire::encode_events(&events).expect("sample events encode");
            (name.to_owned(), bytes)
        })
        .collect(),
        _ => Vec::new(),
    }
}

fn sample_status() -> AgentStatus {
    AgentStatus {
        time_ns: 1_700_000_000_000_000_000,
        agent_version: "0.1.0".into(),
        started_ns: 1_699_999_000_000_000_000,
        spool_bytes: 4096,
        spool_events: 12,
        backlog_batches: 1,
        spool_cap_bytes: 1 << 30,
        batches_sent: 40,
        batches_acked: 39,
        events_acked: 3900,
        ..AgentStatus::default()
    }
}

fn sample_events() -> Vec<Event> {
    let state = FileState {
        kind: FileKind::File,
        size: 120,
        mode: 0o100644,
        uid: 0,
        gid: 0,
        mtime_ns: 1_700_000_000_000_000_000,
        ctime_ns: 1_700_000_000_000_000_000,
        inode: 42,
        device: 2049,
        nlink: 1,
        link_target: None,
        xattrs: None,
        hash: Some(format!("sha256:{}", "ab".repeat(32))),
        too_large_to_hash: false,
    };
    vec![
        Event::Metric(MetricPoint {
            name: "system.cpu.utilization".into(),
            unit: "1".into(),
            attributes: vec![("cpu".into(), "0".into()), ("state".into(), "user".into())],
            time_ns: 1_700_000_000_000_000_000,
            value: 0.25,
            kind: MetricKind::Gauge,
        }),
        Event::Log(LogRecord {
            time_ns: 1_700_000_000_500_000_000,
            source: "/var/log/syslog".into(),
            severity: Some(Severity::Warning),
            body: "disk almost full".into(),
            attributes: Vec::new(),
        }),
        Event::Fim(FimEvent {
            time_ns: 1_700_000_001_000_000_000,
            path: "/etc/passwd".into(),
            change: FimChange::Modified,
            changed: vec!["hash".into(), "size".into()],
            moved_from: None,
            before: Some(Box::new(state.clone())),
            after: Some(Box::new(FileState { size: 121, ..state })),
            detected_by: FimDetection::Realtime,
            seq: 1,
            chain: "cd".repeat(32),
        }),
        Event::Status(sample_status()),
    ]
}

fn sample_messages() -> Vec<Message> {
    vec![
        Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            spool_id: 0x1234_5678_9abc_def0,
            host: HostFacts {
                hostname: "web-01".into(),
                os: "Debian 12".into(),
                kernel: "6.1.0".into(),
                arch: "x86_64".into(),
                cpus: 2,
                memory_bytes: 24 << 30,
                boot_time_ns: 1_690_000_000_000_000_000,
            },
            status: sample_status(),
            labels: vec![("env".into(), "prod".into())],
        }),
        Message::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            server_version: "0.1.0".into(),
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            max_batch_events: 1000,
            max_in_flight: 8,
            heartbeat_interval_ms: 10_000,
        }),
        Message::Batch(Batch {
            seq: 42,
            low_water_seq: 40,
            created_ns: 1_700_000_002_000_000_000,
            events: sample_events(),
        }),
        Message::Ack(Ack {
            seq: 42,
            duplicate: false,
        }),
        Message::Reject(Reject {
            seq: 43,
            code: RejectCode::Invalid,
            reason: "event too large".into(),
        }),
        Message::Heartbeat(Heartbeat {
            sent_ns: 1_700_000_003_000_000_000,
            status: sample_status(),
        }),
        sample_packed_batch(),
    ]
}

fn sample_packed_batch() -> Message {
    let events: Vec<Event> = sample_events().into_iter().cycle().take(40).collect();
    let raw = wire::encode_events(&events).expect("sample events encode");
    let data = wire::Packer::new(wire::Codec::Zstd)
        .and_then(|mut p| p.pack(&raw))
        .expect("sample events compress")
        .expect("repeated events shrink");
    Message::PackedBatch(wire::PackedBatch {
        seq: 44,
        low_water_seq: 40,
        created_ns: 1_700_000_004_000_000_000,
        codec: wire::Codec::Zstd,
        raw_bytes: u32::try_from(raw.len()).expect("small"),
        data,
    })
}

/// A small deterministic random source (SplitMix64), so a run is reproducible from its seed
/// without pulling a dependency into the fuzz crate.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n` (which must be positive).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }
}

/// Bytes that make varints, lengths and enum tags interesting.
const INTERESTING: &[u8] = &[
    0, 1, 2, 5, 6, 0x7f, 0x80, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe, 0xff,
];

/// A new input: random bytes, or a valid seed with a few random mutations (bit flips,
/// interesting bytes, insertions, deletions, duplicated ranges, truncation, a new length
/// prefix), which reaches deeper into the decoder than random bytes alone.
pub fn generate(rng: &mut Rng, seeds: &[Vec<u8>], max_len: usize) -> Vec<u8> {
    if seeds.is_empty() || rng.below(8) == 0 {
        let len = rng.below(max_len.min(64) + 1);
        return (0..len).map(|_| rng.byte()).collect();
    }
    let mut data = seeds[rng.below(seeds.len())].clone();
    for _ in 0..=rng.below(4) {
        mutate(rng, &mut data);
    }
    data.truncate(max_len);
    data
}

fn mutate(rng: &mut Rng, data: &mut Vec<u8>) {
    let len = data.len();
    match rng.below(7) {
        0 if len > 0 => {
            let i = rng.below(len);
            data[i] ^= 1 << rng.below(8);
        }
        1 if len > 0 => {
            let i = rng.below(len);
            data[i] = INTERESTING[rng.below(INTERESTING.len())];
        }
        2 => {
            let at = rng.below(len + 1);
            let n = rng.below(9);
            let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
            data.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(16)).min(len);
            data.drain(at..end);
        }
        4 if len > 0 => {
            let at = rng.below(len);
            let end = (at + 1 + rng.below(32)).min(len);
            let copy = data[at..end].to_vec();
            let to = rng.below(data.len() + 1);
            data.splice(to..to, copy);
        }
        5 => data.truncate(rng.below(len + 1)),
        _ if len >= 4 => {
            // A frame whose length prefix no longer matches its body.
            let prefix = if rng.below(2) == 0 {
                (len as u32)
                    .wrapping_sub(4)
                    .wrapping_add(rng.below(3) as u32)
            } else {
                rng.next_u64() as u32
            };
            data[..4].copy_from_slice(&prefix.to_be_bytes());
        }
        _ => data.push(rng.byte()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_decode_and_pass_their_target() {
        for (name, target) in TARGETS {
            let seeds = seeds(name);
            assert!(seeds.len() >= 3, "{name}");
            for (seed, bytes) in &seeds {
                assert!(target(bytes), "{name}/{seed} does not decode");
            }
        }
        // Hello, Welcome, Batch, Ack, Reject, Heartbeat, PackedBatch.
        assert_eq!(
            seeds("decode_frame").len(),
            7,
            "one seed per message type of an agent's session"
        );
    }

    #[test]
    fn generation_is_deterministic_bounded_and_varied() {
        let pool: Vec<Vec<u8>> = seeds("decode_frame").into_iter().map(|(_, b)| b).collect();
        let run = |seed| {
            let mut rng = Rng::new(seed);
            (0..500)
                .map(|_| generate(&mut rng, &pool, 64))
                .collect::<Vec<_>>()
        };
        let first = run(1);
        assert_eq!(first, run(1), "the same seed gives the same inputs");
        assert_ne!(first, run(2));
        assert!(first.iter().all(|input| input.len() <= 64));
        let distinct: std::collections::HashSet<&Vec<u8>> = first.iter().collect();
        assert!(
            distinct.len() > 400,
            "only {} distinct inputs",
            distinct.len()
        );
        // Most inputs are mutated seeds, which reach further into the decoder than noise.
        let shares_a_run = |input: &Vec<u8>| {
            pool.iter()
                .any(|seed| seed.windows(6).any(|w| input.windows(6).any(|x| x == w)))
        };
        let seeded = first.iter().filter(|input| shares_a_run(input)).count();
        assert!(seeded > 250, "only {seeded} inputs derive from a seed");
    }
}
