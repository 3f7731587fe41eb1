//! The listener's TLS material: loading the server configuration, and reloading it when the
//! files change (or on SIGHUP) so that a renewed certificate or a new CRL takes effect without a
//! restart.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::SystemTime;

use outpost_common::tls::{self, QuicSettings};

use super::connection::Notice;
use super::{Ingest, IngestConfig};
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
        // One control stream plus the batch window.
        max_concurrent_bidi_streams: config.max_in_flight + 1,
        mtu_discovery: true,
    }
}

/// Reads the TLS files into a server configuration and the set of revoked serials.
pub(super) fn load_server_config(
    files: &TlsFiles,
    config: &IngestConfig,
) -> anyhow::Result<(quinn::ServerConfig, HashSet<Vec<u8>>)> {
    let ca = tls::load_certs(&files.ca)?;
    let chain = tls::load_certs(&files.cert)?;
    let key = tls::load_key(&files.key)?;
    let crls = tls::load_crls(&files.crl)?;
    let revoked = tls::revoked_serials(&crls)?;
    let mut server = tls::server_config(&ca, chain, key, crls, &quic_settings(config))?;
    // Stateless retry is unnecessary: every client must present a certificate anyway.
    server.migration(true);
    Ok((server, revoked))
}

impl Ingest {
    /// Reloads the TLS files (certificates and CRL): new connections use them at once, and
    /// connected agents whose certificate is now revoked are disconnected. On failure the
    /// previous files stay in use.
    pub fn reload_tls(&self) -> anyhow::Result<()> {
        let telemetry = &self.shared.telemetry;
        let (server, revoked) = match load_server_config(&self.tls_files, &self.shared.config) {
            Ok(loaded) => loaded,
            Err(e) => {
                telemetry.emit(TlsReloadFailed {
                    error: &format!("{e:#}"),
                });
                return Err(e);
            }
        };
        self.endpoint.set_server_config(Some(server));
        let count = revoked.len();
        {
            let sessions = self.shared.sessions();
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
            *self
                .shared
                .revoked
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = revoked;
        }
        telemetry.emit(TlsReloaded { revoked: count });
        Ok(())
    }
}
