//! The revocation records (`revoked.json`) and the CRL generated from them.
//!
//! `revoked.json` is the source of truth: it keeps what the CRL cannot (agent id, free-text
//! reason) and the number of the last CRL written. `crl.pem` is always regenerated from it as a
//! whole, with a higher CRL number each time. A revocation is written to `revoked.json` first
//! and to `crl.pem` second: a crash in between leaves a record that the next regeneration puts
//! into the CRL, never a CRL entry that a regeneration would forget.

use std::path::Path;
use std::time::SystemTime;

use rcgen::{CertificateRevocationListParams, KeyIdMethod, RevocationReason, RevokedCertParams};
use serde::{Deserialize, Serialize};
use time::{Duration as TimeDuration, OffsetDateTime};

use super::certs::{Ca, gen_err, to_asn1};
use super::files::{PUBLIC_MODE, read_optional, write_atomic};
use super::{Layout, PkiError};

/// One revoked certificate, as recorded in `revoked.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Revocation {
    /// Serial number in lower-case hex without leading zero bytes.
    pub(super) serial_hex: String,
    pub(super) agent_id: String,
    /// When it was revoked, in nanoseconds since the epoch.
    pub(super) revoked_ns: i64,
    /// Free text; the RFC 5280 reason names (`key-compromise`, `superseded`, ...) also set the
    /// CRL's reason code.
    pub(super) reason: String,
}

/// The content of `revoked.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Revocations {
    /// The number of the CRL last written; the next one gets a higher number.
    pub(super) crl_number: u64,
    pub(super) revoked: Vec<Revocation>,
}

impl Revocations {
    /// Reads the records; a missing file means none.
    pub(super) fn load(path: &Path) -> Result<Self, PkiError> {
        match read_optional(path)? {
            None => Ok(Self::default()),
            Some(text) => serde_json::from_str(&text).map_err(|e| PkiError::Unreadable {
                path: path.to_owned(),
                reason: e.to_string(),
            }),
        }
    }

    /// Whether the serial is revoked.
    pub(super) fn contains(&self, serial_hex: &str) -> bool {
        self.revoked.iter().any(|r| r.serial_hex == serial_hex)
    }

    /// Adds a record unless its serial is already revoked; returns whether it was added.
    pub(super) fn add(&mut self, entry: Revocation) -> bool {
        if self.contains(&entry.serial_hex) {
            return false;
        }
        self.revoked.push(entry);
        true
    }

    /// Bumps the CRL number and writes `revoked.json`, then `crl.pem`, both signed off by `ca`.
    ///
    /// The CRL is built before anything is written, so a failure to sign changes nothing.
    pub(super) fn commit(
        &mut self,
        layout: &Layout,
        ca: &Ca,
        now: SystemTime,
    ) -> Result<(), PkiError> {
        self.crl_number += 1;
        let crl_pem = self.crl_pem(ca, now)?;
        let json = serde_json::to_vec_pretty(self).map_err(|e| PkiError::Unreadable {
            path: layout.revocations(),
            reason: e.to_string(),
        })?;
        write_atomic(&layout.revocations(), &json, PUBLIC_MODE)?;
        write_atomic(&layout.crl(), crl_pem.as_bytes(), PUBLIC_MODE)
    }

    /// The CRL listing every recorded serial, as PEM.
    ///
    /// `nextUpdate` is the CA's expiry: the CRL is rewritten only when something is revoked, and
    /// the verifier Outpost builds does not enforce it, so a nearer date would only mislead.
    fn crl_pem(&self, ca: &Ca, now: SystemTime) -> Result<String, PkiError> {
        let this_update = to_asn1(now)?;
        let next_update = if ca.not_after > this_update {
            ca.not_after
        } else {
            this_update + TimeDuration::DAY
        };
        let revoked_certs = self
            .revoked
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: rcgen::SerialNumber::from_slice(&unhex(&r.serial_hex)?),
                    revocation_time: OffsetDateTime::from_unix_timestamp(
                        r.revoked_ns.div_euclid(1_000_000_000),
                    )
                    .unwrap_or(this_update),
                    reason_code: reason_code(&r.reason),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = CertificateRevocationListParams {
            this_update,
            next_update,
            crl_number: rcgen::SerialNumber::from(self.crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&ca.issuer)
            .map_err(gen_err("sign the revocation list"))?;
        crl.pem().map_err(gen_err("encode the revocation list"))
    }
}

/// The RFC 5280 reason code named by `text`, if it names one (`key-compromise`,
/// `Key Compromise` and `key_compromise` alike); other text is kept only in `revoked.json`.
pub(super) fn reason_code(text: &str) -> Option<RevocationReason> {
    let normal = text.trim().to_ascii_lowercase().replace([' ', '_'], "-");
    Some(match normal.as_str() {
        "key-compromise" => RevocationReason::KeyCompromise,
        "ca-compromise" => RevocationReason::CaCompromise,
        "affiliation-changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation-of-operation" => RevocationReason::CessationOfOperation,
        "privilege-withdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

fn unhex(hex: &str) -> Result<Vec<u8>, PkiError> {
    let bad = || PkiError::BadSerial(hex.to_owned());
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_rejects_garbage() {
        assert_eq!(unhex("00ff7a").unwrap(), vec![0, 0xff, 0x7a]);
        assert_eq!(
            outpost_common::tls::hex(&unhex("4a0b").unwrap()),
            "4a0b".to_owned()
        );
        for bad in ["", "abc", "zz", "é"] {
            assert!(unhex(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn reason_names_map_to_codes() {
        assert_eq!(
            reason_code("Key Compromise"),
            Some(RevocationReason::KeyCompromise)
        );
        assert_eq!(
            reason_code("superseded"),
            Some(RevocationReason::Superseded)
        );
        assert_eq!(reason_code("host decommissioned"), None);
    }

    #[test]
    fn adding_a_serial_twice_keeps_one_record() {
        let mut list = Revocations::default();
        let entry = Revocation {
            serial_hex: "41".into(),
            agent_id: "a".into(),
            revoked_ns: 1,
            reason: "x".into(),
        };
        assert!(list.add(entry.clone()));
        assert!(!list.add(Revocation {
            reason: "y".into(),
            ..entry
        }));
        assert_eq!(list.revoked.len(), 1);
        assert_eq!(list.revoked[0].reason, "x");
    }
}
