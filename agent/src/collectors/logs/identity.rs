//! Whether a file is still the one a checkpoint was taken on, and where to resume.
//!
//! A checkpoint ([`Position`]) holds the file's device and inode, a fingerprint of its first bytes
//! (the head) and a fingerprint of the bytes just before the saved offset (the tail). Device and
//! inode alone are not enough: an inode is reused as soon as a file is deleted, and a file
//! truncated and rewritten (copytruncate) keeps its inode while its content starts over. The
//! fingerprints catch both, and the head lets a renamed file be recognised under its new name.
//!
//! [`resume`] is the decision, with no I/O: the caller stats the file and reads the fingerprints.

use ring::digest::{SHA256, digest};

/// Bytes of a file's start that identify it (fewer while the file is shorter).
pub const HEAD_BYTES: u64 = 1024;

/// Bytes before the saved offset that must still be there to resume at it.
pub const TAIL_BYTES: u64 = 256;

/// A file's device and inode, and its birth time where the filesystem keeps one: an inode
/// number freed by a deletion is soon given to a new file, which is then born later.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    /// Nanoseconds since the epoch; 0 where the filesystem does not say.
    pub born_ns: i64,
}

impl FileId {
    /// The identity of the file `md` describes.
    pub fn of(md: &std::fs::Metadata) -> FileId {
        use std::os::unix::fs::MetadataExt;
        let born_ns = md
            .created()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        FileId {
            dev: md.dev(),
            ino: md.ino(),
            born_ns,
        }
    }
}

/// A digest of some bytes of a file, and how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    pub len: u64,
    pub digest: [u8; 16],
}

impl Fingerprint {
    /// The fingerprint of `bytes` (the first 16 bytes of their SHA-256: stable across releases,
    /// since checkpoints keep it).
    pub fn of(bytes: &[u8]) -> Fingerprint {
        let mut d = [0u8; 16];
        d.copy_from_slice(&digest(&SHA256, bytes).as_ref()[..16]);
        Fingerprint {
            len: bytes.len() as u64,
            digest: d,
        }
    }
}

/// Where a source stood in a file, as its checkpoint keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub id: FileId,
    /// The first `min(size, HEAD_BYTES)` bytes when the position was taken.
    pub head: Fingerprint,
    /// Lines before this offset were read.
    pub offset: u64,
    /// The `min(offset, TAIL_BYTES)` bytes before `offset`.
    pub tail: Fingerprint,
}

impl Position {
    /// The range of bytes [`Position::tail`] covers.
    pub fn tail_range(&self) -> std::ops::Range<u64> {
        self.offset.saturating_sub(TAIL_BYTES)..self.offset
    }
}

/// What a file is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    pub id: FileId,
    pub size: u64,
    /// Its first `min(size, saved head length)` bytes: a file that has grown is compared over
    /// the length saved.
    pub head: Fingerprint,
    /// The bytes in the saved [`Position::tail_range`], if the file still reaches its end.
    pub tail: Option<Fingerprint>,
}

/// Where to read a file from, given where a source stood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// The same file with the same content up to the offset: go on from there.
    At(u64),
    /// Read from the start, for this reason.
    FromStart(Restart),
}

/// Why a file is read from its start again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restart {
    /// Another file: another inode, or the same inode with another head (deleted, reused).
    OtherFile,
    /// The same file, now shorter than the offset: truncated (or copied and truncated).
    Truncated,
    /// The same file and start, but the bytes before the offset changed: truncated and written
    /// past the old offset since.
    Rewritten,
}

/// Where to resume `now` from, having stood at `saved`.
///
/// The same inode, shorter than the offset, counts as truncated even though its head cannot be
/// compared any more: a file emptied by copytruncate is far likelier than a deletion and a reuse
/// of its inode between two looks, and either way it is read from its start.
pub fn resume(saved: &Position, now: &Observed) -> Resume {
    if now.id != saved.id {
        return Resume::FromStart(Restart::OtherFile);
    }
    if now.size < saved.offset {
        return Resume::FromStart(Restart::Truncated);
    }
    if now.head != saved.head {
        // With its birth time known, the same inode is the same file, rewritten; without, it
        // may be a new file that reused the inode.
        let why = if saved.id.born_ns == 0 {
            Restart::OtherFile
        } else {
            Restart::Rewritten
        };
        return Resume::FromStart(why);
    }
    match now.tail {
        Some(tail) if tail == saved.tail => Resume::At(saved.offset),
        _ => Resume::FromStart(Restart::Rewritten),
    }
}

/// Whether a file seen under another name is the one `saved` was taken on: a rename keeps both
/// the inode and the head.
pub fn is_renamed(saved: &Position, id: FileId, head: Fingerprint) -> bool {
    saved.id == id && saved.head == head
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: FileId = FileId {
        dev: 8,
        ino: 42,
        born_ns: 1,
    };

    /// The position after reading `content` up to `offset` in the file `id`.
    fn position(id: FileId, content: &[u8], offset: u64) -> Position {
        let head = &content[..content.len().min(HEAD_BYTES as usize)];
        let tail = &content[offset.saturating_sub(TAIL_BYTES) as usize..offset as usize];
        Position {
            id,
            head: Fingerprint::of(head),
            offset,
            tail: Fingerprint::of(tail),
        }
    }

    /// What the caller observes of `content` in file `id`, against `saved`.
    fn observe(saved: &Position, id: FileId, content: &[u8]) -> Observed {
        let head_len = content.len().min(saved.head.len as usize);
        let range = saved.tail_range();
        let tail = (content.len() as u64 >= range.end)
            .then(|| Fingerprint::of(&content[range.start as usize..range.end as usize]));
        Observed {
            id,
            size: content.len() as u64,
            head: Fingerprint::of(&content[..head_len]),
            tail,
        }
    }

    fn numbered(from: u32, to: u32) -> Vec<u8> {
        (from..to)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect()
    }

    #[test]
    fn a_file_that_grew_is_resumed_at_the_offset() {
        let before = numbered(0, 500);
        let saved = position(ID, &before, before.len() as u64);
        let mut after = before.clone();
        after.extend(numbered(500, 600));
        assert_eq!(
            resume(&saved, &observe(&saved, ID, &after)),
            Resume::At(before.len() as u64)
        );
    }

    #[test]
    fn a_small_file_that_grew_past_the_head_window_is_still_the_same() {
        let before = b"short\n".to_vec();
        let saved = position(ID, &before, 6);
        let after = numbered(0, 1000);
        let mut grown = before.clone();
        grown.extend(&after);
        assert_eq!(resume(&saved, &observe(&saved, ID, &grown)), Resume::At(6));
    }

    #[test]
    fn another_inode_or_another_head_is_another_file() {
        let content = numbered(0, 500);
        let saved = position(ID, &content, 100);
        let other = FileId { ino: 43, ..ID };
        assert_eq!(
            resume(&saved, &observe(&saved, other, &content)),
            Resume::FromStart(Restart::OtherFile)
        );
        // The same inode and birth time with other content: the file, rewritten.
        let rewritten = numbered(7_000, 8_000);
        assert_eq!(
            resume(&saved, &observe(&saved, ID, &rewritten)),
            Resume::FromStart(Restart::Rewritten)
        );
        // Where the filesystem keeps no birth time, it may be a new file reusing the inode.
        let unborn = FileId { born_ns: 0, ..ID };
        let saved = position(unborn, &content, 100);
        assert_eq!(
            resume(&saved, &observe(&saved, unborn, &rewritten)),
            Resume::FromStart(Restart::OtherFile)
        );
    }

    #[test]
    fn a_file_shorter_than_the_offset_was_truncated() {
        let content = numbered(0, 500);
        let saved = position(ID, &content, content.len() as u64);
        // copytruncate: emptied, and not yet as long as the offset again.
        let emptied = numbered(9_000, 9_010);
        assert_eq!(
            resume(&saved, &observe(&saved, ID, &emptied)),
            Resume::FromStart(Restart::Truncated)
        );
        // Truncated in place to a prefix: same head, shorter than the offset.
        let prefix = &content[..2_000];
        assert_eq!(
            resume(&saved, &observe(&saved, ID, prefix)),
            Resume::FromStart(Restart::Truncated)
        );
    }

    #[test]
    fn a_file_rewritten_past_the_offset_is_read_again() {
        let content = numbered(0, 500);
        let saved = position(ID, &content, 3_000);
        // Same first kilobyte, other bytes before the offset.
        let mut rewritten = content[..HEAD_BYTES as usize].to_vec();
        rewritten.extend(numbered(9_000, 9_500));
        assert!(rewritten.len() as u64 > saved.offset);
        assert_eq!(
            resume(&saved, &observe(&saved, ID, &rewritten)),
            Resume::FromStart(Restart::Rewritten)
        );
    }

    #[test]
    fn a_renamed_file_keeps_its_inode_and_head() {
        let content = numbered(0, 500);
        let saved = position(ID, &content, 100);
        let head = Fingerprint::of(&content[..saved.head.len as usize]);
        assert!(is_renamed(&saved, ID, head));
        assert!(!is_renamed(&saved, FileId { ino: 7, ..ID }, head));
        assert!(!is_renamed(&saved, FileId { born_ns: 2, ..ID }, head));
        assert!(!is_renamed(&saved, ID, Fingerprint::of(b"other")));
    }

    #[test]
    fn fingerprints_are_stable_across_releases() {
        // Checkpoints keep them: a change here would make every agent reread its files.
        assert_eq!(
            Fingerprint::of(b"outpost\n").digest,
            [
                0x84, 0xd8, 0x92, 0xc2, 0xa3, 0x38, 0x3e, 0x24, 0xf3, 0xd3, 0x20, 0x77, 0x07, 0x05,
                0x25, 0x59
            ]
        );
    }
}
