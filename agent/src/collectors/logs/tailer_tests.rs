use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::{Duration, Instant};

use outpost_common::event::Event;
use proptest::prelude::*;

use super::*;

/// A tailer over `<dir>/*.log` with a spool that commits every round at once (unless full), and
/// a clock moved by hand.
struct Harness {
    dir: tempfile::TempDir,
    options: Options,
    tailer: Tailer,
    /// Committed events: (source file name, body).
    committed: Vec<(String, String)>,
    /// Committed state rows.
    state: BTreeMap<Vec<u8>, Vec<u8>>,
    now: Instant,
    /// The spool is full: rounds are not read (scans and opened files still are).
    full: bool,
}

impl Harness {
    fn new(options: Options) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let tailer = Self::tailer(dir.path(), &options, Vec::new());
        Harness {
            dir,
            options,
            tailer,
            committed: Vec::new(),
            state: BTreeMap::new(),
            now: Instant::now(),
            full: false,
        }
    }

    fn tailer(dir: &Path, options: &Options, rows: Vec<StateRow>) -> Tailer {
        let selection = Selection::new(&[format!("{}/*.log", dir.display())], &[]).unwrap();
        Tailer::new(
            selection,
            Pipeline::default(),
            options.clone(),
            "logs.test".to_owned(),
            rows,
        )
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn append(&self, name: &str, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(name))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn commit(&mut self, state: Vec<StateChange>) {
        for change in state {
            match change {
                StateChange::Put { source, key, value } => {
                    assert_eq!(source, "logs.test");
                    self.state.insert(key, value);
                }
                StateChange::Delete { key, .. } => {
                    self.state.remove(&key);
                }
            }
        }
    }

    /// What the source loop does on a wake-up: scan, then read rounds until nothing is ready (or,
    /// with the spool full, only record the files opened).
    fn step(&mut self) {
        let errors = self.tailer.scan(self.now);
        assert!(errors.is_empty(), "{errors:?}");
        if self.full {
            let opened = self.tailer.opened();
            self.commit(opened);
            return;
        }
        loop {
            let round = self.tailer.read(self.now, 1);
            for e in round.events {
                let Event::Log(l) = e else {
                    panic!("a log record")
                };
                let name = Path::new(&l.source).file_name().unwrap();
                self.committed
                    .push((name.to_string_lossy().into_owned(), l.body));
            }
            self.commit(round.state);
            if !round.full {
                break;
            }
        }
    }

    /// A crash and a start: whatever was not committed is forgotten.
    fn restart(&mut self) {
        let rows = self
            .state
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        self.tailer = Self::tailer(self.dir.path(), &self.options, rows);
    }

    /// Committed positions of files (rows that remember a path's last file aside).
    fn positions(&self) -> usize {
        self.state
            .keys()
            .filter(|k| !k.starts_with(LAST_AT_PREFIX))
            .count()
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }

    fn sorted(&self) -> Vec<&str> {
        let mut b = self.bodies();
        b.sort_unstable();
        b
    }

    fn bodies(&self) -> Vec<&str> {
        self.committed.iter().map(|(_, b)| b.as_str()).collect()
    }

    fn lost(&self, loss: Loss) -> u64 {
        let i = Loss::ALL.iter().position(|l| *l == loss).unwrap();
        let (open, closed) = self.tailer.stats();
        closed.lost[i] + open.iter().map(|(_, s)| s.lost[i]).sum::<u64>()
    }
}

fn beginning() -> Options {
    Options {
        read_from: ReadFrom::Beginning,
        ..Options::default()
    }
}

#[test]
fn files_present_at_first_start_are_read_from_their_end_and_later_ones_from_their_start() {
    let mut h = Harness::new(Options::default());
    h.append("old.log", "before 1\nbefore 2\nunfinished");
    h.step();
    assert!(h.bodies().is_empty());
    h.append("old.log", " line\nafter\n");
    h.append("new.log", "new 1\n");
    h.step();
    assert_eq!(h.sorted(), ["after", "new 1", "unfinished line"]);
    // After a restart nothing is fresh any more: a file that appeared is read whole.
    h.restart();
    h.append("third.log", "third 1\n");
    h.step();
    assert_eq!(h.bodies().last(), Some(&"third 1"));
    assert_eq!(h.committed.len(), 4);
}

#[test]
fn a_partial_last_line_is_never_checkpointed_and_is_read_whole_after_a_restart() {
    let mut h = Harness::new(beginning());
    h.append("a.log", "one\ntw");
    h.step();
    h.restart();
    h.append("a.log", "o\n");
    h.step();
    assert_eq!(h.bodies(), ["one", "two"]);
}

#[test]
fn a_renamed_file_is_read_to_its_end_and_let_go_after_the_wait() {
    let mut h = Harness::new(beginning());
    h.append("app.log", "1\n");
    h.step();
    // Written after the last read, then rotated by rename + create.
    h.append("app.log", "2\n");
    std::fs::rename(h.path("app.log"), h.path("app.log.1")).unwrap();
    h.append("app.log", "3\n");
    h.step();
    assert_eq!(h.sorted(), ["1", "2", "3"]);
    assert_eq!(
        h.tailer.open_files(),
        2,
        "the rotated file is held for late writes"
    );
    // A late write through the old descriptor still arrives.
    h.append("app.log.1", "2b\n");
    h.step();
    assert_eq!(h.bodies().last(), Some(&"2b"));
    h.advance(h.options.rotate_wait);
    h.step();
    assert_eq!(h.tailer.open_files(), 1);
    assert_eq!(h.positions(), 1, "the let-go file's position is deleted");
    assert!(h.committed.iter().all(|(name, _)| name == "app.log"));
}

#[test]
fn a_file_rotated_while_stopped_is_found_beside_its_old_name() {
    let mut h = Harness::new(beginning());
    h.append("app.log", "1\n");
    h.step();
    h.restart();
    h.append("app.log", "2\n");
    std::fs::rename(h.path("app.log"), h.path("app.log-20261202")).unwrap();
    h.append("app.log", "3\n");
    h.step();
    assert_eq!(h.sorted(), ["1", "2", "3"]);
}

#[test]
fn copytruncate_reads_the_rest_from_the_copy_and_counts_only_what_no_one_has() {
    let mut h = Harness::new(beginning());
    h.append("app.log", "1\n");
    h.step();
    // Unread when copied: the copy holds it.
    h.append("app.log", "2\n");
    std::fs::copy(h.path("app.log"), h.path("app.log.1")).unwrap();
    std::fs::File::create(h.path("app.log")).unwrap();
    h.append("app.log", "3\n");
    h.step();
    assert_eq!(h.bodies(), ["1", "2", "3"]);
    assert_eq!(h.lost(Loss::Truncated), 0);
}

#[test]
fn a_file_copied_and_truncated_while_stopped_is_read_on_from_its_copy() {
    let mut h = Harness::new(beginning());
    h.append("app.log", "1\n");
    h.step();
    h.restart();
    h.append("app.log", "2\n");
    std::fs::copy(h.path("app.log"), h.path("app.log.1")).unwrap();
    std::fs::File::create(h.path("app.log")).unwrap();
    h.append("app.log", "3\n");
    h.step();
    assert_eq!(h.sorted(), ["1", "2", "3"]);
    h.advance(h.options.rotate_wait);
    h.step();
    assert_eq!(h.tailer.open_files(), 1, "the copy is let go once read");
    assert_eq!(h.positions(), 1);
}

#[test]
fn truncation_in_place_counts_the_bytes_seen_and_never_read() {
    let mut h = Harness::new(Options {
        read_chunk: 4,
        round_bytes: 4,
        ..beginning()
    });
    h.append("app.log", "aaaaaaa\nbbbbbbb\n");
    // One round reads 4 bytes of 16 and sees the size.
    let round = h.tailer.read(h.now, 1);
    assert!(round.events.is_empty());
    h.tailer.scan(h.now);
    let round = h.tailer.read(h.now, 1);
    assert!(round.events.is_empty() && round.full);
    std::fs::File::create(h.path("app.log")).unwrap();
    h.append("app.log", "c\n");
    h.step();
    assert_eq!(h.bodies(), ["c"]);
    assert_eq!(h.lost(Loss::Truncated), 16);
}

#[test]
fn a_switched_symlink_has_its_old_target_read_to_the_end() {
    let mut h = Harness::new(beginning());
    h.append("t1.txt", "t1 a\n");
    std::os::unix::fs::symlink(h.path("t1.txt"), h.path("current.log")).unwrap();
    h.step();
    h.append("t1.txt", "t1 b\n");
    h.append("t2.txt", "t2 a\n");
    std::os::unix::fs::symlink(h.path("t2.txt"), h.path("next")).unwrap();
    std::fs::rename(h.path("next"), h.path("current.log")).unwrap();
    h.step();
    assert_eq!(h.sorted(), ["t1 a", "t1 b", "t2 a"]);
}

#[test]
fn one_busy_file_does_not_starve_the_others() {
    let mut h = Harness::new(Options {
        read_chunk: 1024,
        round_bytes: 8 * 1024,
        ..beginning()
    });
    let busy: String = (0..10_000).map(|i| format!("busy {i:05}\n")).collect();
    h.append("busy.log", &busy);
    h.append("quiet.log", "quiet 1\n");
    h.tailer.scan(h.now);
    let round = h.tailer.read(h.now, 1);
    assert!(round.full);
    let sources: BTreeSet<String> = round
        .events
        .iter()
        .map(|e| match e {
            Event::Log(l) => l.source.clone(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(
        sources.len(),
        2,
        "both files in the first round: {sources:?}"
    );
}

#[test]
fn many_files_rotating_at_once_are_each_read_to_their_end() {
    let mut h = Harness::new(Options {
        read_chunk: 256,
        round_bytes: 4096,
        ..beginning()
    });
    let names: Vec<String> = (0..50).map(|i| format!("app{i:02}.log")).collect();
    for name in &names {
        h.append(name, &format!("{name} 1\n"));
    }
    h.step();
    h.full = true;
    // Every file gets a line unread, is rotated, and its successor gets one, all at once.
    for name in &names {
        h.append(name, &format!("{name} 2\n"));
        std::fs::rename(h.path(name), h.path(&format!("{name}.1"))).unwrap();
        h.append(name, &format!("{name} 3\n"));
    }
    h.step();
    assert_eq!(h.tailer.open_files(), 100);
    h.full = false;
    h.step();
    let mut expected: Vec<String> = names
        .iter()
        .flat_map(|n| (1..=3).map(move |i| format!("{n} {i}")))
        .collect();
    expected.sort();
    assert_eq!(h.sorted(), expected);
    h.advance(h.options.rotate_wait);
    h.step();
    assert_eq!(h.tailer.open_files(), 50);
    assert_eq!(h.positions(), 50);
}

#[test]
fn rotated_files_beyond_the_bounds_are_given_up_and_counted() {
    let mut h = Harness::new(Options {
        max_rotated_open: 1,
        ..beginning()
    });
    h.append("app.log", "0\n");
    h.step();
    h.full = true;
    for i in 1..=3 {
        h.append("app.log", &format!("{i}{i}{i}\n"));
        std::fs::rename(h.path("app.log"), h.path(&format!("app.log.{i}"))).unwrap();
        h.append("app.log", "");
        h.step();
    }
    // Three rotated files, one may be held: the two oldest are given up unread.
    assert_eq!(h.lost(Loss::GivenUp), 4 + 4);
    assert_eq!(h.tailer.open_files(), 2);
    h.full = false;
    h.step();
    assert_eq!(h.sorted(), ["0", "333"]);
}

#[test]
fn files_older_than_ignore_older_wait_until_written() {
    let mut h = Harness::new(Options {
        ignore_older: Some(Duration::from_secs(3600)),
        ..beginning()
    });
    h.append("stale.log", "old line\n");
    let old = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(h.path("stale.log"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    h.step();
    assert_eq!(h.tailer.open_files(), 0);
    h.append("stale.log", "new line\n");
    h.step();
    assert_eq!(h.bodies(), ["new line"]);
}

/// One step of the model-based test.
#[derive(Debug, Clone)]
enum Op {
    /// Lines appended to `app.log`, the last one left unfinished when the flag says so.
    Append(u8, bool),
    /// To the current target of the `current.log` link.
    AppendLink(u8),
    /// `app.log` renamed to `app.log.<n>` and created again.
    Rotate,
    /// Rotations with a line written between each, and none seen by the tailer; then a restart
    /// when the flag says so (the agent was down meanwhile).
    RotateUnseen(u8, bool),
    /// `app.log` copied to `app.log.c<n>`, then emptied.
    CopyTruncate,
    /// `app.log` emptied.
    Truncate,
    /// `app.log` deleted (written again later, so created anew).
    Delete,
    /// `current.log` pointed at a new file.
    Switch,
    Restart,
    /// The spool fills (reads stop) or has room again.
    Full(bool),
    /// Time passes.
    Tick(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..20, any::<bool>()).prop_map(|(n, p)| Op::Append(n, p)),
        2 => (1u8..5).prop_map(Op::AppendLink),
        2 => Just(Op::Rotate),
        1 => (2u8..4, any::<bool>()).prop_map(|(n, r)| Op::RotateUnseen(n, r)),
        1 => Just(Op::CopyTruncate),
        1 => Just(Op::Truncate),
        1 => Just(Op::Delete),
        1 => Just(Op::Switch),
        2 => Just(Op::Restart),
        2 => any::<bool>().prop_map(Op::Full),
        1 => (0u8..10).prop_map(Op::Tick),
    ]
}

/// What must arrive: every line written, except those whose file was emptied or deleted while
/// the spool was full (the tailer could not have read them; if it did, fine).
#[derive(Default)]
struct Model {
    next: u64,
    /// Lines in `app.log` now, and the number of an unfinished one.
    app: Vec<u64>,
    partial: Option<u64>,
    link_target: u64,
    rotations: u64,
    written: Vec<String>,
    may_be_lost: BTreeSet<String>,
}

impl Model {
    fn line(&mut self, prefix: &str) -> (u64, String) {
        let n = self.next;
        self.next += 1;
        let text = format!("{prefix}-{n:06}");
        self.written.push(text.clone());
        (n, text)
    }

    /// Finishes an unfinished line (a writer finishes its line before a rotation), and lets the
    /// tailer look, as it would between two writes.
    fn finish(&mut self, h: &mut Harness) {
        if let Some(n) = self.partial.take() {
            let text = format!("app-{n:06}");
            h.append("app.log", &format!("{}\n", &text[5..]));
            self.app.push(n);
            h.step();
        }
    }

    /// The lines of `app.log` can be lost now if the tailer is not reading.
    fn destroy(&mut self, h: &Harness) {
        if h.full {
            for n in &self.app {
                self.may_be_lost.insert(format!("app-{n:06}"));
            }
        }
        self.app.clear();
    }
}

fn run(ops: Vec<Op>) {
    let mut h = Harness::new(Options {
        read_chunk: 64,
        round_bytes: 512,
        round_events: 1_000,
        rotated_max_age: Duration::from_secs(1 << 30),
        max_rotated_open: 10_000,
        ..beginning()
    });
    let mut m = Model::default();
    std::os::unix::fs::symlink(h.path("t0.txt"), h.path("current.log")).unwrap();
    // The files exist and the tailer has looked once: a file rotated away unseen is found
    // from the one it followed at its path.
    h.append("app.log", "");
    h.append("t0.txt", "");
    h.step();
    for op in ops {
        match op {
            Op::Append(n, partial) => {
                m.finish(&mut h);
                let mut text = String::new();
                for _ in 0..n {
                    let (i, line) = m.line("app");
                    m.app.push(i);
                    text.push_str(&line);
                    text.push('\n');
                }
                if partial {
                    let (i, line) = m.line("app");
                    text.push_str(&line[..5]);
                    m.partial = Some(i);
                }
                h.append("app.log", &text);
            }
            Op::AppendLink(n) => {
                let mut text = String::new();
                for _ in 0..n {
                    let (_, line) = m.line("link");
                    text.push_str(&line);
                    text.push('\n');
                }
                h.append(&format!("t{}.txt", m.link_target), &text);
            }
            Op::Rotate => {
                m.finish(&mut h);
                m.rotations += 1;
                if h.path("app.log").exists() {
                    let to = h.path(&format!("app.log.{}", m.rotations));
                    std::fs::rename(h.path("app.log"), to).unwrap();
                }
                m.app.clear();
                h.append("app.log", "");
            }
            Op::RotateUnseen(n, restart) => {
                m.finish(&mut h);
                for _ in 0..n {
                    m.rotations += 1;
                    if h.path("app.log").exists() {
                        let to = h.path(&format!("app.log.{}", m.rotations));
                        std::fs::rename(h.path("app.log"), to).unwrap();
                    }
                    m.app.clear();
                    let (i, line) = m.line("app");
                    m.app.push(i);
                    h.append("app.log", &format!("{line}\n"));
                }
                if restart {
                    h.restart();
                }
            }
            Op::CopyTruncate => {
                m.finish(&mut h);
                m.rotations += 1;
                if h.path("app.log").exists() {
                    let to = h.path(&format!("app.log.c{}", m.rotations));
                    std::fs::copy(h.path("app.log"), to).unwrap();
                    std::fs::File::create(h.path("app.log")).unwrap();
                }
                m.destroy(&h);
            }
            Op::Truncate => {
                m.finish(&mut h);
                if h.path("app.log").exists() {
                    std::fs::File::create(h.path("app.log")).unwrap();
                }
                m.destroy(&h);
            }
            Op::Delete => {
                m.finish(&mut h);
                let _ = std::fs::remove_file(h.path("app.log"));
                m.destroy(&h);
            }
            Op::Switch => {
                m.link_target += 1;
                let target = h.path(&format!("t{}.txt", m.link_target));
                h.append(&format!("t{}.txt", m.link_target), "");
                let tmp = h.path("current.tmp");
                std::os::unix::fs::symlink(target, &tmp).unwrap();
                std::fs::rename(&tmp, h.path("current.log")).unwrap();
            }
            Op::Restart => h.restart(),
            Op::Full(full) => h.full = full,
            Op::Tick(s) => h.advance(Duration::from_secs(u64::from(s))),
        }
        h.step();
    }
    m.finish(&mut h);
    h.full = false;
    for _ in 0..3 {
        h.step();
        h.advance(Duration::from_secs(3600));
    }
    h.step();

    let mut seen = BTreeSet::new();
    for body in h.bodies() {
        assert!(seen.insert(body), "{body} arrived twice");
    }
    let missing: Vec<&String> = m
        .written
        .iter()
        .filter(|w| !seen.contains(w.as_str()))
        .collect();
    for w in &missing {
        assert!(
            m.may_be_lost.contains(*w),
            "{w} is missing; it was never emptied or deleted unread"
        );
    }
    let missing_bytes: u64 = missing.iter().map(|w| w.len() as u64 + 1).sum();
    assert!(
        h.lost(Loss::Truncated) + h.lost(Loss::GivenUp) <= missing_bytes,
        "more counted lost than missing"
    );
    assert_eq!(
        h.positions(),
        h.tailer.open_files(),
        "a position for every open file and for no other"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_line_arrives_once_unless_its_file_was_emptied_unread(ops in prop::collection::vec(op(), 1..40)) {
        run(ops);
    }
}

#[test]
fn a_file_made_between_a_rename_and_a_create_is_read() {
    // logrotate's create: the old file renamed; the writer makes a new one before logrotate
    // does, which logrotate then moves aside as a backup before making its own.
    for look_between in [false, true] {
        let mut h = Harness::new(beginning());
        h.append("app.log", &"a\n".repeat(600));
        h.step();
        std::fs::rename(h.path("app.log"), h.path("app.log.1")).unwrap();
        h.append("app.log", "x1\nx2\n");
        if look_between {
            h.step();
        }
        std::fs::rename(h.path("app.log"), h.path("app.log-2026120201.backup")).unwrap();
        h.append("app.log", "y1\n");
        h.step();
        let got: Vec<&str> = h.bodies().into_iter().filter(|b| *b != "a").collect();
        let mut got = got;
        got.sort_unstable();
        assert_eq!(got, ["x1", "x2", "y1"], "looked between: {look_between}");
    }
}
