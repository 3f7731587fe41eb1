//! The file source's core: which files are read, from where, and what became of their bytes.
//!
//! A [`Tailer`] is synchronous and owns no thread or timer: the caller tells it to
//! [`scan`](Tailer::scan) for files and to [`read`](Tailer::read) a round, with the time, and
//! commits each [`Round`] — events and the positions that go with them — in one spool
//! transaction. After a crash, a new tailer built from the committed positions resumes exactly
//! where the committed events end.
//!
//! Files are known by device and inode, checked against fingerprints of their head and of the
//! bytes before the saved offset ([`identity`](super::identity)), so that:
//!
//! - a file renamed away (rotation by rename and create) stays open and is read to its end; it
//!   is let go once nothing was written to it for `rotate_wait`, or given up (its unread bytes
//!   counted) when it stays unread past `rotated_max_age` or more than `max_rotated_open` are
//!   held;
//! - a file that shrinks (truncation, copytruncate) is read again from its start; what was
//!   written before it shrank is read from the copy when one is found beside it (its head and the
//!   last bytes read match), and bytes known to have been written but read by no one are counted
//!   as lost;
//! - a path that now names another file (delete and recreate, a symbolic link switched) has the
//!   old file read to its end and the new one read from its start;
//! - after a restart, a file renamed while the agent was stopped is found beside its old name
//!   by inode and head, and read from its saved offset; a reused inode or rewritten content is
//!   read from the start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use outpost_common::event::Event;
use serde::{Deserialize, Serialize};

use super::identity::{
    self, FileId, Fingerprint, HEAD_BYTES, Observed, Position, Restart, Resume, TAIL_BYTES,
};
use super::multiline::Record;
use super::pipeline::{Pipeline, Reader};
use super::select::{Selection, is_compressed};
use crate::spool::{StateChange, StateRow};

/// Where to start a file that was there when the source first started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// From its first byte.
    Beginning,
    /// From its end (after its last complete line): only what is written from now on.
    #[default]
    End,
}

/// How a tailer reads.
#[derive(Debug, Clone)]
pub struct Options {
    pub read_from: ReadFrom,
    /// Files not modified for this long are not opened until they are.
    pub ignore_older: Option<Duration>,
    /// A rotated-away file read to its end is let go once nothing was written to it this long.
    pub rotate_wait: Duration,
    /// A rotated-away file not read to its end after this long is given up.
    pub rotated_max_age: Duration,
    /// Rotated-away files held open at most; beyond, the oldest is given up.
    pub max_rotated_open: usize,
    /// Bytes read from one file per turn: no file waits for more than one turn of each other.
    pub read_chunk: usize,
    /// Bytes read in one round at most.
    pub round_bytes: usize,
    /// Events in one round at most.
    pub round_events: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            read_from: ReadFrom::End,
            ignore_older: None,
            rotate_wait: Duration::from_secs(5),
            rotated_max_age: Duration::from_secs(600),
            max_rotated_open: 64,
            read_chunk: 64 * 1024,
            round_bytes: 2 * 1024 * 1024,
            round_events: 8192,
        }
    }
}

/// Why bytes of a file were never read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Loss {
    /// The file shrank (truncation, copytruncate) before they were read, and no copy held them.
    Truncated,
    /// A rotated-away file was given up (too old or too many held) before they were read.
    GivenUp,
    /// The rest of an over-long line, cut at `max_line_bytes`.
    LineTooLong,
}

impl Loss {
    pub const ALL: [Loss; 3] = [Loss::Truncated, Loss::GivenUp, Loss::LineTooLong];

    pub fn as_str(self) -> &'static str {
        match self {
            Loss::Truncated => "truncated",
            Loss::GivenUp => "given_up",
            Loss::LineTooLong => "line_too_long",
        }
    }
}

/// What a tailer knows of one file, for telemetry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileStats {
    pub bytes_read: u64,
    pub records: u64,
    /// The file's size when last looked at.
    pub size: u64,
    /// The offset past the last record handed out.
    pub offset: u64,
    /// Rotations, truncations and replacements seen.
    pub rotations: u64,
    /// Bytes never read, by [`Loss`] (in [`Loss::ALL`]'s order).
    pub lost: [u64; 3],
    /// Whether it is a rotated-away file still being read.
    pub rotated: bool,
}

impl FileStats {
    /// Bytes behind the end of the file.
    pub fn lag(&self) -> u64 {
        self.size.saturating_sub(self.offset)
    }
}

/// What one round read: committed together, or not at all.
#[derive(Debug, Default)]
pub struct Round {
    pub events: Vec<Event>,
    pub state: Vec<StateChange>,
    pub bytes: u64,
    /// The round stopped at its budget: more is ready to read at once.
    pub full: bool,
}

impl Round {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.state.is_empty()
    }
}

/// A saved position, as a state row keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Saved {
    /// The path the file was read under, as the events' source.
    source: String,
    /// The path it was last seen at.
    path: Vec<u8>,
    position: Position,
    /// Its heads before it was truncated, newest last: copies made of it then start so.
    past_heads: Vec<Fingerprint>,
}

const SAVED_VERSION: u8 = 1;

/// Selected paths remembered with the last file they named, at most (beyond, those that name
/// nothing now are forgotten).
const MAX_REMEMBERED_PATHS: usize = 4096;

/// Heads of a file before its truncations, kept to tell its copies from rotated files.
const PAST_HEADS: usize = 16;

impl Saved {
    fn key(id: FileId) -> Vec<u8> {
        let mut k = Vec::with_capacity(24);
        k.extend_from_slice(&id.dev.to_be_bytes());
        k.extend_from_slice(&id.ino.to_be_bytes());
        k.extend_from_slice(&id.born_ns.to_be_bytes());
        k
    }

    fn path(&self) -> PathBuf {
        path_from(&self.path)
    }
}

/// A state row's value: a version byte, then the value's bincode.
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = vec![SAVED_VERSION];
    // Encoding plain owned data into a vector cannot fail.
    v.extend(bincode::serde::encode_to_vec(value, bincode::config::standard()).unwrap_or_default());
    v
}

fn decode<T: serde::de::DeserializeOwned>(value: &[u8]) -> Option<T> {
    let (&version, rest) = value.split_first()?;
    if version != SAVED_VERSION {
        return None;
    }
    bincode::serde::decode_from_slice(rest, bincode::config::standard())
        .ok()
        .map(|(v, _)| v)
}

fn path_from(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}

/// Keys of the rows that remember which file a path last named start so (file keys are
/// 24 binary bytes).
const LAST_AT_PREFIX: &[u8] = b"at:";

fn last_at_key(path: &Path) -> Vec<u8> {
    let mut k = LAST_AT_PREFIX.to_vec();
    k.extend_from_slice(&path_bytes(path));
    k
}

fn path_bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

/// The file a selected path named when last looked at, with its heads (now and before its
/// truncations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct LastAt {
    id: FileId,
    heads: Vec<Fingerprint>,
}

/// A rotated-away file still being read.
#[derive(Debug, Clone, Copy)]
struct Rotated {
    since: Instant,
    last_growth: Instant,
    /// Rotations seen before this one: which of two files rotated at the same instant is older.
    order: u64,
}

/// One open file.
#[derive(Debug)]
struct Tail {
    id: FileId,
    /// Where it is now, as far as the tailer knows.
    path: PathBuf,
    /// The path it was selected under: the events' source.
    source: String,
    file: File,
    reader: Reader,
    head: Fingerprint,
    /// The largest size seen.
    seen_size: u64,
    /// The last bytes read (up to [`TAIL_BYTES`]): what a copy must hold before the offset.
    recent: Vec<u8>,
    /// Its heads before it was truncated, newest last (at most [`PAST_HEADS`]).
    past_heads: Vec<Fingerprint>,
    rotated: Option<Rotated>,
    /// The modification time when last looked at: a file rewritten to the same size is noticed.
    modified: Option<SystemTime>,
    /// The offset last put in a state row, if any.
    saved_offset: Option<u64>,
    stats: FileStats,
}

/// The file source's core; see the module documentation.
#[derive(Debug)]
pub struct Tailer {
    selection: Selection,
    pipeline: Pipeline,
    options: Options,
    /// The state rows' source name.
    state_name: String,
    tails: BTreeMap<FileId, Tail>,
    /// The file each selected path names, among the open ones.
    live: HashMap<PathBuf, FileId>,
    /// The file each selected path named when last looked at (or, at start, the newest
    /// position saved under it): a file born between it and the next one was rotated away
    /// unseen.
    last_at: HashMap<PathBuf, LastAt>,
    /// Paths whose entry in `last_at` changed (or went) since it was last saved.
    last_at_dirty: HashSet<PathBuf>,
    /// Saved positions not matched with a file yet (only before the first scan ends).
    saved: HashMap<FileId, Saved>,
    /// Files left unopened for `ignore_older`, with their size then.
    ignored: HashMap<FileId, u64>,
    /// No position was saved at all: files found by the first scan start at `read_from`.
    fresh: bool,
    scanned: bool,
    /// Round-robin start, so every file gets the first turn in its turn.
    turn: usize,
    /// Rows to delete with the next round.
    deletes: Vec<FileId>,
    /// Rows this release cannot read, deleted with the next round; their files start over.
    undecodable: Vec<Vec<u8>>,
    /// Stats of files closed since the source started, summed.
    closed: FileStats,
    /// Rotations seen so far, to order files rotated at the same instant.
    rotations_seen: u64,
    redactions: Vec<u64>,
    /// Paths that could not be opened, with why; reported until they can.
    unreadable: BTreeMap<PathBuf, String>,
    buf: Vec<u8>,
}

impl Tailer {
    /// A tailer of the files `selection` picks, resuming from the committed `rows` of its state
    /// (the spool's rows of `state_name`).
    pub fn new(
        selection: Selection,
        pipeline: Pipeline,
        options: Options,
        state_name: String,
        rows: Vec<StateRow>,
    ) -> Tailer {
        let mut saved = HashMap::new();
        let mut undecodable = Vec::new();
        let mut last_at: HashMap<PathBuf, LastAt> = HashMap::new();
        let fresh = rows.is_empty();
        for (key, value) in rows {
            if let Some(path) = key.strip_prefix(LAST_AT_PREFIX) {
                match decode::<LastAt>(&value) {
                    Some(at) => {
                        last_at.insert(path_from(path), at);
                    }
                    None => undecodable.push(key),
                }
                continue;
            }
            match decode::<Saved>(&value) {
                Some(s) => {
                    saved.insert(s.position.id, s);
                }
                None => undecodable.push(key),
            }
        }
        for s in saved.values() {
            let at = LastAt {
                id: s.position.id,
                heads: s
                    .past_heads
                    .iter()
                    .copied()
                    .chain([s.position.head])
                    .collect(),
            };
            match last_at.get(&s.path()) {
                Some(newest) if newest.id.born_ns > at.id.born_ns => {}
                _ => {
                    last_at.insert(s.path(), at);
                }
            }
        }
        let mut t = Tailer {
            selection,
            pipeline,
            options,
            state_name,
            tails: BTreeMap::new(),
            live: HashMap::new(),
            last_at,
            last_at_dirty: HashSet::new(),
            saved,
            ignored: HashMap::new(),
            fresh,
            scanned: false,
            turn: 0,
            deletes: Vec::new(),
            undecodable: Vec::new(),
            closed: FileStats::default(),
            rotations_seen: 0,
            redactions: Vec::new(),
            unreadable: BTreeMap::new(),
            buf: Vec::new(),
        };
        // Rows this release cannot read are dropped; their files start over as new ones.
        t.undecodable = undecodable;
        t
    }

    /// A tailer of the same files, resuming from `rows` as after a restart; what this one read
    /// and did not commit is read again.
    pub fn restarted(self, rows: Vec<StateRow>) -> Tailer {
        let scanned = self.scanned;
        let mut t = Tailer::new(
            self.selection,
            self.pipeline,
            self.options,
            self.state_name,
            rows,
        );
        t.fresh &= !scanned;
        t.closed = self.closed;
        t
    }

    /// The state rows' source name.
    pub fn state_name(&self) -> &str {
        &self.state_name
    }

    /// Looks for files: opens new ones, notices renamed, replaced and deleted ones. Returns the
    /// problems met (directories or files that cannot be read), which do not stop the rest.
    pub fn scan(&mut self, now: Instant) -> Vec<String> {
        let (found, mut errors) = self.selection.scan();
        let mut seen: HashSet<FileId> = HashSet::with_capacity(found.len());
        let wall = SystemTime::now();
        for (path, md) in found {
            let id = FileId::of(&md);
            seen.insert(id);
            let before = self.last_at.get(&path).cloned();
            if before.as_ref().is_none_or(|b| b.id != id) {
                if let Some(before) = before {
                    self.find_missed(&path, &before, id, now);
                }
                let heads = Vec::new();
                self.last_at.insert(path.clone(), LastAt { id, heads });
                self.last_at_dirty.insert(path.clone());
            }
            match self.live.get(&path) {
                Some(&known) if known == id => continue,
                Some(&old) => {
                    // The path names another file now: the old one was rotated away, deleted
                    // and replaced, or a link was switched.
                    self.live.remove(&path);
                    self.retire(old, now);
                }
                None => {}
            }
            if let Some(tail) = self.tails.get_mut(&id) {
                // An open file under a new selected name (renamed within the selection): the
                // same file, read on where it was.
                if self.live.get(&tail.path) == Some(&id) {
                    self.live.remove(&tail.path);
                }
                tail.path.clone_from(&path);
                // Selected under its new name, it is read like any live file.
                tail.rotated = None;
                tail.stats.rotated = false;
                self.live.insert(path, id);
                continue;
            }
            if let Some(older) = self.options.ignore_older
                && !self.saved.contains_key(&id)
                && md
                    .modified()
                    .ok()
                    .and_then(|m| wall.duration_since(m).ok())
                    .is_some_and(|age| age > older)
            {
                self.ignored.entry(id).or_insert(md.len());
                continue;
            }
            match self.open(&path, id, now) {
                Ok(()) => {
                    self.unreadable.remove(&path);
                    self.live.insert(path, id);
                }
                Err(e) => {
                    let message = format!("{}: cannot read: {e}", path.display());
                    self.unreadable.insert(path, message);
                }
            }
        }
        // Open files no selected path names any more: renamed out of the selection or deleted.
        let gone: Vec<(PathBuf, FileId)> = self
            .live
            .iter()
            .filter(|(_, id)| !seen.contains(id))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        for (path, id) in gone {
            self.live.remove(&path);
            self.retire(id, now);
        }
        // Files rotated away while the spool is full pile up here: the bounds hold anyway.
        self.give_up_beyond_bounds(now);
        self.unreadable.retain(|p, _| p.exists());
        errors.extend(self.unreadable.values().cloned());
        if !self.scanned {
            self.scanned = true;
            self.find_renamed(now);
        }
        self.ignored.retain(|id, _| seen.contains(id));
        // Paths whose file is gone are remembered too (deleted, created again later), within a
        // bound: files named by date never come back.
        for (path, id) in &self.live {
            if let (Some(at), Some(tail)) = (self.last_at.get_mut(path), self.tails.get(id))
                && at.id == *id
            {
                let heads: Vec<Fingerprint> =
                    tail.past_heads.iter().copied().chain([tail.head]).collect();
                if at.heads != heads {
                    at.heads = heads;
                    self.last_at_dirty.insert(path.clone());
                }
            }
        }
        if self.last_at.len() > MAX_REMEMBERED_PATHS {
            let dirty = &mut self.last_at_dirty;
            self.last_at.retain(|path, at| {
                let keep = seen.contains(&at.id);
                if !keep {
                    dirty.insert(path.clone());
                }
                keep
            });
        }
        errors
    }

    /// Reads a round: each open file in turn, up to `read_chunk` per turn, until the round's
    /// budget is spent or nothing more is ready; hands out groups whose flush timeout passed and
    /// lets go of rotated-away files that are done. `read_ns` is the wall-clock read time.
    pub fn read(&mut self, now: Instant, read_ns: i64) -> Round {
        let mut round = Round::default();
        let mut records: Vec<Record> = Vec::new();
        let ids: Vec<FileId> = self.tails.keys().copied().collect();
        if !ids.is_empty() {
            self.turn = (self.turn + 1) % ids.len();
        }
        let order: Vec<FileId> = ids[self.turn.min(ids.len())..]
            .iter()
            .chain(&ids[..self.turn.min(ids.len())])
            .copied()
            .collect();
        let mut active: Vec<FileId> = order.clone();
        while !active.is_empty() {
            let mut still = Vec::with_capacity(active.len());
            for id in active {
                let got = self.read_turn(id, now, &mut records);
                self.emit(id, &mut records, read_ns, &mut round.events);
                round.bytes += got;
                if got > 0 {
                    still.push(id);
                }
                if round.bytes >= self.options.round_bytes as u64
                    || round.events.len() >= self.options.round_events
                {
                    round.full = true;
                    break;
                }
            }
            if round.full {
                break;
            }
            active = still;
        }
        for id in order {
            if let Some(tail) = self.tails.get_mut(&id) {
                tail.reader.handle_timeout(now, &mut records);
            }
            self.emit(id, &mut records, read_ns, &mut round.events);
        }
        self.let_go(now, read_ns, &mut round.events);
        self.positions(&mut round.state);
        round
    }

    /// Positions of files opened since the last round, before anything was read from them: the
    /// caller commits them while a round waits for spool space, so that a file rotated away
    /// meanwhile is still found (by its saved inode) after a crash.
    pub fn opened(&mut self) -> Vec<StateChange> {
        let mut state = Vec::new();
        self.deleted(&mut state);
        for id in self
            .tails
            .values()
            .filter(|t| t.saved_offset.is_none())
            .map(|t| t.id)
            .collect::<Vec<_>>()
        {
            self.position(id, &mut state);
        }
        state
    }

    /// When the tailer next has something to do with no new bytes: a group's flush timeout, a
    /// rotated-away file's wait.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tails
            .values()
            .flat_map(|t| {
                let rotated = t.rotated.map(|r| {
                    (r.last_growth + self.options.rotate_wait)
                        .min(r.since + self.options.rotated_max_age)
                });
                t.reader.poll_timeout().into_iter().chain(rotated)
            })
            .min()
    }

    /// Telemetry of each open file by path, and of closed ones summed.
    pub fn stats(&self) -> (Vec<(String, FileStats)>, FileStats) {
        let open = self
            .tails
            .values()
            .map(|t| (t.path.display().to_string(), t.stats.clone()))
            .collect();
        (open, self.closed.clone())
    }

    /// Replacements each redaction rule made, in the redactor's order.
    pub fn redactions(&self) -> &[u64] {
        &self.redactions
    }

    /// Open files, rotated-away ones included.
    pub fn open_files(&self) -> usize {
        self.tails.len()
    }

    /// Opens `path` (the file `id`) and decides where to start reading it.
    fn open(&mut self, path: &Path, id: FileId, now: Instant) -> std::io::Result<()> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        let source = path.display().to_string();
        let mut past_heads = Vec::new();
        let (offset, source) = if let Some(saved) = self.saved.remove(&id) {
            past_heads.clone_from(&saved.past_heads);
            let start = match resume_in(&file, &saved.position, size)? {
                Resume::At(offset) => offset,
                Resume::FromStart(why) => {
                    tracing::info!(path = %path.display(), reason = ?why, "reading a log file again from its start");
                    if why != Restart::OtherFile {
                        // Copied and truncated while the agent was stopped: the copy holds the
                        // rest of what was read up to the saved offset.
                        self.read_copy_of(path, &saved, now);
                        past_heads.push(saved.position.head);
                        let excess = past_heads.len().saturating_sub(PAST_HEADS);
                        past_heads.drain(..excess);
                    }
                    0
                }
            };
            (start, saved.source)
        } else if let Some(size_then) = self.ignored.remove(&id) {
            (line_start_before(&file, size_then)?, source)
        } else if self.fresh && !self.scanned && self.options.read_from == ReadFrom::End {
            (line_start_before(&file, size)?, source)
        } else {
            (0, source)
        };
        tracing::debug!(path = %path.display(), offset, size, "opening a log file");
        self.insert(id, path.to_path_buf(), source, file, offset, None)?;
        self.set_past_heads(id, past_heads);
        Ok(())
    }

    /// Restores the heads a file had before its truncations, as its saved position kept them.
    fn set_past_heads(&mut self, id: FileId, heads: Vec<Fingerprint>) {
        if let Some(tail) = self.tails.get_mut(&id) {
            tail.past_heads = heads;
        }
    }

    fn insert(
        &mut self,
        id: FileId,
        path: PathBuf,
        source: String,
        file: File,
        offset: u64,
        rotated: Option<Rotated>,
    ) -> std::io::Result<()> {
        let size = file.metadata()?.len();
        let head = head_of(&file, size.min(HEAD_BYTES))?;
        let recent = read_range(&file, offset.saturating_sub(TAIL_BYTES)..offset)?;
        let tail = Tail {
            id,
            path,
            source,
            reader: self.pipeline.reader(offset),
            file,
            head,
            seen_size: size,
            recent,
            past_heads: Vec::new(),
            rotated,
            modified: None,
            saved_offset: None,
            stats: FileStats {
                size,
                offset,
                rotated: rotated.is_some(),
                ..FileStats::default()
            },
        };
        // An inode reused since its old file's row was let go: the row is this file's now.
        self.deletes.retain(|d| *d != id);
        self.tails.insert(id, tail);
        Ok(())
    }

    /// Opens the copy of the file at `path` that `saved` was taken on, if one is beside it, to be
    /// read from the saved offset to its end.
    fn read_copy_of(&mut self, path: &Path, saved: &Saved, now: Instant) {
        let p = &saved.position;
        let copy = find_copy(path, p.id, p.head, p.offset, |f| {
            read_range(f, p.tail_range()).is_ok_and(|b| Fingerprint::of(&b) == p.tail)
        });
        let Some((copy_path, file, _)) = copy else {
            return;
        };
        let Ok(md) = file.metadata() else { return };
        let id = FileId::of(&md);
        if self.tails.contains_key(&id) {
            return;
        }
        let rotated = Some(self.rotated_at(now));
        let _ = self.insert(id, copy_path, saved.source.clone(), file, p.offset, rotated);
    }

    /// Files that named `path` after `before` and before `after` and were rotated away before
    /// any scan saw them (two rotations between looks, or while the agent was stopped): born
    /// between the two, beside them, not compressed yet. They are read whole.
    fn find_missed(&mut self, path: &Path, before: &LastAt, after: FileId, now: Instant) {
        let heads = &before.heads;
        let before = before.id;
        if before.born_ns == 0 || after.born_ns == 0 || after.born_ns < before.born_ns {
            return;
        }
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return;
        };
        let name = name.to_string_lossy().into_owned();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        // Copies of `before` (copytruncate's) were born in the window too: they start as it
        // did, and are not read again.
        for entry in entries.flatten() {
            let candidate = entry.path();
            let entry_name = entry.file_name().to_string_lossy().into_owned();
            if entry_name == name || !entry_name.starts_with(&name) || is_compressed(&candidate) {
                continue;
            }
            let Ok(md) = std::fs::metadata(&candidate) else {
                continue;
            };
            let id = FileId::of(&md);
            // Birth times tick coarsely (a few milliseconds): files born in the same tick as
            // either end are in the window too.
            if !md.is_file()
                || id == before
                || id == after
                || id.born_ns < before.born_ns
                || id.born_ns > after.born_ns
                || self.tails.contains_key(&id)
                || self.saved.contains_key(&id)
            {
                continue;
            }
            let Ok(file) = File::open(&candidate) else {
                continue;
            };
            let is_copy = heads
                .iter()
                .any(|h| h.len > 0 && head_of(&file, h.len).is_ok_and(|c| c == *h));
            if is_copy {
                continue;
            }
            tracing::info!(
                path = %candidate.display(),
                "reading a log file rotated away before it was seen"
            );
            let rotated = Some(self.rotated_at(now));
            let source = path.display().to_string();
            let _ = self.insert(id, candidate, source, file, 0, rotated);
        }
    }

    /// The rotation of a file seen rotated now.
    fn rotated_at(&mut self, now: Instant) -> Rotated {
        self.rotations_seen += 1;
        Rotated {
            since: now,
            last_growth: now,
            order: self.rotations_seen,
        }
    }

    /// After the first scan: positions whose file is no longer under a selected name. A file
    /// renamed while the agent was stopped is found beside its old name and read from its
    /// saved offset to its end; the others are forgotten.
    fn find_renamed(&mut self, now: Instant) {
        for (id, saved) in std::mem::take(&mut self.saved) {
            tracing::debug!(path = %saved.path().display(), offset = saved.position.offset, "looking for a file renamed away");
            match find_by_id(&saved.path(), id) {
                Some((path, file)) => {
                    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
                    // The same inode beside the old name is the file, rewritten if its content
                    // changed: read from its start then.
                    let offset = match resume_in(&file, &saved.position, size) {
                        Ok(Resume::At(offset)) => offset,
                        _ => 0,
                    };
                    let rotated = Some(self.rotated_at(now));
                    match self.insert(id, path, saved.source, file, offset, rotated) {
                        Ok(()) => self.set_past_heads(id, saved.past_heads),
                        Err(_) => self.deletes.push(id),
                    }
                }
                None => self.deletes.push(id),
            }
        }
    }

    /// The file `id` is no longer named by its selected path: read it to its end, then let go.
    fn retire(&mut self, id: FileId, now: Instant) {
        if let Some(tail) = self.tails.get_mut(&id)
            && tail.rotated.is_none()
        {
            self.rotations_seen += 1;
            tail.rotated = Some(Rotated {
                since: now,
                last_growth: now,
                order: self.rotations_seen,
            });
            tail.stats.rotated = true;
            tail.stats.rotations += 1;
        }
    }

    /// One turn of the file `id`: up to `read_chunk` bytes; returns how many were read.
    fn read_turn(&mut self, id: FileId, now: Instant, records: &mut Vec<Record>) -> u64 {
        let chunk = self.options.read_chunk;
        let Some(tail) = self.tails.get_mut(&id) else {
            return 0;
        };
        let Ok(md) = tail.file.metadata() else {
            return 0;
        };
        let size = md.len();
        if md.nlink() == 0 && tail.rotated.is_none() {
            // Deleted while open: what it holds can still be read.
            self.rotations_seen += 1;
            tail.rotated = Some(Rotated {
                since: now,
                last_growth: now,
                order: self.rotations_seen,
            });
            tail.stats.rotated = true;
            tail.stats.rotations += 1;
        }
        let from = tail.reader.read_offset();
        let modified = md.modified().ok();
        let changed = size > from || (size == from && modified != tail.modified);
        tail.modified = modified;
        if size < from || (changed && !tail.recent.is_empty() && !still_there(tail, from)) {
            // Shorter than what was read, or rewritten since: truncated (copytruncate).
            truncated(tail, &self.pipeline, now, records);
        }
        if size > tail.seen_size {
            tail.seen_size = size;
            if let Some(r) = &mut tail.rotated {
                r.last_growth = now;
            }
        }
        tail.stats.size = size;
        let from = tail.reader.read_offset();
        let want = usize::try_from(size - from.min(size))
            .unwrap_or(usize::MAX)
            .min(chunk);
        if want == 0 {
            return 0;
        }
        self.buf.resize(want, 0);
        let n = match tail.file.read_at(&mut self.buf, from) {
            Ok(n) => n,
            Err(_) => return 0,
        };
        let bytes = &self.buf[..n];
        tail.reader.push(now, bytes, records);
        remember(&mut tail.recent, bytes);
        tail.stats.bytes_read += n as u64;
        if tail.head.len < HEAD_BYTES
            && from < HEAD_BYTES
            && let Ok(h) = head_of(&tail.file, (from + n as u64).min(HEAD_BYTES))
        {
            tail.head = h;
        }
        n as u64
    }

    /// Turns the records read from `id` into events.
    fn emit(
        &mut self,
        id: FileId,
        records: &mut Vec<Record>,
        read_ns: i64,
        events: &mut Vec<Event>,
    ) {
        if records.is_empty() {
            return;
        }
        let Some(tail) = self.tails.get_mut(&id) else {
            records.clear();
            return;
        };
        for record in records.drain(..) {
            tail.stats.records += 1;
            tail.stats.lost[2] += record.dropped_bytes;
            events.push(
                self.pipeline
                    .event(&tail.source, record, read_ns, &mut self.redactions),
            );
        }
        tail.stats.offset = tail.reader.checkpoint();
    }

    /// Lets go of rotated-away files that are done (read to their end, and nothing written to
    /// them for `rotate_wait`), then applies the bounds.
    fn let_go(&mut self, now: Instant, read_ns: i64, events: &mut Vec<Event>) {
        let done: Vec<FileId> = self
            .tails
            .values()
            .filter(|t| {
                t.rotated.is_some_and(|r| {
                    t.reader.read_offset() >= t.seen_size
                        && now.saturating_duration_since(r.last_growth) >= self.options.rotate_wait
                })
            })
            .map(|t| t.id)
            .collect();
        for id in done {
            let mut records = Vec::new();
            if let Some(tail) = self.tails.get_mut(&id) {
                tail.reader.finish(now, &mut records);
            }
            self.emit(id, &mut records, read_ns, events);
            self.close(id);
        }
        self.give_up_beyond_bounds(now);
    }

    /// Gives up rotated-away files held longer than `rotated_max_age`, and the oldest beyond
    /// `max_rotated_open`, counting what was not read of them.
    fn give_up_beyond_bounds(&mut self, now: Instant) {
        let mut rotated: Vec<(Instant, u64, FileId)> = self
            .tails
            .values()
            .filter_map(|t| t.rotated.map(|r| (r.since, r.order, t.id)))
            .collect();
        rotated.sort();
        let excess = rotated.len().saturating_sub(self.options.max_rotated_open);
        for (i, (since, _, id)) in rotated.into_iter().enumerate() {
            if i >= excess && now.saturating_duration_since(since) < self.options.rotated_max_age {
                continue;
            }
            let Some(tail) = self.tails.get_mut(&id) else {
                continue;
            };
            let size = tail.file.metadata().map_or(tail.seen_size, |m| m.len());
            let unread = size
                .max(tail.seen_size)
                .saturating_sub(tail.reader.checkpoint());
            tail.stats.lost[1] += unread;
            tracing::warn!(
                path = %tail.path.display(),
                unread_bytes = unread,
                "giving up a rotated-away log file not read to its end"
            );
            self.close(id);
        }
    }

    fn close(&mut self, id: FileId) {
        if let Some(tail) = self.tails.remove(&id) {
            let s = &tail.stats;
            let c = &mut self.closed;
            c.bytes_read += s.bytes_read;
            c.records += s.records;
            c.rotations += s.rotations;
            for (total, lost) in c.lost.iter_mut().zip(s.lost) {
                *total += lost;
            }
            if self.live.get(&tail.path) == Some(&id) {
                self.live.remove(&tail.path);
            }
            // Whether or not a row was committed yet: deleting a missing row is no error.
            self.deletes.push(id);
        }
    }

    /// State changes for this round: positions that moved, rows of files let go.
    fn positions(&mut self, state: &mut Vec<StateChange>) {
        self.deleted(state);
        let ids: Vec<FileId> = self.tails.keys().copied().collect();
        for id in ids {
            self.position(id, state);
        }
    }

    /// Deletions of rows of files let go.
    fn deleted(&mut self, state: &mut Vec<StateChange>) {
        let keys = self.deletes.drain(..).map(Saved::key);
        for key in self.undecodable.drain(..).chain(keys) {
            state.push(StateChange::Delete {
                source: self.state_name.clone(),
                key,
            });
        }
        for path in self.last_at_dirty.drain() {
            let key = last_at_key(&path);
            let source = self.state_name.clone();
            state.push(match self.last_at.get(&path) {
                Some(at) => StateChange::Put {
                    source,
                    key,
                    value: encode(at),
                },
                None => StateChange::Delete { source, key },
            });
        }
    }

    /// The position of `id`, if it moved since it was last saved.
    fn position(&mut self, id: FileId, state: &mut Vec<StateChange>) {
        let Some(tail) = self.tails.get_mut(&id) else {
            return;
        };
        let offset = tail.reader.checkpoint();
        if tail.saved_offset == Some(offset) {
            return;
        }
        let Ok(tail_bytes) = read_range(&tail.file, offset.saturating_sub(TAIL_BYTES)..offset)
        else {
            return;
        };
        {
            let saved = Saved {
                source: tail.source.clone(),
                path: path_bytes(&tail.path),
                past_heads: tail.past_heads.clone(),
                position: Position {
                    id: tail.id,
                    head: tail.head,
                    offset,
                    tail: Fingerprint::of(&tail_bytes),
                },
            };
            state.push(StateChange::Put {
                source: self.state_name.clone(),
                key: Saved::key(tail.id),
                value: encode(&saved),
            });
            tail.saved_offset = Some(offset);
        }
    }
}

/// The file shrank below what was read: recover what a copy beside it holds, count what no one
/// can read any more, and start over from its first byte.
fn truncated(tail: &mut Tail, pipeline: &Pipeline, now: Instant, records: &mut Vec<Record>) {
    let read = tail.reader.read_offset();
    tail.reader.flush_group(records);
    let mut recovered = read;
    let recent_from = read - tail.recent.len() as u64;
    let copy = find_copy(&tail.path, tail.id, tail.head, read, |f| {
        read_range(f, recent_from..read).is_ok_and(|b| b == tail.recent)
    });
    tracing::debug!(
        path = %tail.path.display(),
        read,
        checkpoint = tail.reader.checkpoint(),
        seen = tail.seen_size,
        copy = ?copy.as_ref().map(|(p, _, size)| (p.display().to_string(), *size)),
        "a log file shrank or was rewritten"
    );
    if let Some((_, copy, size)) = copy {
        let mut at = read;
        let mut buf = vec![0u8; 64 * 1024];
        while at < size {
            let want = usize::try_from(size - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            match copy.read_at(&mut buf[..want], at) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    tail.reader.push(now, &buf[..n], records);
                    tail.stats.bytes_read += n as u64;
                    at += n as u64;
                }
            }
        }
        recovered = at;
        tail.reader.finish(now, records);
    } else {
        // An unfinished last line is gone with the rest.
        recovered -= tail.reader.pending_bytes();
    }
    let lost = tail.seen_size.saturating_sub(recovered);
    if lost > 0 {
        tail.stats.lost[0] += lost;
        tracing::warn!(
            path = %tail.path.display(),
            lost_bytes = lost,
            "a log file was truncated before all of it was read"
        );
    }
    tail.stats.rotations += 1;
    if tail.head.len > 0 {
        tail.past_heads.push(tail.head);
        let excess = tail.past_heads.len().saturating_sub(PAST_HEADS);
        tail.past_heads.drain(..excess);
    }
    tail.reader = pipeline.reader(0);
    tail.seen_size = 0;
    tail.recent.clear();
    tail.head = Fingerprint::of(&[]);
    // The content before the offset changed: the next position is saved whatever it is.
    tail.saved_offset = None;
}

/// Whether the last bytes read still end at `at`: the file was not rewritten under the reader.
fn still_there(tail: &Tail, at: u64) -> bool {
    let from = at - tail.recent.len() as u64;
    read_range(&tail.file, from..at).is_ok_and(|b| b == tail.recent)
}

/// A copy of the file at `path` beside it (copytruncate's), holding at least its first `read`
/// bytes: the same `head`, and bytes before `read` that `end_matches`. The newest if several.
fn find_copy(
    path: &Path,
    own: FileId,
    head: Fingerprint,
    read: u64,
    end_matches: impl Fn(&File) -> bool,
) -> Option<(PathBuf, File, u64)> {
    if head.len == 0 {
        return None;
    }
    let dir = path.parent()?;
    let name = path.file_name()?.to_string_lossy().into_owned();
    let mut best: Option<(SystemTime, PathBuf, File, u64)> = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let entry_name = entry.file_name().to_string_lossy().into_owned();
        if entry_name == name || !entry_name.starts_with(&name) || is_compressed(&entry.path()) {
            continue;
        }
        let Ok(file) = File::open(entry.path()) else {
            continue;
        };
        let Ok(md) = file.metadata() else { continue };
        if !md.is_file() || FileId::of(&md) == own || md.len() < read {
            continue;
        }
        let same_head = head_of(&file, head.len).is_ok_and(|h| h == head);
        let modified = md.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if same_head && end_matches(&file) && best.as_ref().is_none_or(|(m, ..)| modified > *m) {
            best = Some((modified, entry.path(), file, md.len()));
        }
    }
    best.map(|(_, p, f, size)| (p, f, size))
}

/// A file with the inode `id` in the directory of `old` (where a rotation renames to).
fn find_by_id(old: &Path, id: FileId) -> Option<(PathBuf, File)> {
    let candidates = std::iter::once(old.to_path_buf()).chain(
        std::fs::read_dir(old.parent()?)
            .ok()?
            .flatten()
            .map(|e| e.path()),
    );
    for path in candidates {
        let Ok(md) = std::fs::metadata(&path) else {
            continue;
        };
        if md.is_file() && FileId::of(&md) == id && !is_compressed(&path) {
            return File::open(&path).ok().map(|f| (path, f));
        }
    }
    None
}

/// Where to resume `file` (of `size` bytes), having stood at `saved`.
fn resume_in(file: &File, saved: &Position, size: u64) -> std::io::Result<Resume> {
    let md = file.metadata()?;
    let observed = Observed {
        id: FileId::of(&md),
        size,
        head: head_of(file, size.min(saved.head.len))?,
        tail: if size >= saved.offset {
            Some(Fingerprint::of(&read_range(file, saved.tail_range())?))
        } else {
            None
        },
    };
    Ok(identity::resume(saved, &observed))
}

/// The fingerprint of `file`'s first `len` bytes.
fn head_of(file: &File, len: u64) -> std::io::Result<Fingerprint> {
    Ok(Fingerprint::of(&read_range(file, 0..len)?))
}

/// The bytes of `file` in `range` (fewer if it ends first).
fn read_range(file: &File, range: std::ops::Range<u64>) -> std::io::Result<Vec<u8>> {
    let len = usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(0);
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        match file.read_at(&mut buf[got..], range.start + got as u64)? {
            0 => break,
            n => got += n,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// The offset just past the last newline before `size`: where reading "from the end" starts,
/// so an unfinished last line is read whole once finished.
fn line_start_before(file: &File, size: u64) -> std::io::Result<u64> {
    let mut end = size;
    while end > 0 {
        let from = end.saturating_sub(64 * 1024);
        let bytes = read_range(file, from..end)?;
        if let Some(i) = memchr::memrchr(b'\n', &bytes) {
            return Ok(from + i as u64 + 1);
        }
        end = from;
    }
    Ok(0)
}

/// Keeps the last [`TAIL_BYTES`] of what was read.
fn remember(recent: &mut Vec<u8>, bytes: &[u8]) {
    let keep = TAIL_BYTES as usize;
    if bytes.len() >= keep {
        recent.clear();
        recent.extend_from_slice(&bytes[bytes.len() - keep..]);
    } else {
        recent.extend_from_slice(bytes);
        let excess = recent.len().saturating_sub(keep);
        recent.drain(..excess);
    }
}

#[cfg(test)]
#[path = "tailer_tests.rs"]
mod tests;
