//! Wiring of the running aggregator: store, group-commit writer, retention, ingest, and a
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Validated;
use crate::config::{EventBackend, StateBackendKind};
use crate::ingest::{Ingest, IngestConfig, TlsFiles};
use crate::store::clickhouse::ClickHouseStore;
use crate::store::postgres::PostgresStore;
use crate::store::retention::spawn_retention;
use crate::store::split::SplitStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{EventStore, Retention, StateBackend, StoreWriter, WriterConfig};

/// The stores the configuration names: events in one backend, state in another (the embedded
/// SQLite store, by default, is both).
#[derive(Clone)]
pub struct Stores {
    pub events: Arc<dyn EventStore>,
    pub state: Arc<dyn StateBackend>,
    /// Both, for what reads both (the API, alerting, the CLI).
    pub both: Arc<SplitStore>,
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores").field("both", &self.both).finish()
    }
}

/// Opens the stores named by the configuration.
pub fn open_stores(v: &Validated) -> anyhow::Result<Stores> {
    let dir = &v.config.data_dir;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("{}: cannot create the data directory", dir.display()))?;
    let sqlite = || -> anyhow::Result<Arc<SqliteStore>> {
        let store = SqliteStore::open(&v.store_path())
            .with_context(|| format!("{}: cannot open the store", v.store_path().display()))?;
        store
            .set_log_index(v.config.store.log_index)
            .with_context(|| format!("{}: store.log_index", v.store_path().display()))?;
        Ok(Arc::new(store))
    };
    let c = &v.config;
    // Opened once, and only if a backend is the embedded one.
    let opened = std::cell::OnceCell::new();
    let embedded = || -> anyhow::Result<Arc<SqliteStore>> {
        if let Some(store) = opened.get() {
            return Ok(Arc::clone(store));
        }
        let store = sqlite()?;
        Ok(Arc::clone(opened.get_or_init(|| store)))
    };
    let events: Arc<dyn EventStore> = match c.store.backend {
        EventBackend::Sqlite => embedded()?,
        EventBackend::Clickhouse => {
            // The store's error names the server without credentials, and the database.
            Arc::new(
                ClickHouseStore::open(&c.store.clickhouse)
                    .context("[store.clickhouse]: cannot open the event store")?,
            )
        }
    };
    let state: Arc<dyn StateBackend> = match (c.state.backend, &c.state.postgres) {
        (StateBackendKind::Postgres, Some(pg)) => Arc::new(
            PostgresStore::open(pg).context("[state.postgres]: cannot open the state store")?,
        ),
        (StateBackendKind::Postgres, None) => {
            anyhow::bail!("state.backend = \"postgres\" needs [state.postgres]")
        }
        (StateBackendKind::Sqlite, _) => embedded()?,
    };
    Ok(Stores {
        both: Arc::new(SplitStore::new(events.clone(), state.clone())),
        events,
        state,
    })
}

/// Opens the stores named by the configuration, as one.
pub fn open_store(v: &Validated) -> anyhow::Result<Arc<SplitStore>> {
    Ok(open_stores(v)?.both)
}

pub fn retention(v: &Validated) -> Retention {
    let r = &v.config.retention;
    Retention {
        metric: r.metric,
        metric_chunk: r.metric_chunk,
        log: r.log,
        fim: r.fim,
        status: r.status,
    }
}

/// Runs the aggregator until SIGTERM or SIGINT.
pub fn run(v: Validated) -> anyhow::Result<()> {
    let c = &v.config;
    let stores = open_stores(&v)?;
    let store = stores.both.clone();
    let (writer, writer_join) = StoreWriter::spawn(
        stores.events.clone(),
        stores.state.clone(),
        WriterConfig {
            queue: c.ingest.queue,
            max_batches_per_txn: c.ingest.max_batches_per_txn,
            max_events_per_txn: c.ingest.max_events_per_txn,
            ..WriterConfig::default()
        },
    )
    .context("cannot start the store writer")?;
    let writer_figures = writer.figures();
    let feed = writer.feed();
    let receivers = crate::notify::Receivers::from_config(&c.alerting.receivers)
        .map_err(|e| anyhow::anyhow!("alerting.receivers: {e}"))?;
    let reset_key = load_or_create_secret(&c.data_dir.join("quic-reset.key"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outpost-aggregator")
        .build()
        .context("cannot start the async runtime")?;
    let (stop_tx, stop) = watch::channel(false);
    let retention_task =
        spawn_retention(stores.events.clone(), retention(&v), c.retention.interval)
            .context("cannot start retention")?;
    let result = runtime.block_on(async {
        let mut signals = outpost_common::shutdown::Signals::install()
            .context("cannot install the SIGTERM and SIGINT handlers")?;
        let alerting = if c.alerting.enabled {
            Some(
                crate::alerts::start(
                    &c.alerting,
                    v.alerting.clone(),
                    receivers,
                    store.clone(),
                    &feed,
                    (c.state.backend == crate::config::StateBackendKind::Postgres).then(|| {
                        crate::alerts::ClusterOptions {
                            events: stores.events.clone(),
                            holder: crate::alerts::cluster::holder_name(),
                            lease_ttl: c.alerting.lease_ttl,
                        }
                    }),
                    stop.clone(),
                )
                .await?,
            )
        } else {
            None
        };
        let enroller = c.enroll.enabled.then(|| {
            Arc::new(crate::enroll::Enroller::new(
                stores.state.clone(),
                crate::enroll::EnrollConfig {
                    pki_dir: c.tls.dir.clone(),
                    agent_validity: c.enroll.agent_validity,
                    offline_after: c.fleet.offline_after,
                },
            ))
        });
        let ingest = Ingest::bind(
            v.listen,
            TlsFiles {
                ca: c.tls.ca(),
                cert: c.tls.cert(),
                key: c.tls.key(),
                crl: c.tls.crl(),
            },
            IngestConfig {
                max_frame_bytes: u32::try_from(c.ingest.max_frame_bytes.as_u64()).unwrap_or(u32::MAX),
                max_batch_events: c.ingest.max_batch_events,
                max_in_flight: c.ingest.max_in_flight,
                handshake_timeout: c.ingest.handshake_timeout,
                idle_timeout: c.ingest.idle_timeout,
                heartbeat_interval: c.fleet.heartbeat_interval,
                max_future_skew: c.ingest.max_future_skew,
                udp_receive_buffer: usize::try_from(c.ingest.udp_receive_buffer.as_u64())
                    .unwrap_or(usize::MAX),
                max_handshakes: c.ingest.max_handshakes,
            },
            writer,
            enroller,
            &reset_key,
        )?;
        let addr = ingest.local_addr().context("cannot read the bound address")?;
        write_listen_file(&v.listen_file(), addr)?;
        info!(%addr, events = stores.events.backend_name(), state = stores.state.backend_name(), store = %v.store_path().display(), version = outpost_common::LONG_VERSION, "outpost-aggregator listening");
        let api = if c.api.enabled {
            let (api, server) = start_api(
                &v,
                store.clone(),
                alerting.as_ref().map(|a| a.handle.clone()),
                stop.clone(),
            )
            .await?;
            let telemetry = ingest.telemetry();
            let store_path = v.store_path();
            for histogram in writer_figures.histograms() {
                api.metrics.register(Box::new(histogram));
            }
            let retention_progress = retention_task.progress();
            let alerting_figures = alerting.as_ref().map(|a| a.figures.clone());
            api.metrics
                .register(Box::new(retention_progress.histogram()));
            let handle = ingest.handle();
            api.set_ingest(handle.clone());
            api.metrics.set_source(Box::new(move || {
                let mut figures = crate::api::metrics::aggregator_figures(
                    &telemetry.counters(),
                    &writer_figures.snapshot(),
                    &retention_progress.snapshot(),
                    crate::api::metrics::store_bytes(&store_path),
                    alerting_figures.as_ref().map(|f| f.snapshot()).as_ref(),
                );
                figures.push(crate::api::metrics::server_certificate_figure(
                    handle.server_certificate_not_after_ns(),
                ));
                figures
            }));
            Some((api, server))
        } else {
            None
        };
        let task = tokio::spawn(ingest.run(stop.clone(), c.tls.reload_interval));
        if let Some((api, _)) = &api {
            api.set_ingest_up(true);
        }
        outpost_common::service::ready();
        signals.recv().await;
        info!("shutting down");
        outpost_common::service::stopping("draining the store writer");
        let _ = stop_tx.send(true);
        if let Some((api, server)) = api {
            api.set_ingest_up(false);
            match server.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "the API server stopped with an error"),
                Err(e) => warn!(error = %e, "the API server task failed"),
            }
        }
        let _ = task.await;
        if let Some(alerting) = alerting {
            alerting.join().await;
        }
        anyhow::Ok(())
    });
    drop(runtime);
    // Every writer handle is gone with the ingest service: the writer drains and stops.
    if let Err(e) = writer_join.join() {
        warn!(error = %e, "the store writer did not stop cleanly");
    }
    if let Err(e) = retention_task.stop() {
        warn!(error = %e, "retention did not stop cleanly");
    }
    info!("outpost-aggregator stopped");
    result
}

/// Bytes in the stateless-reset secret: 64 for the reset tokens, 8 for connection ids.
const SECRET_BYTES: usize = 72;

/// Reads a secret kept under the data directory, creating it (mode 0600) on first use.
pub fn load_or_create_secret(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    use rand::RngCore;

    match std::fs::read(path) {
        Ok(bytes) if bytes.len() == SECRET_BYTES => return Ok(bytes),
        Ok(_) => warn!(path = %path.display(), "secret has the wrong length; making a new one"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    }
    let mut secret = vec![0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut secret);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("{}: cannot create", tmp.display()))?;
    f.write_all(&secret)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(secret)
}

/// Binds the API's listener and serves it until `stop`, with alerting through `alerting` (`None`
/// when it is disabled); answers the API (to tell it when ingest is up) and the server's task.
async fn start_api(
    v: &Validated,
    store: Arc<SplitStore>,
    alerting: Option<crate::alerts::AlertingHandle>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(
    Arc<crate::api::Api>,
    tokio::task::JoinHandle<std::io::Result<()>>,
)> {
    let a = &v.config.api;
    let f = &v.config.fleet;
    let config = crate::api::ApiConfig {
        fleet: crate::fleet::FleetPolicy {
            offline_after: f.offline_after,
            degraded_window: f.degraded_window,
            backlog_rising_for: f.backlog_rising_for,
        },
        tls_dir: Some(v.config.tls.dir.clone()),
        request_timeout: a.request_timeout,
        max_body: usize::try_from(a.max_body.as_u64()).unwrap_or(usize::MAX),
        requests_per_sec_per_token: a.requests_per_sec_per_token,
        requests_per_sec_per_address: a.requests_per_sec_per_address,
        secure_cookies: a.tls_cert.is_some() && a.tls_key.is_some(),
    };
    let tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(crate::api::tls_config(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(v.api_listen)
        .await
        .with_context(|| format!("api.listen {}: cannot listen", v.api_listen))?;
    let addr = listener
        .local_addr()
        .context("cannot read the API's bound address")?;
    write_listen_file(&v.api_listen_file(), addr)?;
    let api = crate::api::Api::with_alerting(store, alerting, &config);
    let app = crate::api::app(Arc::clone(&api), &config);
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(url = %format!("{scheme}://{addr}/api/v1"), "API listening");
    let idle = Arc::clone(&api);
    let mut stop_sweep = stop.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = every.tick() => idle.forget_idle_clients(),
                _ = stop_sweep.wait_for(|s| *s) => return,
            }
        }
    });
    let server = tokio::spawn(crate::api::serve(listener, app, tls, stop));
    Ok((api, server))
}

fn write_listen_file(path: &std::path::Path, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let tmp = path.with_extension("addr.tmp");
    std::fs::write(&tmp, format!("{addr}\n"))
        .with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn the_reset_secret_is_created_private_and_then_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("quic-reset.key");
        let first = load_or_create_secret(&path).unwrap();
        assert_eq!(first.len(), SECRET_BYTES);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load_or_create_secret(&path).unwrap(), first);
        std::fs::write(&path, b"short").unwrap();
        let replaced = load_or_create_secret(&path).unwrap();
        assert_eq!(replaced.len(), SECRET_BYTES);
        assert_ne!(replaced, first);
    }
}
