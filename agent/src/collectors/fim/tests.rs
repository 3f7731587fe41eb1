use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

use globset::GlobSet;
use outpost_common::event::{
    CHAIN_GENESIS, Event, FileKind, FileState, FimChange, FimDetection, FimEvent, LogRecord,
    chain_hash,
};

use super::compare::Attrs;
use super::realtime::{self, Dirty, TreeReason};
use super::scan::{self, Engine, Root, Stop, Store, Summary, Target};
use super::state::{Budget, Observe};
use super::*;
use crate::spool::{Spool, SpoolConfig, StateChange, StateRow, Submission};

/// The spool itself, recording what it committed, and able to fail (a crash) after a number of
/// commits.
struct TestStore {
    spool: Spool,
    events: Vec<FimEvent>,
    logs: Vec<LogRecord>,
    subs: Vec<Submission>,
    fail_after: Option<usize>,
    /// Pages read, and the largest limit asked for.
    pages: usize,
    max_limit: usize,
}

impl TestStore {
    fn open(dir: &Path) -> TestStore {
        TestStore {
            spool: Spool::open(SpoolConfig::new(dir.join("spool.db"), 1 << 30)).unwrap(),
            events: Vec::new(),
            logs: Vec::new(),
            subs: Vec::new(),
            fail_after: None,
            pages: 0,
            max_limit: 0,
        }
    }

    /// The events committed since the last call, as (path, change).
    fn take(&mut self) -> Vec<(String, FimChange)> {
        std::mem::take(&mut self.events)
            .into_iter()
            .map(|e| (e.path, e.change))
            .collect()
    }

    fn rows(&self) -> Vec<StateRow> {
        self.spool
            .state_page(scan::BASELINE, None, 1 << 20)
            .unwrap()
    }
}

impl Store for TestStore {
    fn page(
        &mut self,
        source: &str,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StateRow>, Stop> {
        self.pages += 1;
        self.max_limit = self.max_limit.max(limit);
        self.spool
            .state_page(source, after, limit)
            .map_err(|e| Stop::Failed(e.to_string()))
    }

    fn row(&mut self, source: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Stop> {
        self.spool
            .state(source, key)
            .map_err(|e| Stop::Failed(e.to_string()))
    }

    fn commit(&mut self, sub: Submission) -> Result<(), Stop> {
        if let Some(n) = self.fail_after.as_mut() {
            if *n == 0 {
                return Err(Stop::Failed("crashed".to_owned()));
            }
            *n -= 1;
        }
        self.spool
            .append(vec![sub.clone()], 0)
            .map_err(|e| Stop::Failed(e.to_string()))?;
        for e in &sub.events {
            match e {
                Event::Fim(f) => self.events.push(f.clone()),
                Event::Log(l) => self.logs.push(l.clone()),
                other => panic!("unexpected {other:?}"),
            }
        }
        self.subs.push(sub);
        Ok(())
    }

    fn stopping(&self) -> bool {
        false
    }
}

fn root(path: &Path, realtime: bool) -> Root {
    Root {
        path: path.to_owned(),
        key: key::of(path).unwrap(),
        recursive: true,
        exclude: GlobSet::empty(),
        realtime,
        compare: Attrs::ALL,
        observe: Observe {
            hash: Some(HashAlgorithm::Sha256),
            max_hash_size: 1 << 20,
            always_hash: false,
            xattrs: true,
        },
    }
}

fn engine(roots: Vec<Root>, chunk: usize) -> Engine {
    Engine::new(
        roots,
        HashSet::new(),
        Budget::per_second(0),
        Budget::per_second(0),
        chunk,
    )
}

fn full(e: &Engine, s: &mut TestStore, d: FimDetection) -> Summary {
    e.scan(s, &Target::All, d, 1).unwrap()
}

fn write(p: &Path, content: &str) {
    fs::write(p, content).unwrap();
}

/// The test tree: files a..i, a directory `sub` with x and y.
fn tree(t: &Path) {
    fs::create_dir_all(t.join("sub")).unwrap();
    for n in ["a", "b", "c", "d", "e", "f", "g", "h", "i"] {
        write(&t.join(n), &format!("{n}-content"));
    }
    write(&t.join("sub/x"), "x-content");
    write(&t.join("sub/y"), "y-content");
}

fn set_xattr(p: &Path, value: &[u8]) -> bool {
    rustix::fs::lsetxattr(p, "user.fim", value, rustix::fs::XattrFlags::empty()).is_ok()
}

/// Every scripted change, and the events it must yield.
fn ev(path: String, change: FimChange) -> (String, String) {
    (path, format!("{change:?}"))
}

fn change(t: &Path) -> BTreeSet<(String, String)> {
    let p = |n: &str| t.join(n).to_string_lossy().into_owned();
    let mut want = BTreeSet::new();
    write(&t.join("new"), "new file");
    want.insert(ev(p("new"), FimChange::Created));
    write(&t.join("a"), "a-content, longer now");
    want.insert(ev(p("a"), FimChange::Modified));
    // Same size, mtime put back: only the hash (and ctime) tell.
    rewrite_keeping_mtime(&t.join("b"), b"B-content");
    want.insert(ev(p("b"), FimChange::Modified));
    fs::set_permissions(t.join("c"), fs::Permissions::from_mode(0o600)).unwrap();
    want.insert(ev(p("c"), FimChange::MetadataChanged));
    std::os::unix::fs::chown(t.join("d"), Some(4242), Some(4242)).unwrap();
    want.insert(ev(p("d"), FimChange::MetadataChanged));
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(t.join("e"))
        .unwrap()
        .set_modified(later)
        .unwrap();
    want.insert(ev(p("e"), FimChange::MetadataChanged));
    fs::remove_file(t.join("f")).unwrap();
    want.insert(ev(p("f"), FimChange::Deleted));
    fs::rename(t.join("g"), t.join("g2")).unwrap();
    want.insert(ev(p("g2"), FimChange::Moved));
    fs::rename(t.join("sub"), t.join("sub2")).unwrap();
    for n in ["sub2", "sub2/x", "sub2/y"] {
        want.insert(ev(p(n), FimChange::Moved));
    }
    fs::create_dir(t.join("nd")).unwrap();
    write(&t.join("nd/z"), "z-content");
    want.insert(ev(p("nd"), FimChange::Created));
    want.insert(ev(p("nd/z"), FimChange::Created));
    fs::remove_file(t.join("h")).unwrap();
    symlink("/etc/hostname", t.join("h")).unwrap();
    want.insert(ev(p("h"), FimChange::TypeChanged));
    fs::hard_link(t.join("c"), t.join("clink")).unwrap();
    want.insert(ev(p("clink"), FimChange::Created));
    if set_xattr(&t.join("i"), b"1") {
        want.insert(ev(p("i"), FimChange::MetadataChanged));
    }
    want
}

/// A tree of small and larger files (several reads each), in two directories.
fn mixed_tree(t: &Path) {
    for d in ["one", "two"] {
        fs::create_dir_all(t.join(d)).unwrap();
        for i in 0..24u8 {
            let len = if i % 3 == 0 {
                70_000 + usize::from(i) * 9_000
            } else {
                10 + usize::from(i)
            };
            fs::write(t.join(d).join(format!("f{i:02}")), vec![i; len]).unwrap();
        }
    }
}

/// Changes to large and small files of [`mixed_tree`].
fn change_mixed(t: &Path) {
    fs::write(t.join("one/f00"), vec![7; 90_000]).unwrap();
    fs::write(t.join("one/f01"), b"small, changed").unwrap();
    fs::remove_file(t.join("one/f03")).unwrap();
    fs::rename(t.join("one/f06"), t.join("two/moved")).unwrap();
    fs::write(t.join("two/new-large"), vec![1; 200_000]).unwrap();
    fs::set_permissions(t.join("two/f09"), fs::Permissions::from_mode(0o600)).unwrap();
    // Same size and mtime: only the hash tells.
    let mut content = fs::read(t.join("two/f12")).unwrap();
    content[1000] ^= 0xff;
    rewrite_keeping_mtime(&t.join("two/f12"), &content);
}

/// Writes `content` to `path` and puts its mtime back: only the hash (and ctime) tell.
fn rewrite_keeping_mtime(path: &Path, content: &[u8]) {
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    fs::write(path, content).unwrap();
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
}

#[test]
fn hashing_threads_change_who_hashes_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    mixed_tree(&t);
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    for d in [&a, &b, &c] {
        fs::create_dir_all(d).unwrap();
    }
    let mut stores = [
        TestStore::open(&a),
        TestStore::open(&b),
        TestStore::open(&c),
    ];
    // The scan alone; two threads; one thread with a window of 2 paths, so that the scan waits
    // for hashes in the middle of the walk. Submissions of 5, so that commits fall between.
    let engines = [
        engine(vec![root(&t, false)], 5),
        engine(vec![root(&t, false)], 5).hashing_on(2),
        engine(vec![root(&t, false)], 5).hashing_within(1, 2),
    ];
    let baselines: Vec<Summary> = engines
        .iter()
        .zip(&mut stores)
        .map(|(e, s)| full(e, s, FimDetection::Rescan))
        .collect();
    for (i, s) in stores.iter().enumerate().skip(1) {
        assert_eq!(s.rows(), stores[0].rows(), "baseline rows of engine {i}");
        assert_eq!(
            (
                baselines[i].paths,
                baselines[i].bytes_hashed,
                baselines[i].baseline_paths
            ),
            (
                baselines[0].paths,
                baselines[0].bytes_hashed,
                baselines[0].baseline_paths
            ),
        );
    }
    assert!(
        baselines[0].bytes_hashed > 16 * 70_000,
        "{:?}",
        baselines[0]
    );

    change_mixed(&t);
    let scans: Vec<Summary> = engines
        .iter()
        .zip(&mut stores)
        .map(|(e, s)| full(e, s, FimDetection::Scheduled))
        .collect();
    let changes = stores[0].events.clone();
    let mut got: Vec<_> = changes
        .iter()
        .map(|e| {
            (
                e.path
                    .strip_prefix(&*t.to_string_lossy())
                    .unwrap_or(&e.path)
                    .to_owned(),
                format!("{:?}", e.change),
            )
        })
        .collect();
    got.sort();
    let want = [
        ("/one/f00", FimChange::Modified),
        ("/one/f01", FimChange::Modified),
        ("/one/f03", FimChange::Deleted),
        ("/two/f09", FimChange::MetadataChanged),
        ("/two/f12", FimChange::Modified),
        ("/two/moved", FimChange::Moved),
        ("/two/new-large", FimChange::Created),
    ];
    assert_eq!(
        got,
        want.map(|(p, c)| (p.to_owned(), format!("{c:?}"))).to_vec(),
        "{changes:#?}"
    );
    for (i, s) in stores.iter().enumerate().skip(1) {
        // The same events, chained the same, in the same order, and the same rows after.
        assert_eq!(s.events, changes, "events of engine {i}");
        assert_eq!(s.rows(), stores[0].rows(), "rows of engine {i}");
        assert_eq!(scans[i].bytes_hashed, scans[0].bytes_hashed);
        let sizes: Vec<usize> = s
            .subs
            .iter()
            .map(|sub| sub.events.len() + sub.state.len())
            .collect();
        assert!(
            sizes.iter().all(|&n| n <= 5 + 1),
            "submissions of engine {i}: {sizes:?}"
        );
    }
}

#[test]
fn a_first_scan_records_the_baseline_without_events_and_says_so_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    tree(&t);
    let mut s = TestStore::open(dir.path());
    let e = engine(vec![root(&t, false)], 1000);
    let summary = full(&e, &mut s, FimDetection::Rescan);
    assert!(summary.initial);
    assert_eq!(summary.paths, 13);
    assert!(s.events.is_empty());
    assert_eq!(s.logs.len(), 1);
    assert!(
        s.logs[0].body.starts_with("baseline complete: 13 paths, "),
        "{}",
        s.logs[0].body
    );
    assert_eq!(s.rows().len(), 13);
    // The rows are in walk order, and decode.
    let first = super::state::decode(&s.rows()[0].1).unwrap();
    assert_eq!(first.kind, FileKind::Directory);
    // Nothing changed: nothing reported, no second summary, nothing rehashed.
    let again = full(&e, &mut s, FimDetection::Rescan);
    assert!(!again.initial);
    assert_eq!((again.events, again.bytes_hashed), (0, 0));
    assert_eq!(s.logs.len(), 1);
}

#[test]
fn a_rescan_finds_every_kind_of_change_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    tree(&t);
    let mut s = TestStore::open(dir.path());
    let e = engine(vec![root(&t, false)], 1000);
    full(&e, &mut s, FimDetection::Rescan);
    let want = change(&t);
    full(&e, &mut s, FimDetection::Rescan);
    let events = s.events.clone();
    let got: Vec<(String, FimChange)> = s.take();
    let set: BTreeSet<_> = got.iter().map(|(p, c)| ev(p.clone(), *c)).collect();
    assert_eq!(set.len(), got.len(), "one event per path: {got:?}");
    assert_eq!(set, want);
    let by_path = |n: &str| {
        events
            .iter()
            .find(|e| e.path == t.join(n).to_string_lossy())
            .unwrap()
    };
    let names = |e: &FimEvent| e.changed.clone();
    assert_eq!(names(by_path("b")), ["ctime", "hash"]);
    assert_eq!(names(by_path("c")), ["mode", "ctime", "nlink"]);
    assert_eq!(names(by_path("d")), ["uid", "gid", "ctime"]);
    assert_eq!(names(by_path("e")), ["mtime", "ctime"]);
    let g2 = by_path("g2");
    assert_eq!(
        g2.moved_from.as_deref(),
        Some(&*t.join("g").to_string_lossy())
    );
    assert_eq!(
        g2.before.as_ref().unwrap().hash,
        g2.after.as_ref().unwrap().hash
    );
    let sub_x = by_path("sub2/x");
    assert_eq!(
        sub_x.moved_from.as_deref(),
        Some(&*t.join("sub/x").to_string_lossy())
    );
    assert!(events.iter().all(|e| e.detected_by == FimDetection::Rescan));
    // The directory before its entries.
    let order: Vec<&str> = events
        .iter()
        .filter(|e| e.change == FimChange::Moved && e.path.contains("sub2"))
        .map(|e| e.path.as_str())
        .collect();
    assert!(order[0].ends_with("sub2"), "{order:?}");
    // The baseline now matches: a scan reports nothing.
    full(&e, &mut s, FimDetection::Scheduled);
    assert_eq!(s.take(), []);
    // No row is left for a path that is gone.
    let keys: Vec<PathBuf> = s.rows().iter().map(|(k, _)| key::path(k)).collect();
    assert!(!keys.contains(&t.join("f")) && !keys.contains(&t.join("sub/x")));
    assert!(keys.contains(&t.join("sub2/x")));
}

fn verify_trail(events: &[FimEvent]) {
    let mut chain = CHAIN_GENESIS.to_owned();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "seq without gaps");
        assert_eq!(e.chain, chain_hash(&chain, e), "chain of seq {}", e.seq);
        chain = e.chain.clone();
    }
}

#[test]
fn the_trail_continues_across_chunks_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    tree(&t);
    let mut s = TestStore::open(dir.path());
    // Two events or rows per submission: many submissions.
    full(
        &engine(vec![root(&t, false)], 2),
        &mut s,
        FimDetection::Rescan,
    );
    change(&t);
    let mut all = Vec::new();
    for round in 0..3 {
        // A new engine each time: the trail comes from the spool.
        let e = engine(vec![root(&t, false)], 2);
        full(&e, &mut s, FimDetection::Rescan);
        write(&t.join("a"), &format!("round {round}"));
        all.append(&mut s.events);
    }
    assert!(all.len() > 15, "{}", all.len());
    verify_trail(&all);
    assert!(s.subs.len() > 10);
    // Every submission with events carries the trail row of its last event.
    for sub in s.subs.iter().filter(|sub| !sub.events.is_empty()) {
        let Some(Event::Fim(last)) = sub.events.iter().rev().find(|e| matches!(e, Event::Fim(_)))
        else {
            continue;
        };
        let trail = sub.state.iter().find_map(|c| match c {
            StateChange::Put { source, value, .. } if source == scan::META => Some(value),
            _ => None,
        });
        let (trail, _): (scan::Trail, usize) =
            bincode::serde::decode_from_slice(trail.unwrap(), bincode::config::standard()).unwrap();
        assert_eq!((trail.seq, trail.chain), (last.seq, last.chain.clone()));
        // One change's events and rows past the limit, the trail row and the progress row.
        assert!(sub.events.len() + sub.state.len() <= 2 + 3 + 2, "{sub:?}");
    }
}

#[test]
fn an_interrupted_baseline_resumes_without_events() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    tree(&t);
    let mut s = TestStore::open(dir.path());
    s.fail_after = Some(2);
    let e = engine(vec![root(&t, false)], 3);
    let err = e.scan(&mut s, &Target::All, FimDetection::Rescan, 1);
    assert_eq!(err, Err(Stop::Failed("crashed".to_owned())));
    let committed = s.rows().len();
    assert_eq!(committed, 6);
    // Paths created before the baseline is done are part of it.
    write(&t.join("late"), "late");
    s.fail_after = None;
    let summary = full(&e, &mut s, FimDetection::Rescan);
    assert!(summary.initial);
    assert!(s.events.is_empty());
    assert_eq!(s.rows().len(), 14);
    assert_eq!(s.logs.len(), 1);
    // From now on a new path is a change.
    write(&t.join("later"), "later");
    full(&e, &mut s, FimDetection::Rescan);
    assert_eq!(
        s.take(),
        [(
            t.join("later").to_string_lossy().into_owned(),
            FimChange::Created
        )]
    );
}

#[test]
fn a_crash_mid_scan_neither_loses_nor_repeats_a_change() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    tree(&t);
    let mut s = TestStore::open(dir.path());
    let e = engine(vec![root(&t, false)], 4);
    full(&e, &mut s, FimDetection::Rescan);
    let want = change(&t);
    let mut crashes = 0;
    for crash_after in 1.. {
        s.fail_after = Some(crash_after);
        match e.scan(&mut s, &Target::All, FimDetection::Rescan, 1) {
            Err(Stop::Failed(_)) => crashes += 1,
            Ok(_) => break,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(crashes >= 3, "{crashes}");
    s.fail_after = None;
    full(&e, &mut s, FimDetection::Rescan);
    let events = s.events.clone();
    verify_trail(&events);
    let got = s.take();
    let set: BTreeSet<_> = got.iter().map(|(p, c)| ev(p.clone(), *c)).collect();
    assert_eq!(set.len(), got.len(), "reported twice: {got:?}");
    assert_eq!(set, want);
}

#[test]
fn excluded_and_unwatched_paths_are_left_out_silently() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    tree(&t);
    let mut s = TestStore::open(dir.path());
    full(
        &engine(vec![root(&t, false)], 100),
        &mut s,
        FimDetection::Rescan,
    );
    // Exclude `sub` from now on: its rows go, without events; then a change inside it is
    // not seen.
    let mut r = root(&t, false);
    r.exclude = super::globs(&["**/sub".to_owned()]).unwrap();
    let e = engine(vec![r], 100);
    full(&e, &mut s, FimDetection::Rescan);
    assert_eq!(s.take(), []);
    assert_eq!(s.rows().len(), 10);
    write(&t.join("sub/x"), "changed");
    full(&e, &mut s, FimDetection::Rescan);
    assert_eq!(s.take(), []);
    // A non-recursive root: the directory and its own entries.
    let mut flat = root(&t, false);
    flat.recursive = false;
    fs::create_dir(t.join("sub/deeper")).unwrap();
    let e = engine(vec![flat], 100);
    full(&e, &mut s, FimDetection::Rescan);
    let got = s.take();
    assert_eq!(
        got,
        [(
            t.join("sub").to_string_lossy().into_owned(),
            FimChange::Created
        )]
    );
}

fn state(kind: FileKind, inode: u64, hash: &str) -> FileState {
    FileState {
        kind,
        size: 3,
        mode: 0o100644,
        uid: 0,
        gid: 0,
        mtime_ns: 1,
        ctime_ns: 1,
        inode,
        device: 1,
        nlink: 1,
        link_target: None,
        xattrs: None,
        hash: Some(hash.to_owned()),
        too_large_to_hash: false,
    }
}

#[test]
fn moves_pair_by_inode_and_hash_only() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    fs::create_dir(&t).unwrap();
    let mut s = TestStore::open(dir.path());
    let e = engine(vec![root(&t, false)], 100);
    full(&e, &mut s, FimDetection::Rescan);
    let k = |n: &str| key::of(&t.join(n)).unwrap();
    // Held by a scan: `old` vanished, `moved` (same inode and hash), `reused` (same inode,
    // other content), `fresh` appeared.
    let mut pending = scan::tests_support::pending(
        vec![
            (k("moved"), state(FileKind::File, 7, "sha256:aa")),
            (k("reused"), state(FileKind::File, 8, "sha256:zz")),
            (k("fresh"), state(FileKind::File, 9, "sha256:cc")),
        ],
        vec![
            (k("old"), state(FileKind::File, 7, "sha256:aa")),
            (k("old2"), state(FileKind::File, 8, "sha256:bb")),
        ],
    );
    let mut out = scan::tests_support::out(1000);
    pending.resolve(&mut out, e.roots(), &mut s).unwrap();
    let got: Vec<(String, FimChange, Option<String>)> = scan::tests_support::events(&out)
        .into_iter()
        .map(|e| (e.path, e.change, e.moved_from))
        .collect();
    let p = |n: &str| t.join(n).to_string_lossy().into_owned();
    assert_eq!(
        got,
        [
            (p("fresh"), FimChange::Created, None),
            (p("moved"), FimChange::Moved, Some(p("old"))),
            (p("reused"), FimChange::Created, None),
            (p("old2"), FimChange::Deleted, None),
        ]
    );
}

#[test]
fn realtime_changes_are_checked_against_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    tree(&t);
    let mut s = TestStore::open(dir.path());
    let e = engine(vec![root(&t, true)], 100);
    full(&e, &mut s, FimDetection::Rescan);
    let p = |n: &str| t.join(n);
    let ps = |n: &str| t.join(n).to_string_lossy().into_owned();
    // One path: changed, unchanged, gone, outside the roots.
    write(&p("a"), "changed!");
    fs::remove_file(p("f")).unwrap();
    realtime::apply(
        &e,
        &mut s,
        &[
            Dirty::Path(p("a")),
            Dirty::Path(p("b")),
            Dirty::Path(p("f")),
            Dirty::Path(dir.path().join("elsewhere")),
        ],
        1,
    )
    .unwrap();
    assert_eq!(
        s.take(),
        [
            (ps("a"), FimChange::Modified),
            (ps("f"), FimChange::Deleted)
        ]
    );
    // A directory renamed over an existing path: what it replaced is deleted, then the
    // directory and its entries moved, in key order.
    fs::create_dir(p("dest")).unwrap();
    realtime::apply(&e, &mut s, &[Dirty::Path(p("dest"))], 1).unwrap();
    assert_eq!(s.take(), [(ps("dest"), FimChange::Created)]);
    fs::remove_dir(p("dest")).unwrap();
    fs::rename(p("sub"), p("dest")).unwrap();
    realtime::apply(
        &e,
        &mut s,
        &[Dirty::Moved {
            from: Some(p("sub")),
            to: Some(p("dest")),
        }],
        1,
    )
    .unwrap();
    let moved = s.events.clone();
    assert_eq!(
        s.take(),
        [
            (ps("dest"), FimChange::Deleted),
            (ps("dest"), FimChange::Moved),
            (ps("dest/x"), FimChange::Moved),
            (ps("dest/y"), FimChange::Moved),
        ]
    );
    assert_eq!(moved[2].moved_from, Some(ps("sub/x")));
    assert!(
        moved
            .iter()
            .all(|e| e.detected_by == FimDetection::Realtime)
    );
    // A rename from outside the roots: created; to outside: deleted.
    write(&dir.path().join("outside"), "o");
    fs::rename(dir.path().join("outside"), p("inside")).unwrap();
    fs::rename(p("c"), dir.path().join("gone")).unwrap();
    realtime::apply(
        &e,
        &mut s,
        &[
            Dirty::Moved {
                from: None,
                to: Some(p("inside")),
            },
            Dirty::Moved {
                from: Some(p("c")),
                to: None,
            },
        ],
        1,
    )
    .unwrap();
    assert_eq!(
        s.take(),
        [
            (ps("inside"), FimChange::Created),
            (ps("c"), FimChange::Deleted)
        ]
    );
    // A new directory with entries; then lost notifications: a rescan of the subtree.
    fs::create_dir_all(p("nd/deep")).unwrap();
    write(&p("nd/deep/z"), "z");
    realtime::apply(
        &e,
        &mut s,
        &[Dirty::Tree {
            path: p("nd"),
            reason: TreeReason::NewDirectory,
        }],
        1,
    )
    .unwrap();
    assert_eq!(
        s.take(),
        [
            (ps("nd"), FimChange::Created),
            (ps("nd/deep"), FimChange::Created),
            (ps("nd/deep/z"), FimChange::Created),
        ]
    );
    write(&p("d"), "lost change");
    realtime::apply(
        &e,
        &mut s,
        &[Dirty::Tree {
            path: t.clone(),
            reason: TreeReason::Overflow,
        }],
        1,
    )
    .unwrap();
    let lost = s.events.clone();
    assert_eq!(s.take(), [(ps("d"), FimChange::Modified)]);
    assert_eq!(lost[0].detected_by, FimDetection::Rescan);
    // All of it one trail; and a full scan agrees with the baseline the realtime checks kept.
    full(&e, &mut s, FimDetection::Scheduled);
    assert_eq!(s.take(), []);
}

#[test]
fn realtime_trail_interleaves_with_scans() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    tree(&t);
    let mut s = TestStore::open(dir.path());
    let e = engine(vec![root(&t, true)], 3);
    full(&e, &mut s, FimDetection::Rescan);
    write(&t.join("a"), "1");
    realtime::apply(&e, &mut s, &[Dirty::Path(t.join("a"))], 1).unwrap();
    write(&t.join("b"), "2");
    full(&e, &mut s, FimDetection::Scheduled);
    fs::rename(t.join("sub"), t.join("sub3")).unwrap();
    realtime::apply(
        &e,
        &mut s,
        &[Dirty::Moved {
            from: Some(t.join("sub")),
            to: Some(t.join("sub3")),
        }],
        1,
    )
    .unwrap();
    assert_eq!(s.events.len(), 5);
    verify_trail(&s.events);
}

#[test]
fn configuration_defaults_and_errors_name_the_option() {
    let c: Config = toml::from_str("").unwrap();
    assert!(c.enabled);
    assert_eq!(c.scan_interval, std::time::Duration::from_secs(12 * 3600));
    let f = Fim::new(c).unwrap();
    assert!(f.defaults);
    assert_eq!(f.roots.len(), DEFAULT_PATHS.len());
    assert!(f.roots[0].realtime && !f.roots[1].realtime);
    let err = |text: &str| match toml::from_str::<Config>(text) {
        Ok(c) => Fim::new(c).unwrap_err().to_string(),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        err(
            "[[paths]]\npath = \"/etc\"\n[[paths]]\npath = \"/srv\"\n[[paths]]\npath = \"/etc/ssh\"\n"
        ),
        "fim.paths[2].path: `/etc/ssh` overlaps fim.paths[0].path `/etc`; watch each path once"
    );
    assert!(
        err("[[paths]]\npath = \"etc\"\n")
            .starts_with("fim.paths[0].path: `etc` is not an absolute")
    );
    assert!(
        err("[[paths]]\npath = \"/etc\"\nexclude = [\"a[\"]\n")
            .starts_with("fim.paths[0].exclude: `a[`")
    );
    assert!(err("[[paths]]\npath = \"/etc\"\nmode = \"sometimes\"\n").contains("unknown variant"));
    assert!(
        err("[[paths]]\npath = \"/etc\"\ncompare = [\"colour\"]\n").contains("unknown variant")
    );
    assert!(err("[[paths]]\npath = \"/etc\"\nbogus = 1\n").contains("unknown field"));
    assert_eq!(
        err("[[paths]]\npath = \"/etc\"\ncompare = []\n"),
        "fim.paths[0].compare: must name at least one attribute"
    );
    assert_eq!(
        err("scan_interval = \"1h\"\nscan_jitter = \"2h\"\n"),
        "fim.scan_jitter: must not exceed fim.scan_interval"
    );
    let c: Config = toml::from_str(
        "[[paths]]\npath = \"/srv/app\"\nrecursive = false\nmode = \"realtime\"\n\
         compare = [\"hash\", \"mode\"]\nhash_algorithm = \"blake3\"\nmax_hash_size = \"10 MiB\"\n",
    )
    .unwrap();
    let f = Fim::new(c).unwrap();
    let r = &f.roots[0];
    assert!(!r.recursive && r.realtime);
    assert_eq!(r.observe.hash, Some(HashAlgorithm::Blake3));
    assert_eq!(r.observe.max_hash_size, 10 * 1024 * 1024);
    assert!(!r.observe.xattrs);
}

#[test]
fn default_paths_skip_the_missing_and_symlinks_to_another_default() {
    let f = Fim::new(Config::default()).unwrap();
    let e = f.engine(Default::default());
    let paths: Vec<&Path> = e.roots().iter().map(|r| r.path.as_path()).collect();
    for (p, _) in DEFAULT_PATHS {
        let p = Path::new(p);
        let is_link_to_default = fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
            && fs::canonicalize(p)
                .is_ok_and(|c| DEFAULT_PATHS.iter().any(|(d, _)| c == Path::new(d)));
        let kept = paths.contains(&p);
        assert_eq!(kept, p.exists() && !is_link_to_default, "{}", p.display());
    }
}

#[test]
fn mount_points_of_skipped_types_are_found_but_a_named_root_is_kept() {
    let mountinfo = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
23 22 0:5 / /proc rw,nosuid shared:2 - proc proc rw
24 22 0:6 / /run/user/1000/my\\040drive rw - fuse.sshfs host: rw
25 22 0:7 / /etc/secrets rw - tmpfs tmpfs rw
26 22 0:8 / /srv/nfs rw - nfs4 server:/ rw";
    let types: Vec<String> = Config::default().skip_fs_types;
    let roots = vec![root(Path::new("/etc/secrets"), false)];
    let skip = skip_mounts(mountinfo, &types, &roots);
    let want: HashSet<PathBuf> = ["/proc", "/run/user/1000/my drive", "/srv/nfs"]
        .iter()
        .map(PathBuf::from)
        .collect();
    assert_eq!(skip, want);
}

#[test]
fn a_root_added_later_gets_its_own_baseline_without_events() {
    let dir = tempfile::tempdir().unwrap();
    let (t, u) = (dir.path().join("t"), dir.path().join("u"));
    tree(&t);
    tree(&u);
    let mut s = TestStore::open(dir.path());
    full(
        &engine(vec![root(&t, false)], 100),
        &mut s,
        FimDetection::Rescan,
    );
    assert_eq!(s.logs.len(), 1);
    write(&t.join("a"), "changed meanwhile");
    let both = engine(vec![root(&t, false), root(&u, false)], 100);
    let summary = full(&both, &mut s, FimDetection::Rescan);
    // The change under the known root is reported; the new root's paths are its baseline.
    assert_eq!(
        s.take(),
        [(
            t.join("a").to_string_lossy().into_owned(),
            FimChange::Modified
        )]
    );
    assert!(summary.initial);
    assert_eq!(summary.baseline_paths, 13);
    assert_eq!(s.logs.len(), 2);
    assert!(s.logs[1].body.starts_with("baseline complete: 13 paths"));
    write(&u.join("new"), "x");
    full(&both, &mut s, FimDetection::Scheduled);
    assert_eq!(
        s.take(),
        [(
            u.join("new").to_string_lossy().into_owned(),
            FimChange::Created
        )]
    );
}

#[test]
fn hashing_gives_up_once_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    write(&f, "content");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Even at one byte a second, a stopped budget neither waits nor hashes.
    let budget = Budget::stoppable(1, stop);
    let err = super::state::hash_file(&f, HashAlgorithm::Sha256, &budget).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::Interrupted);
    budget.spend(1_000_000);
}

#[test]
fn a_directory_path_is_checked_alone_unless_it_came_or_went() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    tree(&t);
    let mut s = TestStore::open(dir.path());
    let e = engine(vec![root(&t, true)], 100);
    full(&e, &mut s, FimDetection::Rescan);
    let ps = |n: &str| t.join(n).to_string_lossy().into_owned();
    // The same directory, chmod-ed: only it is reported, not an entry nobody reported.
    fs::set_permissions(t.join("sub"), fs::Permissions::from_mode(0o700)).unwrap();
    write(&t.join("sub/x"), "unreported");
    realtime::apply(&e, &mut s, &[Dirty::Path(t.join("sub"))], 1).unwrap();
    assert_eq!(s.take(), [(ps("sub"), FimChange::MetadataChanged)]);
    // Gone: so is everything below it.
    fs::remove_dir_all(t.join("sub")).unwrap();
    realtime::apply(&e, &mut s, &[Dirty::Path(t.join("sub"))], 1).unwrap();
    assert_eq!(
        s.take(),
        [
            (ps("sub"), FimChange::Deleted),
            (ps("sub/x"), FimChange::Deleted),
            (ps("sub/y"), FimChange::Deleted),
        ]
    );
    // A file replaced by a directory with entries: all of it.
    fs::remove_file(t.join("a")).unwrap();
    fs::create_dir(t.join("a")).unwrap();
    write(&t.join("a/w"), "w");
    realtime::apply(&e, &mut s, &[Dirty::Path(t.join("a"))], 1).unwrap();
    assert_eq!(
        s.take(),
        [
            (ps("a"), FimChange::TypeChanged),
            (ps("a/w"), FimChange::Created)
        ]
    );
}

#[test]
fn unwatched_subtrees_are_reported_until_watched_again() {
    let tree = |p: &str, reason: TreeReason| Dirty::Tree {
        path: PathBuf::from(p),
        reason,
    };
    let mut blind = realtime::Blind::default();
    blind.update(&[Dirty::Path(PathBuf::from("/etc/x"))]);
    assert_eq!(blind.report(), None);
    blind.update(&[
        tree("/etc/a", TreeReason::WatchLimit),
        tree(
            "/etc/b/c",
            TreeReason::WatchFailed("permission denied".to_owned()),
        ),
        tree("/etc/d", TreeReason::WatchLimit),
    ]);
    assert_eq!(
        blind.report().unwrap(),
        "not watched in realtime, checked by the scheduled scans only: /etc/a (the watch limit \
         was reached), /etc/b/c (watching failed: permission denied), /etc/d (the watch limit \
         was reached)"
    );
    // Watched again: a new directory for one, an overflow of an ancestor for another.
    blind.update(&[
        tree("/etc/a", TreeReason::NewDirectory),
        tree("/etc/b", TreeReason::Overflow),
    ]);
    assert!(
        blind
            .report()
            .unwrap()
            .ends_with(": /etc/d (the watch limit was reached)")
    );
    // The last report of a path tells its state.
    blind.update(&[
        tree("/etc/d", TreeReason::NewDirectory),
        tree("/etc/d", TreeReason::WatchLimit),
    ]);
    assert!(blind.report().is_some());
    blind.update(&[tree("/etc", TreeReason::Overflow)]);
    assert_eq!(blind.report(), None);
}

/// A watcher double: hands out the batches the test sends, and ends when the test drops its
/// sender.
struct Scripted(tokio::sync::mpsc::UnboundedReceiver<Vec<Dirty>>);

impl realtime::Feed for Scripted {
    async fn next(&mut self, _: std::time::Duration, _: std::time::Duration) -> Option<Vec<Dirty>> {
        self.0.recv().await
    }
}

/// Waits (polling, with a generous deadline) until `cond` holds.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_source_checks_what_its_feed_reports_and_reports_lost_notifications() {
    use std::sync::Arc;

    use crate::collectors::Context;
    use crate::telemetry::Telemetry;

    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    tree(&t);
    let spool = Spool::open(SpoolConfig::new(dir.path().join("spool.db"), 1 << 30)).unwrap();
    let (handle, join) = crate::spool::spawn(spool);
    let telemetry = Arc::new(Telemetry::recording());
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let ctx = Context::new("fim", handle.clone(), shutdown, telemetry.clone());
    let config: Config = toml::from_str(&format!(
        "[[paths]]\npath = {:?}\nmode = \"realtime\"\n",
        t.to_str().unwrap()
    ))
    .unwrap();
    let fim = Fim::new(config).unwrap();
    let (batches, rx) = tokio::sync::mpsc::unbounded_channel();
    let watched = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let w = watched.clone();
    let task = tokio::spawn(fim.run_with(ctx, move |roots| {
        *w.lock().unwrap() = roots.iter().map(|r| r.path.clone()).collect();
        Some(Scripted(rx))
    }));
    let t2 = telemetry.clone();
    until("the baseline", move || t2.counters().fim_scans == 1).await;
    assert_eq!(telemetry.counters().fim_events, 0);
    assert_eq!(
        *watched.lock().unwrap(),
        vec![t.clone()],
        "the realtime roots"
    );

    // A change the watcher reports.
    write(&t.join("a"), "changed");
    batches.send(vec![Dirty::Path(t.join("a"))]).unwrap();
    let t2 = telemetry.clone();
    until("the realtime event", move || t2.counters().fim_events == 1).await;

    // A change the watcher lost: the overflow's rescan finds it; the status shows the loss
    // until then.
    write(&t.join("d"), "lost");
    batches
        .send(vec![Dirty::Tree {
            path: t.clone(),
            reason: TreeReason::Overflow,
        }])
        .unwrap();
    let t2 = telemetry.clone();
    until("the rescan", move || t2.counters().fim_rescans == 1).await;
    assert_eq!(telemetry.counters().fim_events, 2);
    let t2 = telemetry.clone();
    until("the recovery", move || {
        let recorded = t2.recorded();
        let failed = recorded.iter().position(|n| *n == "collector_failed");
        let recovered = recorded.iter().rposition(|n| *n == "collector_recovered");
        failed.is_some() && recovered > failed
    })
    .await;
    assert!(telemetry.collector_errors().is_empty());

    // The watcher ends: said in the status; the scans carry on.
    drop(batches);
    let t2 = telemetry.clone();
    until("the report of the end", move || {
        t2.collector_errors()
            .iter()
            .any(|e| e.collector == "fim.realtime" && e.reason.contains("the watcher ended"))
    })
    .await;
    stop.send(true).unwrap();
    task.await.unwrap();
    // Both events are in the spool, numbered 1 and 2.
    let trail = handle.state(scan::META, b"trail").await.unwrap().unwrap();
    let (trail, _): (scan::Trail, usize) =
        bincode::serde::decode_from_slice(&trail, bincode::config::standard()).unwrap();
    assert_eq!(trail.seq, 2);
    drop(handle);
    join.join().unwrap();
}

#[test]
fn the_agents_own_directories_are_never_watched() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    tree(&t);
    fs::create_dir(t.join("spool")).unwrap();
    write(&t.join("spool/spool.db"), "state");
    let mut s = TestStore::open(dir.path());
    let e = engine(vec![root(&t, true)], 100).excluding(&[t.join("spool")]);
    full(&e, &mut s, FimDetection::Rescan);
    let keys: Vec<PathBuf> = s.rows().iter().map(|(k, _)| key::path(k)).collect();
    assert!(
        !keys.iter().any(|k| k.starts_with(t.join("spool"))),
        "{keys:?}"
    );
    write(&t.join("spool/spool.db"), "more state");
    write(&t.join("spool/spool.db-wal"), "log");
    full(&e, &mut s, FimDetection::Scheduled);
    realtime::apply(&e, &mut s, &[Dirty::Path(t.join("spool/spool.db-wal"))], 1).unwrap();
    assert_eq!(s.take(), []);
    // The configuration carries data_dir and log.dir to the source.
    let c: crate::config::AgentConfig =
        toml::from_str("data_dir = \"/srv/outpost\"\n[log]\ndir = \"/srv/logs\"\n").unwrap();
    assert_eq!(
        crate::sources::fim_config(&c).own_paths,
        [PathBuf::from("/srv/outpost"), PathBuf::from("/srv/logs")]
    );
}

#[test]
fn a_scan_reads_the_baseline_a_page_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    for d in 0..3 {
        fs::create_dir_all(t.join(format!("d{d}"))).unwrap();
        for f in 0..400 {
            write(&t.join(format!("d{d}/f{f:03}")), "x");
        }
    }
    let mut s = TestStore::open(dir.path());
    let e = engine(vec![root(&t, false)], 1000);
    full(&e, &mut s, FimDetection::Rescan);
    assert_eq!(s.rows().len(), 1204);
    s.pages = 0;
    write(&t.join("d2/f399"), "changed");
    full(&e, &mut s, FimDetection::Scheduled);
    assert_eq!(
        s.take(),
        [(
            t.join("d2/f399").to_string_lossy().into_owned(),
            FimChange::Modified
        )]
    );
    assert_eq!(s.max_limit, scan::PAGE);
    assert_eq!(s.pages, 1204 / scan::PAGE + 1);
}

// ---------------------------------------------------------------------------------------------
// Random changes against a model: whatever happens to a tree, and wherever a scan crashes, the
// next complete scan leaves a baseline that matches the tree, each path that changed has an
// event, no path has two in a round, and the trail has no gap.

mod model {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// Names with bytes below and around `/` and the key separator's neighbours.
    const NAMES: [&str; 4] = ["a", "a.b", "a b", "b"];

    fn candidates() -> Vec<String> {
        let mut out: Vec<String> = NAMES.iter().map(|n| (*n).to_owned()).collect();
        for a in NAMES {
            for b in NAMES {
                out.push(format!("{a}/{b}"));
            }
        }
        out
    }

    #[derive(Debug, Clone)]
    pub enum Op {
        Write(usize),
        Mkdir(usize),
        Remove(usize),
        Rename(usize, usize),
        Chmod(usize, bool),
        Scan { crash_after: Option<usize> },
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        let n = NAMES.len() * (NAMES.len() + 1);
        prop_oneof![
            3 => (0..n).prop_map(Op::Write),
            2 => (0..n).prop_map(Op::Mkdir),
            2 => (0..n).prop_map(Op::Remove),
            3 => (0..n, 0..n).prop_map(|(a, b)| Op::Rename(a, b)),
            1 => (0..n, any::<bool>()).prop_map(|(a, x)| Op::Chmod(a, x)),
            2 => proptest::option::of(0..4usize).prop_map(|crash_after| Op::Scan { crash_after }),
        ]
    }

    /// What the tree holds: path → (is a directory, content, mode).
    fn snapshot(t: &Path) -> BTreeMap<String, (bool, Vec<u8>, u32)> {
        let mut out = BTreeMap::new();
        fn walk(t: &Path, p: &Path, out: &mut BTreeMap<String, (bool, Vec<u8>, u32)>) {
            for e in fs::read_dir(p).unwrap() {
                let path = e.unwrap().path();
                let m = fs::symlink_metadata(&path).unwrap();
                let rel = path.strip_prefix(t).unwrap().to_string_lossy().into_owned();
                let mode = m.permissions().mode() & 0o7777;
                if m.is_dir() {
                    out.insert(rel, (true, Vec::new(), mode));
                    walk(t, &path, out);
                } else {
                    out.insert(rel, (false, fs::read(&path).unwrap(), mode));
                }
            }
        }
        walk(t, t, &mut out);
        out
    }

    /// Makes the directories above `q` (below `t`); false if a file stands in the way.
    fn parents(t: &Path, q: &Path) -> bool {
        let Some(parent) = q.parent() else {
            return false;
        };
        if parent
            .ancestors()
            .take_while(|a| *a != t)
            .any(|a| a.is_file())
        {
            return false;
        }
        fs::create_dir_all(parent).unwrap();
        true
    }

    /// Applies `op` if it can be; returns whether it was.
    fn apply(t: &Path, op: &Op, n: &mut u64) -> bool {
        let c = candidates();
        let p = |i: usize| t.join(&c[i]);
        *n += 1;
        match *op {
            Op::Write(i) => {
                let ok = !p(i).is_dir() && parents(t, &p(i));
                if ok {
                    write(&p(i), &format!("content {n}"));
                }
                ok
            }
            Op::Mkdir(i) => {
                let ok = fs::symlink_metadata(p(i)).is_err() && parents(t, &p(i));
                if ok {
                    fs::create_dir(p(i)).unwrap();
                }
                ok
            }
            Op::Remove(i) => match fs::symlink_metadata(p(i)) {
                Ok(m) if m.is_dir() => {
                    fs::remove_dir_all(p(i)).unwrap();
                    true
                }
                Ok(_) => {
                    fs::remove_file(p(i)).unwrap();
                    true
                }
                Err(_) => false,
            },
            Op::Rename(a, b) => {
                let (from, to) = (p(a), p(b));
                // Over a file is allowed (it replaces it); into itself or over a directory not.
                let dir_over_file = from.is_dir() && to.is_file();
                let ok = fs::symlink_metadata(&from).is_ok()
                    && !to.is_dir()
                    && !to.starts_with(&from)
                    && !dir_over_file
                    && parents(t, &to);
                if ok {
                    fs::rename(from, to).unwrap();
                }
                ok
            }
            Op::Chmod(i, x) => {
                let ok = fs::symlink_metadata(p(i)).is_ok();
                if ok {
                    let mode = match (p(i).is_dir(), x) {
                        (true, true) => 0o750,
                        (true, false) => 0o755,
                        (false, true) => 0o600,
                        (false, false) => 0o644,
                    };
                    fs::set_permissions(p(i), fs::Permissions::from_mode(mode)).unwrap();
                }
                ok
            }
            Op::Scan { .. } => false,
        }
    }

    fn run(ops: Vec<Op>) {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("a")).unwrap();
        fs::create_dir_all(t.join("a b")).unwrap();
        for f in ["a/a", "a/b", "a.b", "a b/a", "b"] {
            write(&t.join(f), f);
        }
        let mut s = TestStore::open(dir.path());
        // Small chunks: many submissions, so crashes land between them.
        let e = engine(vec![root(&t, false)], 3);
        full(&e, &mut s, FimDetection::Rescan);
        let mut before = snapshot(&t);
        let mut all: Vec<FimEvent> = Vec::new();
        let mut n = 0;
        let ops = ops.into_iter().chain([Op::Scan { crash_after: None }]);
        for op in ops {
            let Op::Scan { crash_after } = op else {
                let _ = apply(&t, &op, &mut n);
                continue;
            };
            if let Some(k) = crash_after {
                s.fail_after = Some(k);
                let _ = e.scan(&mut s, &Target::All, FimDetection::Rescan, 1);
                s.fail_after = None;
            }
            full(&e, &mut s, FimDetection::Scheduled);
            let round = std::mem::take(&mut s.events);
            let now = snapshot(&t);
            // Each path once in a round.
            let mut paths: Vec<&str> = round.iter().map(|e| e.path.as_str()).collect();
            paths.sort_unstable();
            let len = paths.len();
            paths.dedup();
            assert_eq!(paths.len(), len, "a path twice: {round:#?}");
            // Every change has an event naming the path.
            let named = |rel: &str| {
                let abs = t.join(rel).to_string_lossy().into_owned();
                round
                    .iter()
                    .any(|e| e.path == abs || e.moved_from.as_deref() == Some(abs.as_str()))
            };
            for (rel, was) in &before {
                if now.get(rel) != Some(was) {
                    assert!(
                        named(rel),
                        "{rel}: {was:?} → {:?}; {round:#?}",
                        now.get(rel)
                    );
                }
            }
            for rel in now.keys().filter(|r| !before.contains_key(*r)) {
                assert!(named(rel), "{rel} appeared; {round:#?}");
            }
            // The baseline is the tree.
            let mut keys: Vec<String> = s
                .rows()
                .iter()
                .filter(|(k, _)| key::path(k) != t)
                .map(|(k, _)| {
                    key::path(k)
                        .strip_prefix(&t)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect();
            keys.sort();
            assert_eq!(keys, now.keys().cloned().collect::<Vec<_>>());
            // And agrees with it: a scan now finds nothing.
            full(&e, &mut s, FimDetection::Scheduled);
            assert_eq!(s.take(), []);
            all.extend(round);
            before = now;
        }
        verify_trail(&all);
    }

    /// The highest directory `parents` would create above `q`.
    fn first_missing(t: &Path, q: &Path) -> Option<PathBuf> {
        q.parent()?
            .ancestors()
            .take_while(|a| *a != t)
            .filter(|a| fs::symlink_metadata(a).is_err())
            .last()
            .map(Path::to_path_buf)
    }

    /// What a complete watcher would report for `op`, applied after it.
    fn dirty(t: &Path, op: &Op, n: &mut u64) -> Vec<Dirty> {
        let c = candidates();
        let p = |i: usize| t.join(&c[i]);
        let new_dir = |d: PathBuf| Dirty::Tree {
            path: d,
            reason: TreeReason::NewDirectory,
        };
        let (created, mut out) = match *op {
            Op::Write(i) | Op::Chmod(i, _) | Op::Remove(i) => {
                (first_missing(t, &p(i)), vec![Dirty::Path(p(i))])
            }
            Op::Mkdir(i) => (first_missing(t, &p(i)), vec![new_dir(p(i))]),
            Op::Rename(a, b) => (
                first_missing(t, &p(b)),
                vec![Dirty::Moved {
                    from: Some(p(a)),
                    to: Some(p(b)),
                }],
            ),
            Op::Scan { .. } => (None, Vec::new()),
        };
        if !apply(t, op, n) {
            return Vec::new();
        }
        if let Some(d) = created.filter(|d| d.is_dir()) {
            out.push(new_dir(d));
        }
        out
    }

    fn run_realtime(ops: Vec<Op>) {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t");
        fs::create_dir_all(t.join("a")).unwrap();
        for f in ["a/a", "a/b", "a.b", "b"] {
            write(&t.join(f), f);
        }
        let mut s = TestStore::open(dir.path());
        let e = engine(vec![root(&t, true)], 3);
        full(&e, &mut s, FimDetection::Rescan);
        let mut n = 0;
        for op in ops {
            if let Op::Scan { .. } = op {
                // The watcher reported everything: a scan finds nothing more.
                full(&e, &mut s, FimDetection::Scheduled);
                let found: Vec<_> = s
                    .events
                    .iter()
                    .filter(|e| e.detected_by == FimDetection::Scheduled)
                    .collect();
                assert!(
                    found.is_empty(),
                    "missed by the realtime checks: {found:#?}"
                );
                continue;
            }
            let d = dirty(&t, &op, &mut n);
            realtime::apply(&e, &mut s, &d, 1).unwrap();
        }
        full(&e, &mut s, FimDetection::Scheduled);
        assert!(
            s.events
                .iter()
                .all(|e| e.detected_by == FimDetection::Realtime),
            "missed by the realtime checks: {:#?}",
            s.events
        );
        verify_trail(&s.events);
        let mut keys: Vec<String> = s
            .rows()
            .iter()
            .filter(|(k, _)| key::path(k) != t)
            .map(|(k, _)| {
                key::path(k)
                    .strip_prefix(&t)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        keys.sort();
        assert_eq!(keys, snapshot(&t).keys().cloned().collect::<Vec<_>>());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn scans_agree_with_the_tree_whatever_happens(ops in prop::collection::vec(arb_op(), 1..40)) {
            run(ops);
        }

        #[test]
        fn realtime_checks_keep_the_baseline_equal_to_the_tree(ops in prop::collection::vec(arb_op(), 1..40)) {
            run_realtime(ops);
        }
    }
}
