//! Host metrics, named after the OpenTelemetry host-metrics conventions, and the agent's own
//! telemetry shipped as metrics.
//!
//! Each family (cpu, memory, filesystem, …) is one file and one [`Family`]. The runner gives
//! every family its own schedule and runs each collection on a blocking thread under a deadline,
//! so a family that hangs (statvfs on a dead NFS mount) is reported through its [`Reporter`] as
//! `metrics.<family>` and never delays the others. A family
//! whose previous collection is still running is skipped, not started twice.
//!
//! Everything is read from `/proc` through the `procfs` crate (and `statvfs` for filesystems):
//! each family needs one or two small files, which is far cheaper than a sysinfo refresh.
//! Metric samples are droppable: the spool evicts the oldest when it is full.

pub mod agent;
pub mod cpu;
pub mod disk;
pub mod filesystem;
pub mod memory;
pub mod network;
pub mod process;
pub mod system;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use globset::{Glob, GlobSet, GlobSetBuilder};
use outpost_common::event::{Event, MetricKind, MetricPoint};
use outpost_common::time::now_ns;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{Context, Reporter, Source, SourceError};
use crate::internal_events::SamplesLost;
use crate::spool::{Class, SpoolHandle, Submission};
use crate::telemetry::Telemetry;

/// Defaults of every metrics option, in one place.
pub mod defaults {
    use std::time::Duration;

    pub const ENABLED: bool = true;
    pub const INTERVAL: Duration = Duration::from_secs(10);
    pub const DEADLINE: Duration = Duration::from_secs(5);
    /// Per-process metrics cost a read per matching process: off unless asked for.
    pub const PROCESS_ENABLED: bool = false;
    /// Virtual block devices that only add noise.
    pub const DISK_EXCLUDE: &[&str] = &["loop*", "ram*"];
    pub const NETWORK_EXCLUDE: &[&str] = &["lo"];
    /// Pseudo and in-memory filesystems: their usage says nothing about the host's disks.
    pub const FILESYSTEM_EXCLUDE_TYPES: &[&str] = &[
        "autofs",
        "binfmt_misc",
        "bpf",
        "cgroup",
        "cgroup2",
        "configfs",
        "debugfs",
        "devpts",
        "devtmpfs",
        "efivarfs",
        "fusectl",
        "hugetlbfs",
        "mqueue",
        "nsfs",
        "overlay",
        "proc",
        "pstore",
        "ramfs",
        "rpc_pipefs",
        "securityfs",
        "selinuxfs",
        "squashfs",
        "sysfs",
        "tmpfs",
        "tracefs",
    ];
}

/// `[metrics]`: host metrics and the agent's own telemetry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Collect metrics at all; each family may still be turned off on its own.
    pub enabled: bool,
    /// How often each family is collected, unless its section says otherwise.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How long one collection of one family may take before it is reported as failing; a
    /// family still running at its next tick is skipped rather than started twice.
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// `system.cpu.*`.
    pub cpu: GroupSection,
    /// `system.memory.*`, `system.paging.usage`.
    pub memory: GroupSection,
    /// `system.filesystem.*`.
    pub filesystem: FilesystemSection,
    /// `system.disk.*`; devices default to excluding `loop*` and `ram*`.
    pub disk: DeviceSection,
    /// `system.network.*`; interfaces default to excluding `lo`.
    pub network: DeviceSection,
    /// `system.processes.count`, `system.uptime`, `system.pressure.*`.
    pub system: GroupSection,
    /// `process.*` for the processes named in `names`; off by default.
    pub process: ProcessSection,
    /// `outpost.agent.*`: the agent's own cost and health.
    pub agent: GroupSection,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: defaults::ENABLED,
            interval: defaults::INTERVAL,
            deadline: defaults::DEADLINE,
            cpu: GroupSection::default(),
            memory: GroupSection::default(),
            filesystem: FilesystemSection::default(),
            disk: DeviceSection::default(),
            network: DeviceSection::default(),
            system: GroupSection::default(),
            process: ProcessSection::default(),
            agent: GroupSection::default(),
        }
    }
}

/// A family's section when it has nothing to configure but its schedule.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupSection {
    /// Collect this family (default: on).
    pub enabled: Option<bool>,
    /// Overrides `metrics.interval` for this family.
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
}

/// `[metrics.disk]` and `[metrics.network]`: a schedule and device name globs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeviceSection {
    /// Collect this family (default: on).
    pub enabled: Option<bool>,
    /// Overrides `metrics.interval` for this family.
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Only devices matching one of these globs (default: all).
    pub include: Option<Vec<String>>,
    /// Never devices matching one of these globs; replaces the family's default list.
    pub exclude: Option<Vec<String>>,
}

/// `[metrics.filesystem]`: a schedule and globs on mount points and filesystem types.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesystemSection {
    /// Collect this family (default: on).
    pub enabled: Option<bool>,
    /// Overrides `metrics.interval` for this family.
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Only mount points matching one of these globs (default: all).
    pub include_mountpoints: Option<Vec<String>>,
    /// Never mount points matching one of these globs (default: none).
    pub exclude_mountpoints: Option<Vec<String>>,
    /// Only filesystem types matching one of these globs (default: all).
    pub include_types: Option<Vec<String>>,
    /// Never these filesystem types; replaces the default list of pseudo filesystems.
    pub exclude_types: Option<Vec<String>>,
}

/// `[metrics.process]`: per-process metrics for processes picked by name.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessSection {
    /// Collect this family (default: off).
    pub enabled: Option<bool>,
    /// Overrides `metrics.interval` for this family.
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Globs on the process name (`comm`, at most 15 characters); required when enabled.
    pub names: Vec<String>,
}

/// A configuration the metrics collector cannot run with.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics.{section}: glob `{glob}`: {source}")]
    Glob {
        section: String,
        glob: String,
        #[source]
        source: globset::Error,
    },
    #[error("metrics.{0}: {1}")]
    Invalid(String, String),
}

/// One group of metrics, collected together on a blocking thread.
pub trait Family: Send + 'static {
    /// The family's name; failures are reported as collector `metrics.<name>`.
    fn name(&self) -> &'static str;
    /// One collection at `now_ns`. It may block (it runs on its own thread under a deadline).
    fn collect(&mut self, now_ns: i64) -> Result<Vec<MetricPoint>, String>;
}

/// A family and how often it runs.
pub struct Scheduled {
    pub family: Box<dyn Family>,
    pub interval: Duration,
}

impl std::fmt::Debug for Scheduled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduled")
            .field("family", &self.family.name())
            .field("interval", &self.interval)
            .finish()
    }
}

impl MetricsConfig {
    /// Checks every option, so a bad glob or interval fails at start-up.
    pub fn validate(&self) -> Result<(), MetricsError> {
        self.families(agent::Sources::none()).map(|_| ())
    }

    /// The enabled families with their schedules; `agent` feeds the agent's own family.
    pub fn families(&self, agent: agent::Sources) -> Result<Vec<Scheduled>, MetricsError> {
        let invalid = |s: &str, m: &str| MetricsError::Invalid(s.to_owned(), m.to_owned());
        if self.interval.is_zero() || self.deadline.is_zero() {
            return Err(invalid(
                "interval",
                "must be above zero, as must metrics.deadline",
            ));
        }
        let mut out: Vec<Scheduled> = Vec::new();
        if !self.enabled {
            return Ok(out);
        }
        let mut add = |name: &str,
                       enabled: Option<bool>,
                       default_on: bool,
                       interval: Option<Duration>,
                       make: &mut dyn FnMut() -> Result<Box<dyn Family>, MetricsError>|
         -> Result<(), MetricsError> {
            if !enabled.unwrap_or(default_on) {
                return Ok(());
            }
            let interval = interval.unwrap_or(self.interval);
            if interval.is_zero() {
                return Err(invalid(name, "interval must be above zero"));
            }
            out.push(Scheduled {
                family: make()?,
                interval,
            });
            Ok(())
        };
        let on = defaults::ENABLED;
        let (c, m, s, a) = (&self.cpu, &self.memory, &self.system, &self.agent);
        add("cpu", c.enabled, on, c.interval, &mut || {
            Ok(Box::new(cpu::Cpu::default()))
        })?;
        add("memory", m.enabled, on, m.interval, &mut || {
            Ok(Box::new(memory::Memory))
        })?;
        let f = &self.filesystem;
        add("filesystem", f.enabled, on, f.interval, &mut || {
            Ok(Box::new(filesystem::Filesystem::new(
                Filter::new(
                    "filesystem.include_mountpoints",
                    f.include_mountpoints.as_deref(),
                    "filesystem.exclude_mountpoints",
                    f.exclude_mountpoints.as_deref(),
                    &[],
                )?,
                Filter::new(
                    "filesystem.include_types",
                    f.include_types.as_deref(),
                    "filesystem.exclude_types",
                    f.exclude_types.as_deref(),
                    defaults::FILESYSTEM_EXCLUDE_TYPES,
                )?,
            )))
        })?;
        let d = &self.disk;
        add("disk", d.enabled, on, d.interval, &mut || {
            Ok(Box::new(disk::Disk::new(
                d.filter("disk", defaults::DISK_EXCLUDE)?,
            )))
        })?;
        let n = &self.network;
        add("network", n.enabled, on, n.interval, &mut || {
            Ok(Box::new(network::Network::new(
                n.filter("network", defaults::NETWORK_EXCLUDE)?,
            )))
        })?;
        add("system", s.enabled, on, s.interval, &mut || {
            Ok(Box::new(system::System))
        })?;
        let p = &self.process;
        add(
            "process",
            p.enabled,
            defaults::PROCESS_ENABLED,
            p.interval,
            &mut || {
                if p.names.is_empty() {
                    return Err(invalid(
                        "process.names",
                        "list at least one process name glob, or disable the family",
                    ));
                }
                let names = Filter::new("process.names", Some(&p.names), "", None, &[])?;
                Ok(Box::new(process::Processes::new(names)))
            },
        )?;
        let mut agent = Some(agent);
        add("agent", a.enabled, on, a.interval, &mut || {
            let sources = agent.take().unwrap_or_else(agent::Sources::none);
            Ok(Box::new(agent::Agent::new(sources)))
        })?;
        Ok(out)
    }
}

impl DeviceSection {
    fn filter(&self, section: &str, default_exclude: &[&str]) -> Result<Filter, MetricsError> {
        Filter::new(
            &format!("{section}.include"),
            self.include.as_deref(),
            &format!("{section}.exclude"),
            self.exclude.as_deref(),
            default_exclude,
        )
    }
}

/// Include and exclude globs on a name: a name passes when it matches an include glob (or no
/// include list is set) and no exclude glob.
#[derive(Debug, Clone)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl Filter {
    /// Builds a filter; `default_exclude` applies when `exclude` is not set.
    pub fn new(
        include_section: &str,
        include: Option<&[String]>,
        exclude_section: &str,
        exclude: Option<&[String]>,
        default_exclude: &[&str],
    ) -> Result<Filter, MetricsError> {
        let include = include
            .map(|globs| glob_set(include_section, globs.iter().map(String::as_str)))
            .transpose()?;
        let exclude = match exclude {
            Some(globs) => glob_set(exclude_section, globs.iter().map(String::as_str))?,
            None => glob_set(exclude_section, default_exclude.iter().copied())?,
        };
        Ok(Filter { include, exclude })
    }

    /// Whether `name` passes the filter.
    pub fn matches(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|i| i.is_match(name)) && !self.exclude.is_match(name)
    }
}

fn glob_set<'a>(
    section: &str,
    globs: impl Iterator<Item = &'a str>,
) -> Result<GlobSet, MetricsError> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        b.add(Glob::new(g).map_err(|source| MetricsError::Glob {
            section: section.to_owned(),
            glob: g.to_owned(),
            source,
        })?);
    }
    b.build().map_err(|source| MetricsError::Glob {
        section: section.to_owned(),
        glob: String::new(),
        source,
    })
}

/// Points of one collection, all stamped with the same time.
#[derive(Debug)]
pub struct Points {
    now_ns: i64,
    pub points: Vec<MetricPoint>,
}

impl Points {
    pub fn new(now_ns: i64) -> Self {
        Points {
            now_ns,
            points: Vec::new(),
        }
    }

    /// A point-in-time value; `unit` in UCUM notation as OpenTelemetry writes it (`By`, `s`,
    /// `1`, `{packet}`).
    pub fn gauge(&mut self, name: &str, unit: &str, value: f64, attributes: &[(&str, &str)]) {
        self.push(name, unit, value, attributes, MetricKind::Gauge);
    }

    /// A cumulative total; `unit` as for [`Points::gauge`].
    pub fn counter(&mut self, name: &str, unit: &str, value: f64, attributes: &[(&str, &str)]) {
        self.push(name, unit, value, attributes, MetricKind::Counter);
    }

    fn push(
        &mut self,
        name: &str,
        unit: &str,
        value: f64,
        attributes: &[(&str, &str)],
        kind: MetricKind,
    ) {
        self.points.push(MetricPoint {
            name: name.to_owned(),
            unit: unit.to_owned(),
            attributes: attributes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            time_ns: self.now_ns,
            value,
            kind,
        });
    }
}

/// The host-metrics source: every enabled family on its own schedule, their samples spooled as
/// droppable events.
#[derive(Debug)]
pub struct Metrics {
    config: MetricsConfig,
}

impl Source for Metrics {
    type Config = MetricsConfig;
    const NAME: &'static str = "metrics";

    fn new(config: MetricsConfig) -> Result<Self, SourceError> {
        config.validate().map_err(|e| match e {
            MetricsError::Glob {
                section,
                glob,
                source,
            } => SourceError::new(
                format!("metrics.{section}"),
                format!("glob `{glob}`: {source}"),
            ),
            MetricsError::Invalid(section, reason) => {
                SourceError::new(format!("metrics.{section}"), reason)
            }
        })?;
        Ok(Metrics { config })
    }

    async fn run(self, ctx: Context) {
        if !self.config.enabled {
            return;
        }
        let reporter = ctx.reporter().clone();
        let sources = agent_sources(reporter.telemetry().clone(), ctx.spool().clone());
        let families = match self.config.families(sources) {
            Ok(families) => families,
            Err(e) => {
                // `new` checked the same configuration, so this is not expected.
                reporter.failed(e.to_string());
                return;
            }
        };
        let (points_tx, points) = mpsc::channel(64);
        let collect = run(
            families,
            self.config.deadline,
            points_tx,
            reporter.clone(),
            ctx.shutdown(),
        );
        tokio::join!(collect, submit(points, ctx.spool().clone(), reporter));
    }
}

/// Runs every family on its own schedule until shutdown, sending each collection's points to
/// `out`; each family reports as a part of `reporter` (`metrics.cpu`).
pub async fn run(
    families: Vec<Scheduled>,
    deadline: Duration,
    out: mpsc::Sender<Vec<MetricPoint>>,
    reporter: Reporter,
    shutdown: watch::Receiver<bool>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for s in families {
        let reporter = reporter.part(s.family.name());
        tasks.spawn(drive(s, deadline, out.clone(), reporter, shutdown.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

/// How long the submitter waits for other families' collections to join one spool submission.
/// Families of one interval tick together, so one transaction (one fsync) and one batch carry
/// them all instead of one per family.
const SUBMIT_LINGER: Duration = Duration::from_millis(250);

/// Hands collections to the spool as droppable samples, those finishing within
/// [`SUBMIT_LINGER`] of each other in one submission, until `points` closes (when [`run`]
/// returns).
pub async fn submit(
    mut points: mpsc::Receiver<Vec<MetricPoint>>,
    spool: SpoolHandle,
    reporter: Reporter,
) {
    while let Some(first) = points.recv().await {
        let mut events: Vec<Event> = first.into_iter().map(Event::Metric).collect();
        let linger = tokio::time::sleep(SUBMIT_LINGER);
        tokio::pin!(linger);
        loop {
            tokio::select! {
                more = points.recv() => match more {
                    Some(more) => events.extend(more.into_iter().map(Event::Metric)),
                    None => break,
                },
                () = &mut linger => break,
            }
        }
        let n = events.len();
        let sub = Submission::new(Class::Drop, events);
        if let Err(e) = spool.submit(sub).await {
            reporter.telemetry().emit(SamplesLost {
                what: "metric samples",
                events: n,
                error: &e.to_string(),
            });
        }
    }
}

/// The agent family's sources in a running agent: telemetry and the spool's statistics (as the
/// spool last published them, so reading never waits for the spool's thread).
pub fn agent_sources(telemetry: Arc<Telemetry>, spool: SpoolHandle) -> agent::Sources {
    agent::Sources {
        telemetry: Some(telemetry),
        spool: Some(Box::new(move || Ok(spool.stats()))),
    }
}

type Shared = Arc<Mutex<Box<dyn Family>>>;

/// A collection that outlived its deadline and may still be running.
struct Overdue {
    handle: JoinHandle<Result<Vec<MetricPoint>, String>>,
    since_ns: i64,
}

/// One family's loop: tick, collect on a blocking thread under the deadline, report.
async fn drive(
    scheduled: Scheduled,
    deadline: Duration,
    out: mpsc::Sender<Vec<MetricPoint>>,
    reporter: Reporter,
    mut shutdown: watch::Receiver<bool>,
) {
    let family: Shared = Arc::new(Mutex::new(scheduled.family));
    let mut ticker = tokio::time::interval(scheduled.interval);
    // A slow collection must not cause a burst of catch-up collections.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut overdue: Option<Overdue> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        if let Some(o) = &overdue {
            if !o.handle.is_finished() {
                reporter.failed(format!(
                    "still running since {}; collection skipped",
                    format_ns(o.since_ns)
                ));
                continue;
            }
            // Its late result is discarded: a newer sample is about to be taken.
            overdue = None;
        }
        let now = now_ns();
        let f = family.clone();
        let started = Instant::now();
        let mut handle = tokio::task::spawn_blocking(move || {
            // A panic in collect poisons nothing the family relies on between calls.
            f.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .collect(now)
        });
        let result = tokio::select! {
            r = tokio::time::timeout(deadline, &mut handle) => r,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match result {
            Ok(Ok(Ok(points))) => {
                reporter.collected(started.elapsed());
                if !points.is_empty() && out.send(points).await.is_err() {
                    return;
                }
            }
            Ok(Ok(Err(reason))) => reporter.failed(reason),
            Ok(Err(e)) => reporter.failed(format!("collection failed: {e}")),
            Err(_) => {
                reporter.failed(format!(
                    "no result within the deadline of {}",
                    humantime::format_duration(deadline)
                ));
                overdue = Some(Overdue {
                    handle,
                    since_ns: now,
                });
            }
        }
    }
}

fn format_ns(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests;
