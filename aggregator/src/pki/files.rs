//! File handling for the PKI directory: atomic writes with the final mode from the start, a
//! directory lock, and moving old material aside.
//!
//! Every file is written to a temporary name in the same directory, fsynced, renamed over the
//! target and the directory fsynced, so a crash leaves either the old or the new content, never a
//! torn one. Private keys are created with mode 0600 by `open(2)` itself: there is no moment at
//! which a key is readable by others. A key that replaces another keeps the group and group-read
//! access of the one it replaces (a service reading it as a group member keeps working); it is
//! never readable by others.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::PkiError;

/// Mode of private key files.
pub const KEY_MODE: u32 = 0o600;

/// Mode of certificates, the revocation list and the revocation records: public material.
pub const PUBLIC_MODE: u32 = 0o644;

/// Mode of the PKI directory and `agents/`.
pub(super) const DIR_MODE: u32 = 0o755;

/// Mode of the folder that keeps replaced material: it holds old private keys.
pub(super) const ARCHIVE_MODE: u32 = 0o700;

/// Writes `contents` to `path` atomically, the file having `mode` from its creation on.
pub(super) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    write_atomic_as(path, contents, mode, None)
}

/// Writes a private key atomically with [`KEY_MODE`]; if it replaces a key, the new one takes
/// the old one's group and, if the old one was group-readable, mode 0640.
pub(super) fn write_key_atomic(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    use std::os::unix::fs::MetadataExt;
    let access = match fs::metadata(path) {
        Ok(m) => Some((m.gid(), KEY_MODE | (m.mode() & 0o040))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(PkiError::io(path, "read the metadata of")(e)),
    };
    match access {
        Some((gid, mode)) => write_atomic_as(path, contents, mode, Some(gid)),
        None => write_atomic_as(path, contents, KEY_MODE, None),
    }
}

/// [`write_atomic`], the temporary file given `group` (while still 0600) before `mode` is set.
fn write_atomic_as(
    path: &Path,
    contents: &[u8],
    mode: u32,
    group: Option<u32>,
) -> Result<(), PkiError> {
    let dir = parent(path);
    let tmp = temp_path(path);
    let io_err = |action| PkiError::io(&tmp, action);
    // A temporary file left by a crash is ours (callers hold the directory lock): replace it.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("remove")(e)),
        _ => {}
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode & KEY_MODE)
        .open(&tmp)
        .map_err(io_err("create"))?;
    if let Some(gid) = group {
        std::os::unix::fs::fchown(&file, None, Some(gid)).map_err(io_err("set the group of"))?;
    }
    // The umask may have narrowed the mode; set it exactly. A key is 0600 until its group is
    // set, and never readable by others.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io_err("set the mode of"))?;
    file.write_all(contents).map_err(io_err("write"))?;
    file.sync_all().map_err(io_err("sync"))?;
    drop(file);
    fs::rename(&tmp, path).map_err(PkiError::io(path, "rename a temporary file onto"))?;
    sync_dir(dir)
}

/// Creates `path` (and missing parents) with `mode` if it does not exist.
pub(super) fn create_dir(path: &Path, mode: u32) -> Result<(), PkiError> {
    DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(PkiError::io(path, "create directory"))
}

/// Reads a text file; `Ok(None)` when it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(PkiError::io(path, "read")(e)),
    }
}

/// An exclusive lock on the PKI directory, held while a command reads and rewrites its files so
/// that two concurrent commands cannot lose each other's revocations.
#[derive(Debug)]
pub(super) struct DirLock {
    _file: File,
}

impl DirLock {
    /// Blocks until the lock file in `dir` is locked exclusively.
    pub(super) fn acquire(dir: &Path) -> Result<Self, PkiError> {
        let path = dir.join(".lock");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(KEY_MODE)
            .open(&path)
            .map_err(PkiError::io(&path, "open lock file"))?;
        file.lock().map_err(PkiError::io(&path, "lock"))?;
        Ok(DirLock { _file: file })
    }
}

/// Moves those of `paths` that exist into a new folder `<dir>/replaced-<unix seconds>[-n]`.
///
/// Returns the folder, or `None` when nothing existed. Nothing is deleted: a replaced CA key
/// can still be recovered by hand.
pub(super) fn archive(
    dir: &Path,
    paths: &[PathBuf],
    now_secs: u64,
) -> Result<Option<PathBuf>, PkiError> {
    let present: Vec<&PathBuf> = paths.iter().filter(|p| p.exists()).collect();
    if present.is_empty() {
        return Ok(None);
    }
    let mut target = dir.join(format!("replaced-{now_secs}"));
    let mut n = 1;
    while target.exists() {
        target = dir.join(format!("replaced-{now_secs}-{n}"));
        n += 1;
    }
    DirBuilder::new()
        .mode(ARCHIVE_MODE)
        .create(&target)
        .map_err(PkiError::io(&target, "create directory"))?;
    for path in present {
        // Invariant: every path handed in is `dir/<name>`, so it has a file name.
        let Some(name) = path.file_name() else {
            continue;
        };
        fs::rename(path, target.join(name)).map_err(PkiError::io(path, "move aside"))?;
    }
    sync_dir(dir)?;
    Ok(Some(target))
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn temp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn sync_dir(dir: &Path) -> Result<(), PkiError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(PkiError::io(dir, "sync directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn atomic_writes_replace_content_and_set_the_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.key");
        write_atomic(&path, b"one", KEY_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        // A stale temporary file from a crash does not block the next write.
        fs::write(temp_path(&path), b"stale").unwrap();
        write_atomic(&path, b"two", KEY_MODE).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert!(!temp_path(&path).exists());

        let cert = dir.path().join("x.pem");
        write_atomic(&cert, b"c", PUBLIC_MODE).unwrap();
        assert_eq!(mode(&cert), 0o644);
    }

    #[test]
    fn a_replaced_key_keeps_the_group_access_of_the_old_one() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("server.key");
        write_key_atomic(&path, b"one").unwrap();
        assert_eq!(mode(&path), 0o600);
        // As an operator (or the package's install script) grants a service group read access:
        // as root to another group, otherwise to our own.
        let created = fs::metadata(&path).unwrap();
        let group = if created.uid() == 0 { 1 } else { created.gid() };
        std::os::unix::fs::chown(&path, None, Some(group)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_key_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().gid(), group);
        // Group read is kept, others' read never is.
        assert_eq!(mode(&path), 0o640);
        // A key without group access stays 0600.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        write_key_atomic(&path, b"three").unwrap();
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn archive_moves_only_what_exists_into_a_fresh_folder() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a");
        fs::write(&a, b"a").unwrap();
        let missing = dir.path().join("missing");
        let first = archive(dir.path(), &[a.clone(), missing.clone()], 7)
            .unwrap()
            .unwrap();
        assert_eq!(first, dir.path().join("replaced-7"));
        assert_eq!(fs::read(first.join("a")).unwrap(), b"a");
        assert!(!a.exists());
        assert_eq!(mode(&first), 0o700);
        assert_eq!(archive(dir.path(), &[a.clone(), missing], 7).unwrap(), None);
        fs::write(&a, b"again").unwrap();
        let second = archive(dir.path(), &[a], 7).unwrap().unwrap();
        assert_eq!(second, dir.path().join("replaced-7-1"));
    }
}
