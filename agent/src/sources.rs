//! The running sources: started from the configuration, changed by a reload.
//!
//! A reload ([`Running::apply`]) compares the sources a configuration plans with those running,
//! by key (`metrics`, `journal`, `logs:<name>`, …) and configuration: a source whose
//! configuration did not change keeps running untouched (a log source keeps its files open and
//! its place in them), a removed one is stopped, a new one started, a changed one stopped and
//! started again — from its committed checkpoints, so nothing is lost or read twice.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::collectors::fim::Fim;
use crate::collectors::journal::Journal;
use crate::collectors::logs::files::Files;
use crate::collectors::metrics::Metrics;
use crate::collectors::self_status::SelfStatus;
use crate::collectors::synthetic::Synthetic;
use crate::collectors::{Context, Source, SourceError};
use crate::config::AgentConfig;
use crate::spool::SpoolHandle;
use crate::telemetry::Telemetry;

type Start = Box<dyn FnOnce(Context) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

/// A source a configuration asks for, built and ready to start.
pub struct Planned {
    /// What identifies it across reloads.
    pub key: String,
    /// Its configuration, to tell whether a reload changed it.
    config: String,
    /// The collector name it reports under.
    collector: String,
    /// A log file source's name in the telemetry.
    log_source: Option<String>,
    start: Start,
}

impl std::fmt::Debug for Planned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Planned").field("key", &self.key).finish()
    }
}

fn planned<S: Source>(
    key: String,
    config: &impl std::fmt::Debug,
    collector: String,
    source: S,
) -> Planned {
    Planned {
        key,
        config: format!("{config:?}"),
        collector,
        log_source: None,
        start: Box::new(move |ctx| Box::pin(source.run(ctx))),
    }
}

/// The sources `c` asks for, each built (validated) already: an error means none may start.
pub fn plan(c: &AgentConfig) -> Result<Vec<Planned>, SourceError> {
    let mut plan = Vec::new();
    if c.synthetic.enabled {
        let s = Synthetic::new(c.synthetic.clone())?;
        plan.push(planned(
            Synthetic::NAME.to_owned(),
            &c.synthetic,
            Synthetic::NAME.to_owned(),
            s,
        ));
    }
    let m = Metrics::new(c.metrics.clone())?;
    plan.push(planned(
        Metrics::NAME.to_owned(),
        &c.metrics,
        Metrics::NAME.to_owned(),
        m,
    ));
    let s = SelfStatus::new(c.status.clone())?;
    plan.push(planned(
        SelfStatus::NAME.to_owned(),
        &c.status,
        SelfStatus::NAME.to_owned(),
        s,
    ));
    if c.journal.enabled {
        let j = Journal::new(c.journal.clone())?;
        plan.push(planned(
            Journal::NAME.to_owned(),
            &c.journal,
            Journal::NAME.to_owned(),
            j,
        ));
    }
    if c.fim.enabled {
        let f = Fim::new(c.fim.clone())?;
        plan.push(planned(
            Fim::NAME.to_owned(),
            &c.fim,
            Fim::NAME.to_owned(),
            f,
        ));
    }
    for files in &c.logs.files {
        let source = Files::new(files.clone())?;
        let collector = source.collector_name();
        let mut p = planned(collector.clone(), files, collector, source);
        p.log_source = Some(files.source_name());
        plan.push(p);
    }
    Ok(plan)
}

/// The `[fim]` section, with the agent's own directories (state, logs) never to be watched.
pub fn fim_config(c: &AgentConfig) -> crate::collectors::fim::Config {
    let mut config = c.fim.clone();
    config.own_paths = std::iter::once(c.data_dir.clone())
        .chain(c.log.dir.clone())
        .collect();
    config
}

/// What a reload changed, by source key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub started: Vec<String>,
    pub stopped: Vec<String>,
    pub restarted: Vec<String>,
    pub kept: Vec<String>,
}

#[derive(Debug)]
struct Task {
    config: String,
    collector: String,
    log_source: Option<String>,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// The sources running now.
#[derive(Debug)]
pub struct Running {
    spool: SpoolHandle,
    telemetry: Arc<Telemetry>,
    tasks: BTreeMap<String, Task>,
}

impl Running {
    pub fn new(spool: SpoolHandle, telemetry: Arc<Telemetry>) -> Running {
        Running {
            spool,
            telemetry,
            tasks: BTreeMap::new(),
        }
    }

    /// Makes the running sources those of `plan`; see the module documentation.
    pub async fn apply(&mut self, plan: Vec<Planned>) -> Changes {
        let mut changes = Changes::default();
        let mut planned: BTreeMap<String, Planned> =
            plan.into_iter().map(|p| (p.key.clone(), p)).collect();
        let keys: Vec<String> = self.tasks.keys().cloned().collect();
        for key in keys {
            match planned.get(&key) {
                Some(p) if self.tasks.get(&key).is_some_and(|t| t.config == p.config) => {
                    planned.remove(&key);
                    changes.kept.push(key);
                }
                Some(_) => {
                    self.stop(&key).await;
                    changes.restarted.push(key);
                }
                None => {
                    self.stop(&key).await;
                    changes.stopped.push(key);
                }
            }
        }
        for (key, p) in planned {
            if !changes.restarted.contains(&key) {
                changes.started.push(key.clone());
            }
            self.start(p);
        }
        changes
    }

    /// Stops every source and waits for them.
    pub async fn stop_all(&mut self) {
        for task in self.tasks.values() {
            let _ = task.stop.send(true);
        }
        for (_, task) in std::mem::take(&mut self.tasks) {
            let _ = task.handle.await;
        }
    }

    fn start(&mut self, p: Planned) {
        let (stop, shutdown) = watch::channel(false);
        let ctx = Context::new(
            &p.collector,
            self.spool.clone(),
            shutdown,
            self.telemetry.clone(),
        );
        let handle = tokio::spawn((p.start)(ctx));
        self.tasks.insert(
            p.key,
            Task {
                config: p.config,
                collector: p.collector,
                log_source: p.log_source,
                stop,
                handle,
            },
        );
    }

    async fn stop(&mut self, key: &str) {
        if let Some(task) = self.tasks.remove(key) {
            let _ = task.stop.send(true);
            let _ = task.handle.await;
            self.telemetry
                .forget_collector(&task.collector, task.log_source.as_deref());
        }
    }
}
