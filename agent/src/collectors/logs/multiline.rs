//! Lines grouped into records: a Java stack trace or a Python traceback is one event, not
//! thirty.
//!
//! [`Multiline`] is a state machine with no I/O and the time passed in. Lines go in with
//! [`Multiline::push`]; a group is handed out when the next group starts, when it reaches its size
//! limit, or when no line has joined it for the flush timeout ([`Multiline::poll_timeout`],
//! [`Multiline::handle_timeout`]). A group still open is never checkpointed:
//! [`Multiline::checkpoint`] is the offset where it starts, so after a restart it is read again
//! whole.

use std::time::{Duration, Instant};

use regex::Regex;

use super::lines::Line;

/// How lines join a group.
#[derive(Debug, Clone)]
pub enum Rule {
    /// A line matching starts a group; any other line continues the current one (for example
    /// `^\d{4}-\d{2}-\d{2}` for logs whose records start with a date).
    Start(Regex),
    /// A line matching continues the current group; any other line starts one (for example
    /// `^\s` for indented continuation lines).
    Continuation(Regex),
}

impl Rule {
    fn continues(&self, line: &str) -> bool {
        match self {
            Rule::Start(start) => !start.is_match(line),
            Rule::Continuation(continuation) => continuation.is_match(line),
        }
    }
}

/// Limits of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// A group no line has joined for this long is handed out.
    pub flush_after: Duration,
    /// Lines in one group at most.
    pub max_lines: usize,
    /// Bytes of text in one group at most (its lines joined by `\n`).
    pub max_bytes: usize,
}

impl Default for Limits {
    /// 5 s, 500 lines, 1 MiB.
    fn default() -> Self {
        Limits {
            flush_after: Duration::from_secs(5),
            max_lines: 500,
            max_bytes: 1024 * 1024,
        }
    }
}

/// One record: a group of lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The lines, joined by `\n`.
    pub text: String,
    pub lines: usize,
    /// The file offset just past its last line.
    pub end_offset: u64,
    /// A line of it was truncated.
    pub truncated: bool,
    /// A line of it had bytes that were not UTF-8.
    pub invalid_utf8: bool,
    /// Bytes of over-long lines cut off (the lines are flagged `truncated`).
    pub dropped_bytes: u64,
    /// The group reached a size limit and was handed out there; its next lines form another.
    pub cut: bool,
}

#[derive(Debug)]
struct Group {
    record: Record,
    /// The offset where the group's first line starts.
    start_offset: u64,
    last_line_at: Instant,
}

/// Groups lines into [`Record`]s; see the module documentation.
#[derive(Debug)]
pub struct Multiline {
    rule: Rule,
    limits: Limits,
    group: Option<Group>,
    /// The offset past the last record handed out.
    handed_out: u64,
}

impl Multiline {
    /// Grouping by `rule` within `limits`, for a file read from `offset` on.
    pub fn new(rule: Rule, limits: Limits, offset: u64) -> Self {
        Multiline {
            rule,
            limits: Limits {
                max_lines: limits.max_lines.max(1),
                max_bytes: limits.max_bytes.max(1),
                ..limits
            },
            group: None,
            handed_out: offset,
        }
    }

    /// Adds the next line, read at `now`; appends to `out` any record it completes.
    pub fn push(&mut self, now: Instant, line: Line, out: &mut Vec<Record>) {
        let continues = self.group.is_some() && self.rule.continues(&line.text);
        if let Some(group) = self.group.as_mut().filter(|_| continues) {
            let record = &group.record;
            let fits = record.lines < self.limits.max_lines
                && record.text.len() + 1 + line.text.len() <= self.limits.max_bytes;
            if fits {
                let record = &mut group.record;
                record.text.push('\n');
                record.text.push_str(&line.text);
                record.lines += 1;
                record.end_offset = line.end_offset;
                record.truncated |= line.truncated;
                record.dropped_bytes += line.dropped_bytes();
                record.invalid_utf8 |= line.invalid_utf8;
                group.last_line_at = now;
                return;
            }
            group.record.cut = true;
        }
        self.flush(out);
        self.group = Some(Group {
            start_offset: line.end_offset - line.file_bytes,
            record: Record {
                dropped_bytes: line.dropped_bytes(),
                text: line.text,
                lines: 1,
                end_offset: line.end_offset,
                truncated: line.truncated,
                invalid_utf8: line.invalid_utf8,
                cut: false,
            },
            last_line_at: now,
        });
    }

    /// When the open group is due to be handed out, if there is one.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.group
            .as_ref()
            .map(|g| g.last_line_at + self.limits.flush_after)
    }

    /// Hands out the open group if no line joined it for the flush timeout by `now`.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut Vec<Record>) {
        if self.poll_timeout().is_some_and(|due| now >= due) {
            self.flush(out);
        }
    }

    /// Hands out the open group now (the file will not grow: the source is stopping or the file
    /// was rotated away and read to its end).
    pub fn flush(&mut self, out: &mut Vec<Record>) {
        if let Some(group) = self.group.take() {
            self.handed_out = group.record.end_offset;
            out.push(group.record);
        }
    }

    /// The offset a source may checkpoint: past the last record handed out, never inside the
    /// open group.
    pub fn checkpoint(&self) -> u64 {
        self.group
            .as_ref()
            .map_or(self.handed_out, |g| g.start_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::super::lines::LineSplitter;
    use super::*;

    const JAVA: &str = "\
2026-12-01 10:00:00 INFO started
2026-12-01 10:00:01 ERROR request failed
java.lang.IllegalStateException: no connection
\tat com.example.Db.query(Db.java:42)
\tat com.example.Api.handle(Api.java:17)
Caused by: java.net.ConnectException: refused
\t... 2 more
2026-12-01 10:00:02 INFO recovered
";

    const PYTHON: &str = "\
Traceback (most recent call last):
  File \"app.py\", line 3, in <module>
    main()
  File \"app.py\", line 2, in main
    1 / 0
ZeroDivisionError: division by zero
next record
";

    fn lines(text: &str) -> Vec<Line> {
        let mut out = Vec::new();
        LineSplitter::new(1024, 0).push(text.as_bytes(), &mut out);
        out
    }

    fn group(rule: Rule, limits: Limits, text: &str) -> (Vec<Record>, Multiline) {
        let t0 = Instant::now();
        let mut m = Multiline::new(rule, limits, 0);
        let mut out = Vec::new();
        for line in lines(text) {
            m.push(t0, line, &mut out);
        }
        (out, m)
    }

    fn date_start() -> Rule {
        Rule::Start(Regex::new(r"^\d{4}-\d{2}-\d{2} ").unwrap())
    }

    #[test]
    fn a_java_stack_trace_is_one_record() {
        let (out, mut m) = group(date_start(), Limits::default(), JAVA);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].text, "2026-12-01 10:00:00 INFO started");
        assert_eq!(out[1].lines, 6);
        assert!(
            out[1]
                .text
                .starts_with("2026-12-01 10:00:01 ERROR request failed\njava.lang")
        );
        assert!(out[1].text.ends_with("\t... 2 more"));
        // The last record may still grow: it is not handed out, nor checkpointed.
        let last_start = JAVA.len() - "2026-12-01 10:00:02 INFO recovered\n".len();
        assert_eq!(m.checkpoint(), last_start as u64);
        let mut rest = Vec::new();
        m.flush(&mut rest);
        assert_eq!(rest[0].text, "2026-12-01 10:00:02 INFO recovered");
        assert_eq!(m.checkpoint(), JAVA.len() as u64);
    }

    #[test]
    fn a_python_traceback_is_one_record_with_a_continuation_rule() {
        // Indented lines continue; so does the exception line that ends a traceback.
        let rule = Rule::Continuation(Regex::new(r"^(\s|[A-Za-z_.]+(Error|Exception):)").unwrap());
        let (out, _) = group(rule, Limits::default(), PYTHON);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].lines, 6);
        assert!(out[0].text.ends_with("ZeroDivisionError: division by zero"));
    }

    #[test]
    fn an_open_group_is_handed_out_after_the_flush_timeout_and_not_before() {
        let t0 = Instant::now();
        let limits = Limits::default();
        let mut m = Multiline::new(date_start(), limits, 0);
        let mut out = Vec::new();
        let mut input = lines("2026-12-01 a\n  more\n").into_iter();
        m.push(t0, input.next().unwrap(), &mut out);
        m.push(t0 + Duration::from_secs(3), input.next().unwrap(), &mut out);
        assert_eq!(m.poll_timeout(), Some(t0 + Duration::from_secs(8)));
        m.handle_timeout(t0 + Duration::from_millis(7_999), &mut out);
        assert!(out.is_empty());
        m.handle_timeout(t0 + Duration::from_secs(8), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].text, "2026-12-01 a\n  more");
        assert_eq!(m.poll_timeout(), None);
    }

    #[test]
    fn groups_are_cut_at_their_size_limits() {
        let limits = Limits {
            max_lines: 3,
            ..Limits::default()
        };
        let text = "2026-12-01 start\n a\n b\n c\n d\n";
        let (out, mut m) = group(date_start(), limits, text);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].lines, out[0].cut), (3, true));
        let mut rest = Vec::new();
        m.flush(&mut rest);
        assert_eq!(rest[0].text, " c\n d");

        let limits = Limits {
            max_bytes: 20,
            ..Limits::default()
        };
        let (out, _) = group(date_start(), limits, "2026-12-01 0123456\n 12345\n 12345\n");
        assert_eq!(out[0].text, "2026-12-01 0123456");
        assert!(out[0].cut);
    }

    #[test]
    fn line_flags_carry_over_to_the_record() {
        let mut m = Multiline::new(date_start(), Limits::default(), 0);
        let t0 = Instant::now();
        let mut out = Vec::new();
        let mut splitter = LineSplitter::new(8, 0);
        let mut input = Vec::new();
        splitter.push(b"2026-12-01 x\n bad \xff\n", &mut input);
        for line in input {
            m.push(t0, line, &mut out);
        }
        m.flush(&mut out);
        assert!(out[0].truncated && out[0].invalid_utf8);
    }
}
