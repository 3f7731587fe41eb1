//! One line of `journalctl --output=json` turned into a log record.
//!
//! journalctl prints each entry as one JSON object of field names to values. A value is:
//!
//! - a string, when the field's bytes are printable UTF-8;
//! - an array of byte numbers, when they are not (invalid UTF-8, control characters): decoded
//!   here, invalid sequences replaced with U+FFFD and the record flagged `invalid_utf8=true`;
//! - an array of such values, when the entry holds the field more than once: joined with
//!   newlines;
//! - `null`, for a field too large to print without `--all` (the source always passes it).
//!
//! `__CURSOR` (where the entry is, for the checkpoint) and `__REALTIME_TIMESTAMP` (microseconds
//! since the epoch, as a string) are required: a line without them is not an entry journalctl
//! wrote, and is refused as [`Malformed`].

use outpost_common::event::{LogRecord, Severity};
use serde_json::{Map, Value};

/// The field holding the entry's cursor.
const CURSOR: &str = "__CURSOR";
/// The field holding the entry's wall-clock time, in microseconds since the epoch.
const REALTIME: &str = "__REALTIME_TIMESTAMP";
const MESSAGE: &str = "MESSAGE";
const PRIORITY: &str = "PRIORITY";
const UNIT: &str = "_SYSTEMD_UNIT";

/// The journal fields kept as attributes, and the attribute each becomes, in attribute order.
const ATTRIBUTES: [(&str, &str); 7] = [
    (UNIT, "unit"),
    ("SYSLOG_IDENTIFIER", "identifier"),
    ("_PID", "pid"),
    ("_BOOT_ID", "boot_id"),
    ("_HOSTNAME", "hostname"),
    ("_COMM", "comm"),
    ("_TRANSPORT", "transport"),
];

/// The attribute set when some kept field was not valid UTF-8.
const INVALID_UTF8: &str = "invalid_utf8";

/// The source name of every record, and the prefix of a unit's (`journal:sshd.service`).
const SOURCE: &str = "journal";

/// One journal entry: its record and where it is in the journal.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// journalctl's `__CURSOR`: reading resumes after it.
    pub cursor: String,
    pub record: LogRecord,
}

/// A line that is not a journal entry as journalctl prints it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("not a JSON object: {0}")]
    NotAnObject(String),
    #[error("no {0}")]
    Missing(&'static str),
    #[error("{field} is not {expected}: {value}")]
    Invalid {
        field: &'static str,
        expected: &'static str,
        value: String,
    },
}

/// The fields to ask journalctl for (`--output-fields`), comma-separated: the ones read here.
/// It prints the cursor, the timestamps and the boot id whatever it is asked.
pub fn output_fields() -> String {
    let mut fields = vec![MESSAGE, PRIORITY];
    fields.extend(ATTRIBUTES.iter().map(|(field, _)| *field));
    fields.join(",")
}

/// The entry one line of `journalctl --output=json` prints.
pub fn parse(line: &str) -> Result<Entry, Malformed> {
    let fields: Map<String, Value> =
        serde_json::from_str(line).map_err(|e| Malformed::NotAnObject(e.to_string()))?;
    let cursor = match fields.get(CURSOR) {
        Some(Value::String(cursor)) if !cursor.is_empty() => cursor.clone(),
        Some(other) => return Err(invalid(CURSOR, "a non-empty string", other)),
        None => return Err(Malformed::Missing(CURSOR)),
    };
    let time_ns = match fields.get(REALTIME) {
        Some(value @ Value::String(us)) => us
            .parse::<i64>()
            .ok()
            .and_then(|us| us.checked_mul(1000))
            .ok_or_else(|| invalid(REALTIME, "microseconds since the epoch", value))?,
        Some(other) => return Err(invalid(REALTIME, "a string", other)),
        None => return Err(Malformed::Missing(REALTIME)),
    };

    let mut invalid_utf8 = false;
    let mut text = |field: &str| {
        let text = fields.get(field).and_then(decode)?;
        invalid_utf8 |= text.invalid_utf8;
        Some(text.text)
    };
    let body = text(MESSAGE).unwrap_or_default();
    // PRIORITY is the syslog level, 0 (emergency) to 7 (debug): Severity::ALL's order.
    let severity = text(PRIORITY)
        .and_then(|p| p.trim().parse::<usize>().ok())
        .and_then(|level| Severity::ALL.get(level).copied());
    let mut attributes: Vec<(String, String)> = ATTRIBUTES
        .iter()
        .filter_map(|&(field, name)| Some((name.to_owned(), text(field)?)))
        .collect();
    if invalid_utf8 {
        attributes.push((INVALID_UTF8.to_owned(), "true".to_owned()));
    }
    let source = match attributes.iter().find(|(name, _)| name == "unit") {
        Some((_, unit)) => format!("{SOURCE}:{unit}"),
        None => SOURCE.to_owned(),
    };
    Ok(Entry {
        cursor,
        record: LogRecord {
            time_ns,
            source,
            severity,
            body,
            attributes,
        },
    })
}

fn invalid(field: &'static str, expected: &'static str, value: &Value) -> Malformed {
    let value = value.to_string();
    let start = prefix(&value, 80);
    Malformed::Invalid {
        field,
        expected,
        value: if start.len() < value.len() {
            format!("{start}…")
        } else {
            value
        },
    }
}

/// The first `max` bytes of `text` at most, cut at a character boundary.
pub fn prefix(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A field's value as text.
#[derive(Debug, PartialEq)]
struct Text {
    text: String,
    invalid_utf8: bool,
}

/// The text of a field's value (see the module documentation); `None` for `null` and for
/// values journalctl never prints (numbers, objects, byte arrays with numbers above 255).
fn decode(value: &Value) -> Option<Text> {
    match value {
        Value::String(s) => Some(Text {
            text: s.clone(),
            invalid_utf8: false,
        }),
        Value::Array(items) if items.iter().all(Value::is_number) => {
            let bytes = items
                .iter()
                .map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect::<Option<Vec<u8>>>()?;
            Some(match String::from_utf8(bytes) {
                Ok(text) => Text {
                    text,
                    invalid_utf8: false,
                },
                Err(e) => Text {
                    text: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                    invalid_utf8: true,
                },
            })
        }
        Value::Array(items) => {
            let values: Vec<Text> = items.iter().filter_map(decode).collect();
            Some(Text {
                invalid_utf8: values.iter().any(|v| v.invalid_utf8),
                text: values
                    .into_iter()
                    .map(|v| v.text)
                    .collect::<Vec<_>>()
                    .join("\n"),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a line maps to, in a form a table can spell out.
    #[derive(Debug, PartialEq)]
    struct Want {
        source: &'static str,
        severity: Option<Severity>,
        body: &'static str,
        attributes: &'static [(&'static str, &'static str)],
        time_ns: i64,
    }

    fn record(want: &Want) -> LogRecord {
        LogRecord {
            time_ns: want.time_ns,
            source: want.source.to_owned(),
            severity: want.severity,
            body: want.body.to_owned(),
            attributes: want
                .attributes
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        }
    }

    const BOOT: &str = "5a5dbe6ad4b34ab0b7a2e5e3f4a0b1c2";

    /// Lines as `journalctl --output=json --all` prints them (fields in its own order), and the
    /// records they become.
    #[test]
    fn journal_lines_become_log_records() {
        let table: [(&str, &str, Want); 6] = [
            (
                "sshd, an accepted login",
                r#"{"__CURSOR":"s=8b1c2d3e4f5a4b6c8d9e0f1a2b3c4d5e;i=1a2b;b=5a5dbe6ad4b34ab0b7a2e5e3f4a0b1c2;m=2d4e1f0a;t=6123456789abc;x=9f8e7d6c5b4a3928","__REALTIME_TIMESTAMP":"1733059200123456","__MONOTONIC_TIMESTAMP":"759046666","_BOOT_ID":"5a5dbe6ad4b34ab0b7a2e5e3f4a0b1c2","_TRANSPORT":"syslog","PRIORITY":"6","SYSLOG_IDENTIFIER":"sshd","_PID":"1234","_COMM":"sshd","_SYSTEMD_UNIT":"ssh.service","_HOSTNAME":"web-01","MESSAGE":"Accepted publickey for deploy from 203.0.113.7 port 52144 ssh2: ED25519 SHA256:abc"}"#,
                Want {
                    source: "journal:ssh.service",
                    severity: Some(Severity::Info),
                    body: "Accepted publickey for deploy from 203.0.113.7 port 52144 ssh2: ED25519 SHA256:abc",
                    attributes: &[
                        ("unit", "ssh.service"),
                        ("identifier", "sshd"),
                        ("pid", "1234"),
                        ("boot_id", BOOT),
                        ("hostname", "web-01"),
                        ("comm", "sshd"),
                        ("transport", "syslog"),
                    ],
                    time_ns: 1_733_059_200_123_456_000,
                },
            ),
            (
                "the kernel: no unit, no pid",
                r#"{"_TRANSPORT":"kernel","PRIORITY":"3","SYSLOG_IDENTIFIER":"kernel","MESSAGE":"EXT4-fs error (device sda1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0","__REALTIME_TIMESTAMP":"1733059201000000","__MONOTONIC_TIMESTAMP":"760000000","_BOOT_ID":"5a5dbe6ad4b34ab0b7a2e5e3f4a0b1c2","_HOSTNAME":"web-01","__CURSOR":"s=8b1c2d3e4f5a4b6c8d9e0f1a2b3c4d5e;i=1a2c;b=5a5dbe6ad4b34ab0b7a2e5e3f4a0b1c2;m=2d4e1f0b;t=6123456789abd;x=1f8e7d6c5b4a3928"}"#,
                Want {
                    source: "journal",
                    severity: Some(Severity::Error),
                    body: "EXT4-fs error (device sda1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0",
                    attributes: &[
                        ("identifier", "kernel"),
                        ("boot_id", BOOT),
                        ("hostname", "web-01"),
                        ("transport", "kernel"),
                    ],
                    time_ns: 1_733_059_201_000_000_000,
                },
            ),
            (
                "a MESSAGE that is not UTF-8, printed as bytes",
                r#"{"__CURSOR":"s=8b1c2d3e4f5a4b6c8d9e0f1a2b3c4d5e;i=1a2d;b=5a5dbe6ad4b34ab0b7a2e5e3f4a0b1c2;m=2d4e1f0c;t=6123456789abe;x=2f8e7d6c5b4a3928","__REALTIME_TIMESTAMP":"1733059202000000","_BOOT_ID":"5a5dbe6ad4b34ab0b7a2e5e3f4a0b1c2","PRIORITY":"4","_SYSTEMD_UNIT":"legacy.service","MESSAGE":[98,97,100,32,255,32,98,121,116,101,10,115,101,99,111,110,100,32,108,105,110,101]}"#,
                Want {
                    source: "journal:legacy.service",
                    severity: Some(Severity::Warning),
                    body: "bad \u{fffd} byte\nsecond line",
                    attributes: &[
                        ("unit", "legacy.service"),
                        ("boot_id", BOOT),
                        ("invalid_utf8", "true"),
                    ],
                    time_ns: 1_733_059_202_000_000_000,
                },
            ),
            (
                "UTF-8 with control characters, also printed as bytes, is not flagged",
                r#"{"__CURSOR":"c1","__REALTIME_TIMESTAMP":"1733059203000000","MESSAGE":[27,91,51,49,109,114,101,100,27,91,48,109,32,195,169]}"#,
                Want {
                    source: "journal",
                    severity: None,
                    body: "\u{1b}[31mred\u{1b}[0m é",
                    attributes: &[],
                    time_ns: 1_733_059_203_000_000_000,
                },
            ),
            (
                "no PRIORITY, MESSAGE null",
                r#"{"__CURSOR":"c2","__REALTIME_TIMESTAMP":"1733059204000000","_SYSTEMD_UNIT":"cron.service","SYSLOG_IDENTIFIER":"CRON","_PID":"812","MESSAGE":null}"#,
                Want {
                    source: "journal:cron.service",
                    severity: None,
                    body: "",
                    attributes: &[
                        ("unit", "cron.service"),
                        ("identifier", "CRON"),
                        ("pid", "812"),
                    ],
                    time_ns: 1_733_059_204_000_000_000,
                },
            ),
            (
                "a field given twice, and a PRIORITY out of range",
                r#"{"__CURSOR":"c3","__REALTIME_TIMESTAMP":"0","PRIORITY":"9","MESSAGE":["first","second",[255]]}"#,
                Want {
                    source: "journal",
                    severity: None,
                    body: "first\nsecond\n\u{fffd}",
                    attributes: &[("invalid_utf8", "true")],
                    time_ns: 0,
                },
            ),
        ];
        for (what, line, want) in table {
            let entry = parse(line).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(entry.record, record(&want), "{what}");
            let cursor: Value = serde_json::from_str::<Value>(line).unwrap()[CURSOR].clone();
            assert_eq!(entry.cursor, cursor.as_str().unwrap(), "{what}");
        }
    }

    #[test]
    fn every_priority_is_its_syslog_severity() {
        for (level, severity) in Severity::ALL.iter().enumerate() {
            let line =
                format!(r#"{{"__CURSOR":"c","__REALTIME_TIMESTAMP":"1","PRIORITY":"{level}"}}"#);
            assert_eq!(parse(&line).unwrap().record.severity, Some(*severity));
        }
        assert_eq!(Severity::ALL[3], Severity::Error);
    }

    #[test]
    fn lines_that_are_not_entries_are_refused_with_the_reason() {
        let table = [
            (
                "",
                "not a JSON object: EOF while parsing a value at line 1 column 0",
            ),
            (
                "Hint: You are currently not seeing messages from other users and the system.",
                "not a JSON object: expected value at line 1 column 1",
            ),
            (
                r#"["__CURSOR"]"#,
                "not a JSON object: invalid type: sequence, expected a map at line 1 column 0",
            ),
            (r#"{"__REALTIME_TIMESTAMP":"1"}"#, "no __CURSOR"),
            (
                r#"{"__CURSOR":"","__REALTIME_TIMESTAMP":"1"}"#,
                r#"__CURSOR is not a non-empty string: """#,
            ),
            (
                r#"{"__CURSOR":"c","MESSAGE":"x"}"#,
                "no __REALTIME_TIMESTAMP",
            ),
            (
                r#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":1}"#,
                "__REALTIME_TIMESTAMP is not a string: 1",
            ),
            (
                r#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"yesterday"}"#,
                r#"__REALTIME_TIMESTAMP is not microseconds since the epoch: "yesterday""#,
            ),
            (
                r#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"9223372036854775807"}"#,
                r#"__REALTIME_TIMESTAMP is not microseconds since the epoch: "9223372036854775807""#,
            ),
            (
                r#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"1""#,
                "not a JSON object: EOF while parsing an object at line 1 column 42",
            ),
        ];
        for (line, want) in table {
            assert_eq!(parse(line).unwrap_err().to_string(), want, "{line:?}");
        }
    }

    #[test]
    fn a_prefix_never_cuts_a_character() {
        let text = "é".repeat(100);
        assert_eq!(prefix(&text, 200).len(), 200);
        assert_eq!(prefix(&format!("a{text}"), 200).len(), 199);
        assert_eq!(prefix("short", 200), "short");
        let long = format!(
            r#"{{"__CURSOR":"c","__REALTIME_TIMESTAMP":"{}"}}"#,
            "é".repeat(100)
        );
        let e = parse(&long).unwrap_err().to_string();
        assert!(e.ends_with(&format!("\"{}…", "é".repeat(39))), "{e}");
    }

    #[test]
    fn values_journalctl_never_prints_are_left_out() {
        let line = r#"{"__CURSOR":"c","__REALTIME_TIMESTAMP":"1","MESSAGE":{"a":1},"_PID":1234,"_COMM":[256,1]}"#;
        let record = parse(line).unwrap().record;
        assert_eq!((record.body.as_str(), record.attributes.len()), ("", 0));
    }

    #[test]
    fn journalctl_is_asked_for_the_fields_read() {
        assert_eq!(
            output_fields(),
            "MESSAGE,PRIORITY,_SYSTEMD_UNIT,SYSLOG_IDENTIFIER,_PID,_BOOT_ID,_HOSTNAME,_COMM,_TRANSPORT"
        );
    }
}
