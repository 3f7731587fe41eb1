//! What an agent may send: bounds on every field of a Hello and of each event in a batch.
//!
//! The checks run before anything is stored; the first problem found becomes the reason of the
//! Reject, naming the field and (in a batch) the event's index.

use outpost_common::event::Event;
use outpost_common::time::duration_ns;
use outpost_common::wire::{self, Batch};

use super::IngestConfig;

/// Field limits for stored events.
const MAX_NAME: usize = 256;
const MAX_UNIT: usize = 64;
const MAX_ATTRS: usize = 64;
const MAX_ATTR_KEY: usize = 256;
const MAX_ATTR_VALUE: usize = 4096;
const MAX_BODY: usize = 256 * 1024;
const MAX_PATH: usize = 4096;
/// 2000-01-01T00:00:00Z: anything earlier is a broken clock.
const MIN_TIME_NS: i64 = 946_684_800 * 1_000_000_000;

/// Checks the text fields of a Hello (the numbers cannot be out of range in a harmful way).
pub fn validate_hello(hello: &wire::Hello) -> Result<(), String> {
    check_len("agent version", &hello.agent_version, MAX_NAME)?;
    let h = &hello.host;
    for (what, value) in [
        ("hostname", &h.hostname),
        ("os", &h.os),
        ("kernel", &h.kernel),
        ("arch", &h.arch),
    ] {
        check_len(what, value, MAX_NAME)?;
    }
    wire::check_labels(&hello.labels)?;
    validate_event(&Event::Status(hello.status.clone()))
}

/// Checks every field of a batch; returns the first problem found.
pub fn validate_batch(
    batch: &Batch,
    config: &IngestConfig,
    received_ns: i64,
) -> Result<(), String> {
    if batch.seq == 0 {
        return Err("seq 0 is not valid".to_owned());
    }
    if batch.events.is_empty() {
        return Err("batch has no events".to_owned());
    }
    if batch.events.len() > config.max_batch_events as usize {
        return Err(format!(
            "{} events exceed the limit of {}",
            batch.events.len(),
            config.max_batch_events
        ));
    }
    let latest = received_ns.saturating_add(duration_ns(config.max_future_skew));
    for (i, event) in batch.events.iter().enumerate() {
        let t = event.time_ns();
        if !(MIN_TIME_NS..=latest).contains(&t) {
            return Err(format!(
                "event {i}: timestamp {t} is outside [2000-01-01, receipt + {}]",
                humantime::format_duration(config.max_future_skew)
            ));
        }
        validate_event(event).map_err(|e| format!("event {i}: {e}"))?;
    }
    Ok(())
}

fn check_len(what: &str, s: &str, max: usize) -> Result<(), String> {
    if s.len() > max {
        return Err(format!("{what} is {} bytes, more than {max}", s.len()));
    }
    Ok(())
}

fn check_attrs(attrs: &[(String, String)]) -> Result<(), String> {
    if attrs.len() > MAX_ATTRS {
        return Err(format!("{} attributes, more than {MAX_ATTRS}", attrs.len()));
    }
    for (k, v) in attrs {
        if k.is_empty() {
            return Err("empty attribute name".to_owned());
        }
        check_len("attribute name", k, MAX_ATTR_KEY)?;
        check_len("attribute value", v, MAX_ATTR_VALUE)?;
    }
    Ok(())
}

/// Checks the fields of one event against the limits above.
pub fn validate_event(event: &Event) -> Result<(), String> {
    match event {
        Event::Metric(m) => {
            if m.name.is_empty() {
                return Err("empty metric name".to_owned());
            }
            check_len("metric name", &m.name, MAX_NAME)?;
            check_len("metric unit", &m.unit, MAX_UNIT)?;
            check_attrs(&m.attributes)?;
            if !m.value.is_finite() {
                return Err(format!("metric {} has a non-finite value", m.name));
            }
        }
        Event::Log(l) => {
            check_len("log source", &l.source, MAX_PATH)?;
            check_len("log body", &l.body, MAX_BODY)?;
            check_attrs(&l.attributes)?;
        }
        Event::Fim(f) => {
            if f.path.is_empty() {
                return Err("empty file path".to_owned());
            }
            check_len("file path", &f.path, MAX_PATH)?;
        }
        Event::Status(s) => {
            check_len("agent version", &s.agent_version, MAX_NAME)?;
            if s.collector_errors.len() > MAX_ATTRS {
                return Err("too many collector errors".to_owned());
            }
            for e in &s.collector_errors {
                check_len("collector name", &e.collector, MAX_NAME)?;
                check_len("collector error", &e.reason, MAX_ATTR_VALUE)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use outpost_common::event::{LogRecord, MetricKind, MetricPoint};

    use super::*;

    fn cfg() -> IngestConfig {
        IngestConfig {
            max_frame_bytes: 1 << 20,
            max_batch_events: 3,
            max_in_flight: 4,
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(10),
            max_future_skew: Duration::from_secs(60),
            udp_receive_buffer: 1 << 20,
            max_handshakes: 256,
        }
    }

    const NOW: i64 = 1_800_000_000 * 1_000_000_000;

    fn log(time_ns: i64, body: &str) -> Event {
        Event::Log(LogRecord {
            time_ns,
            source: "f".into(),
            severity: None,
            body: body.into(),
            attributes: vec![],
        })
    }

    fn batch(events: Vec<Event>) -> Batch {
        Batch {
            seq: 1,
            low_water_seq: 1,
            created_ns: NOW,
            events,
        }
    }

    #[test]
    fn valid_batches_pass() {
        assert_eq!(
            validate_batch(&batch(vec![log(NOW, "x"), log(NOW - 1, "y")]), &cfg(), NOW),
            Ok(())
        );
    }

    #[test]
    fn every_limit_is_enforced() {
        let c = cfg();
        let cases = [
            (batch(vec![]), "no events"),
            (batch(vec![log(NOW, ""); 4]), "exceed the limit"),
            (batch(vec![log(NOW + 61 * 1_000_000_000, "")]), "timestamp"),
            (batch(vec![log(5, "")]), "timestamp"),
            (batch(vec![log(NOW, &"x".repeat(MAX_BODY + 1))]), "log body"),
            (
                batch(vec![Event::Metric(MetricPoint {
                    name: "m".into(),
                    unit: "1".into(),
                    attributes: vec![],
                    time_ns: NOW,
                    value: f64::NAN,
                    kind: MetricKind::Gauge,
                })]),
                "non-finite",
            ),
            (
                batch(vec![Event::Metric(MetricPoint {
                    name: "m".into(),
                    unit: "x".repeat(MAX_UNIT + 1),
                    attributes: vec![],
                    time_ns: NOW,
                    value: 1.0,
                    kind: MetricKind::Gauge,
                })]),
                "metric unit",
            ),
            (
                batch(vec![Event::Metric(MetricPoint {
                    name: "m".into(),
                    unit: "1".into(),
                    attributes: vec![(String::new(), "v".into())],
                    time_ns: NOW,
                    value: 1.0,
                    kind: MetricKind::Gauge,
                })]),
                "empty attribute",
            ),
        ];
        for (b, want) in cases {
            let err = validate_batch(&b, &c, NOW).unwrap_err();
            assert!(err.contains(want), "{err} should mention {want}");
        }
        let mut b = batch(vec![log(NOW, "")]);
        b.seq = 0;
        assert!(validate_batch(&b, &c, NOW).is_err());
    }

    #[test]
    fn hello_fields_are_bounded() {
        let mut hello = wire::Hello {
            protocol_version: wire::PROTOCOL_VERSION,
            agent_version: "1.0".into(),
            spool_id: 1,
            host: Default::default(),
            status: Default::default(),
            labels: vec![("env".into(), "prod".into())],
        };
        assert_eq!(validate_hello(&hello), Ok(()));
        hello.labels.push(("env".into(), "test".into()));
        assert!(validate_hello(&hello).unwrap_err().contains("twice"));
        hello.labels = vec![("9lives".into(), "x".into())];
        assert!(
            validate_hello(&hello)
                .unwrap_err()
                .contains("starting with a letter")
        );
        hello.labels = vec![("role".into(), "a\u{1b}[2J".into())];
        assert!(validate_hello(&hello).unwrap_err().contains("control"));
        hello.labels = (0..=wire::MAX_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        assert!(validate_hello(&hello).unwrap_err().contains("at most 64"));
        hello.labels.clear();
        hello.host.hostname = "h".repeat(MAX_NAME + 1);
        assert!(validate_hello(&hello).unwrap_err().contains("hostname"));
    }
}
