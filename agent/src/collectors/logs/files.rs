//! `[[logs.files]]`: log files as a source.
//!
//! The [`Tailer`] decides everything; this module configures it and runs it: file I/O on
//! blocking threads, wake-ups from inotify (a hint: a periodic rescan and a one-second look at
//! open files catch what it misses), and each round committed to the spool with the positions
//! that go with it. While a round waits for spool space, reading stops (the lines stay in their
//! files) but scanning goes on, and the files found are recorded at once, so a file rotated away
//! meanwhile is still found after a crash.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use outpost_common::time::now_ns;
use regex::Regex;
use serde::Deserialize;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::multiline::{self, Limits};
use super::parse::Parser;
use super::pipeline::Pipeline;
use super::redact::{Preset, Redactor};
use super::select::Selection;
use super::tailer::{FileStats, Options, ReadFrom, Round, Tailer};
use crate::collectors::{Context, Source, SourceError};
use crate::internal_events::LogFilesRead;
use crate::spool::{Class, Prepared, StateRow, Submission};

/// How a source's records are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParserKind {
    /// The line is the message.
    #[default]
    Plain,
    /// One JSON object per record; see `json`.
    Json,
    /// Syslog, RFC 5424 or RFC 3164, told apart by the text.
    Syslog,
    /// The regular expression `pattern`, with named groups.
    Regex,
}

/// `json`: which JSON fields hold the message, the time and the level (the first present of
/// each list); every other field becomes an attribute.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JsonFields {
    pub message: Vec<String>,
    pub time: Vec<String>,
    pub severity: Vec<String>,
}

impl Default for JsonFields {
    fn default() -> Self {
        match Parser::json() {
            Parser::Json {
                message_fields,
                time_fields,
                severity_fields,
            } => JsonFields {
                message: message_fields,
                time: time_fields,
                severity: severity_fields,
            },
            _ => unreachable!("Parser::json is the JSON parser"),
        }
    }
}

/// `multiline`: lines grouped into records (stack traces, tracebacks). Exactly one of `start` and
/// `continuation`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MultilineConfig {
    /// A line matching this starts a record; other lines continue it (e.g. `^\d{4}-\d{2}-\d{2}`).
    pub start: Option<String>,
    /// A line matching this continues the record; other lines start one (e.g. `^\s`).
    pub continuation: Option<String>,
    /// A record no line joined for this long is sent.
    #[serde(with = "humantime_serde")]
    pub flush_after: Duration,
    /// Lines in one record at most.
    pub max_lines: usize,
    /// Bytes in one record at most.
    pub max_bytes: ByteSize,
}

impl Default for MultilineConfig {
    fn default() -> Self {
        let l = Limits::default();
        MultilineConfig {
            start: None,
            continuation: None,
            flush_after: l.flush_after,
            max_lines: l.max_lines,
            max_bytes: ByteSize::b(l.max_bytes as u64),
        }
    }
}

/// A redaction rule: every match of `pattern` is replaced by `replacement` (`$1`, `${name}` for
/// groups).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactRule {
    /// The rule's name in the agent's telemetry.
    pub name: String,
    pub pattern: String,
    pub replacement: String,
}

/// One `[[logs.files]]` entry: a set of log files read alike.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// The source's name, under which its positions are kept and its telemetry reported
    /// (default: its first include glob). Renaming a source reads its files anew.
    pub name: Option<String>,
    /// Absolute globs of the files to read: `*` within a directory, `**` across directories.
    pub include: Vec<String>,
    /// Globs of files not to read; may start with `**/` to match anywhere. Compressed files
    /// (`.gz`, `.xz`, …) are never read.
    pub exclude: Vec<String>,
    /// Where to start a file that is there when the source first starts: "beginning" or "end".
    /// Files that appear later are always read from their beginning.
    pub read_from: ReadFrom,
    /// Files not modified for this long are left alone until they are written again.
    #[serde(with = "humantime_serde")]
    pub ignore_older: Option<Duration>,
    /// "plain", "json", "syslog" or "regex".
    pub parser: ParserKind,
    /// The regular expression of the regex parser: named groups `message`, `time` (RFC 3339)
    /// and `severity` are taken as such, every other group is an attribute.
    pub pattern: Option<String>,
    /// The JSON parser's field names.
    pub json: JsonFields,
    /// Attributes added to every record of this source.
    pub attributes: BTreeMap<String, String>,
    /// Redaction presets applied before a record leaves the host: "card_numbers", "emails",
    /// "ipv4", "ipv6", "bearer_tokens".
    pub redact: Vec<String>,
    /// Redaction rules of your own, applied after the presets.
    pub redact_rules: Vec<RedactRule>,
    /// Multiline grouping; off unless set.
    pub multiline: Option<MultilineConfig>,
    /// Longer lines are cut to this many bytes and flagged `log.truncated`.
    pub max_line_bytes: ByteSize,
    /// How often to look for new files when no inotify event said so.
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
    /// A rotated-away file read to its end is closed once nothing was written to it this long.
    #[serde(with = "humantime_serde")]
    pub rotate_wait: Duration,
    /// A rotated-away file not read to its end after this long (the spool was full) is given up;
    /// its unread bytes are counted as lost.
    #[serde(with = "humantime_serde")]
    pub rotated_max_age: Duration,
    /// Rotated-away files held open at most; beyond, the oldest is given up (counted).
    pub max_rotated_open: usize,
}

impl Default for FilesConfig {
    fn default() -> Self {
        let o = Options::default();
        FilesConfig {
            name: None,
            include: Vec::new(),
            exclude: Vec::new(),
            read_from: o.read_from,
            ignore_older: o.ignore_older,
            parser: ParserKind::Plain,
            pattern: None,
            json: JsonFields::default(),
            attributes: BTreeMap::new(),
            redact: Vec::new(),
            redact_rules: Vec::new(),
            multiline: None,
            max_line_bytes: ByteSize::kib(100),
            rescan_interval: Duration::from_secs(10),
            rotate_wait: o.rotate_wait,
            rotated_max_age: o.rotated_max_age,
            max_rotated_open: o.max_rotated_open,
        }
    }
}

impl FilesConfig {
    /// The source's name: `name`, or its first include glob.
    pub fn source_name(&self) -> String {
        self.name
            .clone()
            .or_else(|| self.include.first().cloned())
            .unwrap_or_default()
    }
}

/// `[logs]`: log sources.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// `[[logs.files]]`, any number.
    pub files: Vec<FilesConfig>,
}

/// How long to wait between looks at open files when nothing woke the source.
const POLL: Duration = Duration::from_secs(1);

/// The shortest time between two rounds that were not full: lines written one at a time are
/// read and committed together, at most this late.
const LINGER: Duration = Duration::from_millis(200);

/// How often the telemetry of the files is published (at most).
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// One `[[logs.files]]` source.
#[derive(Debug)]
pub struct Files {
    name: String,
    selection: Selection,
    pipeline: Pipeline,
    options: Options,
    rescan_interval: Duration,
}

impl Files {
    /// The name its positions are kept under in the spool.
    pub fn state_name(&self) -> String {
        format!("logs.files:{}", self.name)
    }

    /// The collector name it reports under.
    pub fn collector_name(&self) -> String {
        format!("logs:{}", self.name)
    }
}

impl Source for Files {
    type Config = FilesConfig;
    const NAME: &'static str = "logs";

    fn new(c: FilesConfig) -> Result<Self, SourceError> {
        let name = c.source_name();
        let option = |field: &str| format!("logs.files[{name}].{field}");
        if c.include.is_empty() {
            return Err(SourceError::new(
                "logs.files.include",
                "at least one glob is needed",
            ));
        }
        let selection = Selection::new(&c.include, &c.exclude)
            .map_err(|e| SourceError::new(option(e.field), e.to_string()))?;
        let regex = |field: &str, pattern: &str| {
            Regex::new(pattern).map_err(|e| SourceError::new(option(field), e.to_string()))
        };
        let parser = match (c.parser, &c.pattern) {
            (ParserKind::Regex, Some(p)) => Parser::Regex(regex("pattern", p)?),
            (ParserKind::Regex, None) => {
                return Err(SourceError::new(
                    option("pattern"),
                    "the regex parser needs a pattern",
                ));
            }
            (_, Some(_)) => {
                return Err(SourceError::new(
                    option("pattern"),
                    "only the regex parser takes a pattern",
                ));
            }
            (ParserKind::Plain, None) => Parser::Plain,
            (ParserKind::Syslog, None) => Parser::Syslog,
            (ParserKind::Json, None) => Parser::Json {
                message_fields: c.json.message.clone(),
                time_fields: c.json.time.clone(),
                severity_fields: c.json.severity.clone(),
            },
        };
        let mut redactor = Redactor::new();
        for preset in &c.redact {
            let p = Preset::from_name(preset).ok_or_else(|| {
                let known: Vec<&str> = Preset::ALL.iter().map(|p| p.name()).collect();
                SourceError::new(
                    option("redact"),
                    format!("unknown preset `{preset}`; known: {}", known.join(", ")),
                )
            })?;
            redactor = redactor.with_preset(p);
        }
        for rule in &c.redact_rules {
            redactor = redactor
                .with_rule(&rule.name, &rule.pattern, &rule.replacement)
                .map_err(|e| SourceError::new(option("redact_rules"), e.to_string()))?;
        }
        let multiline = match &c.multiline {
            None => None,
            Some(m) => {
                let rule = match (&m.start, &m.continuation) {
                    (Some(s), None) => multiline::Rule::Start(regex("multiline.start", s)?),
                    (None, Some(s)) => {
                        multiline::Rule::Continuation(regex("multiline.continuation", s)?)
                    }
                    _ => {
                        return Err(SourceError::new(
                            option("multiline"),
                            "set exactly one of `start` and `continuation`",
                        ));
                    }
                };
                if m.flush_after.is_zero() || m.max_lines == 0 || m.max_bytes.as_u64() == 0 {
                    return Err(SourceError::new(
                        option("multiline"),
                        "flush_after, max_lines and max_bytes must be above zero",
                    ));
                }
                let limits = Limits {
                    flush_after: m.flush_after,
                    max_lines: m.max_lines,
                    max_bytes: usize::try_from(m.max_bytes.as_u64()).unwrap_or(usize::MAX),
                };
                Some((rule, limits))
            }
        };
        let max_line_bytes = c.max_line_bytes.as_u64();
        if !(1..=16 * 1024 * 1024).contains(&max_line_bytes) {
            return Err(SourceError::new(
                option("max_line_bytes"),
                "must be between 1 byte and 16 MiB",
            ));
        }
        if c.rescan_interval.is_zero() || c.rotated_max_age.is_zero() || c.max_rotated_open == 0 {
            return Err(SourceError::new(
                option("rescan_interval"),
                "rescan_interval, rotated_max_age and max_rotated_open must be above zero",
            ));
        }
        Ok(Files {
            selection,
            pipeline: Pipeline {
                max_line_bytes: usize::try_from(max_line_bytes).unwrap_or(usize::MAX),
                multiline,
                parser,
                redactor,
                attributes: c.attributes.into_iter().collect(),
            },
            options: Options {
                read_from: c.read_from,
                ignore_older: c.ignore_older,
                rotate_wait: c.rotate_wait,
                rotated_max_age: c.rotated_max_age,
                max_rotated_open: c.max_rotated_open,
                ..Options::default()
            },
            rescan_interval: c.rescan_interval,
            name,
        })
    }

    async fn run(self, mut ctx: Context) {
        let state_name = self.state_name();
        let rows = loop {
            match load_rows(&ctx, &state_name).await {
                Ok(rows) => break rows,
                Err(e) => {
                    ctx.reporter()
                        .failed(format!("cannot read its positions: {e}"));
                    if ctx.sleep(Duration::from_secs(5)).await {
                        return;
                    }
                }
            }
        };
        info!(
            source = %self.name,
            roots = ?self.selection.roots(),
            positions = rows.len(),
            "log file source starting"
        );
        let wake = Arc::new(Wake::default());
        // Kept alive for the source's life; without it the source polls.
        let _watcher = watch(&self.selection, &wake);
        let names: Vec<String> = self.pipeline.redactor.names().map(str::to_owned).collect();
        let options = fit_rounds(self.options.clone(), ctx.spool().stats().cap_bytes);
        let mut runner = Runner {
            tailer: Some(Tailer::new(
                self.selection.clone(),
                self.pipeline.clone(),
                options,
                state_name,
                rows,
            )),
            rescan_interval: self.rescan_interval,
            next_scan: Instant::now(),
            redaction_names: names,
            source: self.name.clone(),
            in_flight: None,
        };
        runner.run(&mut ctx, &wake).await;
        info!(source = %self.name, "log file source stopped");
    }
}

/// Rounds small enough for the spool: a round is committed whole, so one larger than the spool's
/// cap could never be. Lines are encoded with their source and attributes, so a round takes more
/// room in the spool than in its files: a sixteenth of the cap in bytes, and a thousandth in
/// events (short lines), leave room.
fn fit_rounds(mut options: Options, cap_bytes: u64) -> Options {
    let cap = usize::try_from(cap_bytes).unwrap_or(usize::MAX);
    options.round_bytes = options.round_bytes.min((cap / 16).max(4096));
    options.round_events = options.round_events.min((cap / 1024).max(16));
    options.read_chunk = options.read_chunk.min(options.round_bytes);
    options
}

/// A source's state rows, all of them.
async fn load_rows(
    ctx: &Context,
    state_name: &str,
) -> Result<Vec<StateRow>, crate::spool::SpoolError> {
    let mut rows = Vec::new();
    loop {
        let after = rows.last().map(|(k, _): &StateRow| k.clone());
        let page = ctx.spool().state_page(state_name, after, 1000).await?;
        let done = page.len() < 1000;
        rows.extend(page);
        if done {
            return Ok(rows);
        }
    }
}

/// Wake-ups from inotify: something changed, and whether files may have appeared or gone.
#[derive(Debug, Default)]
struct Wake {
    notify: Notify,
    structural: AtomicBool,
}

/// Watches the roots, recursively only where the globs reach below them (a root that does not
/// exist yet is found by the periodic rescan).
fn watch(selection: &Selection, wake: &Arc<Wake>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let w = wake.clone();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let structural = match &event {
            Ok(e) => !matches!(
                e.kind,
                EventKind::Modify(notify::event::ModifyKind::Data(_)) | EventKind::Access(_)
            ),
            // Overflowed queue and the like: look at everything again.
            Err(_) => true,
        };
        if structural {
            w.structural.store(true, Ordering::Relaxed);
        }
        w.notify.notify_one();
    })
    .map_err(|e| warn!(error = %e, "cannot use inotify; polling log files instead"))
    .ok()?;
    for (root, deep) in selection.watches() {
        let mode = if deep {
            RecursiveMode::Recursive
        } else {
            RecursiveMode::NonRecursive
        };
        if let Err(e) = watcher.watch(root, mode) {
            // Missing until created; the rescan finds its files.
            tracing::debug!(root = %root.display(), error = %e, "not watching a log directory");
        }
    }
    Some(watcher)
}

/// Whether `round` filled up, and its submission prepared (none when it read nothing).
fn read_prepared(round: Round) -> (bool, Option<Prepared>) {
    let prepared = (!round.is_empty()).then(|| {
        Submission {
            events: round.events,
            state: round.state,
            checkpoints: Vec::new(),
            class: Class::Wait,
        }
        .prepare()
    });
    (round.full, prepared)
}

/// The loop around a tailer.
struct Runner {
    /// Moved to a blocking thread for each call.
    tailer: Option<Tailer>,
    rescan_interval: Duration,
    next_scan: Instant,
    redaction_names: Vec<String>,
    source: String,
    /// The round being committed while the next is read.
    in_flight: Option<InFlight>,
}

/// A submission being committed. Dropping it (the source stopping) gives the submission up, as
/// dropping [`SpoolHandle::submit`](crate::spool::SpoolHandle::submit)'s future does.
struct InFlight(
    tokio::task::JoinHandle<Result<crate::spool::SubmitOutcome, crate::spool::SpoolError>>,
);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How waiting for a round in flight ended.
enum Settled {
    Committed,
    /// It failed, and the tailer starts over from the committed positions: whatever was read
    /// since is read again.
    StartedOver,
    /// The agent is shutting down, or the source cannot go on.
    Stop,
}

impl Runner {
    async fn run(&mut self, ctx: &mut Context, wake: &Wake) {
        let mut published = Instant::now();
        loop {
            if ctx.is_shutting_down() {
                return;
            }
            if self.scan_if_due(ctx, wake).await.is_none() {
                return;
            }
            let started = Instant::now();
            // While the previous round commits, the next one is read, and its submission
            // prepared on the same thread.
            let Some((full, prepared)) = self
                .call(|t| read_prepared(t.read(Instant::now(), now_ns())))
                .await
            else {
                return;
            };
            // That round's lines come first: this one is submitted once it is committed, and
            // dropped if it failed, since the tailer then starts over from the committed positions.
            match self.settle(ctx, wake).await {
                Settled::Committed => {}
                Settled::StartedOver => continue,
                Settled::Stop => return,
            }
            if let Some(prepared) = prepared {
                self.submit(ctx, prepared);
            }
            if published.elapsed() >= PUBLISH_EVERY {
                self.publish(ctx);
                published = Instant::now();
            }
            if full {
                continue;
            }
            // A round that did not fill up caught up with the files: its commit is waited for
            // here, not while the source idles.
            match self.settle(ctx, wake).await {
                Settled::Committed => {}
                Settled::StartedOver => continue,
                Settled::Stop => return,
            }
            let deadline = self
                .tailer
                .as_ref()
                .and_then(Tailer::next_deadline)
                .into_iter()
                .chain([self.next_scan, Instant::now() + POLL])
                .min()
                .unwrap_or_else(|| Instant::now() + POLL);
            tokio::select! {
                () = wake.notify.notified() => {}
                () = tokio::time::sleep_until(deadline.into()) => {}
                () = ctx.stopped() => return,
            }
            // A writer's lines come one at a time: gather them for a moment rather than read and
            // commit each on its own. A full round goes on at once.
            let linger = (started + LINGER).max(Instant::now());
            tokio::select! {
                () = tokio::time::sleep_until(linger.into()) => {}
                () = ctx.stopped() => return,
            }
        }
    }

    /// Scans when the rescan interval passed or inotify said files may have come or gone.
    /// Returns whether it scanned, or `None` when the source cannot go on.
    async fn scan_if_due(&mut self, ctx: &Context, wake: &Wake) -> Option<bool> {
        let now = Instant::now();
        if !wake.structural.swap(false, Ordering::Relaxed) && now < self.next_scan {
            return Some(false);
        }
        self.next_scan = now + self.rescan_interval;
        let errors = self.call(move |t| t.scan(now)).await?;
        if errors.is_empty() {
            ctx.reporter().recovered();
        } else {
            ctx.reporter().failed(errors.join("; "));
        }
        Some(true)
    }

    /// Hands a round's submission to the spool, to be committed while the next round is read.
    fn submit(&mut self, ctx: &Context, prepared: Prepared) {
        let spool = ctx.spool().clone();
        self.in_flight = Some(InFlight(tokio::spawn(async move {
            spool.submit_prepared(prepared).await
        })));
    }

    /// Waits for the round in flight, if any, to be committed, scanning (and recording the files
    /// found) while it waits for space.
    async fn settle(&mut self, ctx: &mut Context, wake: &Wake) -> Settled {
        let Some(mut commit) = self.in_flight.take() else {
            return Settled::Committed;
        };
        let spool = ctx.spool().clone();
        let mut scan_timer = tokio::time::interval(self.rescan_interval);
        loop {
            tokio::select! {
                result = &mut commit.0 => {
                    let result = result.unwrap_or(Err(crate::spool::SpoolError::ShuttingDown));
                    return match result {
                        Ok(_) => Settled::Committed,
                        Err(e) => self.failed(ctx, e).await,
                    };
                }
                () = wake.notify.notified() => {}
                _ = scan_timer.tick() => {}
                () = ctx.stopped() => return Settled::Stop,
            }
            match self.scan_if_due(ctx, wake).await {
                None => return Settled::Stop,
                // Lines written meanwhile wait in their files; only new files matter now.
                Some(false) => continue,
                Some(true) => {}
            }
            let Some(opened) = self.call(Tailer::opened).await else {
                return Settled::Stop;
            };
            if !opened.is_empty() {
                let sub = Submission {
                    state: opened,
                    class: Class::Wait,
                    ..Submission::default()
                };
                if let Err(e) = spool.submit(sub).await {
                    return self.failed(ctx, e).await;
                }
            }
        }
    }

    async fn failed(&mut self, ctx: &mut Context, e: crate::spool::SpoolError) -> Settled {
        if self.start_over(ctx, e).await {
            Settled::StartedOver
        } else {
            Settled::Stop
        }
    }

    /// The spool refused a commit: nothing of it was written. The tailer is rebuilt from the
    /// committed positions, as after a crash, so the lines are read again.
    async fn start_over(&mut self, ctx: &mut Context, e: crate::spool::SpoolError) -> bool {
        ctx.reporter()
            .failed(format!("cannot write to the spool: {e}"));
        if ctx.sleep(Duration::from_secs(1)).await {
            return false;
        }
        let Some(old) = self.tailer.take() else {
            return false;
        };
        let state_name = old.state_name().to_owned();
        match load_rows(ctx, &state_name).await {
            Ok(rows) => {
                self.tailer = Some(old.restarted(rows));
                self.next_scan = Instant::now();
                true
            }
            Err(e) => {
                self.tailer = Some(old);
                ctx.reporter()
                    .failed(format!("cannot read its positions: {e}"));
                !ctx.sleep(Duration::from_secs(1)).await
            }
        }
    }

    /// Publishes the tailer's telemetry.
    fn publish(&self, ctx: &Context) {
        let Some(t) = &self.tailer else {
            return;
        };
        let (files, closed) = t.stats();
        let redactions = self
            .redaction_names
            .iter()
            .cloned()
            .zip(t.redactions().iter().copied().chain(std::iter::repeat(0)))
            .collect();
        ctx.reporter().telemetry().emit(LogFilesRead {
            source: &self.source,
            files,
            closed,
            redactions,
            open_files: t.open_files(),
        });
    }

    /// Runs `f` on the tailer on a blocking thread (files are read with blocking calls).
    async fn call<R: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Tailer) -> R + Send + 'static,
    ) -> Option<R> {
        let mut tailer = self.tailer.take()?;
        match tokio::task::spawn_blocking(move || {
            let r = f(&mut tailer);
            (tailer, r)
        })
        .await
        {
            Ok((tailer, r)) => {
                self.tailer = Some(tailer);
                Some(r)
            }
            Err(e) => {
                tracing::error!(error = %e, "the log tailer failed; the source stops");
                None
            }
        }
    }
}

/// What the telemetry keeps of one source.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceStats {
    /// Open files by path.
    pub files: Vec<(String, FileStats)>,
    /// Files closed since the agent started, summed.
    pub closed: FileStats,
    /// Replacements per redaction rule.
    pub redactions: Vec<(String, u64)>,
    pub open_files: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_documents_a_source_that_runs() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let config = |text: &str| {
            toml::from_str::<crate::config::AgentConfig>(text).unwrap_or_else(|e| panic!("{e}"))
        };
        assert!(
            config(&text).logs.files.is_empty(),
            "no log source by default"
        );
        // The commented block, uncommented (its prose aside), is a source that runs.
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.iter().position(|l| *l == "#[[logs.files]]").unwrap();
        let block: Vec<&str> = lines[start..]
            .iter()
            .take_while(|l| l.starts_with('#'))
            .filter(|l| !l.starts_with("# "))
            .map(|l| &l[1..])
            .collect();
        assert!(block.len() > 15, "{block:?}");
        let c = config(&block.join("\n")).logs.files.remove(0);
        assert_eq!(c.source_name(), "nginx");
        assert_eq!(c.multiline.as_ref().unwrap().max_lines, 500);
        let files = Files::new(c).unwrap();
        assert_eq!(files.state_name(), "logs.files:nginx");
        // The defaults it names are the defaults.
        let d = FilesConfig::default();
        assert_eq!(d.read_from, ReadFrom::End);
        assert_eq!(d.max_line_bytes, ByteSize::kib(100));
        assert_eq!(d.rescan_interval, Duration::from_secs(10));
        assert_eq!(d.rotated_max_age, Duration::from_secs(600));
    }

    /// A round is read while the one before commits: when that commit fails, the round read
    /// ahead is dropped with it and both are read again, so every line is spooled once, in order.
    #[tokio::test]
    async fn a_failed_commit_drops_the_round_read_ahead_and_reads_both_again() {
        use crate::collectors::Context;
        use crate::spool::{Spool, SpoolConfig};
        use crate::telemetry::Telemetry;
        use outpost_common::event::Event;

        let dir = tempfile::tempdir().unwrap();
        let lines: Vec<String> = (0..40_000)
            .map(|i| format!("line {i:06} of the app"))
            .collect();
        std::fs::write(dir.path().join("app.log"), lines.join("\n") + "\n").unwrap();
        // Rounds of 8,192 lines at most: five of them.
        let spool_path = dir.path().join("spool.db");
        let spool = Spool::open(SpoolConfig::new(&spool_path, 64 << 20)).unwrap();
        let admin = rusqlite::Connection::open(&spool_path).unwrap();
        admin
            .execute_batch(
                "CREATE TRIGGER refuse BEFORE INSERT ON batches
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;",
            )
            .unwrap();
        let (handle, join) = crate::spool::spawn(spool);
        let telemetry = Arc::new(Telemetry::recording());
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let ctx = Context::new("logs", handle.clone(), shutdown, telemetry.clone());
        let files = Files::new(FilesConfig {
            include: vec![format!("{}/*.log", dir.path().display())],
            read_from: ReadFrom::Beginning,
            ..FilesConfig::default()
        })
        .unwrap();
        let task = tokio::spawn(files.run(ctx));

        let deadline = Instant::now() + Duration::from_secs(60);
        let failed = || {
            telemetry
                .collector_errors()
                .iter()
                .any(|e| e.reason.contains("cannot write to the spool"))
        };
        while !failed() {
            assert!(Instant::now() < deadline, "the commit never failed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        admin.execute_batch("DROP TRIGGER refuse").unwrap();
        while handle.stats().events < lines.len() as u64 {
            assert!(Instant::now() < deadline, "{:?}", handle.stats());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut bodies = Vec::new();
        for batch in handle.batches_after(0, usize::MAX).await.unwrap() {
            for event in batch.events().unwrap() {
                match event {
                    Event::Log(l) => bodies.push(l.body),
                    other => panic!("{other:?}"),
                }
            }
        }
        assert_eq!(bodies, lines);
        stop.send(true).unwrap();
        task.await.unwrap();
        drop(handle);
        join.join().unwrap();
    }

    #[test]
    fn rounds_fit_a_small_spool_and_stay_as_they_are_in_a_large_one() {
        let small = fit_rounds(Options::default(), 256 * 1024);
        assert_eq!((small.round_bytes, small.round_events), (16 * 1024, 256));
        assert_eq!(small.read_chunk, 16 * 1024);
        let large = fit_rounds(Options::default(), 1 << 30);
        let d = Options::default();
        assert_eq!(
            (large.round_bytes, large.round_events, large.read_chunk),
            (d.round_bytes, d.round_events, d.read_chunk)
        );
    }

    #[test]
    fn a_source_it_cannot_run_is_refused_with_the_option() {
        let base = || FilesConfig {
            include: vec!["/var/log/app/*.log".to_owned()],
            ..FilesConfig::default()
        };
        let refused = |c: FilesConfig| Files::new(c).unwrap_err().to_string();
        assert!(refused(FilesConfig::default()).contains("logs.files.include"));
        let e = refused(FilesConfig {
            include: vec!["relative/*.log".to_owned()],
            ..base()
        });
        assert!(e.contains("include") && e.contains("absolute"), "{e}");
        let e = refused(FilesConfig {
            parser: ParserKind::Regex,
            ..base()
        });
        assert!(
            e.contains(".pattern") && e.contains("needs a pattern"),
            "{e}"
        );
        let e = refused(FilesConfig {
            parser: ParserKind::Regex,
            pattern: Some("(".to_owned()),
            ..base()
        });
        assert!(e.contains("logs.files[/var/log/app/*.log].pattern"), "{e}");
        let e = refused(FilesConfig {
            redact: vec!["passwords".to_owned()],
            ..base()
        });
        assert!(
            e.contains("unknown preset `passwords`") && e.contains("email"),
            "{e}"
        );
        let e = refused(FilesConfig {
            multiline: Some(MultilineConfig::default()),
            ..base()
        });
        assert!(e.contains("exactly one of"), "{e}");
        Files::new(base()).unwrap();
    }
}
