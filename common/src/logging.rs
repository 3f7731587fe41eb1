//! Logging for both programs: structured `tracing` events to stderr (for the journal) and,
//! optionally, to a daily-rotated file with bounded retention.

use std::path::PathBuf;

use serde::Deserialize;
use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};

/// Lines waiting for the log file, at most; a burst beyond waits for the writer thread (nothing
/// is dropped). The channel's slots are allocated up front, 32 bytes each: the appender's default
/// of 128,000 took 4 MiB of every process for bursts no service has.
const BUFFERED_LINES: usize = 4096;
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

/// The `[log]` section of both configuration files.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Minimum level or filter directives, as for `RUST_LOG` (e.g. `info`, `outpost=debug`).
    /// The environment variable `OUTPOST_LOG` overrides it.
    pub level: String,
    /// Directory for rotated log files; none means stderr only.
    pub dir: Option<PathBuf>,
    /// How many rotated files to keep.
    pub max_files: usize,
    /// Rotate `daily` or `hourly`.
    pub rotation: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".to_owned(),
            dir: Some(PathBuf::from("/var/log/outpost")),
            max_files: 7,
            rotation: "daily".to_owned(),
        }
    }
}

impl LogConfig {
    /// Checks the level filter and rotation, so a bad value fails at load time.
    pub fn validate(&self) -> Result<(), String> {
        EnvFilter::try_new(&self.level)
            .map_err(|e| format!("log.level `{}` is not a valid filter: {e}", self.level))?;
        rotation(&self.rotation)?;
        if self.max_files == 0 {
            return Err("log.max_files must be at least 1".to_owned());
        }
        Ok(())
    }
}

fn rotation(s: &str) -> Result<Rotation, String> {
    match s {
        "daily" => Ok(Rotation::DAILY),
        "hourly" => Ok(Rotation::HOURLY),
        other => Err(format!(
            "log.rotation `{other}` is not one of daily, hourly"
        )),
    }
}

/// Keeps the file writer flushing; hold it until the process exits.
#[derive(Debug)]
pub struct LogGuard {
    _file: Option<WorkerGuard>,
}

/// Installs the global subscriber. `program` names the log files (`<program>.log.<date>`).
///
/// If the log directory cannot be used, logging falls back to stderr only and says why.
pub fn init(config: &LogConfig, program: &str) -> LogGuard {
    let filter = std::env::var("OUTPOST_LOG")
        .ok()
        .and_then(|v| EnvFilter::try_new(v).ok())
        .or_else(|| EnvFilter::try_new(&config.level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let mut file_error = None;
    let file = config.dir.as_ref().and_then(|dir| {
        let appender = std::fs::create_dir_all(dir)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                RollingFileAppender::builder()
                    .rotation(rotation(&config.rotation).unwrap_or(Rotation::DAILY))
                    .filename_prefix(program)
                    .filename_suffix("log")
                    .max_log_files(config.max_files.max(1))
                    .build(dir)
                    .map_err(|e| e.to_string())
            });
        match appender {
            Ok(a) => Some(
                NonBlockingBuilder::default()
                    .lossy(false)
                    .buffered_lines_limit(BUFFERED_LINES)
                    .finish(a),
            ),
            Err(e) => {
                file_error = Some(format!("{}: {e}", dir.display()));
                None
            }
        }
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    let guard = match file {
        Some((writer, guard)) => {
            let _ = builder
                .with_ansi(false)
                .with_writer(std::io::stderr.and(writer))
                .try_init();
            Some(guard)
        }
        None => {
            let _ = builder.with_writer(std::io::stderr).try_init();
            None
        }
    };
    if let Some(e) = file_error {
        tracing::warn!(error = %e, "cannot write log files; logging to stderr only");
    }
    LogGuard { _file: guard }
}
