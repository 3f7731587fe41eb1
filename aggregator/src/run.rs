//! Wiring of the running aggregator: store, group-commit writer, retention, ingest, and a
//! graceful shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use outpost_common::time::now_ns;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Validated;
use crate::ingest::{Ingest, IngestConfig, TlsFiles};
use crate::store::sqlite::SqliteStore;
use crate::store::{Retention, Store, StoreWriter, WriterConfig};

/// Opens the store named by the configuration.
pub fn open_store(v: &Validated) -> anyhow::Result<Arc<dyn Store>> {
    let dir = &v.config.data_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the data directory", dir.display()))?;
    let store = SqliteStore::open(&v.store_path())
        .with_context(|| format!("{}: cannot open the store", v.store_path().display()))?;
    Ok(Arc::new(store))
}

pub fn retention(v: &Validated) -> Retention {
    let r = &v.config.retention;
    Retention {
        metric: r.metric,
        log: r.log,
        fim: r.fim,
        status: r.status,
    }
}

/// Runs the aggregator until SIGTERM or SIGINT.
pub fn run(v: Validated) -> anyhow::Result<()> {
    let c = &v.config;
    let store = open_store(&v)?;
    let (writer, writer_join) = StoreWriter::spawn(
        store.clone(),
        WriterConfig {
            queue: c.ingest.queue,
            max_batches_per_txn: c.ingest.max_batches_per_txn,
            max_events_per_txn: c.ingest.max_events_per_txn,
        },
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("outpost-aggregator")
        .build()
        .context("cannot start the async runtime")?;
    let (stop_tx, stop) = watch::channel(false);
    let retention_thread = spawn_retention(store.clone(), retention(&v), c.retention.interval, stop.clone())?;
    let result = runtime.block_on(async {
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
            },
            store.clone(),
            writer,
        )?;
        let addr = ingest.local_addr().context("cannot read the bound address")?;
        write_listen_file(&v, addr)?;
        info!(%addr, store = %v.store_path().display(), version = outpost_common::VERSION, "outpost-aggregator listening");
        let task = tokio::spawn(ingest.run(stop.clone(), c.tls.reload_interval));
        wait_for_signal().await;
        info!("shutting down");
        let _ = stop_tx.send(true);
        let _ = task.await;
        anyhow::Ok(())
    });
    drop(runtime);
    // Every writer handle is gone with the ingest service: the writer drains and stops.
    writer_join.join();
    let _ = retention_thread.join();
    info!("outpost-aggregator stopped");
    result
}

fn write_listen_file(v: &Validated, addr: std::net::SocketAddr) -> anyhow::Result<()> {
    let path = v.listen_file();
    let tmp = path.with_extension("addr.tmp");
    std::fs::write(&tmp, format!("{addr}\n")).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(())
}

/// Enforces retention on its own thread every `interval` (and once at start), so ingest never
/// waits for it beyond the short chunks the store deletes at a time.
fn spawn_retention(
    store: Arc<dyn Store>,
    retention: Retention,
    interval: Duration,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("outpost-retention".to_owned())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(error = %e, "retention disabled: cannot start its timer");
                    return;
                }
            };
            loop {
                match store.enforce_retention(&retention, now_ns()) {
                    Ok(report) => tracing::debug!(?report, "retention enforced"),
                    Err(e) => warn!(error = %e, "retention failed; will retry"),
                }
                let stopped = rt.block_on(async {
                    tokio::select! {
                        () = tokio::time::sleep(interval) => false,
                        _ = stop.wait_for(|s| *s) => true,
                    }
                });
                if stopped {
                    return;
                }
            }
        })
        .context("cannot start the retention thread")
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
