//! The agent's identity on disk: its private key, its certificate and the CA, how new keys and
//! certificate signing requests are made, and how a key and certificate are replaced together.
//!
//! Every file is written atomically: to a temporary name in the same directory, fsynced, renamed
//! over the target, and the directory fsynced, so a crash leaves the old content or the new one,
//! never a torn file. A private key has its final mode from `open(2)` on (no moment at which
//! others can read it): 0640 with the group `outpost` when that group exists (the packages create
//! it, and the service runs in it), 0600 otherwise. Certificates are public: 0644.
//!
//! # Replacing the key and the certificate as a pair
//!
//! The agent needs a key and the certificate for that key; two files cannot be renamed at once,
//! so a renewal ([`install_pair`]) goes through these steps ([`PAIR_STEPS`]):
//!
//! 1. write the new key as `<key>.new`;
//! 2. write the new certificate as `<cert>.new` — from now on the new pair is complete on disk;
//! 3. rename `<key>.new` over `<key>`;
//! 4. rename `<cert>.new` over `<cert>`.
//!
//! [`recover_pair`], run before the files are read, finishes or undoes an interrupted
//! replacement: a `<cert>.new` means the new pair is complete (step 2 done), so the renames are
//! finished (3 only if `<key>.new` is still there, then 4) — but only if the key it ends up with
//! is the certificate's, checked with the public keys; a `<key>.new` alone (a crash before step 2)
//! is removed, as are temporary files. Whatever the crash point, a matching pair is left.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use outpost_common::tls;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType,
};
use thiserror::Error;

/// Mode of a private key when no group may read it.
pub const KEY_MODE: u32 = 0o600;

/// Mode of a private key readable by the group [`KEY_GROUP`].
pub const GROUP_KEY_MODE: u32 = 0o640;

/// Mode of certificates: public material.
pub const PUBLIC_MODE: u32 = 0o644;

/// The group the agent's service runs in, which may read its key when it exists.
pub const KEY_GROUP: &str = "outpost";

/// What the identity files' operations can fail with.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        source: io::Error,
    },
    #[error("cannot {what}: {reason}")]
    Generate { what: &'static str, reason: String },
    #[error("the issued certificate is not usable: {0}")]
    Issued(String),
}

impl IdentityError {
    fn io(path: &Path, action: &'static str) -> impl FnOnce(io::Error) -> IdentityError {
        let path = path.to_owned();
        move |source| IdentityError::Io {
            path,
            action,
            source,
        }
    }
}

/// A new private key (PEM, PKCS#8) and the certificate signing request for it (DER).
#[derive(Debug)]
pub struct KeyAndCsr {
    pub key_pem: String,
    pub csr_der: Vec<u8>,
}

/// Makes an ECDSA P-256 key on this host and a CSR for it naming `agent_id` (SAN URI
/// `urn:outpost:agent:<id>`, client authentication only, not a CA). The key never leaves the
/// host: only the CSR is sent.
pub fn new_key_and_csr(agent_id: &str) -> Result<KeyAndCsr, IdentityError> {
    let generate = |what| {
        move |e: rcgen::Error| IdentityError::Generate {
            what,
            reason: e.to_string(),
        }
    };
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(generate("generate a key"))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, agent_id);
    params.distinguished_name = dn;
    let uri = tls::agent_uri(agent_id)
        .try_into()
        .map_err(generate("name the agent in the request"))?;
    params.subject_alt_names = vec![SanType::URI(uri)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let csr = params
        .serialize_request(&key)
        .map_err(generate("sign the certificate request"))?;
    Ok(KeyAndCsr {
        key_pem: key.serialize_pem(),
        csr_der: csr.der().to_vec(),
    })
}

/// An issued certificate checked against the key it was asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    /// Its validity, in nanoseconds since the epoch.
    pub not_before_ns: i64,
    pub not_after_ns: i64,
}

/// Checks that `cert_pem` names `agent_id` and is for the key `key_pem`.
pub fn check_issued(
    agent_id: &str,
    key_pem: &str,
    cert_pem: &str,
) -> Result<Checked, IdentityError> {
    let bad = |m: String| IdentityError::Issued(m);
    let der = first_certificate(cert_pem).map_err(bad)?;
    let identity = tls::identity_from_cert(&der).map_err(|e| bad(e.to_string()))?;
    if identity.agent_id != agent_id {
        return Err(bad(format!(
            "it names the agent `{}`, not `{agent_id}`",
            identity.agent_id
        )));
    }
    if !key_matches(key_pem, &der) {
        return Err(bad("it is not for the key this agent made".to_owned()));
    }
    validity(&der).map_err(bad)
}

/// The validity of a certificate (DER).
pub fn validity(der: &[u8]) -> Result<Checked, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let ns = |t: x509_parser::time::ASN1Time| t.timestamp().saturating_mul(1_000_000_000);
    Ok(Checked {
        not_before_ns: ns(cert.validity().not_before),
        not_after_ns: ns(cert.validity().not_after),
    })
}

/// The first certificate of a PEM text, DER.
pub fn first_certificate(pem: &str) -> Result<rustls_pki_types::CertificateDer<'static>, String> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()
        .ok_or_else(|| "it holds no PEM certificate".to_owned())?
        .map_err(|e| e.to_string())
}

/// Whether the certificate `cert_der` is for the private key `key_pem`: their public keys are
/// the same. False when either cannot be read.
pub fn key_matches(key_pem: &str, cert_der: &[u8]) -> bool {
    let Ok(key) = KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    cert.public_key().subject_public_key.data.as_ref() == key.der_bytes()
}

/// Who may read a private key written now: 0640 and the group [`KEY_GROUP`] when it exists,
/// 0600 otherwise.
pub fn key_access() -> (u32, Option<u32>) {
    match nix::unistd::Group::from_name(KEY_GROUP) {
        Ok(Some(group)) => (GROUP_KEY_MODE, Some(group.gid.as_raw())),
        _ => (KEY_MODE, None),
    }
}

/// Writes a private key atomically with the access of [`key_access`].
pub fn write_key(path: &Path, pem: &str) -> Result<(), IdentityError> {
    let (mode, group) = key_access();
    write_atomic(path, pem.as_bytes(), mode, group)
}

/// Writes `contents` to `path` atomically, the file having `mode` (and `group`, if given) from
/// its creation on.
pub fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: u32,
    group: Option<u32>,
) -> Result<(), IdentityError> {
    let tmp = with_suffix(path, ".tmp");
    let err = |action| IdentityError::io(&tmp, action);
    // A temporary file left by a crash is ours: replace it.
    remove_if_exists(&tmp)?;
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & KEY_MODE)
        .open(&tmp)
        .map_err(err("create"))?;
    if let Some(gid) = group {
        std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(err("set the group of"))?;
    }
    // The umask may have narrowed the mode: set it exactly, now that the group is right.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err("set the mode of"))?;
    file.write_all(contents).map_err(err("write"))?;
    file.sync_all().map_err(err("sync"))?;
    drop(file);
    rename(&tmp, path)
}

/// One step of replacing the key and certificate ([`install_pair`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PairStep {
    WriteKeyNew,
    WriteCertNew,
    RenameKey,
    RenameCert,
}

/// The steps of [`install_pair`], in order; the module's documentation says why this order.
pub const PAIR_STEPS: [PairStep; 4] = [
    PairStep::WriteKeyNew,
    PairStep::WriteCertNew,
    PairStep::RenameKey,
    PairStep::RenameCert,
];

/// The key and certificate files of the agent, and the names a replacement goes through.
#[derive(Debug, Clone)]
pub struct PairPaths {
    pub key: PathBuf,
    pub cert: PathBuf,
}

impl PairPaths {
    fn key_new(&self) -> PathBuf {
        with_suffix(&self.key, ".new")
    }

    fn cert_new(&self) -> PathBuf {
        with_suffix(&self.cert, ".new")
    }
}

/// Replaces the agent's key and certificate so that a crash at any point leaves a matching pair
/// on disk, once [`recover_pair`] has run.
pub fn install_pair(paths: &PairPaths, key_pem: &str, cert_pem: &str) -> Result<(), IdentityError> {
    for step in PAIR_STEPS {
        pair_step(paths, step, key_pem, cert_pem)?;
    }
    Ok(())
}

/// Runs one step of [`install_pair`].
pub fn pair_step(
    paths: &PairPaths,
    step: PairStep,
    key_pem: &str,
    cert_pem: &str,
) -> Result<(), IdentityError> {
    match step {
        PairStep::WriteKeyNew => write_key(&paths.key_new(), key_pem),
        PairStep::WriteCertNew => {
            write_atomic(&paths.cert_new(), cert_pem.as_bytes(), PUBLIC_MODE, None)
        }
        PairStep::RenameKey => rename(&paths.key_new(), &paths.key),
        PairStep::RenameCert => rename(&paths.cert_new(), &paths.cert),
    }
}

/// What [`recover_pair`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// No replacement was under way.
    Clean,
    /// An interrupted replacement was finished: the new pair is in place.
    Finished,
    /// An interrupted replacement was undone: the files of the new pair that was not complete
    /// (or did not match) were removed, the old pair stays.
    Undone,
}

/// Finishes or undoes a replacement of the key and certificate that a crash interrupted (see
/// the module's documentation). Run it before reading them.
pub fn recover_pair(paths: &PairPaths) -> Result<Recovery, IdentityError> {
    let (key_new, cert_new) = (paths.key_new(), paths.cert_new());
    for tmp in [&key_new, &cert_new, &paths.key, &paths.cert] {
        remove_if_exists(&with_suffix(tmp, ".tmp"))?;
    }
    let new_cert = read_optional(&cert_new)?;
    let new_key = read_optional(&key_new)?;
    let Some(cert_pem) = new_cert else {
        if new_key.is_none() {
            return Ok(Recovery::Clean);
        }
        remove_if_exists(&key_new)?;
        return Ok(Recovery::Undone);
    };
    // The new certificate is complete; its key is `<key>.new`, or `<key>` once renamed.
    let key_pem = match new_key {
        Some(k) => k,
        None => read_optional(&paths.key)?.unwrap_or_default(),
    };
    let matches = first_certificate(&cert_pem).is_ok_and(|der| key_matches(&key_pem, &der));
    if !matches {
        remove_if_exists(&key_new)?;
        remove_if_exists(&cert_new)?;
        return Ok(Recovery::Undone);
    }
    if key_new.exists() {
        rename(&key_new, &paths.key)?;
    }
    rename(&cert_new, &paths.cert)?;
    Ok(Recovery::Finished)
}

fn read_optional(path: &Path) -> Result<Option<String>, IdentityError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IdentityError::io(path, "read")(e)),
    }
}

fn remove_if_exists(path: &Path) -> Result<(), IdentityError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(IdentityError::io(path, "remove")(e)),
        _ => Ok(()),
    }
}

/// Renames `from` onto `to` and syncs the directory, so the rename survives a crash.
fn rename(from: &Path, to: &Path) -> Result<(), IdentityError> {
    fs::rename(from, to).map_err(IdentityError::io(to, "rename a new file onto"))?;
    let dir = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(IdentityError::io(dir, "sync directory"))
}

/// `path` with `suffix` added to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests;
