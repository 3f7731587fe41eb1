//! The spool's relation to the disk under it: free space, the reserve file, and the trouble the
//! spool is in when the disk is full, read-only or gone.
//!
//! SQLite needs free space to delete: a deletion writes the changed pages to the write-ahead log
//! first. On a full disk, acknowledgements could then never be committed, and the backlog would
//! be sent again and again without ever draining. Two things prevent that:
//!
//! - **The reserve**: a file of real, written blocks ([`Reserve`]) beside the database. When a
//!   write fails for lack of space it is deleted, which gives the retried deletion the room it
//!   needs; it is written again once the disk has room for it twice over.
//! - **The effective cap** ([`DiskCap`]): appends may use only the free space beyond the
//!   reserve, so the disk is normally never filled to the last byte in the first place.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

/// How a write amplifies on disk before a checkpoint: each page is written to the write-ahead log
/// and then to the database, so appends count only half of the free space as theirs.
pub(super) const WRITE_AMPLIFICATION: u64 = 2;

/// Where the spool learns how much space is left on the filesystem holding its directory:
/// [`Statvfs`] in the agent, a fake in tests.
pub trait FreeSpace: fmt::Debug + Send + Sync + 'static {
    /// Bytes an unprivileged process can still write on the filesystem holding `dir`.
    fn available(&self, dir: &Path) -> std::io::Result<u64>;
}

/// Free space as `statvfs(2)` reports it to unprivileged processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct Statvfs;

impl FreeSpace for Statvfs {
    fn available(&self, dir: &Path) -> std::io::Result<u64> {
        let stat = nix::sys::statvfs::statvfs(dir).map_err(std::io::Error::from)?;
        // Both are u64 or u32 depending on the platform; the product fits u64 for any real disk.
        #[allow(clippy::useless_conversion)] // u64 on Linux x86_64, u32 elsewhere
        let (blocks, size) = (
            u64::from(stat.blocks_available()),
            u64::from(stat.fragment_size()),
        );
        Ok(blocks.saturating_mul(size))
    }
}

/// What is wrong with the spool's storage; the spool still runs, as best it can.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TroubleKind {
    /// The disk has no room beyond the reserve: Wait-class sources are paused, droppable samples
    /// are dropped as `disk_full`; acknowledgements still commit, so the backlog drains.
    DiskFull,
    /// The data directory is read-only: nothing can be written until it is writable again.
    ReadOnly,
    /// The spool cannot be opened or written at all (the directory vanished, an I/O error).
    Unavailable,
}

impl TroubleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TroubleKind::DiskFull => "disk full",
            TroubleKind::ReadOnly => "read-only",
            TroubleKind::Unavailable => "unavailable",
        }
    }
}

/// The spool's trouble, with a sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trouble {
    pub kind: TroubleKind,
    /// For example "disk full: 0 bytes free on /var/lib/outpost; sources paused, samples dropped".
    pub message: String,
    /// When the spool got into it.
    pub since_ns: i64,
}

/// What the spool reports about its storage; the agent turns each into an internal event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskEvent {
    /// The spool entered `trouble`.
    Trouble(Trouble),
    /// The trouble of this kind is over.
    Recovered { kind: TroubleKind },
    /// The reserve file was deleted so a write could succeed.
    ReserveReleased { path: PathBuf, bytes: u64 },
    /// The reserve file was written again.
    ReserveRestored { path: PathBuf, bytes: u64 },
    /// Free pages were given back to the filesystem.
    Vacuumed {
        pages: u64,
        file_bytes_before: u64,
        file_bytes_after: u64,
    },
}

/// Receives the spool's [`DiskEvent`]s; the spool itself knows nothing of the agent's telemetry.
pub trait DiskReporter: fmt::Debug + Send + 'static {
    fn report(&self, event: DiskEvent);
}

/// A reporter that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoReporter;

impl DiskReporter for NoReporter {
    fn report(&self, _: DiskEvent) {}
}

/// The cap that holds for the next append: the configured one, or less when the disk is short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DiskCap {
    /// Payload bytes the spool may hold.
    pub bytes: u64,
    /// The disk, not the configuration, sets `bytes`.
    pub disk_bound: bool,
    /// Bytes free on the filesystem when it was measured.
    pub free: u64,
    /// Room for new payload the disk still gives, beyond the reserve.
    pub headroom: u64,
}

impl DiskCap {
    /// `min(max_bytes, payload + headroom)`. The headroom is the free space beyond what is held
    /// back (what the reserve file still lacks, and the room the write-ahead log may still take
    /// before it is checkpointed and reused), plus the database's own free pages (reused without
    /// growing the database, but still written to the log first, so they count only while the
    /// disk has the `log_room` the log may still take), divided by [`WRITE_AMPLIFICATION`].
    pub(super) fn new(
        max_bytes: u64,
        payload: u64,
        free: u64,
        held_back: u64,
        log_room: u64,
        free_pages_bytes: u64,
    ) -> DiskCap {
        // Reused pages are written to the log first: while the log cannot grow to its limit,
        // they are no room.
        let reusable = if free >= log_room {
            free_pages_bytes
        } else {
            0
        };
        let headroom = (free.saturating_sub(held_back) + reusable) / WRITE_AMPLIFICATION;
        let disk = payload.saturating_add(headroom);
        DiskCap {
            bytes: max_bytes.min(disk),
            disk_bound: disk < max_bytes,
            free,
            headroom,
        }
    }
}

/// A file of `bytes` written blocks kept beside the database, deleted to make room when the disk
/// is full.
#[derive(Debug)]
pub(super) struct Reserve {
    path: PathBuf,
    bytes: u64,
    /// Bytes of it on disk, as far as the spool knows.
    on_disk: u64,
}

impl Reserve {
    /// The reserve at `path`, as much of it as is already there.
    pub(super) fn new(path: PathBuf, bytes: u64) -> Reserve {
        let on_disk = std::fs::metadata(&path).map_or(0, |m| m.len().min(bytes));
        Reserve {
            path,
            bytes,
            on_disk,
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes the reserve still lacks.
    pub(super) fn missing(&self) -> u64 {
        self.bytes - self.on_disk
    }

    /// Deletes the file; returns the bytes it held.
    pub(super) fn release(&mut self) -> u64 {
        let held = std::mem::take(&mut self.on_disk);
        match std::fs::remove_file(&self.path) {
            Ok(()) => held,
            Err(_) => 0,
        }
    }

    /// Writes the file in full (real blocks, not a sparse length), synced; on failure removes
    /// what was written, so a partial reserve never eats the last free bytes.
    pub(super) fn write(&mut self) -> std::io::Result<()> {
        if self.missing() == 0 {
            return Ok(());
        }
        match self.write_blocks() {
            Ok(()) => {
                self.on_disk = self.bytes;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&self.path);
                self.on_disk = 0;
                Err(e)
            }
        }
    }

    fn write_blocks(&self) -> std::io::Result<()> {
        const CHUNK: usize = 64 * 1024;
        let zeros = vec![0u8; CHUNK];
        let mut file = std::fs::File::create(&self.path)?;
        let mut left = self.bytes;
        while left > 0 {
            // At most CHUNK, so it fits usize.
            let n = left.min(CHUNK as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()
    }
}

/// The trouble a failure to open or write the spool in `dir` shows, with a sentence naming the
/// directory and the cause.
pub fn diagnose(dir: &Path, error: &dyn fmt::Display) -> (TroubleKind, String) {
    use nix::errno::Errno;
    use nix::unistd::{AccessFlags, access};
    const EFFECT: &str = "sources paused, samples dropped";
    let dir_name = dir.display();
    match access(dir, AccessFlags::W_OK) {
        Err(Errno::EROFS) => (
            TroubleKind::ReadOnly,
            format!("read-only: {dir_name} is on a read-only filesystem; {EFFECT} ({error})"),
        ),
        Err(Errno::ENOENT) => (
            TroubleKind::Unavailable,
            format!("unavailable: {dir_name} does not exist; {EFFECT} ({error})"),
        ),
        Err(errno) => (
            TroubleKind::Unavailable,
            format!("unavailable: cannot write to {dir_name}: {errno}; {EFFECT} ({error})"),
        ),
        Ok(()) => (
            TroubleKind::Unavailable,
            format!("unavailable: {error}; {EFFECT}"),
        ),
    }
}

/// The trouble a SQLite error means for the storage, if any (other errors are the spool's own).
pub(super) fn trouble_of(error: &rusqlite::Error) -> Option<TroubleKind> {
    match error.sqlite_error_code()? {
        rusqlite::ErrorCode::DiskFull => Some(TroubleKind::DiskFull),
        rusqlite::ErrorCode::ReadOnly => Some(TroubleKind::ReadOnly),
        rusqlite::ErrorCode::SystemIoFailure | rusqlite::ErrorCode::CannotOpen => {
            Some(TroubleKind::Unavailable)
        }
        _ => None,
    }
}

/// "4.0 MiB", for messages.
pub(super) fn human_bytes(bytes: u64) -> String {
    bytesize::ByteSize::b(bytes).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_keeps_the_reserve_and_halves_the_free_space() {
        // Reserve in place: half of the free space is headroom.
        let cap = DiskCap::new(1 << 30, 1000, 10_000, 0, 0, 0);
        assert_eq!(
            (cap.bytes, cap.disk_bound, cap.headroom),
            (6000, true, 5000)
        );
        // Reserve released: its size is held back from the free space.
        let cap = DiskCap::new(1 << 30, 1000, 10_000, 4000, 0, 0);
        assert_eq!(cap.bytes, 4000);
        // Free pages inside the database count too, written to the log first.
        let cap = DiskCap::new(1 << 30, 1000, 0, 4000, 0, 8192);
        assert_eq!(cap.bytes, 5096);
        // But not when the log has no room to take them.
        let cap = DiskCap::new(1 << 30, 1000, 0, 4000, 1000, 8192);
        assert_eq!(cap.bytes, 1000);
        // Plenty of space: the configured cap holds.
        let cap = DiskCap::new(5000, 1000, 1 << 40, 0, 0, 0);
        assert_eq!((cap.bytes, cap.disk_bound), (5000, false));
    }

    #[test]
    fn the_reserve_is_written_released_and_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spool.reserve");
        let mut reserve = Reserve::new(path.clone(), 100_000);
        assert_eq!(reserve.missing(), 100_000);
        reserve.write().unwrap();
        assert_eq!(reserve.missing(), 0);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 100_000);
        // Real blocks, not a sparse file (st_blocks counts 512-byte units).
        use std::os::unix::fs::MetadataExt as _;
        assert!(meta.blocks() * 512 >= 100_000, "{} blocks", meta.blocks());
        assert_eq!(reserve.release(), 100_000);
        assert!(!path.exists());
        assert_eq!(reserve.release(), 0);
        reserve.write().unwrap();
        assert_eq!(Reserve::new(path, 100_000).missing(), 0);
    }

    #[test]
    fn statvfs_reports_some_space_and_names_a_missing_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Statvfs.available(dir.path()).unwrap() > 0);
        assert!(Statvfs.available(&dir.path().join("missing")).is_err());
    }
}
