//! `outpost-aggregator rules test`: recorded events or a log file replayed through rules on a
//! simulated clock, and what their alerts would do, line by line.
//!
//! A rule is known to work only once it has fired on the events it is about and stayed quiet on
//! those just short of them; this answers that before the rule reaches the fleet, with the
//! [`Engine`] the aggregator runs, so that what is tested is what runs.
//!
//! ```text
//! $ outpost-aggregator rules test --rules /etc/outpost/rules.d --log auth.log --year 2026
//! 2026-12-01T10:01:45Z  FIRED     ssh-brute-force  {host="web-1", src_ip="203.0.113.7"}  value=8
//! ```
//!
//! The pure steps, each usable alone: [`read_events`] and [`read_log`] turn a file's text into
//! [`Arrival`]s, [`replay`] runs them through the engine into a [`Replay`], and [`render_text`]
//! or [`render_json`] write it. [`run`] reads the files and ties the steps together for `main`.
//!
//! # Events files (`--events`)
//!
//! JSON Lines: one object a line; blank lines and lines starting with `#` are left out, so that
//! a file can say what it is about. Every object has `host` (the agent id the event came from)
//! and `time` (RFC 3339: when it arrived, which is also the event's own time in the short
//! forms), and one of these:
//!
//! - `"event"`: an [`Event`] in its serde form (`{"Metric": {...}}`, `{"Log": {...}}`, …); `time`
//!   may be left out, and the event's own time is its arrival then;
//! - `"metric"`: a name, with `"value"`, and optionally `"attributes"` (an object of strings),
//!   `"unit"` (`"1"`) and `"kind"` (`"gauge"` or `"counter"`; gauge);
//! - `"log"`: a record's body (what the agent's parser made of the line), with optionally
//!   `"source"` (`"journal"`), `"severity"` (`"emergency"` … `"debug"`) and `"attributes"`;
//! - `"fim"`: a path, with `"change"` (`created`, `modified`, `metadata_changed`, `deleted`,
//!   `moved`, `type_changed`) and optionally `"moved_from"`;
//! - `"status"`: an agent status snapshot; its fields (an object, `{}` for all defaults) override
//!   the defaults of [`AgentStatus`];
//! - `"heartbeat"`: a heartbeat, which is no event but says the host is there, and how far its
//!   clock is off: its status fields as for `"status"`, and optionally `"skew"`, the seconds the
//!   agent's clock is ahead of the aggregator's (behind when negative; 0).
//!
//! ```text
//! {"time": "2026-12-01T10:00:00Z", "host": "web-1", "metric": "system.cpu.utilization", "value": 0.05, "attributes": {"state": "idle"}}
//! {"time": "2026-12-01T10:00:01Z", "host": "web-1", "log": "Failed password for root from 203.0.113.7 port 52311 ssh2", "source": "/var/log/auth.log"}
//! {"time": "2026-12-01T10:00:02Z", "host": "web-1", "fim": "/etc/passwd", "change": "modified"}
//! {"time": "2026-12-01T10:00:03Z", "host": "web-1", "status": {}}
//! {"time": "2026-12-01T10:00:04Z", "host": "web-1", "heartbeat": {}, "skew": -45}
//! ```
//!
//! # Log files (`--log`)
//!
//! Each line becomes a log record as the agent's syslog parser makes it from a file such as
//! `/var/log/auth.log`: `Mmm dd hh:mm:ss host tag[pid]: message` gives the body `message` and
//! the attributes `host`, `app` and `pid` (and `facility` and the severity with a `<PRI>`),
//! dated in UTC. That parser belongs to the agent, which the aggregator does not link, so the
//! prefix is read here again, the same way. A line the parser cannot read (one stamped RFC
//! 3339-style, say) is kept whole with a `parse_error` attribute, as the agent keeps it; the
//! agent then dates it when it reads it, which for a file tailed live is when it was written, so
//! the replay takes its RFC 3339 stamp, or the time of the line before. The year, which the
//! lines do not carry, is `--year` for the first line (else this year, or last year when that
//! would put the line in the future); each later line takes the year, of that of the line before
//! and those either side, that puts it nearest that line, so that the year turns with the dates.
//!
//! # The clock
//!
//! Events are taken in the order of their arrival. Before each, the engine ticks at every time
//! it asked to be woken at up to then, as the running aggregator does; at the same time, events
//! are observed together and then the engine ticks. After the last event the clock runs on, from
//! one wake-up to the next, while an alert is pending (so that it fires or clears) or, with
//! `--config`, a firing or resolution is still to be notified; at most 24 h past the last event.
//! `--until` runs it to a time instead, whatever is pending: the hosts are silent from their last
//! event until then, which absence rules see.
//!
//! A log file is not all a host sends, and its quiet spells are not the host's silence: with
//! `--log`, absence rules about a host or a metric are not evaluated (those about a log source
//! are), and the summary names them.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use outpost_common::config::ConfigError;
use outpost_common::event::{
    AgentStatus, CHAIN_GENESIS, Event, FimDetection, FimEvent, LogRecord, MetricKind, MetricPoint,
    Severity as LogSeverity, chain_hash,
};
use outpost_common::time::NANOS_PER_SEC;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time};

use crate::notify::{Message, Status};
use crate::rules::engine::{AlertRecord, Engine, HistoryEntry, HistoryKind, Setup};
use crate::rules::file::{Condition, Rule, Silent, load_dir, load_file};
use crate::rules::lifecycle::AlertState;
use crate::rules::template;

/// How far past the last event the clock runs at most, unless `--until` says.
pub const SETTLE_LIMIT_NS: i64 = 24 * 3600 * NANOS_PER_SEC;

/// `rules test`'s arguments (the configuration file is the program's global `--config`).
#[derive(Debug, Clone, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["events", "log"])))]
pub struct TestArgs {
    /// A rule file, or a rules.d directory (its *.toml files).
    #[arg(long, value_name = "PATH")]
    pub rules: PathBuf,
    /// Events to replay, JSON Lines: {"time": RFC 3339, "host": agent id, and "event" (an Event
    /// as JSON) or one of "metric" (with "value"), "log", "fim" (with "change"), "status",
    /// "heartbeat" (with "skew" in seconds)}.
    #[arg(long, value_name = "FILE")]
    pub events: Option<PathBuf>,
    /// A syslog file (such as /var/log/auth.log) to replay, each line a log record.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// With --log: the agent the lines came from (default: each line's host, else localhost).
    #[arg(long, conflicts_with = "events")]
    pub host: Option<String>,
    /// With --log: the records' source, the file's path on its host (default: --log's path).
    #[arg(long, value_name = "PATH", conflicts_with = "events")]
    pub source: Option<String>,
    /// With --log: the year of the first line, which syslog lines do not say (default: this
    /// year, or last year when this one would put the line in the future).
    #[arg(long, conflicts_with = "events", value_parser = clap::value_parser!(i32).range(1970..=9999))]
    pub year: Option<i32>,
    /// Run the clock to this time (RFC 3339), past the last event or short of it, rather than
    /// until nothing is pending; events after it are left out.
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    pub until: Option<i64>,
    /// Print JSON Lines: one object a transition or notification, then a summary.
    #[arg(long)]
    pub json: bool,
}

/// Why `rules test` could not run.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("the rules do not load:\n  {}", list(.0))]
    Rules(Vec<ConfigError>),
    #[error("{0}: no rules there (rule files are named *.toml)")]
    NoRules(PathBuf),
    #[error("configuration error: {0}")]
    Config(ConfigError),
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}:{at}")]
    Input { path: PathBuf, at: LineError },
    #[error("give --events FILE or --log FILE, not both")]
    Usage,
    #[error("cannot write the output: {0}")]
    Output(io::Error),
}

impl TestError {
    /// The exit status: 64 (EX_USAGE) for the inputs, 1 when the output could not be written.
    pub fn exit_status(&self) -> u8 {
        match self {
            TestError::Output(_) => 1,
            _ => 64,
        }
    }
}

fn list(errors: &[ConfigError]) -> String {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    lines.join("\n  ")
}

/// What is wrong with a line of an input file, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    /// 1-based, in characters, where the JSON parser says.
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.column {
            Some(column) => write!(f, "{}:{}: {}", self.line, column, self.message),
            None => write!(f, "{}: {}", self.line, self.message),
        }
    }
}

impl std::error::Error for LineError {}

/// What reaches the engine from an agent, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct Arrival {
    pub at_ns: i64,
    pub host: String,
    pub what: Arrived,
}

/// An event the store committed, or a heartbeat, which is no event but tells absence rules the
/// host is there and threshold rules how far its clock is off.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrived {
    Event(Event),
    Heartbeat(AgentStatus),
}

/// Runs `rules test`: reads the rules, the configuration (when given) and the input, replays, and
/// writes the result to `out`.
pub fn run(args: &TestArgs, config: Option<&Path>, out: &mut dyn Write) -> Result<(), TestError> {
    let rules = load_rules(&args.rules)?;
    let setup = match config {
        Some(path) => {
            crate::config::load(path)
                .map_err(TestError::Config)?
                .alerting
        }
        None => Setup::default(),
    };
    let (path, arrivals) = match (&args.events, &args.log) {
        (Some(path), None) => (path, read_events(&read(path)?)),
        (None, Some(path)) => {
            let options = LogOptions {
                host: args.host.clone(),
                source: args
                    .source
                    .clone()
                    .unwrap_or_else(|| path.display().to_string()),
                year: args.year,
                now_ns: outpost_common::time::now_ns(),
            };
            let bytes = std::fs::read(path).map_err(|source| TestError::Read {
                path: path.clone(),
                source,
            })?;
            (path, read_log(&bytes, &options))
        }
        _ => return Err(TestError::Usage),
    };
    let arrivals = arrivals.map_err(|at| TestError::Input {
        path: path.clone(),
        at,
    })?;
    let options = ReplayOptions {
        until_ns: args.until,
        notifications: config.is_some(),
        absence: args.log.is_none(),
    };
    let replayed = replay(rules, setup, arrivals, &options);
    if args.json {
        render_json(&replayed, out)
    } else {
        render_text(&replayed, out)
    }
    .map_err(TestError::Output)
}

/// The rules of a file, or of a rules.d directory's `*.toml` files, as the aggregator loads them.
pub fn load_rules(path: &Path) -> Result<Vec<Rule>, TestError> {
    let metadata = std::fs::metadata(path).map_err(|source| TestError::Read {
        path: path.to_owned(),
        source,
    })?;
    let rules = if metadata.is_dir() {
        load_dir(path).map_err(TestError::Rules)?
    } else {
        load_file(path).map_err(|e| TestError::Rules(vec![e]))?
    };
    if rules.is_empty() {
        return Err(TestError::NoRules(path.to_owned()));
    }
    Ok(rules)
}

fn read(path: &Path) -> Result<String, TestError> {
    std::fs::read_to_string(path).map_err(|source| TestError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses `--until`: RFC 3339.
pub fn parse_time(s: &str) -> Result<i64, String> {
    rfc3339_ns(s).ok_or_else(|| format!("`{s}` is not an RFC 3339 time (2026-12-01T10:00:00Z)"))
}

fn rfc3339_ns(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

// Events files.

/// A line with a whole [`Event`].
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    #[serde(default)]
    time: Option<String>,
    host: String,
    event: Event,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Kind {
    #[default]
    Gauge,
    Counter,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricLine {
    time: String,
    host: String,
    metric: String,
    value: f64,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
    #[serde(default = "unit_one")]
    unit: String,
    #[serde(default)]
    kind: Kind,
}

fn unit_one() -> String {
    "1".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogLine {
    time: String,
    host: String,
    log: String,
    #[serde(default = "journal")]
    source: String,
    #[serde(default)]
    severity: Option<String>,
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

fn journal() -> String {
    "journal".to_owned()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FimLine {
    time: String,
    host: String,
    fim: String,
    change: String,
    #[serde(default)]
    moved_from: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusLine {
    time: String,
    host: String,
    status: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeartbeatLine {
    time: String,
    host: String,
    heartbeat: serde_json::Map<String, serde_json::Value>,
    /// Seconds the agent's clock is ahead.
    #[serde(default)]
    skew: f64,
}

/// The keys that say what a line holds; exactly one per line.
const LINE_KINDS: [&str; 6] = ["event", "metric", "log", "fim", "status", "heartbeat"];

/// The arrivals an events file describes (see the module documentation), in the file's order.
pub fn read_events(text: &str) -> Result<Vec<Arrival>, LineError> {
    // File-integrity events carry their place in the agent's trail: numbered and chained per
    // host, as the agent makes them.
    let mut trails: BTreeMap<String, (u64, String)> = BTreeMap::new();
    let mut arrivals = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let error = |column: Option<usize>, message: String| LineError {
            line,
            column,
            message,
        };
        let value: serde_json::Value = serde_json::from_str(raw).map_err(|e| {
            // The position is the line's own; the error names it as such.
            let text = e.to_string();
            let place = format!(" at line {} column {}", e.line(), e.column());
            let text = text.strip_suffix(&place).unwrap_or(&text);
            error(Some(e.column()), format!("not JSON: {text}"))
        })?;
        let object = value
            .as_object()
            .ok_or_else(|| error(None, "expected a JSON object".to_owned()))?;
        let kinds: Vec<&str> = LINE_KINDS
            .into_iter()
            .filter(|k| object.contains_key(*k))
            .collect();
        let kind = match kinds[..] {
            [kind] => kind,
            [] => {
                return Err(error(
                    None,
                    "expected one of \"event\", \"metric\", \"log\", \"fim\", \"status\" or \
                     \"heartbeat\""
                        .to_owned(),
                ));
            }
            _ => {
                return Err(error(
                    None,
                    format!("one event a line, not {}", kinds.join(" and ")),
                ));
            }
        };
        let arrival = arrival(kind, value, &mut trails).map_err(|m| error(None, m))?;
        if arrival.host.is_empty() {
            return Err(error(None, "\"host\" is empty".to_owned()));
        }
        arrivals.push(arrival);
    }
    Ok(arrivals)
}

/// The arrival a line of `kind` describes.
fn arrival(
    kind: &str,
    value: serde_json::Value,
    trails: &mut BTreeMap<String, (u64, String)>,
) -> Result<Arrival, String> {
    fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }
    let at = |time: &str| {
        rfc3339_ns(time).ok_or_else(|| {
            format!("\"time\": `{time}` is not an RFC 3339 time (2026-12-01T10:00:00Z)")
        })
    };
    let pairs = |attributes: BTreeMap<String, String>| attributes.into_iter().collect();
    let (at_ns, host, event) = match kind {
        "heartbeat" => {
            let line: HeartbeatLine = parse(value)?;
            let time_ns = at(&line.time)?;
            let skew_ns = (line.skew * 1e9).round();
            if !skew_ns.is_finite() || skew_ns.abs() > 1e18 {
                return Err(format!("\"skew\": {} seconds is out of range", line.skew));
            }
            let clock_ns = time_ns.saturating_add(skew_ns as i64);
            let status =
                status(line.heartbeat, clock_ns).map_err(|e| format!("\"heartbeat\": {e}"))?;
            return Ok(Arrival {
                at_ns: time_ns,
                host: line.host,
                what: Arrived::Heartbeat(status),
            });
        }
        "event" => {
            let line: EventLine = parse(value)?;
            let at_ns = match &line.time {
                Some(time) => at(time)?,
                None => line.event.time_ns(),
            };
            (at_ns, line.host, line.event)
        }
        "metric" => {
            let line: MetricLine = parse(value)?;
            let time_ns = at(&line.time)?;
            let point = MetricPoint {
                name: line.metric,
                unit: line.unit,
                attributes: pairs(line.attributes),
                time_ns,
                value: line.value,
                kind: match line.kind {
                    Kind::Gauge => MetricKind::Gauge,
                    Kind::Counter => MetricKind::Counter,
                },
            };
            (time_ns, line.host, Event::Metric(point))
        }
        "log" => {
            let line: LogLine = parse(value)?;
            let time_ns = at(&line.time)?;
            let severity = match &line.severity {
                None => None,
                Some(name) => Some(
                    LogSeverity::ALL
                        .into_iter()
                        .find(|s| s.as_str() == name)
                        .ok_or_else(|| {
                            format!(
                                "\"severity\": `{name}`: expected emergency, alert, critical, \
                                 error, warning, notice, info or debug"
                            )
                        })?,
                ),
            };
            let record = LogRecord {
                time_ns,
                source: line.source,
                severity,
                body: line.log,
                attributes: pairs(line.attributes),
            };
            (time_ns, line.host, Event::Log(record))
        }
        "fim" => {
            let line: FimLine = parse(value)?;
            let time_ns = at(&line.time)?;
            let change =
                crate::fim::parse_change(&line.change).map_err(|e| format!("\"change\": {e}"))?;
            let (seq, chain) = trails
                .entry(line.host.clone())
                .or_insert_with(|| (0, CHAIN_GENESIS.to_owned()));
            *seq += 1;
            let mut event = FimEvent {
                time_ns,
                path: line.fim,
                change,
                changed: Vec::new(),
                moved_from: line.moved_from,
                before: None,
                after: None,
                detected_by: FimDetection::Realtime,
                seq: *seq,
                chain: String::new(),
            };
            event.chain = chain_hash(chain, &event);
            chain.clone_from(&event.chain);
            (time_ns, line.host, Event::Fim(event))
        }
        _ => {
            let line: StatusLine = parse(value)?;
            let time_ns = at(&line.time)?;
            let status = status(line.status, time_ns).map_err(|e| format!("\"status\": {e}"))?;
            (time_ns, line.host, Event::Status(status))
        }
    };
    Ok(Arrival {
        at_ns,
        host,
        what: Arrived::Event(event),
    })
}

/// An agent status stamped `time_ns` by the agent: `fields` over the defaults.
fn status(
    fields: serde_json::Map<String, serde_json::Value>,
    time_ns: i64,
) -> Result<AgentStatus, String> {
    let mut status = serde_json::to_value(AgentStatus::default()).map_err(|e| e.to_string())?;
    if let Some(defaults) = status.as_object_mut() {
        defaults.extend(fields);
        defaults.insert("time_ns".to_owned(), time_ns.into());
    }
    serde_json::from_value(status).map_err(|e| e.to_string())
}

// Log files.

/// How `--log` lines become records.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// The agent every line came from; `None`: each line's own host.
    pub host: Option<String>,
    /// The records' source: the file's path on its host.
    pub source: String,
    /// The year of the first line; `None`: that of `now_ns`, or the one before when that would
    /// put the line more than a day after `now_ns` (the agent's rule for a line it reads now).
    pub year: Option<i32>,
    pub now_ns: i64,
}

/// The attribute the agent sets to when it read a line whose own time it parsed.
const ATTR_OBSERVED: &str = "log.observed_ns";

/// The attribute the agent sets on a line with bytes that are no UTF-8.
const ATTR_INVALID_UTF8: &str = "log.invalid_utf8";

/// The arrivals of a syslog file's lines (see the module documentation), in the file's order.
pub fn read_log(bytes: &[u8], options: &LogOptions) -> Result<Vec<Arrival>, LineError> {
    let mut arrivals: Vec<Arrival> = Vec::new();
    let mut year = options.year;
    // The time of the last line dated with a month and day, to see the year turn.
    let mut dated_ns: Option<i64> = None;
    let bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    if bytes.is_empty() {
        return Ok(arrivals);
    }
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        // As the agent reads it: bytes that are no UTF-8 replaced, and the record marked.
        let text = String::from_utf8_lossy(raw);
        let invalid_utf8 = matches!(text, std::borrow::Cow::Owned(_));
        let text = text.as_ref();
        let parsed = parse_syslog(text);
        let time_ns = match parsed.stamp {
            Some(Stamp::Full(ns)) => Some(ns),
            Some(Stamp::Calendar { month, day, time }) => {
                let year = year.get_or_insert_with(|| first_year(month, day, time, options.now_ns));
                if let Some(before) = dated_ns {
                    *year = nearest_year(*year, month, day, time, before);
                }
                let at = calendar_ns(*year, month, day, time);
                dated_ns = at.or(dated_ns);
                at
            }
            None => None,
        };
        let previous = arrivals.last();
        let (time_ns, record) = match time_ns {
            Some(t) => (t, parsed.record),
            // Not a date the parser reads (29 February of a common year, or no stamp at all):
            // kept whole, as the agent keeps it.
            None => (
                previous.map(|a| a.at_ns).ok_or_else(|| LineError {
                    line,
                    column: None,
                    message: "no syslog timestamp (`Mmm dd hh:mm:ss` or RFC 3339) at the start \
                              of the first line, so the replay cannot tell when it was written"
                        .to_owned(),
                })?,
                failed(text),
            ),
        };
        let host = options
            .host
            .clone()
            .or(parsed.host)
            .or_else(|| previous.map(|a| a.host.clone()))
            .unwrap_or_else(|| "localhost".to_owned());
        let mut attributes = record.attributes;
        if invalid_utf8 {
            attributes.push((ATTR_INVALID_UTF8.to_owned(), "true".to_owned()));
        }
        if record.dated {
            attributes.push((ATTR_OBSERVED.to_owned(), time_ns.to_string()));
        }
        arrivals.push(Arrival {
            at_ns: time_ns,
            host,
            what: Arrived::Event(Event::Log(LogRecord {
                time_ns,
                source: options.source.clone(),
                severity: record.severity,
                body: record.body,
                attributes,
            })),
        });
    }
    Ok(arrivals)
}

/// A line's timestamp as written.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stamp {
    /// RFC 3164's `Mmm dd hh:mm:ss`, without a year, read as UTC.
    Calendar { month: Month, day: u8, time: Time },
    /// An RFC 3339 stamp, which the agent's parser does not read (the record is kept whole) but
    /// which tells the replay when the line was written.
    Full(i64),
}

/// A line, read as the agent's syslog parser reads it.
#[derive(Debug, PartialEq)]
struct SyslogLine {
    stamp: Option<Stamp>,
    /// The host named after the stamp, if any.
    host: Option<String>,
    record: Parsed,
}

/// The parts of a record that come from the line.
#[derive(Debug, PartialEq)]
struct Parsed {
    body: String,
    severity: Option<LogSeverity>,
    attributes: Vec<(String, String)>,
    /// Whether the record's time is the line's own (the agent then notes when it read it).
    dated: bool,
}

/// What the agent makes of a line its parser cannot read: the line whole, and why.
fn failed(text: &str) -> Parsed {
    let mut parsed = Parsed {
        body: text.to_owned(),
        severity: None,
        attributes: vec![("parse_error".to_owned(), "syslog: no timestamp".to_owned())],
        dated: false,
    };
    if let Some((facility, severity, _)) = priority(text) {
        parsed.severity = LogSeverity::ALL.get(usize::from(severity)).copied();
        parsed
            .attributes
            .insert(0, ("facility".to_owned(), facility.to_string()));
    }
    parsed
}

/// Reads a syslog file's line: `[<PRI>]Mmm dd hh:mm:ss host tag[pid]: message`, as the agent
/// does (a tag of letters, digits and `-_./`; a line without one is all message after the
/// host). RFC 5424 lines (`<PRI>1 …`), which the agent reads too, are not found in files under
/// /var/log and are kept whole here.
fn parse_syslog(text: &str) -> SyslogLine {
    let (pri, rest) = match priority(text) {
        Some((facility, severity, rest)) => (Some((facility, severity)), rest),
        None => (None, text),
    };
    let Some((month, day, time, rest)) = calendar_stamp(rest) else {
        // Not a line the parser reads; an RFC 3339 stamp still dates it.
        let (stamp, host) = match rest.split_once(' ') {
            Some((first, after)) => (rfc3339_ns(first).map(Stamp::Full), after.split(' ').next()),
            None => (None, None),
        };
        return SyslogLine {
            host: stamp.and(host).filter(|h| !h.is_empty()).map(str::to_owned),
            stamp,
            record: failed(text),
        };
    };
    let (host, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    let mut attributes = vec![("host".to_owned(), host.to_owned())];
    let tag_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
        .unwrap_or(rest.len());
    let (tag, after) = rest.split_at(tag_end);
    let (pid, after) = match after.strip_prefix('[').and_then(|a| a.split_once(']')) {
        Some((pid, a)) if pid.bytes().all(|b| b.is_ascii_digit()) => (Some(pid), a),
        _ => (None, after),
    };
    let body = match after.strip_prefix(':') {
        Some(message) if !tag.is_empty() => {
            attributes.push(("app".to_owned(), tag.to_owned()));
            if let Some(pid) = pid {
                attributes.push(("pid".to_owned(), pid.to_owned()));
            }
            message.trim_start()
        }
        _ => rest,
    };
    let mut severity = None;
    if let Some((facility, level)) = pri {
        severity = LogSeverity::ALL.get(usize::from(level)).copied();
        attributes.insert(0, ("facility".to_owned(), facility.to_string()));
    }
    SyslogLine {
        stamp: Some(Stamp::Calendar { month, day, time }),
        host: Some(host.to_owned()).filter(|h| !h.is_empty()),
        record: Parsed {
            body: body.to_owned(),
            severity,
            attributes,
            dated: true,
        },
    }
}

/// `<PRI>`, if the text starts with one: (facility, severity) and the rest.
fn priority(text: &str) -> Option<(u8, u8, &str)> {
    let rest = text.strip_prefix('<')?;
    let end = rest.find('>')?;
    let pri: u8 = rest[..end].parse().ok().filter(|&p| p <= 191)?;
    Some((pri >> 3, pri & 7, &rest[end + 1..]))
}

/// `Mmm dd hh:mm:ss ` at the start of `text`, read where the agent reads it, and what follows.
fn calendar_stamp(text: &str) -> Option<(Month, u8, Time, &str)> {
    let month = match text.get(..3)? {
        "Jan" => Month::January,
        "Feb" => Month::February,
        "Mar" => Month::March,
        "Apr" => Month::April,
        "May" => Month::May,
        "Jun" => Month::June,
        "Jul" => Month::July,
        "Aug" => Month::August,
        "Sep" => Month::September,
        "Oct" => Month::October,
        "Nov" => Month::November,
        "Dec" => Month::December,
        _ => return None,
    };
    let day: u8 = text.get(4..6)?.trim_start().parse().ok()?;
    let clock = text.get(7..15)?;
    let (h, m, s) = (clock.get(..2)?, clock.get(3..5)?, clock.get(6..8)?);
    let time = Time::from_hms(h.parse().ok()?, m.parse().ok()?, s.parse().ok()?).ok()?;
    let rest = text.get(15..)?.strip_prefix(' ')?;
    Some((month, day, time, rest))
}

fn calendar_ns(year: i32, month: Month, day: u8, time: Time) -> Option<i64> {
    let date = Date::from_calendar_date(year, month, day).ok()?;
    i64::try_from(
        PrimitiveDateTime::new(date, time)
            .assume_utc()
            .unix_timestamp_nanos(),
    )
    .ok()
}

/// Of `year` and the years either side, the one that dates a line nearest to the dated line
/// before it, `before_ns`: lines come in order, give or take a little, so the year turns where
/// the dates go from December back to January (and turns back for a late December line).
fn nearest_year(year: i32, month: Month, day: u8, time: Time, before_ns: i64) -> i32 {
    [year, year - 1, year + 1]
        .into_iter()
        .filter_map(|y| Some((calendar_ns(y, month, day, time)?.abs_diff(before_ns), y)))
        .min()
        .map_or(year, |(_, y)| y)
}

/// The agent's year for a line read at `now_ns`: the current one, or the one before when that
/// would put the line more than a day after it was read (a December line read in January).
fn first_year(month: Month, day: u8, time: Time, now_ns: i64) -> i32 {
    let now = OffsetDateTime::from_unix_timestamp_nanos(i128::from(now_ns))
        .map_or(1970, OffsetDateTime::year);
    match calendar_ns(now, month, day, time) {
        Some(t) if t > now_ns.saturating_add(24 * 3600 * NANOS_PER_SEC) => now - 1,
        _ => now,
    }
}

// The replay.

/// What the replay does besides the events.
#[derive(Debug, Clone, Default)]
pub struct ReplayOptions {
    /// Run the clock to this time rather than until nothing is pending; later events are left
    /// out.
    pub until_ns: Option<i64>,
    /// Keep the notifications, and run the clock on until every firing and resolution was
    /// notified.
    pub notifications: bool,
    /// Evaluate the absence rules about a host or a metric: false when the input is not all the
    /// hosts sent (a log file).
    pub absence: bool,
}

/// One line of the replay's story, in the order the engine made them.
#[derive(Debug, Clone)]
pub enum Step {
    Transition(HistoryEntry),
    Notification(Message),
}

/// Why the clock stopped where it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// No alert pending and (with notifications) nothing to notify: what happens next, the
    /// events would say.
    Settled,
    /// At `--until`.
    Until,
    /// [`SETTLE_LIMIT_NS`] after the last event, with something still pending.
    Limit,
}

/// What a replay did.
#[derive(Debug, Clone)]
pub struct Replay {
    pub steps: Vec<Step>,
    /// Events and heartbeats replayed, and the arrivals left out for coming after `--until`.
    pub events: usize,
    pub heartbeats: usize,
    pub left_out: usize,
    /// The first and last replayed event's arrival.
    pub span: Option<(i64, i64)>,
    /// Where the clock stopped (`None`: no events and no `--until`).
    pub end_ns: Option<i64>,
    pub stop: Stop,
    /// Alerts pending or firing when the clock stopped, oldest first.
    pub active: Vec<AlertRecord>,
    /// Rules not evaluated (see [`ReplayOptions::absence`]).
    pub skipped: Vec<String>,
    /// Each rule's own labels, which every alert of it has: the lines leave them out.
    pub rule_labels: BTreeMap<String, BTreeSet<String>>,
    pub notifications: bool,
}

/// Replays `arrivals` (in any order) through `rules` on a simulated clock; see the module
/// documentation.
pub fn replay(
    rules: Vec<Rule>,
    setup: Setup,
    mut arrivals: Vec<Arrival>,
    options: &ReplayOptions,
) -> Replay {
    let (rules, skipped): (Vec<Rule>, Vec<Rule>) = rules
        .into_iter()
        .partition(|r| options.absence || !watches_host_or_metric(r));
    let rule_labels = rules
        .iter()
        .map(|r| (r.name.clone(), r.labels.keys().cloned().collect()))
        .collect();
    // A stable sort: events of one arrival time keep the file's order.
    arrivals.sort_by_key(|a| a.at_ns);
    let kept = options.until_ns.map_or(arrivals.len(), |until| {
        arrivals.partition_point(|a| a.at_ns <= until)
    });
    let mut clock = Clock {
        engine: Engine::new(rules, setup),
        now_ns: None,
        steps: Vec::new(),
        unsent: Unsent::default(),
    };
    for batch in arrivals[..kept].chunk_by(|a, b| a.at_ns == b.at_ns) {
        let at_ns = batch[0].at_ns;
        clock.wake_before(at_ns);
        for a in batch {
            match &a.what {
                Arrived::Event(event) => clock.engine.observe(&a.host, event, at_ns),
                Arrived::Heartbeat(status) => clock.engine.heartbeat(&a.host, status, at_ns),
            }
        }
        clock.tick(at_ns);
    }
    let span = arrivals[..kept]
        .first()
        .zip(arrivals[..kept].last())
        .map(|(first, last)| (first.at_ns, last.at_ns));
    let stop = match (options.until_ns, span) {
        (Some(until), _) => {
            clock.wake_before(until);
            clock.tick(until);
            Stop::Until
        }
        (None, Some((_, last))) => {
            clock.settle(last.saturating_add(SETTLE_LIMIT_NS), options.notifications)
        }
        (None, None) => Stop::Settled,
    };
    let mut active: Vec<AlertRecord> = clock
        .engine
        .alerts()
        .filter(|r| r.state != AlertState::Inactive)
        .cloned()
        .collect();
    active.sort_by(|a, b| (since(a), &a.rule, &a.labels).cmp(&(since(b), &b.rule, &b.labels)));
    let steps = if options.notifications {
        clock.steps
    } else {
        clock
            .steps
            .into_iter()
            .filter(|s| matches!(s, Step::Transition(_)))
            .collect()
    };
    let heartbeats = arrivals[..kept]
        .iter()
        .filter(|a| matches!(a.what, Arrived::Heartbeat(_)))
        .count();
    Replay {
        steps,
        events: kept - heartbeats,
        heartbeats,
        left_out: arrivals.len() - kept,
        span,
        end_ns: clock.now_ns,
        stop,
        active,
        skipped: skipped.into_iter().map(|r| r.name).collect(),
        rule_labels,
        notifications: options.notifications,
    }
}

/// When an alert fired, or began pending.
fn since(r: &AlertRecord) -> i64 {
    r.fired_ns.unwrap_or(r.active_since_ns)
}

/// Whether an absence rule waits on a host or a metric, which a log file cannot speak for.
fn watches_host_or_metric(rule: &Rule) -> bool {
    matches!(&rule.condition, Condition::Absence(a) if !matches!(a.silent, Silent::Source(_)))
}

/// The engine on the simulated clock, and what it said so far.
struct Clock {
    engine: Engine,
    /// When it last ticked.
    now_ns: Option<i64>,
    steps: Vec<Step>,
    unsent: Unsent,
}

impl Clock {
    fn tick(&mut self, at_ns: i64) {
        self.engine.tick(at_ns);
        self.now_ns = Some(at_ns);
        let outcome = self.engine.take();
        for h in outcome.history {
            self.unsent.transition(&h);
            self.steps.push(Step::Transition(h));
        }
        for m in outcome.messages {
            self.unsent.message(&m);
            self.steps.push(Step::Notification(m));
        }
    }

    /// The engine's next wake-up, if it is after the last tick: one at or before it would not
    /// move again without an event.
    fn next_wake(&self) -> Option<i64> {
        self.engine
            .next_wake_ns()
            .filter(|&w| self.now_ns.is_none_or(|now| w > now))
    }

    /// Ticks at every wake-up before `at_ns`.
    fn wake_before(&mut self, at_ns: i64) {
        while let Some(wake) = self.next_wake().filter(|&w| w < at_ns) {
            self.tick(wake);
        }
    }

    /// Ticks from wake-up to wake-up while something is pending, up to `limit_ns`.
    fn settle(&mut self, limit_ns: i64, notifications: bool) -> Stop {
        loop {
            let pending = self
                .engine
                .alerts()
                .any(|r| matches!(r.state, AlertState::Pending { .. }));
            let unsent = notifications && self.unsent.any();
            if !(pending || unsent) {
                return Stop::Settled;
            }
            match self.next_wake() {
                None => return Stop::Settled,
                Some(wake) if wake > limit_ns => {
                    self.tick(limit_ns);
                    return Stop::Limit;
                }
                Some(wake) => self.tick(wake),
            }
        }
    }
}

/// The firings and resolutions no notification has told yet, from the engine's history and
/// messages: the clock runs on until they are sent.
#[derive(Debug, Default)]
struct Unsent {
    /// Each alert waiting, with the status its notification will have.
    waiting: BTreeMap<String, Status>,
    /// Alerts notified as firing and not resolved since: only their resolution is notified.
    told: BTreeSet<String>,
}

impl Unsent {
    fn transition(&mut self, h: &HistoryEntry) {
        let fingerprint = &h.fingerprint;
        match h.kind {
            HistoryKind::Fired | HistoryKind::Unsilenced => {
                self.waiting.insert(fingerprint.clone(), Status::Firing);
            }
            // Its group forgets it, and will not say that it resolved either.
            HistoryKind::Silenced => {
                self.told.remove(fingerprint);
                self.waiting.remove(fingerprint);
            }
            HistoryKind::Resolved => {
                if self.told.remove(fingerprint) {
                    self.waiting.insert(fingerprint.clone(), Status::Resolved);
                } else {
                    self.waiting.remove(fingerprint);
                }
            }
            HistoryKind::Pending
            | HistoryKind::Cleared
            | HistoryKind::Acknowledged
            | HistoryKind::Escalated => {}
        }
    }

    fn message(&mut self, m: &Message) {
        // An escalation is no notification of the route's.
        if m.escalation > 0 {
            return;
        }
        for a in &m.alerts {
            match a.status {
                Status::Firing => self.told.insert(a.fingerprint.clone()),
                Status::Resolved => self.told.remove(&a.fingerprint),
            };
            if self.waiting.get(&a.fingerprint) == Some(&a.status) {
                self.waiting.remove(&a.fingerprint);
            }
        }
    }

    fn any(&self) -> bool {
        !self.waiting.is_empty()
    }
}

// Output.

/// A time as the lines show it: RFC 3339 in UTC, to the second, or the millisecond when it has
/// a fraction.
fn stamp(ns: i64) -> String {
    if ns.rem_euclid(NANOS_PER_SEC) == 0 {
        return outpost_common::time::format_rfc3339(ns);
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// A value as annotations show it.
fn number(value: f64) -> String {
    template::render("{{ value }}", &BTreeMap::new(), Some(value))
}

/// Labels as `{name="value", …}`.
fn braces<'a>(labels: impl IntoIterator<Item = (&'a String, &'a String)>) -> String {
    let pairs: Vec<String> = labels
        .into_iter()
        .map(|(k, v)| format!("{k}={v:?}"))
        .collect();
    format!("{{{}}}", pairs.join(", "))
}

/// An uppercase word per kind of line.
fn word(kind: HistoryKind) -> String {
    kind.name().to_uppercase()
}

impl Replay {
    /// An alert's labels less those every alert of its rule has (`alertname`, `severity` and the
    /// rule's own): what tells it apart.
    fn own_labels<'a>(
        &'a self,
        rule: &'a str,
        labels: &'a BTreeMap<String, String>,
    ) -> impl Iterator<Item = (&'a String, &'a String)> {
        let fixed = self.rule_labels.get(rule);
        labels.iter().filter(move |(k, _)| {
            k.as_str() != "alertname"
                && k.as_str() != "severity"
                && !fixed.is_some_and(|f| f.contains(*k))
        })
    }

    /// How many times each rule's alerts fired.
    fn fired(&self) -> BTreeMap<&str, usize> {
        let mut fired = BTreeMap::new();
        for step in &self.steps {
            if let Step::Transition(h) = step
                && h.kind == HistoryKind::Fired
            {
                *fired.entry(h.rule.as_str()).or_default() += 1;
            }
        }
        fired
    }

    fn active_in(&self, firing: bool) -> impl Iterator<Item = &AlertRecord> {
        self.active.iter().filter(move |r| r.firing() == firing)
    }

    fn notification_count(&self) -> BTreeMap<&str, usize> {
        let mut count = BTreeMap::new();
        for step in &self.steps {
            if let Step::Notification(m) = step {
                *count.entry(m.receiver.as_str()).or_default() += 1;
            }
        }
        count
    }

    fn stop_reason(&self) -> &'static str {
        match self.stop {
            Stop::Settled => "nothing pending",
            Stop::Until => "--until",
            Stop::Limit => "24 h after the last event, with alerts still pending",
        }
    }
}

/// The notification's labels to show: its group's, or for an escalation (which has no group)
/// those its alerts share.
fn notification_labels(m: &Message) -> BTreeMap<String, String> {
    if m.group_labels.is_empty() {
        m.common_labels()
    } else {
        m.group_labels.clone()
    }
}

fn alerts_phrase(m: &Message) -> String {
    let status = match m.status() {
        Status::Firing => "firing",
        Status::Resolved => "resolved",
    };
    let n = m.alerts.len();
    let mut phrase = format!("{status}, {n} alert{}", if n == 1 { "" } else { "s" });
    if m.escalation > 0 {
        phrase.push_str(&format!(", escalation stage {}", m.escalation));
    }
    phrase
}

/// Writes the replay for people: a line per transition (and notification), then a summary.
pub fn render_text(replay: &Replay, out: &mut dyn Write) -> io::Result<()> {
    let rows: Vec<[String; 5]> = replay
        .steps
        .iter()
        .map(|step| match step {
            Step::Transition(h) => [
                stamp(h.at_ns),
                word(h.kind),
                h.rule.clone(),
                braces(replay.own_labels(&h.rule, &h.labels)),
                match (h.value, h.detail.is_empty()) {
                    (Some(v), true) => format!("value={}", number(v)),
                    (Some(v), false) => format!("value={}  ({})", number(v), h.detail),
                    (None, false) => format!("({})", h.detail),
                    (None, true) => String::new(),
                },
            ],
            Step::Notification(m) => [
                stamp(m.created_ns),
                "NOTIFY".to_owned(),
                m.receiver.clone(),
                alerts_phrase(m),
                braces(&notification_labels(m)),
            ],
        })
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let (kind_width, name_width) = (width(1).max(8), width(2));
    for [time, kind, name, what, more] in &rows {
        let line = format!("{time}  {kind:<kind_width$}  {name:<name_width$}  {what}  {more}");
        writeln!(out, "{}", line.trim_end())?;
    }
    if !rows.is_empty() {
        writeln!(out)?;
    }
    let when = |ns: Option<i64>| ns.map_or_else(|| "-".to_owned(), stamp);
    let count = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    write!(out, "replayed {}", count(replay.events, "event"))?;
    if replay.heartbeats > 0 {
        write!(out, " and {}", count(replay.heartbeats, "heartbeat"))?;
    }
    if let Some((first, last)) = replay.span {
        write!(out, " from {} to {}", stamp(first), stamp(last))?;
    }
    if replay.left_out > 0 {
        write!(out, " ({} after --until left out)", replay.left_out)?;
    }
    writeln!(
        out,
        "; the clock stopped at {} ({})",
        when(replay.end_ns),
        replay.stop_reason()
    )?;
    let fired = replay.fired();
    let counts: Vec<String> = fired.iter().map(|(r, n)| format!("{r} {n}")).collect();
    match fired.values().sum::<usize>() {
        0 => writeln!(out, "fired: none")?,
        n => writeln!(out, "fired: {n} ({})", counts.join(", "))?,
    }
    for (title, firing) in [("still firing", true), ("still pending", false)] {
        let alerts: Vec<&AlertRecord> = replay.active_in(firing).collect();
        if alerts.is_empty() && !firing {
            continue;
        }
        writeln!(out, "{title}: {}", alerts.len())?;
        let width = alerts.iter().map(|r| r.rule.len()).max().unwrap_or(0);
        for r in alerts {
            writeln!(
                out,
                "  {:<width$}  {}  since {}",
                r.rule,
                braces(replay.own_labels(&r.rule, &r.labels)),
                stamp(since(r))
            )?;
        }
    }
    if replay.notifications {
        let count = replay.notification_count();
        let counts: Vec<String> = count.iter().map(|(r, n)| format!("{r} {n}")).collect();
        match count.values().sum::<usize>() {
            0 => writeln!(out, "notifications: none")?,
            n => writeln!(out, "notifications: {n} ({})", counts.join(", "))?,
        }
    }
    if !replay.skipped.is_empty() {
        writeln!(
            out,
            "not evaluated: {} (absence rules about a host or a metric: a log file is not all a \
             host sends)",
            replay.skipped.join(", ")
        )?;
    }
    Ok(())
}

/// One line of `--json` output.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum JsonLine<'a> {
    Transition {
        time: String,
        at_ns: i64,
        kind: HistoryKind,
        rule: &'a str,
        labels: &'a BTreeMap<String, String>,
        value: Option<f64>,
        fingerprint: &'a str,
        detail: &'a str,
    },
    Notification {
        time: String,
        at_ns: i64,
        receiver: &'a str,
        status: Status,
        alerts: usize,
        escalation: u32,
        group_labels: &'a BTreeMap<String, String>,
        fingerprints: Vec<&'a str>,
    },
    Summary {
        events: usize,
        heartbeats: usize,
        left_out: usize,
        first: Option<String>,
        last: Option<String>,
        end: Option<String>,
        stopped: &'static str,
        fired: BTreeMap<&'a str, usize>,
        firing: Vec<JsonAlert<'a>>,
        pending: Vec<JsonAlert<'a>>,
        notifications: Option<BTreeMap<&'a str, usize>>,
        not_evaluated: &'a [String],
    },
}

#[derive(Debug, Serialize)]
struct JsonAlert<'a> {
    rule: &'a str,
    labels: &'a BTreeMap<String, String>,
    since: String,
    fingerprint: &'a str,
}

/// Writes the replay for machines: JSON Lines, a `transition` or `notification` object a line,
/// then a `summary`.
pub fn render_json(replay: &Replay, out: &mut dyn Write) -> io::Result<()> {
    let alerts = |firing: bool| -> Vec<JsonAlert<'_>> {
        replay
            .active_in(firing)
            .map(|r| JsonAlert {
                rule: &r.rule,
                labels: &r.labels,
                since: stamp(since(r)),
                fingerprint: &r.fingerprint,
            })
            .collect()
    };
    let lines = replay.steps.iter().map(|step| match step {
        Step::Transition(h) => JsonLine::Transition {
            time: stamp(h.at_ns),
            at_ns: h.at_ns,
            kind: h.kind,
            rule: &h.rule,
            labels: &h.labels,
            value: h.value,
            fingerprint: &h.fingerprint,
            detail: &h.detail,
        },
        Step::Notification(m) => JsonLine::Notification {
            time: stamp(m.created_ns),
            at_ns: m.created_ns,
            receiver: &m.receiver,
            status: m.status(),
            alerts: m.alerts.len(),
            escalation: m.escalation,
            group_labels: &m.group_labels,
            fingerprints: m.alerts.iter().map(|a| a.fingerprint.as_str()).collect(),
        },
    });
    let summary = JsonLine::Summary {
        events: replay.events,
        heartbeats: replay.heartbeats,
        left_out: replay.left_out,
        first: replay.span.map(|(first, _)| stamp(first)),
        last: replay.span.map(|(_, last)| stamp(last)),
        end: replay.end_ns.map(stamp),
        stopped: match replay.stop {
            Stop::Settled => "nothing_pending",
            Stop::Until => "until",
            Stop::Limit => "limit",
        },
        fired: replay.fired(),
        firing: alerts(true),
        pending: alerts(false),
        notifications: replay.notifications.then(|| replay.notification_count()),
        not_evaluated: &replay.skipped,
    };
    for line in lines.chain([summary]) {
        serde_json::to_writer(&mut *out, &line)?;
        writeln!(out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::file::parse_file;

    const S: i64 = NANOS_PER_SEC;

    /// 2026-12-01T10:00:00Z.
    const T0: i64 = 1_796_119_200 * S;

    fn at(s: i64) -> i64 {
        T0 + s * S
    }

    fn rules(text: &str) -> Vec<Rule> {
        parse_file(Path::new("test.toml"), text).unwrap()
    }

    /// Three failures within a minute, a CPU busy for a minute, and a host silent for two.
    const RULES: &str = r#"
[[rule]]
name = "brute"
kind = "frequency"
severity = "high"
pattern = 'Failed password for (?P<user>\S+) from (?P<src_ip>\S+)'
count = 3
within = "60s"
group_by = ["src_ip"]
labels = { team = "security" }

[[rule]]
name = "cpu"
kind = "threshold"
severity = "low"
metric = "cpu"
op = ">"
value = 0.9
for = "1m"

[[rule]]
name = "down"
kind = "absence"
severity = "critical"
after = "2m"
"#;

    fn log(s: i64, host: &str, body: &str) -> Arrival {
        Arrival {
            at_ns: at(s),
            host: host.to_owned(),
            what: Arrived::Event(Event::Log(LogRecord {
                time_ns: at(s),
                source: "journal".to_owned(),
                severity: None,
                body: body.to_owned(),
                attributes: Vec::new(),
            })),
        }
    }

    fn cpu(s: i64, value: f64) -> Arrival {
        Arrival {
            at_ns: at(s),
            host: "web-1".to_owned(),
            what: Arrived::Event(Event::Metric(MetricPoint {
                name: "cpu".to_owned(),
                unit: "1".to_owned(),
                attributes: Vec::new(),
                time_ns: at(s),
                value,
                kind: MetricKind::Gauge,
            })),
        }
    }

    fn text(replay: &Replay) -> String {
        let mut out = Vec::new();
        render_text(replay, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    /// The transitions as (seconds after T0, kind, rule).
    fn story(replay: &Replay) -> Vec<(i64, &'static str, String)> {
        replay
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Transition(h) => Some(((h.at_ns - T0) / S, h.kind.name(), h.rule.clone())),
                Step::Notification(_) => None,
            })
            .collect()
    }

    fn options() -> ReplayOptions {
        ReplayOptions {
            absence: true,
            ..ReplayOptions::default()
        }
    }

    #[test]
    fn a_frequency_alert_fires_and_the_lines_show_what_tells_it_apart() {
        let failures: Vec<Arrival> = (0..3)
            .map(|i| {
                log(
                    i * 10,
                    "web-1",
                    "Failed password for root from 203.0.113.7 port 1 ssh2",
                )
            })
            .collect();
        let replay = replay(rules(RULES), Setup::default(), failures, &options());
        assert_eq!(story(&replay), [(20, "fired", "brute".to_owned())]);
        assert_eq!(replay.stop, Stop::Settled);
        assert_eq!(replay.end_ns, Some(at(20)));
        let want = "\
2026-12-01T10:00:20Z  FIRED     brute  {host=\"web-1\", src_ip=\"203.0.113.7\"}  value=3

replayed 3 events from 2026-12-01T10:00:00Z to 2026-12-01T10:00:20Z; the clock stopped at \
2026-12-01T10:00:20Z (nothing pending)
fired: 1 (brute 1)
still firing: 1
  brute  {host=\"web-1\", src_ip=\"203.0.113.7\"}  since 2026-12-01T10:00:20Z
";
        assert_eq!(text(&replay), want);
    }

    #[test]
    fn the_clock_ticks_at_wake_ups_between_events_and_runs_on_while_an_alert_is_pending() {
        // Busy from 0 s; the last point at 30 s leaves the alert pending, and the clock runs
        // on to fire it at 60 s, not waiting for another event. `down` watches web-1 too, but
        // fires 2 min after its last point: nothing is pending by then, and the clock stopped.
        let points = vec![cpu(0, 0.95), cpu(10, 0.95), cpu(30, 0.95)];
        let replay = replay(rules(RULES), Setup::default(), points, &options());
        assert_eq!(
            story(&replay),
            [
                (0, "pending", "cpu".to_owned()),
                (60, "fired", "cpu".to_owned())
            ]
        );
        assert_eq!(replay.end_ns, Some(at(60)));
        // A point under the threshold before the minute is up clears it.
        let cleared = replay_of(vec![cpu(0, 0.95), cpu(30, 0.5)]);
        assert_eq!(
            story(&cleared),
            [
                (0, "pending", "cpu".to_owned()),
                (30, "cleared", "cpu".to_owned())
            ]
        );
        // Events out of order are taken in the order of their arrival.
        let shuffled = replay_of(vec![cpu(30, 0.5), cpu(0, 0.95)]);
        assert_eq!(story(&shuffled), story(&cleared));
    }

    fn replay_of(arrivals: Vec<Arrival>) -> Replay {
        replay(rules(RULES), Setup::default(), arrivals, &options())
    }

    #[test]
    fn a_clock_waiting_on_a_pending_alert_stops_a_day_after_the_last_event() {
        let slow = RULES.replace("for = \"1m\"", "for = \"48h\"");
        let replay = replay(
            rules(&slow),
            Setup::default(),
            vec![cpu(0, 0.95)],
            &ReplayOptions::default(),
        );
        assert_eq!(story(&replay), [(0, "pending", "cpu".to_owned())]);
        assert_eq!(replay.stop, Stop::Limit);
        assert_eq!(replay.end_ns, Some(at(0) + SETTLE_LIMIT_NS));
        let out = text(&replay);
        assert!(
            out.contains("2026-12-02T10:00:00Z (24 h after the last event"),
            "{out}"
        );
        assert!(
            out.contains("still pending: 1\n  cpu  {host=\"web-1\"}  since 2026-12-01T10:00:00Z"),
            "{out}"
        );
    }

    #[test]
    fn until_runs_the_clock_to_its_time_through_silence_and_leaves_later_events_out() {
        let points = vec![cpu(0, 0.5), cpu(10, 0.5), cpu(500, 0.5)];
        let until = ReplayOptions {
            until_ns: Some(at(300)),
            ..options()
        };
        let replay = replay(rules(RULES), Setup::default(), points, &until);
        // Silent since 10 s: down fires at 130 s and still fires at 300 s.
        assert_eq!(story(&replay), [(130, "fired", "down".to_owned())]);
        assert_eq!((replay.events, replay.left_out), (2, 1));
        assert_eq!((replay.end_ns, replay.stop), (Some(at(300)), Stop::Until));
        assert_eq!(replay.active.len(), 1);
        assert!(text(&replay).contains("(1 after --until left out)"));
    }

    #[test]
    fn without_absence_the_rules_about_hosts_are_left_out_and_said_so() {
        let lines = vec![log(0, "web-1", "hello"), log(600, "web-1", "again")];
        let replay = replay(
            rules(RULES),
            Setup::default(),
            lines,
            &ReplayOptions::default(),
        );
        assert!(story(&replay).is_empty());
        assert_eq!(replay.skipped, ["down"]);
        assert!(text(&replay).contains("not evaluated: down (absence rules"));
        let source_rule = r#"
[[rule]]
name = "auth-log-quiet"
kind = "absence"
severity = "low"
source = "journal"
after = "5m"
"#;
        let replay = super::replay(
            rules(source_rule),
            Setup::default(),
            vec![log(0, "web-1", "hello"), log(600, "web-1", "again")],
            &ReplayOptions::default(),
        );
        assert!(replay.skipped.is_empty());
        assert_eq!(
            story(&replay),
            [
                (300, "fired", "auth-log-quiet".to_owned()),
                (600, "resolved", "auth-log-quiet".to_owned())
            ]
        );
    }

    #[test]
    fn with_notifications_the_clock_runs_until_they_are_sent() {
        let mut setup = Setup::default();
        setup.route.receiver = "ops".to_owned();
        let failures: Vec<Arrival> = (0..3)
            .map(|i| {
                log(
                    i,
                    "web-1",
                    "Failed password for root from 203.0.113.7 port 1 ssh2",
                )
            })
            .collect();
        let with = ReplayOptions {
            notifications: true,
            ..options()
        };
        let replay = replay(rules(RULES), setup, failures, &with);
        // Fired at 2 s; the group waits 30 s.
        let notified: Vec<(i64, &str, usize)> = replay
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Notification(m) => {
                    Some(((m.created_ns - T0) / S, m.receiver.as_str(), m.alerts.len()))
                }
                Step::Transition(_) => None,
            })
            .collect();
        assert_eq!(notified, [(32, "ops", 1)]);
        let out = text(&replay);
        assert!(
            out.contains(
                "2026-12-01T10:00:32Z  NOTIFY    ops    firing, 1 alert  {alertname=\"brute\"}"
            ),
            "{out}"
        );
        assert!(out.contains("notifications: 1 (ops 1)"), "{out}");
    }

    #[test]
    fn json_lines_give_every_label_and_a_summary() {
        let failures: Vec<Arrival> = (0..3)
            .map(|i| {
                log(
                    i,
                    "web-1",
                    "Failed password for root from 203.0.113.7 port 1 ssh2",
                )
            })
            .collect();
        let replay = replay(rules(RULES), Setup::default(), failures, &options());
        let mut out = Vec::new();
        render_json(&replay, &mut out).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["type"], "transition");
        assert_eq!(lines[0]["kind"], "fired");
        assert_eq!(lines[0]["time"], "2026-12-01T10:00:02Z");
        assert_eq!(lines[0]["labels"]["team"], "security");
        assert_eq!(lines[0]["value"], 3.0);
        assert_eq!(lines[1]["type"], "summary");
        assert_eq!(lines[1]["fired"]["brute"], 1);
        assert_eq!(lines[1]["firing"][0]["labels"]["src_ip"], "203.0.113.7");
        assert_eq!(lines[1]["stopped"], "nothing_pending");
        assert!(lines[1]["notifications"].is_null());
    }

    #[test]
    fn every_short_form_of_an_events_file_makes_the_event_the_agent_would_send() {
        let text = r#"
# comments and blank lines are left out

{"time": "2026-12-01T10:00:00Z", "host": "web-1", "metric": "system.cpu.utilization", "value": 0.05, "attributes": {"state": "idle", "cpu": "cpu0"}}
{"time": "2026-12-01T10:00:01Z", "host": "web-1", "metric": "outpost.agent.drops", "value": 3, "unit": "{event}", "kind": "counter"}
{"time": "2026-12-01T10:00:02Z", "host": "web-1", "log": "oops", "severity": "error", "attributes": {"app": "x"}}
{"time": "2026-12-01T10:00:03Z", "host": "web-1", "fim": "/etc/passwd", "change": "modified"}
{"time": "2026-12-01T10:00:04Z", "host": "web-1", "fim": "/etc/passwd", "change": "moved", "moved_from": "/etc/passwd+"}
{"time": "2026-12-01T10:00:05Z", "host": "web-1", "status": {"agent_version": "0.1.0"}}
{"host": "web-2", "event": {"Log": {"time_ns": 1796119206000000000, "source": "s", "severity": null, "body": "b", "attributes": []}}}
{"time": "2026-12-01T10:00:07Z", "host": "web-1", "heartbeat": {"spool_events": 12}, "skew": -45.5}
"#;
        let arrivals = read_events(text).unwrap();
        let times: Vec<i64> = arrivals.iter().map(|a| (a.at_ns - T0) / S).collect();
        assert_eq!(times, [0, 1, 2, 3, 4, 5, 6, 7]);
        let event = |i: usize| match &arrivals[i].what {
            Arrived::Event(e) => e,
            Arrived::Heartbeat(s) => panic!("{s:?}"),
        };
        let Event::Metric(m) = event(0) else {
            panic!("{:?}", arrivals[0]);
        };
        assert_eq!(
            (m.unit.as_str(), m.kind, m.value),
            ("1", MetricKind::Gauge, 0.05)
        );
        assert_eq!(
            m.attributes,
            [
                ("cpu".to_owned(), "cpu0".to_owned()),
                ("state".to_owned(), "idle".to_owned())
            ]
        );
        let Event::Metric(m) = event(1) else {
            panic!("{:?}", arrivals[1]);
        };
        assert_eq!((m.unit.as_str(), m.kind), ("{event}", MetricKind::Counter));
        let Event::Log(l) = event(2) else {
            panic!("{:?}", arrivals[2]);
        };
        assert_eq!(
            (l.source.as_str(), l.severity, l.time_ns),
            ("journal", Some(LogSeverity::Error), at(2))
        );
        let (Event::Fim(first), Event::Fim(second)) = (event(3), event(4)) else {
            panic!("{arrivals:?}");
        };
        // Numbered and chained as the agent's trail.
        assert_eq!((first.seq, second.seq), (1, 2));
        assert_eq!(first.chain, chain_hash(CHAIN_GENESIS, first));
        assert_eq!(second.chain, chain_hash(&first.chain, second));
        assert_eq!(second.moved_from.as_deref(), Some("/etc/passwd+"));
        let Event::Status(s) = event(5) else {
            panic!("{:?}", arrivals[5]);
        };
        assert_eq!((s.agent_version.as_str(), s.time_ns), ("0.1.0", at(5)));
        assert_eq!(arrivals[6].host, "web-2");
        // A heartbeat is stamped by the agent's clock, 45.5 s behind.
        let Arrived::Heartbeat(s) = &arrivals[7].what else {
            panic!("{:?}", arrivals[7]);
        };
        assert_eq!((s.spool_events, s.time_ns), (12, at(7) - 45_500_000_000));
    }

    #[test]
    fn a_bad_line_of_an_events_file_is_named_with_what_is_wrong() {
        let ok = r#"{"time": "2026-12-01T10:00:00Z", "host": "h", "log": "x"}"#;
        let cases = [
            (r#"{"time": "2026-12-01T10:00:00Z", "host": "h", "log": "x""#.to_owned(), 2, Some(56), "not JSON: EOF while parsing an object"),
            ("[1]".to_owned(), 2, None, "expected a JSON object"),
            (r#"{"time": "2026-12-01T10:00:00Z", "host": "h"}"#.to_owned(), 2, None, "expected one of"),
            (ok.replace("\"log\"", "\"fim\": \"/x\", \"change\": \"modified\", \"log\""), 2, None, "one event a line, not log and fim"),
            (ok.replace("10:00:00Z", "10:00"), 2, None, "not an RFC 3339 time"),
            (ok.replace("\"h\"", "\"\""), 2, None, "\"host\" is empty"),
            (ok.replace("\"x\"}", "\"x\", \"colour\": 1}"), 2, None, "unknown field `colour`"),
            (ok.replace("\"x\"}", "\"x\", \"severity\": \"loud\"}"), 2, None, "`loud`: expected emergency"),
            (r#"{"time": "2026-12-01T10:00:00Z", "host": "h", "fim": "/x", "change": "touched"}"#.to_owned(), 2, None, "\"change\": `touched` is not a change"),
            (r#"{"time": "2026-12-01T10:00:00Z", "host": "h", "metric": "m"}"#.to_owned(), 2, None, "missing field `value`"),
            (r#"{"time": "2026-12-01T10:00:00Z", "host": "h", "status": {"spool_bytes": "lots"}}"#.to_owned(), 2, None, "\"status\": invalid type"),
        ];
        for (line, number, column, what) in cases {
            let err = read_events(&format!("{ok}\n{line}\n")).unwrap_err();
            assert_eq!((err.line, err.column), (number, column), "{line}: {err}");
            assert!(err.message.contains(what), "{line}: {err}");
            assert!(!err.message.contains("at line"), "{err}");
        }
        let err = TestError::Input {
            path: PathBuf::from("events.jsonl"),
            at: LineError {
                line: 2,
                column: Some(56),
                message: "not JSON".to_owned(),
            },
        };
        assert_eq!(err.to_string(), "events.jsonl:2:56: not JSON");
    }

    fn log_options() -> LogOptions {
        LogOptions {
            host: None,
            source: "/var/log/auth.log".to_owned(),
            year: Some(2026),
            now_ns: at(0),
        }
    }

    fn record(arrival: &Arrival) -> &LogRecord {
        match &arrival.what {
            Arrived::Event(Event::Log(l)) => l,
            other => panic!("{other:?}"),
        }
    }

    fn attrs(record: &LogRecord) -> Vec<(&str, &str)> {
        record
            .attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn syslog_lines_become_the_records_the_agent_makes_of_them() {
        // The agent's parser tests' lines, and what its file pipeline adds.
        let text = "\
Dec  1 10:00:01 web1 sshd[811]: Failed password for root from 203.0.113.9 port 52144 ssh2
<85>Dec  1 10:00:02 web1 sudo: alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/ls
Dec  1 10:00:03 web1 kernel [12.5] something without a tag
";
        let arrivals = read_log(text.as_bytes(), &log_options()).unwrap();
        let r = record(&arrivals[0]);
        assert_eq!(
            r.body,
            "Failed password for root from 203.0.113.9 port 52144 ssh2"
        );
        assert_eq!((r.time_ns, r.severity), (at(1), None));
        assert_eq!(r.source, "/var/log/auth.log");
        let observed = at(1).to_string();
        assert_eq!(
            attrs(r),
            [
                ("host", "web1"),
                ("app", "sshd"),
                ("pid", "811"),
                ("log.observed_ns", observed.as_str())
            ]
        );
        assert_eq!(
            (arrivals[0].host.as_str(), arrivals[0].at_ns),
            ("web1", at(1))
        );
        let r = record(&arrivals[1]);
        assert_eq!(r.severity, Some(LogSeverity::Notice));
        assert_eq!(
            &attrs(r)[..3],
            [("facility", "10"), ("host", "web1"), ("app", "sudo")]
        );
        assert!(r.body.starts_with("alice : TTY=pts/0"));
        let r = record(&arrivals[2]);
        assert_eq!(r.body, "kernel [12.5] something without a tag");
        assert_eq!(attrs(r)[0], ("host", "web1"));
        // Bytes that are no UTF-8 are replaced, and the record says so.
        let odd = read_log(
            b"Dec  1 10:00:04 web1 sshd[811]: Invalid user \xff from 192.0.2.1 port 1\n",
            &log_options(),
        )
        .unwrap();
        let r = record(&odd[0]);
        assert_eq!(r.body, "Invalid user \u{fffd} from 192.0.2.1 port 1");
        assert_eq!(attrs(r)[3], ("log.invalid_utf8", "true"));
        assert!(read_log(b"", &log_options()).unwrap().is_empty());
        // --host names the agent; the record keeps the line's host.
        let options = LogOptions {
            host: Some("web-1".to_owned()),
            ..log_options()
        };
        let arrivals = read_log(text.as_bytes(), &options).unwrap();
        assert_eq!(arrivals[0].host, "web-1");
        assert_eq!(attrs(record(&arrivals[0]))[0], ("host", "web1"));
    }

    #[test]
    fn lines_the_parser_cannot_read_are_kept_whole_and_dated_by_their_stamp_or_the_line_before() {
        let text = "\
2026-12-01T10:00:05.123456+00:00 web-2 sshd[9]: Failed password for root from 192.0.2.1 port 1 ssh2
a continuation line
<13>2026-12-01T10:00:09Z web-2 app: m
";
        let arrivals = read_log(text.as_bytes(), &log_options()).unwrap();
        let r = record(&arrivals[0]);
        assert_eq!(r.body, text.lines().next().unwrap());
        assert_eq!(attrs(r), [("parse_error", "syslog: no timestamp")]);
        assert_eq!(r.time_ns, at(5) + 123_456_000);
        assert_eq!(arrivals[0].host, "web-2");
        assert_eq!(arrivals[1].at_ns, arrivals[0].at_ns);
        assert_eq!(arrivals[1].host, "web-2");
        let r = record(&arrivals[2]);
        assert_eq!(r.severity, Some(LogSeverity::Notice));
        assert_eq!(
            attrs(r),
            [("facility", "1"), ("parse_error", "syslog: no timestamp")]
        );
        assert_eq!(r.time_ns, at(9));
        let err = read_log(b"no stamp\nDec  1 10:00:01 h a: m\n", &log_options()).unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.message.contains("no syslog timestamp"), "{err}");
    }

    #[test]
    fn the_year_is_the_given_one_and_turns_with_the_dates_or_is_the_agents_guess() {
        let text = "Dec 31 23:59:58 h a: m\nJan  1 00:00:01 h a: m\nDec 31 23:59:59 h a: late\n";
        let times: Vec<String> = read_log(text.as_bytes(), &log_options())
            .unwrap()
            .iter()
            .map(|a| stamp(a.at_ns))
            .collect();
        assert_eq!(
            times,
            [
                "2026-12-31T23:59:58Z",
                "2027-01-01T00:00:01Z",
                "2026-12-31T23:59:59Z"
            ]
        );
        // Read on 1 January 2027, a December line is of 2026.
        let january = LogOptions {
            year: None,
            now_ns: rfc3339_ns("2027-01-01T00:10:00Z").unwrap(),
            ..log_options()
        };
        let arrivals = read_log(b"Dec 31 23:59:00 h a: m\n", &january).unwrap();
        assert_eq!(stamp(arrivals[0].at_ns), "2026-12-31T23:59:00Z");
        let june = LogOptions {
            year: None,
            now_ns: rfc3339_ns("2027-06-01T00:00:00Z").unwrap(),
            ..log_options()
        };
        let arrivals = read_log(b"Mar  3 01:02:03 h a: m\n", &june).unwrap();
        assert_eq!(stamp(arrivals[0].at_ns), "2027-03-03T01:02:03Z");
    }

    #[test]
    fn times_show_milliseconds_only_when_they_have_a_fraction() {
        assert_eq!(stamp(at(1)), "2026-12-01T10:00:01Z");
        assert_eq!(stamp(at(1) + 250_000_000), "2026-12-01T10:00:01.250Z");
    }
}
