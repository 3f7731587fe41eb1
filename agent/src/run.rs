//! Wiring of the running agent: spool, collectors and shipper, and a graceful shutdown.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use outpost_common::tls;
use tokio::sync::watch;
use tracing::info;

use crate::config::Validated;
use crate::host;
use crate::internal_events::SpoolReporter;
use crate::ship::{RenewalConfig, ShipConfig, Shipper};
use crate::sources::{self, Running};
use crate::spool::writer::{Reopen, spawn_reopening};
use crate::spool::{Spool, SpoolConfig, Statvfs, TroubleKind};
use crate::telemetry::Telemetry;

/// How long shutdown waits for outstanding acknowledgements.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Waits between attempts to open a spool that could not be opened: the first, and the longest.
const REOPEN_MIN: Duration = Duration::from_secs(1);
const REOPEN_MAX: Duration = Duration::from_secs(60);

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(v: Validated) -> anyhow::Result<()> {
    let c = &v.config;
    let a = &c.aggregator;
    let ca = tls::load_certs(&a.ca)?;
    let chain = tls::load_certs(&a.cert)?;
    let key = tls::load_key(&a.key)?;
    let identity = tls::identity_from_cert(&chain[0])
        .with_context(|| format!("{}: not an Outpost agent certificate", a.cert.display()))?;
    let validity = crate::identity::validity(&chain[0])
        .map_err(|e| anyhow::anyhow!("{}: cannot read its validity: {e}", a.cert.display()))?;
    let settings = tls::QuicSettings {
        idle_timeout: a.idle_timeout,
        keep_alive: Some(a.keep_alive),
        max_concurrent_bidi_streams: 0,
        mtu_discovery: a.mtu_discovery,
    };
    let renewal = RenewalConfig {
        agent_id: identity.agent_id.clone(),
        pair: crate::identity::PairPaths {
            key: a.key.clone(),
            cert: a.cert.clone(),
        },
        ca: ca.clone(),
        settings: settings.clone(),
        current: validity,
    };
    let client = tls::client_config(&ca, chain, key, &settings)?;

    let spool_config = SpoolConfig {
        path: v.spool_path(),
        max_bytes: c.spool.max_bytes.as_u64(),
        max_batch_events: c.spool.max_batch_events,
        max_batch_bytes: usize::try_from(c.spool.max_batch_bytes.as_u64()).unwrap_or(usize::MAX),
        reserve_bytes: c.spool.reserve_bytes.as_u64(),
        free_space: Arc::new(Statvfs),
        compression: c.spool.compression.codec(),
    };
    let telemetry = Arc::new(Telemetry::new());
    // Held for the life of the process once taken; see `lock_data_dir`.
    let lock = Arc::new(std::sync::Mutex::new(None));
    let open = {
        let (data_dir, lock) = (c.data_dir.clone(), lock.clone());
        move || open_spool(&data_dir, &lock, &spool_config)
    };
    let (spool, spool_join) = match open() {
        Ok(mut spool) => {
            spool.set_reporter(Box::new(SpoolReporter(telemetry.clone())));
            info!(
                agent_id = %identity.agent_id,
                version = outpost_common::LONG_VERSION,
                spool = %v.spool_path().display(),
                backlog_batches = spool.stats().batches,
                aggregator = %v.aggregators(),
                "outpost-agent starting"
            );
            crate::spool::writer::spawn(spool)
        }
        Err(Unopened::Busy(e)) => return Err(e),
        Err(Unopened::Trouble(kind, message)) => {
            // The agent runs without its spool rather than exiting into a restart loop: sources
            // wait or drop (counted), the status says why, and the spool opens once it can.
            info!(
                agent_id = %identity.agent_id,
                version = outpost_common::LONG_VERSION,
                spool = %v.spool_path().display(),
                aggregator = %v.aggregators(),
                "outpost-agent starting without its spool, which it keeps trying to open"
            );
            spawn_reopening(Reopen {
                open: Box::new(move || {
                    open().map_err(|e| match e {
                        Unopened::Busy(e) => (TroubleKind::Unavailable, format!("{e:#}")),
                        Unopened::Trouble(kind, message) => (kind, message),
                    })
                }),
                first_error: (kind, message),
                cap_bytes: c.spool.max_bytes.as_u64(),
                reporter: Arc::new(SpoolReporter(telemetry.clone())),
                retry_min: REOPEN_MIN,
                retry_max: REOPEN_MAX,
            })
        }
    };

    let runtime = runtime()?;
    runtime.block_on(async {
        let mut signals = outpost_common::shutdown::Signals::install()
            .context("cannot install the SIGTERM and SIGINT handlers")?;
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot install the SIGHUP handler")?;
        let (stop_tx, stop) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let mut running = Running::new(spool.clone(), telemetry.clone());
        running.apply(sources::plan(c)?).await;
        let shipper = Shipper::new(
            ShipConfig {
                targets: v.targets.clone(),
                client,
                max_in_flight: c.ship.max_in_flight,
                heartbeat_interval: c.ship.heartbeat_interval,
                reconnect_min: c.ship.reconnect_min,
                reconnect_max: c.ship.reconnect_max,
                connect_timeout: a.connect_timeout,
                catchup_events_per_sec: c.ship.catchup_events_per_sec,
                max_batch_events: u32::try_from(c.spool.max_batch_events).unwrap_or(u32::MAX),
                shutdown_grace: SHUTDOWN_GRACE,
                labels: c.label_pairs(),
                renewal: Some(renewal),
            },
            spool.clone(),
            telemetry.clone(),
            host::facts(),
        );
        tasks.spawn(shipper.run(stop.clone()));
        drop(spool);
        // Ready once collecting and spooling: the aggregator may be unreachable for long, and
        // the agent is doing its job meanwhile.
        outpost_common::service::ready();

        loop {
            tokio::select! {
                () = signals.recv() => break,
                _ = hangup.recv() => reload(&v, &mut running).await,
            }
        }
        info!("shutting down");
        outpost_common::service::stopping("waiting for outstanding acknowledgements");
        let _ = stop_tx.send(true);
        running.stop_all().await;
        while tasks.join_next().await.is_some() {}
        anyhow::Ok(())
    })?;
    let latency = telemetry.ack_latency();
    let counters = telemetry.counters();
    info!(
        batches_sent = counters.batches_sent,
        batches_acked = counters.batches_acked,
        events_acked = counters.events_acked,
        failovers = counters.failovers,
        ack_latency_p50_us = latency.map_or(0, |l| l.p50_us),
        ack_latency_p99_us = latency.map_or(0, |l| l.p99_us),
        ack_latency_max_us = latency.map_or(0, |l| l.max_us),
        "shipper summary"
    );
    drop(runtime);
    if let Err(e) = spool_join.join() {
        tracing::error!(error = %e, "the spool did not close cleanly");
    }
    info!("outpost-agent stopped");
    Ok(())
}

/// SIGHUP: reads the configuration file again and applies its sources. A configuration that
/// does not load (or whose sources cannot run) is refused whole, and the running one stays.
/// Changes outside the sources (compared with the configuration the agent started with) take
/// effect at the next start, and the log says so at each reload.
async fn reload(started: &Validated, running: &mut Running) {
    info!(config = %started.path.display(), "SIGHUP: reloading the configuration");
    let new = match crate::config::load(&started.path) {
        Ok(new) => new,
        Err(e) => {
            tracing::error!(error = %e, "the new configuration is refused; the running one stays");
            return;
        }
    };
    let plan = match sources::plan(&new.config) {
        Ok(plan) => plan,
        Err(e) => {
            tracing::error!(error = %e, "the new configuration is refused; the running one stays");
            return;
        }
    };
    let (old, next) = (&started.config, &new.config);
    let fixed = [
        (
            "data_dir",
            format!("{:?}", old.data_dir) != format!("{:?}", next.data_dir),
        ),
        (
            "[aggregator]",
            format!("{:?}", old.aggregator) != format!("{:?}", next.aggregator),
        ),
        (
            "[spool]",
            format!("{:?}", old.spool) != format!("{:?}", next.spool),
        ),
        (
            "[ship]",
            format!("{:?}", old.ship) != format!("{:?}", next.ship),
        ),
        (
            "[log]",
            format!("{:?}", old.log) != format!("{:?}", next.log),
        ),
    ];
    for (section, _) in fixed.iter().filter(|(_, changed)| *changed) {
        tracing::warn!(section, "changed; takes effect at the next start");
    }
    let changes = running.apply(plan).await;
    info!(
        started = ?changes.started,
        stopped = ?changes.stopped,
        restarted = ?changes.restarted,
        unchanged = changes.kept.len(),
        "configuration reloaded"
    );
}

/// The async runtime: one thread, the one that runs [`run`].
///
/// The async side of the agent only moves bytes (QUIC, timers, channels): SQLite runs on the
/// spool's own thread and metric collections on blocking threads. One thread keeps up with
/// shipping at full speed, and an idle agent then wakes one thread per event instead of also
/// waking spare workers to look for work to steal.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("outpost-agent")
        .build()
        .context("cannot start the async runtime")
}

/// Why the spool is not open.
enum Unopened {
    /// Another agent holds the data directory: a configuration mistake, fatal at start-up.
    Busy(anyhow::Error),
    /// The directory is read-only, missing or otherwise unusable; worth trying again.
    Trouble(TroubleKind, String),
}

/// Creates the data directory, locks it (once) and opens the spool in it.
fn open_spool(
    data_dir: &Path,
    lock: &std::sync::Mutex<Option<std::fs::File>>,
    config: &SpoolConfig,
) -> Result<Spool, Unopened> {
    let trouble = |e: &dyn std::fmt::Display| {
        let (kind, message) = crate::spool::diagnose(data_dir, e);
        Unopened::Trouble(kind, message)
    };
    std::fs::create_dir_all(data_dir).map_err(|e| {
        trouble(&format!(
            "{}: cannot create the data directory: {e}",
            data_dir.display()
        ))
    })?;
    // A poisoned lock still holds a valid Option.
    let mut held = lock
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if held.is_none() {
        match lock_data_dir(data_dir) {
            Ok(file) => *held = Some(file),
            Err(e) if e.is::<AnotherAgent>() => return Err(Unopened::Busy(e)),
            Err(e) => return Err(trouble(&format!("{e:#}"))),
        }
    }
    Spool::open(config.clone()).map_err(|e| trouble(&e))
}

/// Another agent holds the data directory's lock.
#[derive(Debug, thiserror::Error)]
#[error("{0}: another outpost-agent is running with this data directory")]
struct AnotherAgent(std::path::PathBuf);

/// Holds an exclusive lock on the data directory for the life of the process, so two agents can
/// never share one spool. The kernel releases it when the process exits, however it exits.
fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AnotherAgent(dir.to_path_buf()).into()),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("{}: cannot lock", path.display()))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::collectors::metrics::{Family, agent_sources};
    use crate::spool::{Spool, SpoolConfig};
    use crate::telemetry::Telemetry;

    #[test]
    fn the_agent_family_reads_spool_statistics_on_the_agent_runtime() {
        // The runtime has one thread, which the agent family's blocking thread never drives: its
        // spool statistics must still arrive, as the spool's thread published them.
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolConfig::new(dir.path().join("spool.db"), 1 << 20)).unwrap();
        let (handle, join) = crate::spool::writer::spawn(spool);
        let runtime = super::runtime().unwrap();
        let sources = agent_sources(Arc::new(Telemetry::new()), handle);
        let mut family = crate::collectors::metrics::agent::Agent::new(sources);
        let points = runtime
            .block_on(async { tokio::task::spawn_blocking(move || family.collect(1)).await })
            .unwrap()
            .unwrap();
        assert!(
            points
                .iter()
                .any(|p| p.name.starts_with("outpost.agent.spool")),
            "{:?}",
            points.iter().map(|p| &p.name).collect::<Vec<_>>()
        );
        drop(runtime);
        join.join().unwrap();
    }

    #[test]
    fn a_second_agent_cannot_take_the_same_data_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = super::lock_data_dir(dir.path()).unwrap();
        let err = super::lock_data_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("another outpost-agent is running"), "{err}");
        drop(first);
        super::lock_data_dir(dir.path()).unwrap();
    }
}
