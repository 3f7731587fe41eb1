//! What a source does with a file's bytes: lines, records, parsed and redacted events.
//!
//! A [`Pipeline`] is a source's configuration of the steps; a [`Reader`] is one file's pass
//! through the stateful ones (lines, multiline groups). Records become events in
//! [`Pipeline::event`], which parses, redacts and attaches the source's attributes.

use std::time::Instant;

use outpost_common::event::{Event, LogRecord, Severity};

use super::lines::{Line, LineSplitter};
use super::multiline::{self, Multiline, Record};
use super::parse::Parser;
use super::redact::Redactor;

/// Attribute set on a record whose line was longer than `max_line_bytes`.
pub const ATTR_TRUNCATED: &str = "log.truncated";
/// Attribute set on a record with bytes that were not UTF-8.
pub const ATTR_INVALID_UTF8: &str = "log.invalid_utf8";
/// Attribute set on a multiline group cut at its line or byte limit.
pub const ATTR_CUT: &str = "log.multiline_cut";
/// Attribute holding the read time (ns) when the event time is the parsed one.
pub const ATTR_OBSERVED: &str = "log.observed_ns";

/// A source's steps from bytes to events.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub max_line_bytes: usize,
    pub multiline: Option<(multiline::Rule, multiline::Limits)>,
    pub parser: Parser,
    pub redactor: Redactor,
    /// Static attributes added to every event.
    pub attributes: Vec<(String, String)>,
}

impl Default for Pipeline {
    /// Plain lines of up to 100 KiB, nothing else.
    fn default() -> Self {
        Pipeline {
            max_line_bytes: 100 * 1024,
            multiline: None,
            parser: Parser::Plain,
            redactor: Redactor::new(),
            attributes: Vec::new(),
        }
    }
}

impl Pipeline {
    /// A reader of one file from `offset` on.
    pub fn reader(&self, offset: u64) -> Reader {
        Reader {
            splitter: LineSplitter::new(self.max_line_bytes, offset),
            multiline: self
                .multiline
                .as_ref()
                .map(|(rule, limits)| Multiline::new(rule.clone(), *limits, offset)),
            lines: Vec::new(),
        }
    }

    /// The event for `record` of the file `source`, read at `read_ns`; redactions are added to
    /// `redactions`, one slot per rule of the redactor.
    pub fn event(
        &self,
        source: &str,
        record: Record,
        read_ns: i64,
        redactions: &mut Vec<u64>,
    ) -> Event {
        let mut parsed = match self.parser {
            // The text is the message: moved, not copied.
            Parser::Plain => super::parse::Parsed {
                message: record.text,
                ..super::parse::Parsed::default()
            },
            _ => self.parser.parse(&record.text, read_ns),
        };
        self.redactor.redact(&mut parsed.message, redactions);
        let mut attributes = self.attributes.clone();
        attributes.reserve(parsed.attributes.len() + 1);
        for (key, mut value) in parsed.attributes {
            self.redactor.redact(&mut value, redactions);
            attributes.push((key, value));
        }
        let flags = [
            (record.truncated, ATTR_TRUNCATED),
            (record.invalid_utf8, ATTR_INVALID_UTF8),
            (record.cut, ATTR_CUT),
        ];
        for (_, name) in flags.iter().filter(|(set, _)| *set) {
            attributes.push(((*name).to_owned(), "true".to_owned()));
        }
        let time_ns = match parsed.time_ns {
            Some(t) => {
                attributes.push((ATTR_OBSERVED.to_owned(), read_ns.to_string()));
                t
            }
            None => read_ns,
        };
        Event::Log(LogRecord {
            time_ns,
            source: source.to_owned(),
            severity: parsed
                .severity
                .and_then(|s| Severity::ALL.get(usize::from(s)).copied()),
            body: parsed.message,
            attributes,
        })
    }
}

/// One file's lines and groups; see the module documentation.
#[derive(Debug)]
pub struct Reader {
    splitter: LineSplitter,
    multiline: Option<Multiline>,
    lines: Vec<Line>,
}

impl Reader {
    /// Takes the next bytes of the file, read at `now`; appends the records they complete.
    pub fn push(&mut self, now: Instant, bytes: &[u8], out: &mut Vec<Record>) {
        self.splitter.push(bytes, &mut self.lines);
        self.hand_out(now, out);
    }

    /// Hands out an open group that waited long enough by `now`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Record>) {
        if let Some(m) = &mut self.multiline {
            m.handle_timeout(now, out);
        }
    }

    /// When an open group is due, if there is one.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.multiline.as_ref().and_then(Multiline::poll_timeout)
    }

    /// Hands out everything held, an unfinished last line included: the file will not grow.
    pub fn finish(&mut self, now: Instant, out: &mut Vec<Record>) {
        if let Some(line) = self.splitter.finish_partial() {
            self.lines.push(line);
        }
        self.hand_out(now, out);
        if let Some(m) = &mut self.multiline {
            m.flush(out);
        }
    }

    /// Hands out an open group (but not an unfinished line), as when the file's content is
    /// about to be replaced.
    pub fn flush_group(&mut self, out: &mut Vec<Record>) {
        if let Some(m) = &mut self.multiline {
            m.flush(out);
        }
    }

    /// The offset a checkpoint may hold: past the last record handed out.
    pub fn checkpoint(&self) -> u64 {
        self.multiline
            .as_ref()
            .map_or_else(|| self.splitter.checkpoint(), Multiline::checkpoint)
    }

    /// The offset of the next byte to read.
    pub fn read_offset(&self) -> u64 {
        self.splitter.checkpoint() + self.splitter.pending_bytes()
    }

    /// Bytes of an unfinished last line.
    pub fn pending_bytes(&self) -> u64 {
        self.splitter.pending_bytes()
    }

    fn hand_out(&mut self, now: Instant, out: &mut Vec<Record>) {
        match &mut self.multiline {
            Some(m) => {
                for line in self.lines.drain(..) {
                    m.push(now, line, out);
                }
            }
            None => out.extend(self.lines.drain(..).map(|l| Record {
                dropped_bytes: l.dropped_bytes(),
                text: l.text,
                lines: 1,
                end_offset: l.end_offset,
                truncated: l.truncated,
                invalid_utf8: l.invalid_utf8,
                cut: false,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use regex::Regex;

    use super::*;
    use crate::collectors::logs::redact::Preset;

    fn log(e: Event) -> LogRecord {
        match e {
            Event::Log(l) => l,
            other => panic!("not a log: {other:?}"),
        }
    }

    #[test]
    fn records_become_parsed_redacted_events_with_their_flags() {
        let p = Pipeline {
            max_line_bytes: 200,
            parser: Parser::Syslog,
            redactor: Redactor::new().with_preset(Preset::Ipv4),
            attributes: vec![("env".to_owned(), "prod".to_owned())],
            ..Pipeline::default()
        };
        let mut reader = p.reader(0);
        let mut records = Vec::new();
        let text = "<38>1 2026-12-02T10:00:00Z web sshd 812 - - Accepted key for root from 10.1.2.3\n\
                    plain \u{0}\u{ff}\n";
        reader.push(Instant::now(), text.as_bytes(), &mut records);
        assert_eq!(records.len(), 2);
        let mut counts = Vec::new();
        let first = log(p.event("/var/log/auth.log", records.remove(0), 7, &mut counts));
        assert_eq!(first.source, "/var/log/auth.log");
        assert_eq!(first.severity, Some(Severity::Info));
        assert_eq!(first.time_ns, 1_796_205_600_000_000_000);
        assert!(
            first.body.starts_with("Accepted key for root"),
            "{}",
            first.body
        );
        assert!(!first.body.contains("10.1.2.3"), "{}", first.body);
        assert_eq!(counts, [1]);
        let attr = |l: &LogRecord, k: &str| {
            l.attributes
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(attr(&first, "env").as_deref(), Some("prod"));
        assert_eq!(attr(&first, ATTR_OBSERVED).as_deref(), Some("7"));
        assert_eq!(attr(&first, ATTR_TRUNCATED), None);
        assert_eq!(attr(&first, "parse_error"), None);
        let second = log(p.event("/var/log/auth.log", records.remove(0), 9, &mut counts));
        assert_eq!(second.time_ns, 9, "no parsed time: the read time");
        assert_eq!(attr(&second, ATTR_OBSERVED), None);
    }

    #[test]
    fn a_long_line_is_flagged_and_an_open_group_is_never_checkpointed() {
        let p = Pipeline {
            max_line_bytes: 8,
            multiline: Some((
                multiline::Rule::Continuation(Regex::new(r"^\s").unwrap()),
                multiline::Limits::default(),
            )),
            ..Pipeline::default()
        };
        let mut r = p.reader(100);
        let mut out = Vec::new();
        let now = Instant::now();
        r.push(now, b"Exception in thread\n  at a\n  at b\nnext", &mut out);
        assert!(out.is_empty(), "the group may still grow");
        assert_eq!(r.checkpoint(), 100);
        assert_eq!(r.read_offset(), 100 + 38);
        assert_eq!(r.pending_bytes(), 4);
        r.push(now, b" line\n", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].lines, 3);
        assert!(out[0].truncated);
        assert_eq!(r.checkpoint(), 100 + 34);
        let event = log(p.event("f", out.remove(0), 1, &mut Vec::new()));
        assert!(
            event
                .attributes
                .contains(&(ATTR_TRUNCATED.to_owned(), "true".to_owned()))
        );
        // Nothing joins the open group for the flush timeout: it is handed out.
        r.handle_timeout(now + Duration::from_secs(6), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(r.checkpoint(), 100 + 44);
        // A last line without its newline is handed out only when the file is finished.
        r.push(now, b"tail", &mut out);
        assert_eq!(out.len(), 1);
        r.finish(now, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].text, "tail");
        assert_eq!(r.checkpoint(), 100 + 48);
    }
}
