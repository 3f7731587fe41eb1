//! Change classification: two states of a path to a [`FimChange`] and the attributes that
//! changed. Pure: no I/O.

use outpost_common::event::{FileKind, FileState, FimChange};
use serde::Deserialize;

/// An attribute of a [`FileState`] that can be compared, by its name in `FimEvent::changed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attr {
    Kind,
    Size,
    Mode,
    Uid,
    Gid,
    Mtime,
    Ctime,
    Inode,
    Device,
    Nlink,
    LinkTarget,
    Xattrs,
    Hash,
}

impl Attr {
    /// Every attribute, in the order `changed` lists them.
    pub const ALL: [Attr; 13] = [
        Attr::Kind,
        Attr::Size,
        Attr::Mode,
        Attr::Uid,
        Attr::Gid,
        Attr::Mtime,
        Attr::Ctime,
        Attr::Inode,
        Attr::Device,
        Attr::Nlink,
        Attr::LinkTarget,
        Attr::Xattrs,
        Attr::Hash,
    ];

    /// Its name in `FimEvent::changed`.
    pub fn name(self) -> &'static str {
        match self {
            Attr::Kind => "kind",
            Attr::Size => "size",
            Attr::Mode => "mode",
            Attr::Uid => "uid",
            Attr::Gid => "gid",
            Attr::Mtime => "mtime",
            Attr::Ctime => "ctime",
            Attr::Inode => "inode",
            Attr::Device => "device",
            Attr::Nlink => "nlink",
            Attr::LinkTarget => "link_target",
            Attr::Xattrs => "xattrs",
            Attr::Hash => "hash",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }

    fn differs(self, a: &FileState, b: &FileState) -> bool {
        match self {
            Attr::Kind => a.kind != b.kind,
            Attr::Size => a.size != b.size,
            // Permission bits, setuid/setgid/sticky; the type is `kind`.
            Attr::Mode => a.mode & 0o7777 != b.mode & 0o7777,
            Attr::Uid => a.uid != b.uid,
            Attr::Gid => a.gid != b.gid,
            Attr::Mtime => a.mtime_ns != b.mtime_ns,
            Attr::Ctime => a.ctime_ns != b.ctime_ns,
            Attr::Inode => a.inode != b.inode,
            Attr::Device => a.device != b.device,
            Attr::Nlink => a.nlink != b.nlink,
            Attr::LinkTarget => a.link_target != b.link_target,
            Attr::Xattrs => a.xattrs != b.xattrs,
            // Only hashes taken both times compare: a file that became too large to hash (or
            // was not hashed before) is compared by its size and times.
            Attr::Hash => a.hash.is_some() && b.hash.is_some() && a.hash != b.hash,
        }
    }
}

/// A set of attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attrs(u16);

impl Attrs {
    pub const ALL: Attrs = Attrs((1 << Attr::ALL.len()) - 1);

    pub fn of(attrs: &[Attr]) -> Attrs {
        Attrs(attrs.iter().fold(0, |bits, a| bits | a.bit()))
    }

    pub fn contains(self, a: Attr) -> bool {
        self.0 & a.bit() != 0
    }
}

/// What a directory's entries change about it (its size, link count and times), which the
/// entries' own events report: not compared for directories.
const FOLLOW_ENTRIES: [Attr; 4] = [Attr::Size, Attr::Nlink, Attr::Mtime, Attr::Ctime];

/// The names of the attributes in `compare` that differ between `before` and `after`.
pub fn changed(before: &FileState, after: &FileState, compare: Attrs) -> Vec<String> {
    let dirs = before.kind == FileKind::Directory && after.kind == FileKind::Directory;
    Attr::ALL
        .iter()
        .filter(|&&a| compare.contains(a) || a == Attr::Kind)
        .filter(|a| !(dirs && FOLLOW_ENTRIES.contains(a)))
        .filter(|a| a.differs(before, after))
        .map(|a| a.name().to_owned())
        .collect()
}

/// The change from `before` to `after` of one path, and the attributes that changed; `None`
/// when nothing compared changed.
pub fn classify(
    before: &FileState,
    after: &FileState,
    compare: Attrs,
) -> Option<(FimChange, Vec<String>)> {
    let changed = changed(before, after, compare);
    if changed.is_empty() {
        return None;
    }
    let has = |name: &str| changed.iter().any(|c| c == name);
    let change = if has("kind") {
        FimChange::TypeChanged
    } else if has("hash")
        || has("link_target")
        || (has("size") && (before.hash.is_none() || after.hash.is_none()))
    {
        // The content: its hash, a symlink's target, or the size of a file not hashed.
        FimChange::Modified
    } else {
        FimChange::MetadataChanged
    };
    Some((change, changed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file() -> FileState {
        FileState {
            kind: FileKind::File,
            size: 10,
            mode: 0o100644,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
            ctime_ns: 1,
            inode: 7,
            device: 1,
            nlink: 1,
            link_target: None,
            xattrs: None,
            hash: Some("sha256:aa".to_owned()),
            too_large_to_hash: false,
        }
    }

    #[test]
    fn the_change_and_changed_table() {
        let b = file();
        type Want = Option<(FimChange, &'static [&'static str])>;
        let cases: Vec<(FileState, Want)> = vec![
            (b.clone(), None),
            (
                FileState {
                    hash: Some("sha256:bb".into()),
                    size: 11,
                    mtime_ns: 2,
                    ctime_ns: 2,
                    ..b.clone()
                },
                Some((FimChange::Modified, &["size", "mtime", "ctime", "hash"])),
            ),
            (
                // Same size and mtime (`touch -r`): only the hash and ctime tell.
                FileState {
                    hash: Some("sha256:bb".into()),
                    ctime_ns: 2,
                    ..b.clone()
                },
                Some((FimChange::Modified, &["ctime", "hash"])),
            ),
            (
                FileState {
                    mode: 0o100600,
                    ctime_ns: 2,
                    ..b.clone()
                },
                Some((FimChange::MetadataChanged, &["mode", "ctime"])),
            ),
            (
                FileState {
                    uid: 1,
                    gid: 1,
                    ..b.clone()
                },
                Some((FimChange::MetadataChanged, &["uid", "gid"])),
            ),
            (
                FileState {
                    mtime_ns: 5,
                    ctime_ns: 5,
                    ..b.clone()
                },
                Some((FimChange::MetadataChanged, &["mtime", "ctime"])),
            ),
            (
                FileState {
                    nlink: 2,
                    ..b.clone()
                },
                Some((FimChange::MetadataChanged, &["nlink"])),
            ),
            (
                FileState {
                    xattrs: Some("x".into()),
                    ..b.clone()
                },
                Some((FimChange::MetadataChanged, &["xattrs"])),
            ),
            (
                FileState {
                    kind: FileKind::Symlink,
                    mode: 0o120777,
                    link_target: Some("/x".into()),
                    hash: None,
                    ..b.clone()
                },
                Some((FimChange::TypeChanged, &["kind", "mode", "link_target"])),
            ),
            (
                // Too large to hash now: compared by size.
                FileState {
                    hash: None,
                    too_large_to_hash: true,
                    size: 99,
                    ..b.clone()
                },
                Some((FimChange::Modified, &["size"])),
            ),
        ];
        for (after, want) in cases {
            let got = classify(&b, &after, Attrs::ALL);
            let want = want.map(|(c, names)| (c, names.iter().map(|s| s.to_string()).collect()));
            assert_eq!(got, want, "{after:?}");
        }
    }

    #[test]
    fn compare_limits_the_attributes_but_never_the_kind() {
        let b = file();
        let touched = FileState {
            mtime_ns: 9,
            ctime_ns: 9,
            ..b.clone()
        };
        let only_content = Attrs::of(&[Attr::Hash, Attr::Size]);
        assert_eq!(classify(&b, &touched, only_content), None);
        let dir = FileState {
            kind: FileKind::Directory,
            ..b.clone()
        };
        assert_eq!(
            classify(&b, &dir, only_content).map(|c| c.0),
            Some(FimChange::TypeChanged)
        );
    }

    #[test]
    fn a_directory_is_not_changed_by_its_entries() {
        let d = FileState {
            kind: FileKind::Directory,
            hash: None,
            ..file()
        };
        let entries_changed = FileState {
            size: 4096,
            nlink: 3,
            mtime_ns: 8,
            ctime_ns: 8,
            ..d.clone()
        };
        assert_eq!(classify(&d, &entries_changed, Attrs::ALL), None);
        let chmod = FileState {
            mode: 0o40700,
            ..entries_changed
        };
        assert_eq!(
            classify(&d, &chmod, Attrs::ALL),
            Some((FimChange::MetadataChanged, vec!["mode".to_owned()]))
        );
    }
}
