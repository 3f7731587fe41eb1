//! The systemd journal, followed through `journalctl`.
//!
//! The source runs `journalctl --follow --output=json` and turns each entry it prints into a
//! log record ([`entry`]). Every submission carries the `__CURSOR` of its last entry as the
//! source's checkpoint, committed in the same spool transaction as the entries ([`gather`]),
//! and journalctl is always started after the committed cursor: across crashes and restarts
//! each entry reaches the spool once. Until a first cursor is committed, journalctl starts at
//! the end of the journal or at its beginning (`read_from`).
//!
//! - **Back-pressure.** While a submission waits for room in the spool the source does not read
//!   journalctl's output; journalctl then blocks on the full pipe, and the entries wait in the
//!   journal, which keeps them anyway.
//! - **Bounded memory.** A line of output is kept up to `max_entry_bytes`; a longer entry is
//!   skipped and counted ([`JournalEntryTooLong`]) without being held. A line that is not an
//!   entry is skipped and counted too ([`JournalEntryMalformed`]); the source goes on.
//! - **Failures.** If journalctl cannot be started or exits, the source reports itself failing
//!   with the end of journalctl's stderr, and starts it again after the committed cursor,
//!   backing off exponentially with jitter. It reports itself working again once journalctl
//!   has kept running for a few seconds.
//!
//! Options journalctl is given beyond the obvious ones, and why ([`args`]):
//!
//! - `--all`: without it a field longer than 4096 bytes is printed as `null`.
//! - `--output-fields`: only the fields the source reads, so that a large field nobody reads
//!   (a core dump's) cannot make an entry too long.
//! - `--merge`: without it `--follow` implies `--boot`, the latest boot only, and an agent
//!   stopped across a reboot would skip what the previous boot logged after its cursor.
//! - `--lines=all` after a cursor: `--follow` otherwise shows at most the last 10 entries.
//!
//! [`JournalEntryTooLong`]: crate::internal_events::JournalEntryTooLong
//! [`JournalEntryMalformed`]: crate::internal_events::JournalEntryMalformed

pub mod entry;
pub mod gather;
pub mod journalctl;

use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytesize::ByteSize;
use serde::Deserialize;
use tokio::time::Instant;
use tracing::{debug, info};

use self::gather::Gather;
use self::journalctl::Journalctl;
use super::{Context, Reporter, Source, SourceError};
use crate::collectors::logs::lines::{Line, LineSplitter};
use crate::internal_events::{JournalEntryMalformed, JournalEntryTooLong};

/// Where to start reading when no cursor has been committed yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// Only entries written from then on.
    End,
    /// Everything the journal still holds.
    Beginning,
}

/// `[journal]`: the systemd journal, read through journalctl. Off by default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Follow the journal (default: off).
    pub enabled: bool,
    /// The journalctl program: a path, or a name looked up in `PATH`.
    pub journalctl: PathBuf,
    /// Where to start the first time, before any cursor is committed: `end` or `beginning`.
    /// Afterwards reading always resumes after the committed cursor.
    pub read_from: ReadFrom,
    /// Read the journal files in this directory instead of the system journal
    /// (journalctl `--directory`).
    pub directory: Option<PathBuf>,
    /// Read these journal files instead of the system journal (journalctl `--file`, globs
    /// allowed); not together with `directory`.
    pub files: Vec<PathBuf>,
    /// Only entries matching these `FIELD=value` matches (journalctl's match arguments:
    /// matches of one field are alternatives, matches of different fields must all hold).
    pub matches: Vec<String>,
    /// Only entries of these units (journalctl `--unit`), besides `matches`.
    pub units: Vec<String>,
    /// Entries per spool submission, 1 to 100000; a partial batch is submitted 200 ms after
    /// its first entry.
    pub batch: usize,
    /// Longest entry, as journalctl prints it in JSON, 1 KiB to 4 MiB; a longer entry is skipped
    /// and counted.
    pub max_entry_bytes: ByteSize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            enabled: false,
            journalctl: PathBuf::from("journalctl"),
            read_from: ReadFrom::End,
            directory: None,
            files: Vec::new(),
            matches: Vec::new(),
            units: Vec::new(),
            batch: 500,
            max_entry_bytes: ByteSize::kib(100),
        }
    }
}

/// The source's timings, fixed but for tests.
#[derive(Debug, Clone, Copy)]
struct Timing {
    /// How long a partial batch waits for more entries.
    linger: Duration,
    /// The first wait before starting journalctl again, and the longest.
    retry_min: Duration,
    retry_max: Duration,
    /// How long journalctl must run before the source counts as working again (and the next
    /// failure's wait starts from `retry_min`).
    up_after: Duration,
}

const TIMING: Timing = Timing {
    linger: Duration::from_millis(200),
    retry_min: Duration::from_secs(1),
    retry_max: Duration::from_secs(60),
    up_after: Duration::from_secs(5),
};

/// Bytes read from journalctl's output at a time.
const READ_BYTES: usize = 64 * 1024;

/// Bytes of a malformed line quoted in its report.
const QUOTED_BYTES: usize = 200;

/// The journal source.
#[derive(Debug)]
pub struct Journal {
    config: Config,
    max_entry_bytes: usize,
    timing: Timing,
}

impl Source for Journal {
    type Config = Config;
    const NAME: &'static str = "journal";

    fn new(config: Config) -> Result<Self, SourceError> {
        let option = |name: &str| format!("{}.{name}", Self::NAME);
        if config.journalctl.as_os_str().is_empty() {
            return Err(SourceError::new(option("journalctl"), "must not be empty"));
        }
        if config.directory.is_some() && !config.files.is_empty() {
            return Err(SourceError::new(
                option("files"),
                "cannot be given together with journal.directory",
            ));
        }
        if config.files.iter().any(|f| f.as_os_str().is_empty()) {
            return Err(SourceError::new(
                option("files"),
                "a file must not be empty",
            ));
        }
        if let Some(m) = config.matches.iter().find(|m| !is_match(m)) {
            return Err(SourceError::new(
                option("matches"),
                format!(
                    "`{m}` is not FIELD=value with a field name of A-Z, 0-9 and _ \
                     (for example _SYSTEMD_UNIT=sshd.service)"
                ),
            ));
        }
        if let Some(u) = config
            .units
            .iter()
            .find(|u| u.trim().is_empty() || u.chars().any(char::is_control))
        {
            return Err(SourceError::new(
                option("units"),
                format!("{u:?} is not a unit name"),
            ));
        }
        if !(1..=100_000).contains(&config.batch) {
            return Err(SourceError::new(
                option("batch"),
                "must be between 1 and 100000",
            ));
        }
        let max_entry_bytes = config.max_entry_bytes.as_u64();
        if !(1024..=4 * 1024 * 1024).contains(&max_entry_bytes) {
            return Err(SourceError::new(
                option("max_entry_bytes"),
                "must be between 1 KiB and 4 MiB",
            ));
        }
        Ok(Journal {
            // At most 4 MiB: fits.
            max_entry_bytes: usize::try_from(max_entry_bytes).unwrap_or(usize::MAX),
            config,
            timing: TIMING,
        })
    }

    /// Follows the journal until shutdown, starting journalctl again whenever it ends.
    async fn run(self, mut ctx: Context) {
        let t = self.timing;
        let backoff_builder = ExponentialBuilder::new()
            .with_min_delay(t.retry_min)
            .with_max_delay(t.retry_max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        let mut backoff = backoff_builder.build();
        loop {
            let started = Instant::now();
            let reason = match self.follow(&mut ctx).await {
                Ended::Shutdown => return,
                Ended::Trouble(reason) => reason,
            };
            if started.elapsed() >= t.up_after {
                // It worked for a while: the next wait starts from the bottom.
                backoff = backoff_builder.build();
            }
            let delay = backoff.next().unwrap_or(t.retry_max);
            ctx.reporter().failed(reason);
            debug!(retry_in = ?delay, "journal source: starting journalctl again after a wait");
            if ctx.sleep(delay).await {
                return;
            }
        }
    }
}

/// Why one run of journalctl ended.
#[derive(Debug)]
enum Ended {
    /// The agent is shutting down.
    Shutdown,
    /// journalctl could not start, exited or could not be read, or the spool refused a write.
    Trouble(String),
}

impl Journal {
    /// Runs journalctl once, after the committed cursor, until it ends or the agent shuts down.
    async fn follow(&self, ctx: &mut Context) -> Ended {
        let cursor = match ctx.checkpoint(Self::NAME).await {
            // A cursor is text; a checkpoint that is not cannot be one, and counts as none.
            Ok(cursor) => cursor.and_then(|c| String::from_utf8(c).ok()),
            Err(e) => return Ended::Trouble(format!("cannot read the committed cursor: {e}")),
        };
        let program = &self.config.journalctl;
        let mut journalctl =
            match Journalctl::spawn(program, &args(&self.config, cursor.as_deref())) {
                Ok(j) => j,
                Err(e) => {
                    return Ended::Trouble(format!("cannot start {}: {e}", program.display()));
                }
            };
        match &cursor {
            Some(cursor) => info!(after_cursor = %cursor, "following the journal after its cursor"),
            None => info!(
                read_from = ?self.config.read_from,
                "following the journal, with no cursor committed yet"
            ),
        }
        let mut gather = Gather::new(Self::NAME, self.config.batch, self.timing.linger);
        let mut splitter = LineSplitter::new(self.max_entry_bytes, 0);
        let mut lines = Vec::new().into_iter();
        let mut buf = vec![0u8; READ_BYTES];
        let up_at = Instant::now() + self.timing.up_after;
        let mut up = false;
        loop {
            if gather.is_full() {
                if let Err(end) = submit(ctx, &mut gather).await {
                    return end;
                }
                continue;
            }
            if let Some(line) = lines.next() {
                self.take(line, &mut gather, ctx.reporter());
                continue;
            }
            let deadline = gather.deadline().map(Instant::from_std);
            tokio::select! {
                read = journalctl.read(&mut buf) => match read {
                    Ok(0) => {
                        // What it printed before it ended is committed before it starts again.
                        if let Err(end) = submit(ctx, &mut gather).await {
                            return end;
                        }
                        return Ended::Trouble(journalctl.finish().await);
                    }
                    Ok(n) => {
                        let mut fresh = Vec::new();
                        splitter.push(&buf[..n], &mut fresh);
                        lines = fresh.into_iter();
                    }
                    Err(e) => {
                        return Ended::Trouble(format!(
                            "cannot read the output of {}: {e}",
                            program.display()
                        ));
                    }
                },
                () = tokio::time::sleep_until(deadline.unwrap_or(up_at)), if deadline.is_some() => {
                    if let Err(end) = submit(ctx, &mut gather).await {
                        return end;
                    }
                }
                () = tokio::time::sleep_until(up_at), if !up => {
                    up = true;
                    ctx.reporter().recovered();
                }
                () = ctx.stopped() => return Ended::Shutdown,
            }
        }
    }

    /// Gathers the entry on `line`, or counts the line as skipped.
    fn take(&self, line: Line, gather: &mut Gather, reporter: &Reporter) {
        let telemetry = reporter.telemetry();
        if line.truncated {
            telemetry.emit(JournalEntryTooLong {
                bytes: line.file_bytes.saturating_sub(1),
                max_bytes: self.max_entry_bytes as u64,
            });
            return;
        }
        match entry::parse(&line.text) {
            Ok(entry) => gather.push(Instant::now().into_std(), entry),
            Err(e) => telemetry.emit(JournalEntryMalformed {
                error: &e.to_string(),
                line: entry::prefix(&line.text, QUOTED_BYTES),
            }),
        }
    }
}

/// Hands the gathered entries and their cursor to the spool, if there are any.
async fn submit(ctx: &mut Context, gather: &mut Gather) -> Result<(), Ended> {
    let Some(sub) = gather.take() else {
        return Ok(());
    };
    match ctx.submit(sub).await {
        None => Err(Ended::Shutdown),
        Some(Ok(_)) => Ok(()),
        // The entries are read again from the journal, after the committed cursor.
        Some(Err(e)) => Err(Ended::Trouble(format!("cannot write to the spool: {e}"))),
    }
}

/// journalctl's arguments: follow from after `cursor` (or from `read_from` without one), as
/// JSON, with the configured journal and filters. See the module documentation for the
/// options that are not obvious.
pub fn args(config: &Config, cursor: Option<&str>) -> Vec<OsString> {
    let mut args: Vec<OsString> = [
        "--follow",
        "--output=json",
        "--all",
        "--merge",
        "--no-pager",
    ]
    .map(OsString::from)
    .to_vec();
    args.push(option("--output-fields=", entry::output_fields()));
    match (cursor, config.read_from) {
        (Some(cursor), _) => {
            args.push(option("--after-cursor=", cursor));
            args.push("--lines=all".into());
        }
        (None, ReadFrom::Beginning) => args.push("--lines=all".into()),
        (None, ReadFrom::End) => args.push("--lines=0".into()),
    }
    if let Some(directory) = &config.directory {
        args.push(option("--directory=", directory));
    }
    args.extend(config.files.iter().map(|f| option("--file=", f)));
    args.extend(config.units.iter().map(|u| option("--unit=", u)));
    args.extend(config.matches.iter().map(OsString::from));
    args
}

/// `--name=value` as one argument, whatever bytes `value` holds.
fn option(name: &str, value: impl AsRef<OsStr>) -> OsString {
    let mut arg = OsString::from(name);
    arg.push(value);
    arg
}

/// Whether `m` is a journal match, `FIELD=value`: a field name of 1 to 64 upper-case letters,
/// digits and underscores, not starting with a digit, as journald names fields.
fn is_match(m: &str) -> bool {
    let Some((field, _)) = m.split_once('=') else {
        return false;
    };
    (1..=64).contains(&field.len())
        && !field.starts_with(|c: char| c.is_ascii_digit())
        && field
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

#[cfg(test)]
mod tests;
