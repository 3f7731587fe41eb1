//! Parsers: a record's text turned into a message, a time, a severity and attributes.
//!
//! Every parser is total: text it cannot parse is kept whole as the message, with the attribute
//! `parse_error` saying why, so nothing is lost to a format surprise. The event time is the
//! parsed time when there is one; the read time is always kept by the caller beside it.

use regex::Regex;
use time::format_description::well_known::Rfc3339;
use time::{Month, OffsetDateTime, PrimitiveDateTime, Time};

use super::severity;

/// What a parser made of a record.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Parsed {
    pub message: String,
    /// Nanoseconds since the Unix epoch, when the record carries a time.
    pub time_ns: Option<i64>,
    /// On the syslog scale (0 emergency … 7 debug).
    pub severity: Option<u8>,
    pub attributes: Vec<(String, String)>,
}

impl Parsed {
    fn plain(text: &str) -> Parsed {
        Parsed {
            message: text.to_owned(),
            ..Parsed::default()
        }
    }

    fn failed(text: &str, why: &str) -> Parsed {
        Parsed {
            attributes: vec![("parse_error".to_owned(), why.to_owned())],
            ..Parsed::plain(text)
        }
    }
}

/// How a source's records are parsed.
#[derive(Debug, Clone)]
pub enum Parser {
    /// The text is the message.
    Plain,
    /// One JSON object per record: the message, time and level fields named here (the first
    /// present of each list), every other field an attribute (nested values as JSON text), in the
    /// order of their names.
    Json {
        message_fields: Vec<String>,
        time_fields: Vec<String>,
        severity_fields: Vec<String>,
    },
    /// Syslog, RFC 5424 or RFC 3164 (with or without its `<PRI>`, as files under `/var/log`
    /// hold it), told apart by the text.
    Syslog,
    /// A regular expression with named groups: `message`, `time` (RFC 3339) and `severity` are
    /// taken as such, every other group is an attribute.
    Regex(Regex),
}

impl Parser {
    /// JSON with the field names most loggers use.
    pub fn json() -> Parser {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect();
        Parser::Json {
            message_fields: names(&["message", "msg"]),
            time_fields: names(&["time", "timestamp", "@timestamp", "ts"]),
            severity_fields: names(&["level", "severity", "lvl"]),
        }
    }

    /// Parses `text`, read at `read_ns` (which dates RFC 3164's year-less timestamps).
    pub fn parse(&self, text: &str, read_ns: i64) -> Parsed {
        match self {
            Parser::Plain => Parsed::plain(text),
            Parser::Json {
                message_fields,
                time_fields,
                severity_fields,
            } => json(text, message_fields, time_fields, severity_fields),
            Parser::Syslog => syslog(text, read_ns),
            Parser::Regex(re) => by_regex(re, text),
        }
    }
}

fn json(
    text: &str,
    message_fields: &[String],
    time_fields: &[String],
    severity_fields: &[String],
) -> Parsed {
    let object = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(o)) => o,
        Ok(_) => return Parsed::failed(text, "json: not an object"),
        Err(e) => return Parsed::failed(text, &format!("json: {e}")),
    };
    let as_text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let message_key = first_present(&object, message_fields);
    let time_key = first_present(&object, time_fields);
    let severity_key = first_present(&object, severity_fields);
    let mut parsed = Parsed::default();
    for (key, value) in &object {
        if Some(key) == message_key {
            parsed.message = as_text(value);
        } else if Some(key) == time_key && json_time(value).is_some() {
            parsed.time_ns = json_time(value);
        } else if Some(key) == severity_key && severity::from_name(&as_text(value)).is_some() {
            parsed.severity = severity::from_name(&as_text(value));
        } else {
            parsed.attributes.push((key.clone(), as_text(value)));
        }
    }
    parsed
}

/// The first of `names` that `object` has.
fn first_present<'a>(
    object: &serde_json::Map<String, serde_json::Value>,
    names: &'a [String],
) -> Option<&'a String> {
    names.iter().find(|n| object.contains_key(n.as_str()))
}

/// A JSON time: an RFC 3339 string, or a number of seconds (or milliseconds, when larger than
/// any date in seconds could be) since the epoch.
fn json_time(v: &serde_json::Value) -> Option<i64> {
    match v {
        serde_json::Value::String(s) => rfc3339_ns(s),
        serde_json::Value::Number(n) => {
            let secs = n.as_f64()?;
            let secs = if secs.abs() > 1e11 { secs / 1e3 } else { secs };
            let ns = secs * 1e9;
            (ns.is_finite() && ns.abs() < i64::MAX as f64).then_some(ns as i64)
        }
        _ => None,
    }
}

fn rfc3339_ns(s: &str) -> Option<i64> {
    let t = OffsetDateTime::parse(s, &Rfc3339).ok()?;
    i64::try_from(t.unix_timestamp_nanos()).ok()
}

fn by_regex(re: &Regex, text: &str) -> Parsed {
    let Some(caps) = re.captures(text) else {
        return Parsed::failed(text, "regex: no match");
    };
    let mut parsed = Parsed::plain(text);
    for name in re.capture_names().flatten() {
        let Some(value) = caps.name(name).map(|m| m.as_str()) else {
            continue;
        };
        match name {
            "message" => value.clone_into(&mut parsed.message),
            "time" if rfc3339_ns(value).is_some() => parsed.time_ns = rfc3339_ns(value),
            "severity" if severity::from_name(value).is_some() => {
                parsed.severity = severity::from_name(value);
            }
            _ => parsed.attributes.push((name.to_owned(), value.to_owned())),
        }
    }
    parsed
}

/// `<PRI>`, if the text starts with one: (facility, severity) and the rest.
fn priority(text: &str) -> Option<(u8, u8, &str)> {
    let rest = text.strip_prefix('<')?;
    let end = rest.find('>')?;
    let pri: u8 = rest[..end].parse().ok().filter(|&p| p <= 191)?;
    Some((pri >> 3, pri & 7, &rest[end + 1..]))
}

fn syslog(text: &str, read_ns: i64) -> Parsed {
    let (pri, rest) = match priority(text) {
        Some((facility, severity, rest)) => (Some((facility, severity)), rest),
        None => (None, text),
    };
    let mut parsed = match rest.strip_prefix("1 ") {
        Some(v1) => rfc5424(v1).unwrap_or_else(|why| Parsed::failed(text, &why)),
        None => {
            rfc3164(rest, read_ns).unwrap_or_else(|| Parsed::failed(text, "syslog: no timestamp"))
        }
    };
    if let Some((facility, severity)) = pri {
        parsed.severity = Some(severity);
        parsed
            .attributes
            .insert(0, ("facility".to_owned(), facility.to_string()));
    }
    parsed
}

/// RFC 5424 after `<PRI>1 `: timestamp, host, app, procid, msgid, structured data, message.
fn rfc5424(text: &str) -> Result<Parsed, String> {
    let mut fields = text.splitn(6, ' ');
    let mut next = |what: &str| fields.next().ok_or_else(|| format!("rfc5424: no {what}"));
    let timestamp = next("timestamp")?;
    let header = [
        ("host", next("host")?),
        ("app", next("app")?),
        ("pid", next("procid")?),
        ("msgid", next("msgid")?),
    ];
    let rest = next("structured data")?;
    let mut parsed = Parsed::default();
    if timestamp != "-" {
        parsed.time_ns = Some(
            rfc3339_ns(timestamp).ok_or_else(|| format!("rfc5424: bad timestamp {timestamp:?}"))?,
        );
    }
    for (name, value) in header {
        if value != "-" {
            parsed.attributes.push((name.to_owned(), value.to_owned()));
        }
    }
    let message = if let Some(after) = rest.strip_prefix('-') {
        after
    } else {
        structured_data(rest, &mut parsed.attributes)?
    };
    let message = message.strip_prefix(' ').unwrap_or(message);
    // A message may start with a byte-order mark to say it is UTF-8.
    message
        .strip_prefix('\u{feff}')
        .unwrap_or(message)
        .clone_into(&mut parsed.message);
    Ok(parsed)
}

/// Reads `[id k="v" …]…` from the start of `text` into `sd.<id>.<k>` attributes; returns what
/// follows.
fn structured_data<'a>(
    mut text: &'a str,
    attributes: &mut Vec<(String, String)>,
) -> Result<&'a str, String> {
    let bad = || "rfc5424: bad structured data".to_owned();
    while let Some(element) = text.strip_prefix('[') {
        let id_end = element.find([' ', ']']).ok_or_else(bad)?;
        let id = &element[..id_end];
        let mut rest = &element[id_end..];
        loop {
            rest = rest.trim_start_matches(' ');
            if let Some(after) = rest.strip_prefix(']') {
                text = after;
                break;
            }
            let eq = rest.find("=\"").ok_or_else(bad)?;
            let name = &rest[..eq];
            let mut value = String::new();
            let mut chars = rest[eq + 2..].char_indices();
            let end = loop {
                match chars.next().ok_or_else(bad)? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next().ok_or_else(bad)?.1 {
                        c @ ('"' | '\\' | ']') => value.push(c),
                        c => {
                            value.push('\\');
                            value.push(c);
                        }
                    },
                    (_, c) => value.push(c),
                }
            };
            attributes.push((format!("sd.{id}.{name}"), value));
            rest = &rest[eq + 2 + end + 1..];
        }
    }
    Ok(text)
}

/// RFC 3164 (or a syslog file's line): `Mmm dd hh:mm:ss host tag[pid]: message`. The year is
/// the read time's, or the year before when that would put the record more than a day after it
/// was read (a December line read in January). The time is read as UTC.
fn rfc3164(text: &str, read_ns: i64) -> Option<Parsed> {
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
    let read = OffsetDateTime::from_unix_timestamp_nanos(i128::from(read_ns)).ok()?;
    let at = |year: i32| {
        let date = time::Date::from_calendar_date(year, month, day).ok()?;
        let t = PrimitiveDateTime::new(date, time).assume_utc();
        i64::try_from(t.unix_timestamp_nanos()).ok()
    };
    let day_ns = 86_400 * 1_000_000_000;
    let time_ns = match at(read.year()) {
        Some(t) if t <= read_ns.saturating_add(day_ns) => t,
        _ => at(read.year() - 1)?,
    };
    let rest = text.get(15..)?.strip_prefix(' ')?;
    let mut parsed = Parsed {
        time_ns: Some(time_ns),
        ..Parsed::default()
    };
    let (host, rest) = rest.split_once(' ').unwrap_or((rest, ""));
    parsed.attributes.push(("host".to_owned(), host.to_owned()));
    // The tag ends at the first ':' or '[' among tag characters; lines without one are all
    // message.
    let tag_end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || "-_./".contains(c)))
        .unwrap_or(rest.len());
    let (tag, after) = rest.split_at(tag_end);
    let (pid, after) = match after.strip_prefix('[').and_then(|a| a.split_once(']')) {
        Some((pid, a)) if pid.bytes().all(|b| b.is_ascii_digit()) => (Some(pid), a),
        _ => (None, after),
    };
    match after.strip_prefix(':') {
        Some(message) if !tag.is_empty() => {
            parsed.attributes.push(("app".to_owned(), tag.to_owned()));
            if let Some(pid) = pid {
                parsed.attributes.push(("pid".to_owned(), pid.to_owned()));
            }
            message.trim_start().clone_into(&mut parsed.message);
        }
        _ => rest.clone_into(&mut parsed.message),
    }
    Some(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-01T12:00:00Z.
    const READ_NS: i64 = 1_796_126_400_000_000_000;

    fn ns(rfc3339: &str) -> i64 {
        rfc3339_ns(rfc3339).unwrap()
    }

    fn attrs(p: &Parsed) -> Vec<(&str, &str)> {
        p.attributes
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    #[test]
    fn the_read_time_constant_is_what_it_says() {
        assert_eq!(ns("2026-12-01T12:00:00Z"), READ_NS);
    }

    #[test]
    fn syslog_file_lines_from_sshd_and_sudo() {
        let p = Parser::Syslog.parse(
            "Dec  1 10:00:01 web1 sshd[811]: Failed password for root from 203.0.113.9 port 52144 ssh2",
            READ_NS,
        );
        assert_eq!(
            p.message,
            "Failed password for root from 203.0.113.9 port 52144 ssh2"
        );
        assert_eq!(p.time_ns, Some(ns("2026-12-01T10:00:01Z")));
        assert_eq!(p.severity, None);
        assert_eq!(
            attrs(&p),
            [("host", "web1"), ("app", "sshd"), ("pid", "811")]
        );

        let p = Parser::Syslog.parse(
            "<85>Nov 30 23:59:59 web1 sudo: alice : TTY=pts/0 ; PWD=/home/alice ; USER=root ; COMMAND=/bin/ls",
            READ_NS,
        );
        assert_eq!(p.severity, Some(5));
        assert_eq!(p.time_ns, Some(ns("2026-11-30T23:59:59Z")));
        assert_eq!(
            attrs(&p),
            [("facility", "10"), ("host", "web1"), ("app", "sudo")]
        );
        assert!(p.message.starts_with("alice : TTY=pts/0"));
    }

    #[test]
    fn a_december_line_read_in_january_is_last_year() {
        let january = ns("2027-01-01T00:10:00Z");
        let p = Parser::Syslog.parse("Dec 31 23:59:00 h app: m", january);
        assert_eq!(p.time_ns, Some(ns("2026-12-31T23:59:00Z")));
    }

    #[test]
    fn rfc5424_with_structured_data() {
        let line = r#"<165>1 2026-12-01T10:00:00.123Z web1 myapp 1234 ID47 [exampleSDID@32473 iut="3" eventSource="Application" note="a \"quoted\" \] bracket"][other k="v"] BOMAn application event"#;
        let p = Parser::Syslog.parse(&line.replace("BOM", "\u{feff}"), READ_NS);
        assert_eq!(p.message, "An application event");
        assert_eq!(p.severity, Some(5));
        assert_eq!(p.time_ns, Some(ns("2026-12-01T10:00:00.123Z")));
        assert_eq!(
            attrs(&p),
            [
                ("facility", "20"),
                ("host", "web1"),
                ("app", "myapp"),
                ("pid", "1234"),
                ("msgid", "ID47"),
                ("sd.exampleSDID@32473.iut", "3"),
                ("sd.exampleSDID@32473.eventSource", "Application"),
                ("sd.exampleSDID@32473.note", r#"a "quoted" ] bracket"#),
                ("sd.other.k", "v"),
            ]
        );
        let p = Parser::Syslog.parse("<14>1 - - - - - - just text", READ_NS);
        assert_eq!(
            (p.message.as_str(), p.time_ns, p.severity),
            ("just text", None, Some(6))
        );
        assert!(p.attributes.iter().all(|(k, _)| k == "facility"));
    }

    #[test]
    fn unparseable_syslog_is_kept_whole_and_says_why() {
        for line in [
            "<14>1 yesterday h a - - - x",
            "<14>1 2026-12-01T10:00:00Z h a - - [unclosed",
            "no timestamp here",
        ] {
            let p = Parser::Syslog.parse(line, READ_NS);
            assert_eq!(p.message, line);
            assert!(
                p.attributes.iter().any(|(k, _)| k == "parse_error"),
                "{line}: {p:?}"
            );
        }
    }

    #[test]
    fn json_lines_with_their_usual_fields() {
        let p = Parser::json().parse(
            r#"{"time":"2026-12-01T10:00:00Z","level":"WARN","msg":"disk almost full","mount":"/srv","used":0.93,"tags":["a"]}"#,
            READ_NS,
        );
        assert_eq!(p.message, "disk almost full");
        assert_eq!(p.severity, Some(4));
        assert_eq!(p.time_ns, Some(ns("2026-12-01T10:00:00Z")));
        // Attributes in the order of their names.
        assert_eq!(
            attrs(&p),
            [("mount", "/srv"), ("tags", r#"["a"]"#), ("used", "0.93")]
        );
        // Epoch seconds and milliseconds.
        let p = Parser::json().parse(r#"{"ts":1796126400.5,"message":"m"}"#, READ_NS);
        assert_eq!(p.time_ns, Some(READ_NS + 500_000_000));
        let p = Parser::json().parse(r#"{"ts":1796126400000,"message":"m"}"#, READ_NS);
        assert_eq!(p.time_ns, Some(READ_NS));
        // Not JSON, or not an object: kept whole.
        for line in ["plain words", "[1,2]"] {
            let p = Parser::json().parse(line, READ_NS);
            assert_eq!(p.message, line);
            assert_eq!(p.attributes[0].0, "parse_error");
        }
    }

    #[test]
    fn nginx_access_lines_by_regex() {
        let re = Regex::new(
            r#"^(?P<client>\S+) \S+ \S+ \[[^\]]+\] "(?P<message>(?P<method>\S+) (?P<path>\S+) [^"]*)" (?P<status>\d{3}) (?P<bytes>\d+)"#,
        )
        .unwrap();
        let p = Parser::Regex(re).parse(
            r#"203.0.113.9 - - [01/Dec/2026:10:00:00 +0000] "GET /index.html HTTP/1.1" 200 612 "-" "curl/8.5""#,
            READ_NS,
        );
        assert_eq!(p.message, "GET /index.html HTTP/1.1");
        assert_eq!(
            attrs(&p),
            [
                ("client", "203.0.113.9"),
                ("method", "GET"),
                ("path", "/index.html"),
                ("status", "200"),
                ("bytes", "612")
            ]
        );
        let re = Regex::new(r"^(?P<severity>\w+) (?P<message>.*)").unwrap();
        let p = Parser::Regex(re.clone()).parse("ERROR it broke", READ_NS);
        assert_eq!((p.severity, p.message.as_str()), (Some(3), "it broke"));
        let p = Parser::Regex(re).parse("", READ_NS);
        assert_eq!(
            p.attributes[0],
            ("parse_error".to_owned(), "regex: no match".to_owned())
        );
    }
}
