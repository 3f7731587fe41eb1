//! The listener's TLS material: loading the server configuration, and reloading it when the
//! files change (or on SIGHUP) so that a renewed certificate or a new CRL takes effect without a
//! restart.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use outpost_common::tls::{self, QuicSettings};

use super::connection::Notice;
use super::{Ingest, IngestConfig, Shared};
use crate::internal_events::{ConnectionRevoked, TlsReloadFailed, TlsReloaded};

/// Where the TLS material lives, so it can be reloaded.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub crl: PathBuf,
}

impl TlsFiles {
    /// Modification times of the files, to notice changes.
    pub(super) fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.ca, &self.cert, &self.key, &self.crl]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

fn quic_settings(config: &IngestConfig) -> QuicSettings {
    QuicSettings {
        idle_timeout: config.idle_timeout,
        keep_alive: None,
        // One control stream, the batch window and a renewal.
        max_concurrent_bidi_streams: config.max_in_flight + 2,
        mtu_discovery: true,
    }
}

/// The TLS files, read.
pub(super) struct Loaded {
    pub(super) server: quinn::ServerConfig,
    /// Serials on the CRL.
    pub(super) revoked: HashSet<Vec<u8>>,
    /// When the server certificate expires, nanoseconds since the epoch.
    pub(super) server_not_after_ns: i64,
}

/// Reads the TLS files into a server configuration and the set of revoked serials.
pub(super) fn load_server_config(
    files: &TlsFiles,
    config: &IngestConfig,
) -> anyhow::Result<Loaded> {
    let ca = tls::load_certs(&files.ca)?;
    let chain = tls::load_certs(&files.cert)?;
    let server_not_after_ns = chain
        .first()
        .and_then(|leaf| x509_parser::parse_x509_certificate(leaf.as_ref()).ok())
        .map_or(0, |(_, cert)| {
            cert.validity()
                .not_after
                .timestamp()
                .saturating_mul(1_000_000_000)
        });
    let key = tls::load_key(&files.key)?;
    let crls = tls::load_crls(&files.crl)?;
    let revoked = tls::revoked_serials(&crls)?;
    let mut server = tls::server_config(&ca, chain, key, crls, &quic_settings(config))?;
    // Stateless retry is unnecessary: a connection holds nothing until it shows a certificate
    // or sends one small enrollment request.
    server.migration(true);
    Ok(Loaded {
        server,
        revoked,
        server_not_after_ns,
    })
}

impl Ingest {
    /// Reloads the TLS files (certificates and CRL): new connections use them at once, and
    /// connected agents whose certificate is now revoked are disconnected. On failure the
    /// previous files stay in use.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        reload(&self.endpoint, &self.shared, &self.tls_files)
    }
}

/// [`Ingest::reload_tls`], for the service and its handles.
pub(super) fn reload(
    endpoint: &quinn::Endpoint,
    shared: &Shared,
    files: &TlsFiles,
) -> anyhow::Result<()> {
    let telemetry = &shared.telemetry;
    let loaded = match load_server_config(files, &shared.config) {
        Ok(loaded) => loaded,
        Err(e) => {
            telemetry.emit(TlsReloadFailed {
                error: &format!("{e:#}"),
            });
            return Err(e);
        }
    };
    endpoint.set_server_config(Some(loaded.server));
    shared
        .server_not_after_ns
        .store(loaded.server_not_after_ns, Ordering::Relaxed);
    let revoked = loaded.revoked;
    let count = revoked.len();
    {
        let sessions = shared.sessions();
        for (agent_id, serial, driver) in sessions.revoked(&revoked) {
            telemetry.emit(ConnectionRevoked {
                agent_id,
                serial: &tls::hex(serial),
            });
            // A driver that is gone has nothing left to close.
            let _ = driver.send(Notice::Revoked);
        }
        // Replaced under the sessions' lock: a session established from now on checks the
        // new list.
        *shared
            .revoked
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = revoked;
    }
    telemetry.emit(TlsReloaded { revoked: count });
    Ok(())
}
