//! Alerting as the aggregator runs it: the rules [`engine`](crate::rules::engine) on the
//! committed-event feed, its state in the state store, and the outbox sending notifications.
//!
//! Two tasks and a handle:
//!
//! - the **engine task** owns the [`Engine`]. It reads the feed from the cursor it saved last
//!   (so events committed while it was down, or before a crash, are evaluated after the
//!   restart), ticks when the engine says (at least once a second), applies operators' requests
//!   ([`AlertingHandle`]) and reloads (SIGHUP, a change in `rules_dir`, the API), and after each
//!   step writes the engine's outcome, its notifications and the cursor in one transaction.
//!   A write that fails is kept and tried again, before anything newer: nothing is notified
//!   that the store does not hold.
//! - the **outbox task** sends what is due, at most `max_concurrent_sends` at once, and records
//!   each attempt: sent; retried with exponential backoff and jitter (or the receiver's
//!   `Retry-After`) on network errors, 429 and 5xx; failed on other errors, or after
//!   `give_up_after`. A restart resumes pending sends; a notification whose sending was cut off
//!   before its receiver confirmed it is sent again, which is the only way one is sent twice.

pub mod cluster;
pub mod config;
pub mod figures;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use outpost_common::event::{Event, EventKind};
use serde::Serialize;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::notify::{Receivers, backoff_delay};
use crate::rules::engine::{AlertRecord, Engine, Outcome, Refused, Setup};
use crate::rules::file::{Condition, Rule, Severity};
use crate::rules::matcher::Silence;
use crate::store::alerting::{AlertingStore, Attempt, StoredSilence};
use crate::store::{Cursor, Feed, FeedItem, RegistryUpdate, StateStore};

pub use cluster::{ClusterOptions, Leadership};
pub use config::AlertingSection;
pub use figures::{AlertingFigures, AlertingSnapshot, LastEvaluated};

/// The longest the engine goes without a tick.
pub(crate) const MAX_TICK: Duration = Duration::from_secs(1);
/// The cursor alone (no other change) is saved at most this often.
const CURSOR_EVERY: Duration = Duration::from_secs(1);
/// Notifications read from the outbox per round.
const OUTBOX_PAGE: usize = 64;
/// How often history, sent notifications and ended silences older than `history_retention`
/// are deleted.
const EXPIRE_EVERY: Duration = Duration::from_secs(3600);

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// One rule as listed by the API and `rules list`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RuleInfo {
    pub name: String,
    /// threshold, log, frequency, absence, sequence, fim or composite.
    pub kind: String,
    #[schema(value_type = String)]
    pub severity: Severity,
    pub file: String,
    pub for_seconds: f64,
    pub keep_firing_for_seconds: f64,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl RuleInfo {
    pub(crate) fn of(rule: &Rule) -> RuleInfo {
        let kind = match rule.condition {
            Condition::Threshold(_) => "threshold",
            Condition::Log(_) => "log",
            Condition::Frequency(_) => "frequency",
            Condition::Absence(_) => "absence",
            Condition::Sequence(_) => "sequence",
            Condition::Fim(_) => "fim",
            Condition::Composite(_) => "composite",
        };
        RuleInfo {
            name: rule.name.clone(),
            kind: kind.to_owned(),
            severity: rule.severity,
            file: rule.file.display().to_string(),
            for_seconds: rule.lifecycle.for_ns as f64 / 1e9,
            keep_firing_for_seconds: rule.lifecycle.keep_firing_for_ns as f64 / 1e9,
            labels: rule.labels.clone(),
            annotations: rule.annotations.clone(),
        }
    }
}

/// The rules loaded, and how the last attempt to load them went.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct RulesStatus {
    pub dir: String,
    pub rules: Vec<RuleInfo>,
    /// When the rules running now were loaded.
    pub loaded_ns: i64,
    /// The errors of the last load that failed, if it came after the one that succeeded; the
    /// rules of before keep running.
    pub last_error: Option<Vec<String>>,
    pub last_error_ns: Option<i64>,
}

/// Why the alerting engine refused or could not answer.
#[derive(Debug, thiserror::Error)]
pub enum AlertingError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error("the rules were not reloaded: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("{0}")]
    BadRequest(String),
    #[error("the alerting engine has stopped")]
    Stopped,
    /// Several aggregators share the state store and another one runs alerting.
    #[error(
        "alerting runs on another aggregator ({0}), the holder of the alerting lease; send the \
         request to it"
    )]
    Elsewhere(String),
    /// Several aggregators share the state store and none is known to run alerting now.
    #[error(
        "no aggregator is known to run alerting right now (the alerting lease is changing \
         hands, or the state store does not answer); try again shortly"
    )]
    NoLeader,
}

/// A silence as an operator asks for it.
#[derive(Debug, Clone)]
pub struct NewSilence {
    pub matchers: Vec<String>,
    pub starts_ns: i64,
    pub ends_ns: i64,
    pub author: String,
    pub comment: String,
}

enum Command {
    Ack {
        fingerprint: String,
        by: String,
        comment: String,
        reply: oneshot::Sender<Result<AlertRecord, Refused>>,
    },
    AddSilence {
        silence: Silence,
        reply: oneshot::Sender<Result<(), Refused>>,
    },
    ExpireSilence {
        id: String,
        reply: oneshot::Sender<Result<Silence, Refused>>,
    },
    Reload {
        reply: oneshot::Sender<Result<RulesStatus, Vec<String>>>,
    },
}

/// What the API and the CLI ask of the running engine; reads go to the store.
#[derive(Clone)]
pub struct AlertingHandle {
    commands: mpsc::Sender<Command>,
    leadership: Arc<RwLock<Leadership>>,
    store: Arc<dyn AlertingStore>,
    rules: Arc<RwLock<RulesStatus>>,
    figures: Arc<AlertingFigures>,
}

impl std::fmt::Debug for AlertingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertingHandle").finish_non_exhaustive()
    }
}

impl AlertingHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, AlertingError> {
        self.leader()?;
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| AlertingError::Stopped)?;
        // Not answered: the engine stopped, or the lease changed hands meanwhile.
        answer
            .await
            .map_err(|_| self.leader().err().unwrap_or(AlertingError::Stopped))
    }

    /// Whether this aggregator runs alerting; when not, who does.
    pub fn leadership(&self) -> Leadership {
        self.leadership
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn leader(&self) -> Result<(), AlertingError> {
        match self.leadership() {
            Leadership::Leading => Ok(()),
            Leadership::Following(holder) => Err(AlertingError::Elsewhere(holder)),
            Leadership::Unknown => Err(AlertingError::NoLeader),
        }
    }

    /// Acknowledges a firing alert: its escalation stops.
    pub async fn acknowledge(
        &self,
        fingerprint: &str,
        by: &str,
        comment: &str,
    ) -> Result<AlertRecord, AlertingError> {
        Ok(self
            .ask(|reply| Command::Ack {
                fingerprint: fingerprint.to_owned(),
                by: by.to_owned(),
                comment: comment.to_owned(),
                reply,
            })
            .await??)
    }

    /// Adds a silence; answers it with its new id.
    pub async fn add_silence(&self, new: NewSilence) -> Result<StoredSilence, AlertingError> {
        let matchers = new
            .matchers
            .iter()
            .map(|m| crate::rules::matcher::parse(m))
            .collect::<Result<Vec<_>, _>>()
            .map_err(AlertingError::BadRequest)?;
        let silence = Silence {
            id: silence_id(),
            matchers,
            starts_ns: new.starts_ns,
            ends_ns: new.ends_ns,
            author: new.author,
            comment: new.comment,
        };
        let stored = StoredSilence::from(&silence);
        self.ask(|reply| Command::AddSilence { silence, reply })
            .await??;
        Ok(stored)
    }

    /// Ends a silence now.
    pub async fn expire_silence(&self, id: &str) -> Result<StoredSilence, AlertingError> {
        let silence = self
            .ask(|reply| Command::ExpireSilence {
                id: id.to_owned(),
                reply,
            })
            .await??;
        Ok(StoredSilence::from(&silence))
    }

    /// Reloads the rules from `rules_dir`; a directory with a bad file changes nothing.
    pub async fn reload(&self) -> Result<RulesStatus, AlertingError> {
        self.ask(|reply| Command::Reload { reply })
            .await?
            .map_err(AlertingError::Invalid)
    }

    pub fn rules(&self) -> RulesStatus {
        self.rules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn store(&self) -> &Arc<dyn AlertingStore> {
        &self.store
    }

    /// When the engine last evaluated each kind of input.
    pub fn last_evaluated(&self) -> LastEvaluated {
        self.figures.last_evaluated()
    }
}

fn silence_id() -> String {
    let bytes: [u8; 8] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Loads every rule file of `dir`; a directory that does not exist holds no rules.
pub fn load_rules(dir: &Path) -> Result<Vec<Rule>, Vec<String>> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    crate::rules::load_dir(dir).map_err(|errors| errors.iter().map(ToString::to_string).collect())
}

/// What changed in `dir` shows in its rule files' names, sizes and modification times.
fn dir_stamp(dir: &Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut stamp: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.len(), m.modified().ok()))
        })
        .collect();
    stamp.sort();
    stamp
}

/// The running alerting: its handle and its tasks.
#[derive(Debug)]
pub struct Alerting {
    pub handle: AlertingHandle,
    /// What `/metrics` shows of alerting.
    pub figures: Arc<AlertingFigures>,
    tasks: JoinSet<()>,
}

impl Alerting {
    /// Waits for both tasks to end (after `stop`).
    pub async fn join(mut self) {
        while let Some(result) = self.tasks.join_next().await {
            if let Err(e) = result {
                warn!(error = %e, "an alerting task failed");
            }
        }
    }
}

/// Starts alerting over `store` and `feed`. Refuses to start when the rules do not load: the
/// error names each file, line and column.
///
/// With `cluster` (several aggregators sharing the state store), the engine runs while this
/// aggregator holds the alerting lease, on every aggregator's commits ([`cluster`]); `feed` is
/// not used.
pub async fn start<S>(
    section: &AlertingSection,
    setup: Setup,
    receivers: Receivers,
    store: Arc<S>,
    feed: &Feed,
    cluster: Option<ClusterOptions>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Alerting>
where
    S: AlertingStore + StateStore,
{
    let rules = load_rules(&section.rules_dir).map_err(|errors| {
        anyhow::anyhow!(
            "the rules in {} do not load:\n  {}",
            section.rules_dir.display(),
            errors.join("\n  ")
        )
    })?;
    let start_ns = now_ns();
    let status = RulesStatus {
        dir: section.rules_dir.display().to_string(),
        rules: rules.iter().map(RuleInfo::of).collect(),
        loaded_ns: start_ns,
        last_error: None,
        last_error_ns: None,
    };
    let (commands, command_rx) = mpsc::channel(64);
    let figures = Arc::new(AlertingFigures::default());
    figures.rules_loaded(status.rules.len());
    let rules_status = Arc::new(RwLock::new(status));
    let outbox_wake = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let history_retention_ns =
        i64::try_from(section.history_retention.as_nanos()).unwrap_or(i64::MAX);
    let (leading_tx, leading) = watch::channel(cluster.is_none());
    let leadership = Arc::new(RwLock::new(if cluster.is_none() {
        Leadership::Leading
    } else {
        Leadership::Unknown
    }));
    let sender = Outbox {
        store: store.clone(),
        receivers: Arc::new(receivers),
        give_up_after_ns: i64::try_from(section.give_up_after.as_nanos()).unwrap_or(i64::MAX),
        concurrency: section.max_concurrent_sends.max(1),
        wake: outbox_wake.clone(),
        figures: figures.clone(),
    };
    let handle = AlertingHandle {
        commands,
        leadership: leadership.clone(),
        store: store.clone(),
        rules: rules_status.clone(),
        figures: figures.clone(),
    };
    if let Some(options) = cluster {
        info!(
            rules = rules_status.read().map_or(0, |r| r.rules.len()),
            holder = %options.holder,
            lease_ttl = ?options.lease_ttl,
            dir = %section.rules_dir.display(),
            "alerting started; it runs on the aggregator holding the alerting lease"
        );
        let task = cluster::ClusterTask {
            options,
            store: store.clone(),
            setup,
            rules_now: rules,
            dir: section.rules_dir.clone(),
            reload_interval: section.reload_interval,
            rules: rules_status.clone(),
            outbox_wake,
            figures: figures.clone(),
            history_retention_ns,
            leadership,
            leading: leading_tx,
        };
        tasks.spawn(task.run(command_rx, stop.clone()));
        tasks.spawn(sender.run(leading, stop));
        return Ok(Alerting {
            handle,
            figures,
            tasks,
        });
    }
    figures.set_leading(true);
    let mut engine = Engine::new(rules, setup);
    let (loaded, agents) = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || anyhow::Ok((store.load_alerting()?, store.agents()?)))
            .await
            .context("reading the alert state")??
    };
    let restored = loaded.saved.alerts.len();
    engine.restore(loaded.saved, start_ns);
    for agent in &agents {
        engine.heard(&agent.agent_id, agent.last_seen_ns);
    }
    let subscriber = match loaded.cursor {
        Some(cursor) => feed.subscribe_from(cursor),
        None => feed.subscribe(),
    };
    info!(
        rules = rules_status.read().map_or(0, |r| r.rules.len()),
        restored,
        dir = %section.rules_dir.display(),
        "alerting started"
    );
    let engine_task = EngineTask {
        engine,
        store: store.clone(),
        dir: section.rules_dir.clone(),
        reload_interval: section.reload_interval,
        rules: rules_status.clone(),
        unsaved: None,
        cursor: subscriber.seen_to(),
        saved_cursor: loaded.cursor,
        cursor_saved_at: tokio::time::Instant::now(),
        silences_changed: false,
        outbox_wake: outbox_wake.clone(),
        figures: figures.clone(),
        history_retention_ns,
        epoch: None,
        lease_lost: false,
    };
    tasks.spawn(engine_task.run(
        subscriber,
        feed.registry_updates(),
        command_rx,
        stop.clone(),
    ));
    tasks.spawn(sender.run(leading, stop));
    Ok(Alerting {
        handle,
        figures,
        tasks,
    })
}

/// The kinds among `events`.
fn kinds<'a>(events: impl Iterator<Item = &'a Event>) -> Vec<EventKind> {
    let mut kinds = Vec::with_capacity(4);
    for e in events {
        let kind = e.kind();
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// What the engine does besides evaluating: reloading the rules on SIGHUP and when `rules_dir`
/// changes, and deleting old history.
struct Chores {
    hup: Option<tokio::signal::unix::Signal>,
    stamp: Vec<(PathBuf, u64, Option<SystemTime>)>,
    check_dir: tokio::time::Interval,
    expire: tokio::time::Interval,
}

enum Chore {
    Hup,
    CheckDir,
    Expire,
}

impl Chores {
    fn new(dir: &Path, reload_interval: Duration) -> Chores {
        let mut check_dir = tokio::time::interval(reload_interval);
        check_dir.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expire = tokio::time::interval(EXPIRE_EVERY);
        expire.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Chores {
            hup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
            stamp: dir_stamp(dir),
            check_dir,
            expire,
        }
    }

    /// Waits until a chore is due.
    async fn next(&mut self) -> Chore {
        let hup = async {
            match self.hup.as_mut() {
                Some(h) => h.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(()) = hup => Chore::Hup,
            _ = self.check_dir.tick() => Chore::CheckDir,
            _ = self.expire.tick() => Chore::Expire,
        }
    }
}

struct EngineTask<S> {
    engine: Engine,
    store: Arc<S>,
    dir: PathBuf,
    reload_interval: Duration,
    rules: Arc<RwLock<RulesStatus>>,
    /// An outcome whose write failed, to write before anything newer.
    unsaved: Option<Outcome>,
    /// Every event before this one was evaluated.
    cursor: Cursor,
    saved_cursor: Option<Cursor>,
    cursor_saved_at: tokio::time::Instant,
    silences_changed: bool,
    outbox_wake: Arc<Notify>,
    figures: Arc<AlertingFigures>,
    history_retention_ns: i64,
    /// The alerting lease's epoch the engine writes at, with several aggregators.
    epoch: Option<i64>,
    /// A write found the lease at another epoch: the engine must stop.
    lease_lost: bool,
}

impl<S: AlertingStore + StateStore> EngineTask<S> {
    async fn run(
        mut self,
        mut feed: crate::store::FeedSubscriber,
        mut registry: tokio::sync::broadcast::Receiver<Arc<RegistryUpdate>>,
        mut commands: mpsc::Receiver<Command>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut chores = Chores::new(&self.dir, self.reload_interval);
        let mut feed_open = true;
        let mut registry_open = true;
        loop {
            let wake_in = self.wake_in();
            tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(command) = commands.recv() => self.command(command).await,
                // Registry updates first: each is small, there are at most a few per agent a
                // minute, and behind a busy feed they would be dropped for this subscriber.
                update = registry.recv(), if registry_open => match update {
                    Ok(update) => {
                        if let RegistryUpdate::Heartbeat { agent_id, status, now_ns } = update.as_ref() {
                            self.engine.heartbeat(agent_id, status, *now_ns);
                            self.figures.evaluated_heartbeat(*now_ns);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                        warn!(missed, "the alerting engine missed heartbeats");
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => registry_open = false,
                },
                item = feed.recv(), if feed_open => match item {
                    Ok(Some(FeedItem::Committed(batch))) => {
                        let now = now_ns();
                        for event in &batch.events {
                            self.engine.observe(&batch.agent_id, event, now);
                        }
                        self.figures.evaluated(batch.events.len());
                        self.figures.evaluated_kinds(kinds(batch.events.iter()), now);
                        self.cursor = self.cursor.max(batch.end());
                    }
                    Ok(Some(FeedItem::Missed(events))) => {
                        let now = now_ns();
                        for e in &events {
                            self.engine.observe(&e.agent_id, &e.event, now);
                        }
                        self.figures.evaluated(events.len());
                        self.figures.read_back(events.len());
                        self.figures.evaluated_kinds(kinds(events.iter().map(|e| &e.event)), now);
                        if let Some(last) = events.last() {
                            self.cursor = self.cursor.max(last.cursor.advance(1));
                        }
                    }
                    Ok(Some(FeedItem::FellBehind { batches })) => {
                        self.figures.fell_behind();
                        warn!(batches, "the alerting engine fell behind the feed; reading the events back from the store");
                    }
                    Ok(None) => feed_open = false,
                    Err(e) => {
                        warn!(error = %e, "the alerting engine could not read the feed; trying again");
                        tokio::time::sleep(MAX_TICK).await;
                    }
                },
                chore = chores.next() => self.chore(chore, &mut chores),
                () = tokio::time::sleep(wake_in) => {}
            }
            let now = now_ns();
            self.engine.tick(now);
            self.figures.stepped(now);
            self.save().await;
        }
        self.engine.tick(now_ns());
        self.save().await;
    }

    /// How long until the engine must step again: when it says, at most [`MAX_TICK`].
    fn wake_in(&self) -> Duration {
        let now = now_ns();
        self.engine
            .next_wake_ns()
            .map_or(MAX_TICK, |at| {
                Duration::from_nanos(u64::try_from(at.saturating_sub(now)).unwrap_or(0))
            })
            .min(MAX_TICK)
    }

    /// Applies an operator's request. An acknowledgement or a silence is saved before the
    /// answer goes back, so that what reads the store next (the console's page after the
    /// redirect, the API) sees it.
    async fn command(&mut self, command: Command) {
        let now = now_ns();
        match command {
            Command::Ack {
                fingerprint,
                by,
                comment,
                reply,
            } => {
                let result = self.engine.acknowledge(&fingerprint, &by, &comment, now);
                self.save().await;
                let _ = reply.send(result);
            }
            Command::AddSilence { silence, reply } => {
                let result = self.engine.add_silence(silence, now);
                self.silences_changed |= result.is_ok();
                self.save().await;
                let _ = reply.send(result);
            }
            Command::ExpireSilence { id, reply } => {
                let result = self.engine.expire_silence(&id, now);
                self.silences_changed |= result.is_ok();
                self.save().await;
                let _ = reply.send(result);
            }
            Command::Reload { reply } => {
                let _ = reply.send(self.reload());
            }
        }
    }

    /// Does what [`Chores::next`] says is due.
    fn chore(&mut self, chore: Chore, chores: &mut Chores) {
        match chore {
            Chore::Hup => {
                info!("SIGHUP: reloading the rules");
                let _ = self.reload();
            }
            Chore::CheckDir => {
                let now_stamp = dir_stamp(&self.dir);
                if now_stamp != chores.stamp {
                    chores.stamp = now_stamp;
                    info!(dir = %self.dir.display(), "the rules changed; reloading");
                    let _ = self.reload();
                }
            }
            Chore::Expire => self.expire(),
        }
    }

    /// Deletes history, sent or failed notifications and ended silences older than
    /// `history_retention`, off the engine's thread; a failure is retried at the next interval.
    fn expire(&self) {
        let cutoff = now_ns().saturating_sub(self.history_retention_ns);
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || match store.expire_alerting(cutoff) {
            Ok(0) => {}
            Ok(deleted) => info!(deleted, "old alert history and notifications deleted"),
            Err(e) => warn!(error = %e, "could not delete old alert history; trying again later"),
        });
    }

    fn reload(&mut self) -> Result<RulesStatus, Vec<String>> {
        let now = now_ns();
        let mut status = self
            .rules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match load_rules(&self.dir) {
            Ok(rules) => {
                status.rules = rules.iter().map(RuleInfo::of).collect();
                status.loaded_ns = now;
                status.last_error = None;
                status.last_error_ns = None;
                info!(rules = rules.len(), "rules reloaded");
                self.figures.reloaded(Ok(rules.len()));
                self.engine.reload(rules, now);
                Ok(status.clone())
            }
            Err(errors) => {
                for e in &errors {
                    warn!(error = %e, "the rules were not reloaded; the previous ones keep running");
                }
                self.figures.reloaded(Err(()));
                status.last_error = Some(errors.clone());
                status.last_error_ns = Some(now);
                Err(errors)
            }
        }
    }

    /// Writes what the engine decided, with the cursor, in one transaction; keeps it to try
    /// again if the write fails.
    async fn save(&mut self) {
        let mut outcome = self.engine.take();
        if let Some(mut earlier) = self.unsaved.take() {
            earlier.merge(outcome);
            outcome = earlier;
        }
        let cursor_due = self.saved_cursor != Some(self.cursor)
            && self.cursor_saved_at.elapsed() >= CURSOR_EVERY;
        if outcome.is_empty() && !self.silences_changed && !cursor_due {
            return;
        }
        if !outcome.alerts.is_empty() || !outcome.removed.is_empty() {
            self.figures.alerts(self.engine.alerts());
        }
        let silences = self
            .silences_changed
            .then(|| self.engine.silences().to_vec());
        let store = self.store.clone();
        let cursor = self.cursor;
        let notify = !outcome.messages.is_empty();
        let epoch = self.epoch;
        let result = tokio::task::spawn_blocking(move || {
            let r = match epoch {
                Some(epoch) => {
                    store.save_alerting_fenced(epoch, &outcome, silences.as_deref(), Some(cursor))
                }
                None => store.save_alerting(&outcome, silences.as_deref(), Some(cursor)),
            };
            (r, outcome)
        })
        .await;
        match result {
            Ok((Ok(()), _)) => {
                self.saved_cursor = Some(cursor);
                self.cursor_saved_at = tokio::time::Instant::now();
                self.silences_changed = false;
                if notify {
                    self.outbox_wake.notify_one();
                }
            }
            // Another aggregator runs alerting now, from the state last saved: this outcome is
            // its to reach again.
            Ok((Err(crate::store::StoreError::LeaseLost { .. }), _)) => self.lease_lost = true,
            Ok((Err(e), outcome)) => {
                warn!(error = %e, "could not save the alert state; keeping it to try again");
                self.unsaved = Some(outcome);
            }
            Err(e) => warn!(error = %e, "the alert state writer failed"),
        }
    }
}

/// Sends what the outbox holds.
struct Outbox<S> {
    store: Arc<S>,
    receivers: Arc<Receivers>,
    give_up_after_ns: i64,
    concurrency: usize,
    wake: Arc<Notify>,
    figures: Arc<AlertingFigures>,
}

impl<S: AlertingStore> Outbox<S> {
    /// Sends while `leading` (always, with one aggregator).
    async fn run(self, mut leading: watch::Receiver<bool>, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            if !*leading.borrow_and_update() {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = leading.changed() => continue,
                }
            }
            let store = self.store.clone();
            let now = now_ns();
            let due =
                tokio::task::spawn_blocking(move || store.due_notifications(now, OUTBOX_PAGE))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
            let due = match due {
                Ok(due) => due,
                Err(e) => {
                    warn!(error = %e, "could not read the outbox");
                    Vec::new()
                }
            };
            let busy = !due.is_empty();
            let mut sends = JoinSet::new();
            for entry in due {
                while sends.len() >= self.concurrency {
                    sends.join_next().await;
                }
                let receivers = self.receivers.clone();
                let store = self.store.clone();
                let give_up = self.give_up_after_ns;
                let figures = self.figures.clone();
                sends.spawn(async move {
                    let attempt = match receivers.deliver(&entry.message).await {
                        Ok(()) => Attempt::Sent { at_ns: now_ns() },
                        Err(e) => {
                            let now = now_ns();
                            let error = e.to_string();
                            if !e.is_retryable() {
                                Attempt::Failed { error }
                            } else if now.saturating_sub(entry.message.created_ns) >= give_up {
                                Attempt::Failed {
                                    error: format!("gave up after {} attempts; the last: {error}", entry.attempts + 1),
                                }
                            } else {
                                let wait = e.retry_after().unwrap_or_else(|| {
                                    backoff_delay(entry.attempts + 1, rand::random::<f64>())
                                });
                                Attempt::Retry {
                                    retry_at_ns: now.saturating_add(
                                        i64::try_from(wait.as_nanos()).unwrap_or(i64::MAX),
                                    ),
                                    error,
                                }
                            }
                        }
                    };
                    figures.attempted(&attempt);
                    match &attempt {
                        Attempt::Sent { .. } => info!(id = entry.id, receiver = %entry.message.receiver, "notification sent"),
                        Attempt::Retry { error, .. } => warn!(id = entry.id, receiver = %entry.message.receiver, %error, "notification not sent; trying again later"),
                        Attempt::Failed { error } => warn!(id = entry.id, receiver = %entry.message.receiver, %error, "notification failed"),
                    }
                    let id = entry.id;
                    let recorded = tokio::task::spawn_blocking(move || store.record_attempt(id, &attempt)).await;
                    if !matches!(recorded, Ok(Ok(()))) {
                        warn!(id, "could not record a notification's attempt");
                    }
                });
            }
            while sends.join_next().await.is_some() {}
            if busy {
                continue;
            }
            let store = self.store.clone();
            let next = tokio::task::spawn_blocking(move || store.next_notification_ns())
                .await
                .ok()
                .and_then(Result::ok)
                .flatten();
            let wait = next.map_or(Duration::from_secs(5), |at| {
                Duration::from_nanos(u64::try_from(at.saturating_sub(now_ns())).unwrap_or(0))
                    .min(Duration::from_secs(5))
            });
            tokio::select! {
                _ = stop.changed() => break,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}
