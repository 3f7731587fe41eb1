//! What a path is now: its metadata, symlink target, extended attributes and content hash, and
//! the compact encoding of a [`FileState`] in a baseline row.

use std::fs::Metadata;
use std::io::{self, Read};
use std::num::NonZeroU32;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use governor::clock::DefaultClock;
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use outpost_common::event::{FileKind, FileState, hex};

use super::HashAlgorithm;

/// Bytes read from a file at a time while hashing: the only buffer, however large the file.
pub const HASH_BUFFER: usize = 64 * 1024;

type Limiter = RateLimiter<NotKeyed, InMemoryState, DefaultClock, NoOpMiddleware>;

/// A rate budget of units per second (bytes hashed, files looked at); unlimited when built
/// with 0. Waiting blocks the calling thread, which is a scan's own. A stop flag, once set,
/// ends the waiting and makes hashing give up, so that shutdown does not wait for a large file.
#[derive(Debug)]
pub struct Budget {
    limiter: Option<Limiter>,
    burst: u32,
    stop: Arc<AtomicBool>,
}

impl Budget {
    /// At most `per_second` units a second, with bursts of up to one second's worth.
    pub fn per_second(per_second: u32) -> Budget {
        Budget::stoppable(per_second, Arc::new(AtomicBool::new(false)))
    }

    /// [`Budget::per_second`], given up once `stop` is set.
    pub fn stoppable(per_second: u32, stop: Arc<AtomicBool>) -> Budget {
        Budget {
            limiter: NonZeroU32::new(per_second).map(|n| RateLimiter::direct(Quota::per_second(n))),
            burst: per_second,
            stop,
        }
    }

    /// Whether the work it budgets is to stop.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Waits until `n` units may be spent, and spends them (at once once stopped).
    pub fn spend(&self, n: u64) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        let mut left = n;
        while left > 0 {
            let step = u32::try_from(left).unwrap_or(u32::MAX).min(self.burst);
            let Some(cells) = NonZeroU32::new(step) else {
                return;
            };
            loop {
                match limiter.check_n(cells) {
                    Ok(Ok(())) => break,
                    Ok(Err(_)) if self.stopped() => return,
                    Ok(Err(not_until)) => {
                        use governor::clock::Clock as _;
                        // The limiter's own clock: making a new one measures the processor
                        // (CPUID, which a virtual machine traps), far too dear for every wait.
                        let wait = not_until.wait_time_from(limiter.clock().now());
                        std::thread::sleep(wait.max(Duration::from_millis(1)));
                    }
                    // `step` never exceeds the burst.
                    Err(_) => break,
                }
            }
            left -= u64::from(step);
        }
    }
}

/// How to observe the paths of one root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observe {
    /// Hash regular files' content with this algorithm.
    pub hash: Option<HashAlgorithm>,
    /// Files larger than this are not hashed.
    pub max_hash_size: u64,
    /// Hash even when size, mtime, ctime and inode did not change.
    pub always_hash: bool,
    /// Read extended attributes.
    pub xattrs: bool,
}

/// The kind of a path from its metadata.
pub fn kind(meta: &Metadata) -> FileKind {
    let t = meta.file_type();
    if t.is_symlink() {
        FileKind::Symlink
    } else if t.is_dir() {
        FileKind::Directory
    } else if t.is_file() {
        FileKind::File
    } else {
        debug_assert!(t.is_fifo() || t.is_socket() || t.is_block_device() || t.is_char_device());
        FileKind::Other
    }
}

/// The state of `path`, whose `lstat` is `meta`. `previous` (its baseline state) lends its hash
/// when the content cannot have changed. Returns the state and the bytes hashed.
pub fn observe(
    path: &Path,
    meta: &Metadata,
    how: &Observe,
    previous: Option<&FileState>,
    budget: &Budget,
) -> io::Result<(FileState, u64)> {
    let kind = kind(meta);
    let mut state = FileState {
        kind,
        size: meta.size(),
        mode: meta.mode(),
        uid: meta.uid(),
        gid: meta.gid(),
        mtime_ns: time_ns(meta.mtime(), meta.mtime_nsec()),
        ctime_ns: time_ns(meta.ctime(), meta.ctime_nsec()),
        inode: meta.ino(),
        device: meta.dev(),
        nlink: meta.nlink(),
        link_target: None,
        xattrs: None,
        hash: None,
        too_large_to_hash: false,
    };
    if kind == FileKind::Symlink {
        state.link_target = Some(std::fs::read_link(path)?.to_string_lossy().into_owned());
    }
    if how.xattrs {
        state.xattrs = xattr_digest(path)?;
    }
    let mut hashed = 0;
    if let (FileKind::File, Some(algorithm)) = (kind, how.hash) {
        if state.size > how.max_hash_size {
            state.too_large_to_hash = true;
        } else if let Some(hash) = lent_hash(previous, meta, how, algorithm) {
            state.hash = Some(hash.clone());
        } else {
            let (hash, n) = hash_file(path, algorithm, budget)?;
            state.hash = Some(hash);
            hashed = n;
        }
    }
    Ok((state, hashed))
}

/// Whether [`observe`] would read and hash the content of the file whose `lstat` is `meta`.
pub fn will_hash(meta: &Metadata, how: &Observe, previous: Option<&FileState>) -> bool {
    kind(meta) == FileKind::File
        && how.hash.is_some_and(|algorithm| {
            meta.size() <= how.max_hash_size && lent_hash(previous, meta, how, algorithm).is_none()
        })
}

/// The hash of `previous` when it still holds for the file whose `lstat` is `meta`.
fn lent_hash<'p>(
    previous: Option<&'p FileState>,
    meta: &Metadata,
    how: &Observe,
    algorithm: HashAlgorithm,
) -> Option<&'p String> {
    previous
        .filter(|p| !how.always_hash && unchanged_content(p, meta))
        .and_then(|p| p.hash.as_ref())
        .filter(|h| h.starts_with(algorithm.prefix()))
}

/// Whether the content of the file whose `lstat` is `now` is the one hashed in `before`: same
/// size, mtime, ctime and inode (a write changes mtime and ctime; `touch -r` restores mtime, not
/// ctime).
fn unchanged_content(before: &FileState, now: &Metadata) -> bool {
    before.kind == FileKind::File
        && before.size == now.size()
        && before.mtime_ns == time_ns(now.mtime(), now.mtime_nsec())
        && before.ctime_ns == time_ns(now.ctime(), now.ctime_nsec())
        && before.inode == now.ino()
        && before.device == now.dev()
}

fn time_ns(secs: i64, nsec: i64) -> i64 {
    secs.saturating_mul(1_000_000_000).saturating_add(nsec)
}

/// The content hash of the regular file at `path` as `algorithm:hex`, read through one fixed
/// buffer within `budget`; and the bytes read.
///
/// The file is opened without following a symlink and without blocking (a FIFO swapped in since
/// the `lstat` would block a plain open forever), and must still be a regular file: otherwise
/// the path changed under the scan, reported as not found (the next look sees what it is).
pub fn hash_file(
    path: &Path,
    algorithm: HashAlgorithm,
    budget: &Budget,
) -> io::Result<(String, u64)> {
    let flags = rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::NONBLOCK;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(i32::try_from(flags.bits()).unwrap_or(0))
        .open(path)
        .map_err(|e| {
            // ELOOP: a symlink now stands there.
            if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) {
                io::Error::new(io::ErrorKind::NotFound, "replaced by a symlink")
            } else {
                e
            }
        })?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "no longer a regular file",
        ));
    }
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut total = 0u64;
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut b3 = blake3::Hasher::new();
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if budget.stopped() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the agent is shutting down",
            ));
        }
        budget.spend(n as u64);
        match algorithm {
            HashAlgorithm::Sha256 => sha.update(&buf[..n]),
            HashAlgorithm::Blake3 => {
                b3.update(&buf[..n]);
            }
        }
        total += n as u64;
    }
    let digest = match algorithm {
        HashAlgorithm::Sha256 => hex(sha.finish().as_ref()),
        HashAlgorithm::Blake3 => b3.finalize().to_hex().to_string(),
    };
    Ok((format!("{}{digest}", algorithm.prefix()), total))
}

/// Hex SHA-256 over the extended attributes of `path` (not following a symlink), names sorted,
/// each as `name 00 length(u32 BE) value`; `None` when it has none or the filesystem keeps none.
pub fn xattr_digest(path: &Path) -> io::Result<Option<String>> {
    let names = match list_xattrs(path) {
        Ok(names) => names,
        Err(e) if unsupported(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if names.is_empty() {
        return Ok(None);
    }
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for name in &names {
        let value = match xattr_value(path, name) {
            Ok(v) => v,
            // Removed between the listing and the read.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NODATA.raw_os_error()) => {
                continue;
            }
            Err(e) => return Err(e),
        };
        ctx.update(name);
        ctx.update(&[0]);
        ctx.update(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_be_bytes());
        ctx.update(&value);
    }
    Ok(Some(hex(ctx.finish().as_ref())))
}

fn unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::NOTSUP.raw_os_error())
}

/// The names of `path`'s extended attributes, sorted by bytes.
fn list_xattrs(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    // The list can grow between the size query and the read: try again then.
    for _ in 0..4 {
        let size = rustix::fs::llistxattr_query(path)?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                let mut names: Vec<Vec<u8>> = buf
                    .split(|&b| b == 0)
                    .filter(|n| !n.is_empty())
                    .map(<[u8]>::to_vec)
                    .collect();
                names.sort();
                return Ok(names);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(
        "extended attributes kept changing while read",
    ))
}

fn xattr_value(path: &Path, name: &[u8]) -> io::Result<Vec<u8>> {
    let name = <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name);
    for _ in 0..4 {
        let size = rustix::fs::lgetxattr_query(path, name)?;
        if size == 0 {
            return Ok(Vec::new());
        }
        let mut buf = vec![0u8; size];
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Err(rustix::io::Errno::RANGE) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(io::Error::other(
        "an extended attribute kept changing while read",
    ))
}

/// The encoding of a baseline row's value.
pub fn encode(state: &FileState) -> Vec<u8> {
    // Encoding plain data into memory cannot fail.
    bincode::serde::encode_to_vec(state, bincode::config::standard()).unwrap_or_default()
}

/// A baseline row's value; `None` if it is not one (written by a version that encoded it
/// otherwise), which the scan treats as a path not in the baseline.
pub fn decode(bytes: &[u8]) -> Option<FileState> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .ok()
        .map(|(s, _)| s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn how() -> Observe {
        Observe {
            hash: Some(HashAlgorithm::Sha256),
            max_hash_size: 1 << 20,
            always_hash: false,
            xattrs: true,
        }
    }

    #[test]
    fn hashes_stream_through_one_buffer_with_either_algorithm() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"abc").unwrap();
        let budget = Budget::per_second(0);
        let (sha, n) = hash_file(&f, HashAlgorithm::Sha256, &budget).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            sha,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (b3, _) = hash_file(&f, HashAlgorithm::Blake3, &budget).unwrap();
        assert_eq!(
            b3,
            "blake3:6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        // Not a regular file (any more): as if gone.
        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = hash_file(&fifo, HashAlgorithm::Sha256, &budget).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let err = hash_file(&link, HashAlgorithm::Sha256, &budget).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
        let big = dir.path().join("big");
        std::fs::write(&big, vec![7u8; HASH_BUFFER * 3 + 5]).unwrap();
        let (_, n) = hash_file(&big, HashAlgorithm::Sha256, &budget).unwrap();
        assert_eq!(n, (HASH_BUFFER * 3 + 5) as u64);
    }

    #[test]
    fn observe_reuses_a_hash_only_while_the_content_cannot_have_changed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"one").unwrap();
        let budget = Budget::per_second(0);
        let meta = std::fs::symlink_metadata(&f).unwrap();
        let (first, hashed) = observe(&f, &meta, &how(), None, &budget).unwrap();
        assert_eq!(hashed, 3);
        assert!(first.hash.as_deref().unwrap().starts_with("sha256:"));
        let (again, hashed) = observe(&f, &meta, &how(), Some(&first), &budget).unwrap();
        assert_eq!((again.hash.clone(), hashed), (first.hash.clone(), 0));
        let always = Observe {
            always_hash: true,
            ..how()
        };
        let (_, hashed) = observe(&f, &meta, &always, Some(&first), &budget).unwrap();
        assert_eq!(hashed, 3);
        let small = Observe {
            max_hash_size: 2,
            ..how()
        };
        let (large, hashed) = observe(&f, &meta, &small, None, &budget).unwrap();
        assert!(large.too_large_to_hash && large.hash.is_none() && hashed == 0);
    }

    #[test]
    fn symlinks_keep_their_target_and_states_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let l = dir.path().join("l");
        std::os::unix::fs::symlink("/nowhere", &l).unwrap();
        let meta = std::fs::symlink_metadata(&l).unwrap();
        let (s, _) = observe(&l, &meta, &how(), None, &Budget::per_second(0)).unwrap();
        assert_eq!(s.kind, FileKind::Symlink);
        assert_eq!(s.link_target.as_deref(), Some("/nowhere"));
        assert_eq!(decode(&encode(&s)), Some(s));
        assert_eq!(decode(b"\xff\xff"), None);
    }

    #[test]
    fn xattr_digest_changes_with_a_value() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let before = xattr_digest(&f).unwrap();
        match rustix::fs::lsetxattr(&f, "user.test", b"1", rustix::fs::XattrFlags::empty()) {
            Ok(()) => {}
            // This filesystem keeps no user attributes: nothing more to check here.
            Err(rustix::io::Errno::NOTSUP | rustix::io::Errno::PERM) => return,
            Err(e) => panic!("{e}"),
        }
        let one = xattr_digest(&f).unwrap();
        assert!(one.is_some());
        assert_ne!(before, one);
        rustix::fs::lsetxattr(&f, "user.test", b"2", rustix::fs::XattrFlags::empty()).unwrap();
        assert_ne!(xattr_digest(&f).unwrap(), one);
    }
}
