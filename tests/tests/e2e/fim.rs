//! File integrity end to end: the agent records a baseline of a test tree, then a scripted set
//! of changes is made — while the agent watches the tree (realtime), or while it is stopped (the
//! rescan at its restart) — and each change must be reported exactly once, of the right kind, in
//! the aggregator's store. A SIGKILL in the middle of a rescan must neither lose a change nor
//! report one twice, and lost notifications (an inotify queue overflow) must lead to a rescan that
//! still reports every change.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;
use std::time::{Duration, SystemTime};

use outpost_tests::{Agent, AgentOptions, Env, Store, toml_string};

const AGENT: &str = "fim-host";

fn options(root: &Path, files_per_sec: u32) -> AgentOptions {
    AgentOptions {
        fim_toml: Some(format!(
            "hash_mib_per_sec = 0\nfiles_per_sec = {files_per_sec}\n\n\
             [[fim.paths]]\npath = {}\nmode = \"scheduled\"\n",
            toml_string(root)
        )),
        ..AgentOptions::default()
    }
}

fn write(p: &Path, content: &str) {
    fs::write(p, content).unwrap_or_else(|e| panic!("cannot write {}: {e}", p.display()));
}

/// Waits until the baseline's summary record is stored.
fn wait_baseline(env: &Env, store: &Store) {
    env.wait_for("the baseline summary", || {
        let logs = store.logs(AGENT, "fim")?;
        match logs
            .iter()
            .find(|l| l.body.starts_with("baseline complete: "))
        {
            Some(_) => Ok(()),
            None => Err(format!("{} fim log records", logs.len())),
        }
    });
}

/// Waits until the agent has finished `scans` rescans and the aggregator acknowledged
/// everything it spooled: the store then holds all those scans reported.
fn wait_rescanned(env: &Env, agent: &Agent, scans: usize) {
    env.wait_for("the rescan, all of it acknowledged", || {
        let done = agent
            .log()
            .lines()
            .filter(|l| l.contains("fim: scan finished") && l.contains("kind=Rescan"))
            .count();
        let spool = agent.spool()?;
        if done >= scans && spool.batches == 0 {
            Ok(())
        } else {
            Err(format!(
                "{done} rescans finished, {} batches unacknowledged",
                spool.batches
            ))
        }
    });
}

fn realtime_options(root: &Path) -> AgentOptions {
    AgentOptions {
        // A generous quiet period: a burst of changes to one path is checked once, even on a
        // busy machine that pauses the script between them.
        fim_toml: Some(format!(
            "hash_mib_per_sec = 0\ncoalesce = \"2s\"\ncoalesce_max = \"60s\"\n\n\
             [[fim.paths]]\npath = {}\nmode = \"realtime\"\n",
            toml_string(root)
        )),
        ..AgentOptions::default()
    }
}

/// Waits until the store holds exactly the events `want` (by relative path, one each), then
/// creates a last file and waits for its event: events arrive in order, so once it is there,
/// anything reported twice would be too.
fn wait_exactly(env: &Env, store: &Store, t: &Path, want: &BTreeMap<String, &'static str>) {
    env.wait_for("the changes' events", || {
        let got = stored(store, t);
        let by_path: BTreeMap<String, &str> =
            got.iter().map(|(p, c)| (p.clone(), c.as_str())).collect();
        if by_path.len() == want.len() && by_path.iter().all(|(p, c)| want.get(p) == Some(c)) {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    write(&t.join("zz-last"), "the last change");
    env.wait_for("the last change's event", || {
        let got = stored(store, t);
        if got.iter().any(|(p, _)| p == "zz-last") {
            Ok(())
        } else {
            Err(format!("{} events", got.len()))
        }
    });
    let got = stored(store, t);
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(p, c)| (p.clone(), (*c).to_owned()))
        .collect();
    want.push(("zz-last".to_owned(), "created".to_owned()));
    want.sort();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(
        sorted,
        want,
        "[{}] events stored, in order: {got:?}",
        env.name()
    );
}

/// The stored events hold the trail 1, 2, … once each, and the aggregator found no break in it
/// (batches of the agent may have been stored out of order, so rows need not be in `seq` order).
fn assert_trail(store: &Store) {
    let mut seqs: Vec<u64> = store
        .fim_events(AGENT)
        .unwrap_or_else(|e| panic!("cannot read the store: {e}"))
        .iter()
        .map(|e| e.seq)
        .collect();
    seqs.sort_unstable();
    let want: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, want);
    let breaks = store
        .logs(AGENT, "outpost.fim.trail")
        .unwrap_or_else(|e| panic!("cannot read the store: {e}"));
    assert!(breaks.is_empty(), "the aggregator found breaks: {breaks:?}");
}

/// Path (relative to `root`) and change of each stored event, in order.
fn stored(store: &Store, root: &Path) -> Vec<(String, String)> {
    store
        .fim_events(AGENT)
        .unwrap_or_else(|e| panic!("cannot read the store: {e}"))
        .into_iter()
        .map(|e| {
            let rel = Path::new(&e.path)
                .strip_prefix(root)
                .map_or_else(|_| e.path.clone(), |p| p.to_string_lossy().into_owned());
            (rel, e.change)
        })
        .collect()
}

/// How the changes are watched.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Watched {
    /// By a scan (or a rescan) that compares everything.
    Scan,
    /// By inotify: a hard link made to a file changes the file's link count, which the kernel
    /// tells only watches on the file itself, not those on its directory, so the file's own
    /// event waits for the next scan.
    Realtime,
}

/// The scripted changes; returns the events they must yield, by relative path.
fn make_changes(t: &Path, watched: Watched) -> BTreeMap<String, &'static str> {
    let mut want = BTreeMap::new();
    let mut expect = |p: &str, c: &'static str| {
        assert!(want.insert(p.to_owned(), c).is_none(), "{p} twice");
    };
    // Created.
    write(&t.join("new"), "a new file");
    expect("new", "created");
    // Content modified (size changes).
    write(&t.join("a"), "a-content, and more");
    expect("a", "modified");
    // Content modified keeping size and mtime (`touch -r`).
    let mtime = fs::metadata(t.join("b"))
        .expect("a change to the test tree")
        .modified()
        .expect("a change to the test tree");
    write(&t.join("b"), "B-content");
    fs::File::options()
        .write(true)
        .open(t.join("b"))
        .expect("a change to the test tree")
        .set_modified(mtime)
        .expect("a change to the test tree");
    expect("b", "modified");
    // chmod.
    fs::set_permissions(t.join("c"), fs::Permissions::from_mode(0o600))
        .expect("a change to the test tree");
    expect("c", "metadata_changed");
    // chown.
    std::os::unix::fs::chown(t.join("d"), Some(4242), Some(4242))
        .expect("a change to the test tree");
    expect("d", "metadata_changed");
    // touch only.
    fs::File::options()
        .write(true)
        .open(t.join("e"))
        .expect("a change to the test tree")
        .set_modified(SystemTime::now() + Duration::from_secs(3600))
        .expect("a change to the test tree");
    expect("e", "metadata_changed");
    // Deleted.
    fs::remove_file(t.join("f")).expect("a change to the test tree");
    expect("f", "deleted");
    // A file renamed.
    fs::rename(t.join("g"), t.join("g-renamed")).expect("a change to the test tree");
    expect("g-renamed", "moved");
    // A directory renamed: it and each entry moved.
    fs::rename(t.join("dir"), t.join("dir-renamed")).expect("a change to the test tree");
    for p in ["dir-renamed", "dir-renamed/x", "dir-renamed/y"] {
        expect(p, "moved");
    }
    // A directory created, then files in it.
    fs::create_dir(t.join("newdir")).expect("a change to the test tree");
    write(&t.join("newdir/one"), "one");
    write(&t.join("newdir/two"), "two");
    for p in ["newdir", "newdir/one", "newdir/two"] {
        expect(p, "created");
    }
    // A file replaced by a symlink.
    fs::remove_file(t.join("h")).expect("a change to the test tree");
    symlink("/etc/hostname", t.join("h")).expect("a change to the test tree");
    expect("h", "type_changed");
    // A hard link added: the new name is created, the file's link count changes.
    fs::hard_link(t.join("i"), t.join("i-link")).expect("a change to the test tree");
    expect("i-link", "created");
    if watched == Watched::Scan {
        expect("i", "metadata_changed");
    }
    // An extended attribute changed (where the filesystem keeps user attributes).
    if rustix::fs::lsetxattr(
        t.join("j"),
        "user.outpost",
        b"2",
        rustix::fs::XattrFlags::empty(),
    )
    .is_ok()
    {
        expect("j", "metadata_changed");
    }
    want
}

fn tree(t: &Path) {
    fs::create_dir_all(t.join("dir")).expect("a change to the test tree");
    for n in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"] {
        write(&t.join(n), &format!("{n}-content"));
    }
    write(&t.join("dir/x"), "x-content");
    write(&t.join("dir/y"), "y-content");
    // Where user attributes are kept, `j` starts with one.
    let _ = rustix::fs::lsetxattr(
        t.join("j"),
        "user.outpost",
        b"1",
        rustix::fs::XattrFlags::empty(),
    );
}

#[test]
fn fim_a_rescan_at_restart_reports_each_change_made_while_stopped_once() {
    let env = Env::new("fim-rescan");
    let t = env.path().join("watched");
    tree(&t);
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let mut agent = env.start_agent(&cert, &aggregator, options(&t, 0));
    let store = aggregator.store();
    wait_baseline(&env, &store);
    assert_eq!(stored(&store, &t), [], "a baseline reports nothing");

    agent.terminate();
    let want = make_changes(&t, Watched::Scan);
    agent.restart();
    wait_rescanned(&env, &agent, 1);
    let got = stored(&store, &t);
    let by_path: BTreeMap<String, &str> =
        got.iter().map(|(p, c)| (p.clone(), c.as_str())).collect();
    assert_eq!(by_path.len(), got.len(), "a path reported twice: {got:?}");
    assert_eq!(
        by_path,
        want.iter().map(|(p, c)| (p.clone(), *c)).collect(),
        "[{}] events stored",
        env.name()
    );
    // What the store keeps of a move and a modification.
    let events = store.fim_events(AGENT).unwrap();
    assert!(events.iter().all(|e| e.detected_by == "rescan"));
    assert_trail(&store);
    let renamed = events
        .iter()
        .find(|e| e.path.ends_with("g-renamed"))
        .unwrap();
    assert_eq!(
        renamed.moved_from.as_deref(),
        Some(t.join("g").to_str().unwrap())
    );
    let chmodded = events.iter().find(|e| e.path.ends_with("/c")).unwrap();
    assert!(
        chmodded.changed.iter().any(|c| c == "mode"),
        "{:?}",
        chmodded.changed
    );
    assert_eq!(renamed.before["hash"], renamed.after["hash"]);
    assert!(
        renamed.before["hash"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    let b = events.iter().find(|e| e.path.ends_with("/b")).unwrap();
    assert_eq!(b.before["mtime_ns"], b.after["mtime_ns"]);
    assert_ne!(b.before["hash"], b.after["hash"]);

    // A restart with nothing changed reports nothing more.
    agent.terminate();
    agent.restart();
    wait_rescanned(&env, &agent, 2);
    assert_eq!(stored(&store, &t).len(), got.len());
    assert_eq!(agent.log_count("collector failing"), 0, "{}", agent.log());
}

#[test]
fn fim_a_kill9_during_a_rescan_neither_loses_nor_repeats_a_change() {
    const FILES: usize = 2000;
    let env = Env::new("fim-kill9");
    let t = env.path().join("watched");
    fs::create_dir_all(&t).unwrap();
    for i in 0..FILES {
        write(&t.join(format!("f{i:05}")), "original");
    }
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    // Slow scans (400 paths a second): a rescan spans several submissions and seconds.
    let mut agent = env.start_agent(&cert, &aggregator, options(&t, 400));
    let store = aggregator.store();
    wait_baseline(&env, &store);
    agent.terminate();

    // Every other file modified while the agent is stopped.
    let modified: Vec<String> = (0..FILES).step_by(2).map(|i| format!("f{i:05}")).collect();
    for name in &modified {
        write(&t.join(name), "modified!");
    }
    agent.restart();
    let first = env.wait_for("the first events of the rescan", || {
        let n = store.fim_events(AGENT)?.len();
        if n > 0 {
            Ok(n)
        } else {
            Err("none yet".to_owned())
        }
    });
    agent.kill9();
    assert!(
        first < modified.len(),
        "the rescan had ended before the kill ({first} events)"
    );
    agent.restart();
    wait_rescanned(&env, &agent, 1);
    let got = stored(&store, &t);
    let mut paths: Vec<&str> = got.iter().map(|(p, _)| p.as_str()).collect();
    paths.sort_unstable();
    let want: Vec<&str> = modified.iter().map(String::as_str).collect();
    assert_eq!(paths.len(), want.len(), "[{}] events stored", env.name());
    assert_eq!(paths, want);
    assert!(got.iter().all(|(_, c)| c == "modified"));
}

/// Baseline rows in the agent's spool (read-only; `Err` while it is not there yet).
fn baseline_rows(agent: &Agent) -> Result<u64, String> {
    let path = agent.spool_path();
    if !path.exists() {
        return Err("no spool yet".to_owned());
    }
    let conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    conn.query_row(
        "SELECT count(*) FROM source_state WHERE source = 'fim'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(i64::cast_unsigned)
    .map_err(|e| e.to_string())
}

#[test]
fn fim_a_stop_and_a_kill9_during_the_initial_baseline_resume_it_without_events() {
    const FILES: u64 = 2000;
    let env = Env::new("fim-baseline-kill9");
    let t = env.path().join("watched");
    fs::create_dir_all(&t).unwrap();
    for i in 0..FILES {
        write(&t.join(format!("f{i:05}")), "original");
    }
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let mut agent = env.start_agent(&cert, &aggregator, options(&t, 400));
    let committed = env.wait_for("part of the baseline committed", || {
        let n = baseline_rows(&agent)?;
        if n > 0 {
            Ok(n)
        } else {
            Err("no rows yet".to_owned())
        }
    });
    agent.kill9();
    assert!(
        committed <= FILES,
        "the baseline had ended ({committed} rows)"
    );
    // Created before the baseline is complete: part of it, not an event.
    write(&t.join("late"), "late");
    agent.restart();
    let store = aggregator.store();
    wait_baseline(&env, &store);
    assert_eq!(
        baseline_rows(&agent).unwrap(),
        FILES + 2,
        "the root, the files, late"
    );
    let summaries: Vec<String> = store
        .logs(AGENT, "fim")
        .unwrap()
        .into_iter()
        .map(|l| l.body)
        .collect();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert!(
        summaries[0].starts_with(&format!("baseline complete: {} paths", FILES + 2)),
        "{summaries:?}"
    );
    assert_eq!(stored(&store, &t), [], "a baseline reports nothing");
}

#[test]
fn fim_scheduled_scans_find_changes_while_the_agent_runs() {
    let env = Env::new("fim-scheduled");
    let t = env.path().join("watched");
    tree(&t);
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let mut options = options(&t, 0);
    if let Some(fim) = options.fim_toml.as_mut() {
        *fim = format!("scan_interval = \"1s\"\nscan_jitter = \"0s\"\n{fim}");
    }
    let agent = env.start_agent(&cert, &aggregator, options);
    let store = aggregator.store();
    wait_baseline(&env, &store);
    write(&t.join("a"), "changed while running");
    fs::remove_file(t.join("f")).unwrap();
    let want = [
        ("a".to_owned(), "modified".to_owned()),
        ("f".to_owned(), "deleted".to_owned()),
    ];
    env.wait_for("the scheduled scan's events", || {
        let mut got = stored(&store, &t);
        got.sort();
        if got == want {
            Ok(())
        } else {
            Err(format!("{got:?}"))
        }
    });
    // Later scans find nothing more.
    let scans = |a: &Agent| {
        a.log()
            .lines()
            .filter(|l| l.contains("fim: scan finished") && l.contains("kind=Scheduled"))
            .count()
    };
    let seen = scans(&agent);
    env.wait_until("two more scheduled scans", || scans(&agent) >= seen + 2);
    assert_eq!(stored(&store, &t).len(), 2);
}

#[test]
fn fim_realtime_reports_each_change_once_as_it_happens() {
    let env = Env::new("fim-realtime");
    let t = env.path().join("watched");
    tree(&t);
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let agent = env.start_agent(&cert, &aggregator, realtime_options(&t));
    let store = aggregator.store();
    wait_baseline(&env, &store);
    assert_eq!(stored(&store, &t), [], "a baseline reports nothing");

    let want = make_changes(&t, Watched::Realtime);
    wait_exactly(&env, &store, &t, &want);
    let events = store.fim_events(AGENT).unwrap();
    let not_realtime: Vec<&str> = events
        .iter()
        .filter(|e| e.detected_by != "realtime")
        .map(|e| e.path.as_str())
        .collect();
    assert_eq!(
        not_realtime,
        Vec::<&str>::new(),
        "found by a scan, not the watcher"
    );
    assert_trail(&store);
    let renamed = events
        .iter()
        .find(|e| e.path.ends_with("dir-renamed/x"))
        .unwrap();
    assert_eq!(
        renamed.moved_from.as_deref(),
        Some(t.join("dir/x").to_str().unwrap())
    );
    assert_eq!(agent.log_count("collector failing"), 0, "{}", agent.log());
}

/// Sets `/proc/sys/fs/inotify/max_queued_events` and puts the old value back when dropped.
struct QueueSize {
    old: String,
}

const QUEUE_SIZE: &str = "/proc/sys/fs/inotify/max_queued_events";

impl QueueSize {
    fn set(events: u32) -> Option<QueueSize> {
        let old = fs::read_to_string(QUEUE_SIZE).ok()?;
        fs::write(QUEUE_SIZE, events.to_string()).ok()?;
        Some(QueueSize { old })
    }
}

impl Drop for QueueSize {
    fn drop(&mut self) {
        let _ = fs::write(QUEUE_SIZE, self.old.trim());
    }
}

#[test]
fn fim_an_inotify_overflow_leads_to_a_rescan_that_reports_every_change() {
    const FILES: usize = 300;
    let env = Env::new("fim-overflow");
    let t = env.path().join("watched");
    fs::create_dir_all(&t).unwrap();
    for i in 0..FILES {
        write(&t.join(format!("f{i:03}")), "original");
    }
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    // The kernel sizes an inotify queue when the instance is made: lowered until the agent's
    // watcher has made its own (which is before its baseline starts), then put back.
    let queue = QueueSize::set(16).expect("this test lowers the inotify queue size, as root");
    let agent = env.start_agent(&cert, &aggregator, realtime_options(&t));
    let store = aggregator.store();
    wait_baseline(&env, &store);
    drop(queue);

    // Far more notifications than the queue holds, in one burst.
    let mut want = BTreeMap::new();
    for i in 0..FILES {
        let name = format!("f{i:03}");
        write(&t.join(&name), "modified!");
        want.insert(name, "modified");
    }
    wait_exactly(&env, &store, &t, &want);
    let events = store.fim_events(AGENT).unwrap();
    assert!(
        events.iter().any(|e| e.detected_by == "rescan"),
        "no change was found by a rescan: {:?}",
        events.iter().map(|e| &e.detected_by).collect::<Vec<_>>()
    );
    assert_trail(&store);
    // The status said so while the rescan ran.
    assert!(
        agent.log().contains("fim.realtime"),
        "the agent's log does not mention the lost notifications:\n{}",
        agent.log()
    );
}

#[test]
fn fim_a_kill9_during_a_burst_of_changes_neither_loses_nor_repeats_one() {
    const FILES: usize = 2000;
    let env = Env::new("fim-burst-kill9");
    let t = env.path().join("watched");
    fs::create_dir_all(&t).unwrap();
    for i in 0..FILES {
        write(&t.join(format!("f{i:05}")), "original");
    }
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let mut options = realtime_options(&t);
    if let Some(fim) = options.fim_toml.as_mut() {
        // Checks of 400 paths a second: the burst's checks span several submissions.
        *fim = format!("files_per_sec = 400\n{fim}");
        *fim = fim.replace("coalesce = \"2s\"", "coalesce = \"200ms\"");
    }
    let mut agent = env.start_agent(&cert, &aggregator, options);
    let store = aggregator.store();
    wait_baseline(&env, &store);

    let mut want = BTreeMap::new();
    for i in 0..FILES {
        let name = format!("f{i:05}");
        write(&t.join(&name), "modified!");
        want.insert(name, "modified");
    }
    let first = env.wait_for("the first events of the burst", || {
        let n = store.fim_events(AGENT)?.len();
        if n > 0 {
            Ok(n)
        } else {
            Err("none yet".to_owned())
        }
    });
    agent.kill9();
    assert!(
        first < FILES,
        "the burst was all reported before the kill ({first} events)"
    );
    // The rescan at restart finds what the watcher had not reported yet.
    agent.restart();
    wait_exactly(&env, &store, &t, &want);
    assert_trail(&store);
}
