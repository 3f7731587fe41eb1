//! Baseline keys: a path's components joined by a 0x00 byte.
//!
//! A name never contains 0x00, so the encoding is unambiguous, and SQLite compares blobs with
//! `memcmp`, so the order of keys is the order of a depth-first walk that visits each directory
//! before its entries and its entries sorted by their names' bytes: a directory's key is a prefix
//! of its entries' keys, and the separator sorts below every byte a name can hold, so all of
//! `a`'s descendants (`a 00 …`) come before its sibling `a.b` even though `.` sorts below `/`.
//! A walk and the baseline can therefore be compared as a merge join, one page of rows at a time.
//!
//! `/etc/ssh/sshd_config` is `etc 00 ssh 00 sshd_config`; `/` is the empty key.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// The separator between components.
pub const SEP: u8 = 0;

/// The key of an absolute path; `.` components are dropped. `None` for a relative path or one
/// with `..`, which the configuration refuses.
pub fn of(path: &Path) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    let mut absolute = false;
    for c in path.components() {
        match c {
            Component::RootDir => absolute = true,
            Component::CurDir => {}
            Component::Normal(name) => push(&mut key, name),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    absolute.then_some(key)
}

/// Appends the component `name` to `key`.
pub fn push(key: &mut Vec<u8>, name: &OsStr) {
    if !key.is_empty() {
        key.push(SEP);
    }
    key.extend_from_slice(name.as_bytes());
}

/// The key of the entry `name` of the directory whose key is `dir`.
pub fn child(dir: &[u8], name: &OsStr) -> Vec<u8> {
    let mut key = Vec::with_capacity(dir.len() + 1 + name.len());
    key.extend_from_slice(dir);
    push(&mut key, name);
    key
}

/// The absolute path of `key`.
pub fn path(key: &[u8]) -> PathBuf {
    let mut p = PathBuf::from("/");
    if !key.is_empty() {
        for name in key.split(|&b| b == SEP) {
            p.push(OsStr::from_bytes(name));
        }
    }
    p
}

/// Whether `key` is `ancestor` or lies below it.
pub fn within(key: &[u8], ancestor: &[u8]) -> bool {
    if ancestor.is_empty() {
        return true;
    }
    key.starts_with(ancestor) && (key.len() == ancestor.len() || key[ancestor.len()] == SEP)
}

/// The number of components of `key` below `ancestor` (which it must lie within).
pub fn depth_below(key: &[u8], ancestor: &[u8]) -> usize {
    let rest = &key[ancestor.len().min(key.len())..];
    rest.iter().filter(|&&b| b == SEP).count() + usize::from(ancestor.is_empty() && !key.is_empty())
}

/// `key` moved from below `from` to below `to`.
pub fn rebase(key: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = to.to_vec();
    out.extend_from_slice(&key[from.len().min(key.len())..]);
    out
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;

    use super::*;

    #[test]
    fn keys_round_trip_and_refuse_relative_paths() {
        let k = of(Path::new("/etc/./ssh/sshd_config")).unwrap();
        assert_eq!(k, b"etc\0ssh\0sshd_config");
        assert_eq!(path(&k), Path::new("/etc/ssh/sshd_config"));
        assert_eq!(of(Path::new("/")).unwrap(), b"");
        assert_eq!(path(b""), Path::new("/"));
        assert_eq!(of(Path::new("etc")), None);
        assert_eq!(of(Path::new("/etc/../root")), None);
    }

    #[test]
    fn within_depth_and_rebase() {
        assert!(within(b"etc\0a", b"etc"));
        assert!(within(b"etc", b"etc"));
        assert!(!within(b"etcx", b"etc"));
        assert!(within(b"etc", b""));
        assert_eq!(depth_below(b"etc", b"etc"), 0);
        assert_eq!(depth_below(b"etc\0a\0b", b"etc"), 2);
        assert_eq!(depth_below(b"etc", b""), 1);
        assert_eq!(rebase(b"t\0d\0x", b"t\0d", b"t\0e"), b"t\0e\0x");
    }

    /// The order of keys is the order of a depth-first walk with each directory's entries
    /// sorted by name bytes, also for names with bytes below `/` (`-`, `.`, space, 0x01).
    #[test]
    fn key_order_is_the_depth_first_walk_order() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("r");
        let names = ["a", "a.b", "a-c", "a b", "a\u{1}", "b", "ab"];
        for n in names {
            std::fs::create_dir_all(root.join(n).join("x").join("y")).unwrap();
            std::fs::write(root.join(n).join("x.txt"), "x").unwrap();
            std::fs::write(root.join(n).join("x").join("y").join("z"), "z").unwrap();
        }
        // A depth-first walk visiting each directory's entries sorted by bytes.
        fn walk(p: &Path, out: &mut Vec<PathBuf>) {
            out.push(p.to_owned());
            if p.is_dir() {
                let mut names: Vec<OsString> = std::fs::read_dir(p)
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                for n in names {
                    walk(&p.join(n), out);
                }
            }
        }
        let mut walked = Vec::new();
        walk(&root, &mut walked);
        let keys: Vec<Vec<u8>> = walked.iter().map(|p| of(p).unwrap()).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        assert_eq!(keys.len(), 1 + names.len() * 5);
        // Path order (bytes of the whole path) would differ: "a/x" > "a.b" because '/' > '.'.
        let mut by_path = walked.clone();
        by_path.sort_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
        assert_ne!(by_path, walked);
    }
}
