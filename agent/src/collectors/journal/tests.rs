use std::path::{Path, PathBuf};
use std::sync::Arc;

use outpost_common::event::Event;
use tokio::sync::watch;

use super::*;
use crate::spool::{Spool, SpoolConfig, SpoolHandle};
use crate::telemetry::Telemetry;

fn strings(args: &[OsString]) -> Vec<&str> {
    args.iter().map(|a| a.to_str().unwrap()).collect()
}

const FIXED: [&str; 6] = [
    "--follow",
    "--output=json",
    "--all",
    "--merge",
    "--no-pager",
    "--output-fields=MESSAGE,PRIORITY,_SYSTEMD_UNIT,SYSLOG_IDENTIFIER,_PID,_BOOT_ID,_HOSTNAME,_COMM,_TRANSPORT",
];

#[test]
fn journalctl_follows_from_the_cursor_or_from_where_it_is_told() {
    let beginning = Config {
        read_from: ReadFrom::Beginning,
        ..Config::default()
    };
    let filtered = Config {
        directory: Some(PathBuf::from("/var/log/journal/remote")),
        units: vec!["sshd".to_owned(), "nginx.service".to_owned()],
        matches: vec!["PRIORITY=3".to_owned(), "_TRANSPORT=kernel".to_owned()],
        ..Config::default()
    };
    let files = Config {
        files: vec![
            PathBuf::from("/srv/a.journal"),
            PathBuf::from("/srv/b*.journal"),
        ],
        ..Config::default()
    };
    let table: [(&Config, Option<&str>, &[&str]); 6] = [
        (&Config::default(), None, &["--lines=0"]),
        (&beginning, None, &["--lines=all"]),
        // With a cursor, where to start the first time no longer matters.
        (
            &Config::default(),
            Some("s=1;i=2"),
            &["--after-cursor=s=1;i=2", "--lines=all"],
        ),
        (
            &beginning,
            Some("s=1;i=2"),
            &["--after-cursor=s=1;i=2", "--lines=all"],
        ),
        (
            &filtered,
            None,
            &[
                "--lines=0",
                "--directory=/var/log/journal/remote",
                "--unit=sshd",
                "--unit=nginx.service",
                "PRIORITY=3",
                "_TRANSPORT=kernel",
            ],
        ),
        (
            &files,
            None,
            &[
                "--lines=0",
                "--file=/srv/a.journal",
                "--file=/srv/b*.journal",
            ],
        ),
    ];
    for (config, cursor, rest) in table {
        let want: Vec<&str> = FIXED.iter().chain(rest).copied().collect();
        assert_eq!(
            strings(&args(config, cursor)),
            want,
            "{config:?} {cursor:?}"
        );
    }
}

#[test]
fn a_path_that_is_not_utf8_is_passed_as_it_is() {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let config = Config {
        directory: Some(PathBuf::from(OsStr::from_bytes(b"/srv/\xff"))),
        ..Config::default()
    };
    let last = args(&config, None).pop().unwrap();
    assert_eq!(last.into_vec(), b"--directory=/srv/\xff");
}

#[test]
fn a_configuration_it_cannot_run_with_is_refused_by_name() {
    let table: [(Config, &str); 9] = [
        (
            Config {
                journalctl: PathBuf::new(),
                ..Config::default()
            },
            "journal.journalctl: must not be empty",
        ),
        (
            Config {
                directory: Some(PathBuf::from("/srv")),
                files: vec![PathBuf::from("/srv/a.journal")],
                ..Config::default()
            },
            "journal.files: cannot be given together with journal.directory",
        ),
        (
            Config {
                matches: vec![
                    "_SYSTEMD_UNIT=sshd.service".to_owned(),
                    "priority=3".to_owned(),
                ],
                ..Config::default()
            },
            "journal.matches: `priority=3` is not FIELD=value with a field name of A-Z, 0-9 and _ \
             (for example _SYSTEMD_UNIT=sshd.service)",
        ),
        (
            Config {
                matches: vec!["sshd.service".to_owned()],
                ..Config::default()
            },
            "journal.matches: `sshd.service` is not FIELD=value with a field name of A-Z, 0-9 \
             and _ (for example _SYSTEMD_UNIT=sshd.service)",
        ),
        (
            Config {
                units: vec![" ".to_owned()],
                ..Config::default()
            },
            r#"journal.units: " " is not a unit name"#,
        ),
        (
            Config {
                batch: 0,
                ..Config::default()
            },
            "journal.batch: must be between 1 and 100000",
        ),
        (
            Config {
                max_entry_bytes: ByteSize::b(1023),
                ..Config::default()
            },
            "journal.max_entry_bytes: must be between 1 KiB and 4 MiB",
        ),
        (
            Config {
                max_entry_bytes: ByteSize::mib(5),
                ..Config::default()
            },
            "journal.max_entry_bytes: must be between 1 KiB and 4 MiB",
        ),
        (
            Config {
                files: vec![PathBuf::new()],
                ..Config::default()
            },
            "journal.files: a file must not be empty",
        ),
    ];
    for (config, want) in table {
        assert_eq!(Journal::new(config).unwrap_err().to_string(), want);
    }
    Journal::new(Config::default()).unwrap();
}

#[test]
fn matches_are_field_equals_value_as_journald_names_fields() {
    for good in [
        "PRIORITY=3",
        "_SYSTEMD_UNIT=a=b",
        "SYSLOG_IDENTIFIER=",
        "A1_B=x",
    ] {
        assert!(is_match(good), "{good}");
    }
    let long = format!("{}=x", "F".repeat(65));
    for bad in [
        "=x",
        "PRIORITY",
        "1FIELD=x",
        "Priority=3",
        "MY-FIELD=x",
        " PRIORITY=3",
        &long,
    ] {
        assert!(!is_match(bad), "{bad}");
    }
}

#[test]
fn the_example_config_shows_the_defaults_and_valid_examples() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let journal = |text: &str| {
        toml::from_str::<crate::config::AgentConfig>(text)
            .unwrap_or_else(|e| panic!("{e}"))
            .journal
    };
    assert_eq!(journal(&text), Config::default());
    // Each commented example, uncommented, is an option the source runs with.
    let lines: Vec<&str> = text.lines().collect();
    let section = lines.iter().position(|l| *l == "[journal]").unwrap();
    let examples: Vec<usize> = (section + 1..lines.len())
        .take_while(|&i| !lines[i].starts_with('['))
        .filter(|&i| lines[i].starts_with('#') && lines[i].contains(" = "))
        .collect();
    assert!(examples.len() >= 3, "{examples:?}");
    for i in examples {
        let mut edited = lines.clone();
        edited[i] = &lines[i][1..];
        let config = journal(&edited.join("\n"));
        assert_ne!(config, Config::default(), "{}", lines[i]);
        Journal::new(config).unwrap_or_else(|e| panic!("{}: {e}", lines[i]));
    }
}

/// A stand-in for journalctl. Run `n` writes its arguments to `args.<n>`, prints `out.<n>`,
/// then exits with status 3 and `fail.<n>` on stderr if that file exists, or waits to be
/// killed.
struct Fake {
    dir: tempfile::TempDir,
}

impl Fake {
    fn new() -> Fake {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let script = format!(
            "#!/bin/sh\n\
             n=$(( $(cat '{d}/runs' 2>/dev/null || echo 0) + 1 ))\n\
             echo $n > '{d}/runs'\n\
             printf '%s\\n' \"$*\" > '{d}/args.tmp' && mv '{d}/args.tmp' \"{d}/args.$n\"\n\
             [ -f \"{d}/out.$n\" ] && cat \"{d}/out.$n\"\n\
             if [ -f \"{d}/fail.$n\" ]; then cat \"{d}/fail.$n\" >&2; exit 3; fi\n\
             exec sleep 600\n"
        );
        let path = dir.path().join("journalctl");
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        Fake { dir }
    }

    fn path(&self) -> PathBuf {
        self.dir.path().join("journalctl")
    }

    /// What run `n` prints.
    fn prints(&self, n: u32, lines: &[String]) {
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(self.dir.path().join(format!("out.{n}")), text).unwrap();
    }

    /// Run `n` exits with status 3 after printing, saying `stderr`.
    fn fails(&self, n: u32, stderr: &str) {
        std::fs::write(self.dir.path().join(format!("fail.{n}")), stderr).unwrap();
    }

    /// The arguments of run `n`, once it started.
    async fn args(&self, n: u32) -> String {
        let path = self.dir.path().join(format!("args.{n}"));
        eventually(&format!("run {n} of journalctl"), || {
            std::fs::read_to_string(&path).ok()
        })
        .await
        .trim_end()
        .to_owned()
    }
}

/// Polls `check` until it returns something; fails the test after a generous deadline.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A journal entry as journalctl prints it, numbered `n`.
fn entry_line(n: u32) -> String {
    format!(
        r#"{{"__CURSOR":"cursor-{n}","__REALTIME_TIMESTAMP":"{n}","_SYSTEMD_UNIT":"demo.service","PRIORITY":"6","MESSAGE":"entry {n}"}}"#
    )
}

fn entry_lines(numbers: std::ops::RangeInclusive<u32>) -> Vec<String> {
    numbers.map(entry_line).collect()
}

/// The bodies of entries `numbers`.
fn bodies_of(numbers: std::ops::RangeInclusive<u32>) -> Vec<String> {
    numbers.map(|n| format!("entry {n}")).collect()
}

const FAST: Timing = Timing {
    linger: Duration::from_millis(20),
    retry_min: Duration::from_millis(10),
    retry_max: Duration::from_millis(20),
    up_after: Duration::from_secs(3600),
};

/// A spool in a temporary directory, and a fake journalctl.
struct World {
    _dir: tempfile::TempDir,
    spool: SpoolHandle,
    join: crate::spool::SpoolJoin,
    fake: Fake,
}

impl World {
    /// A spool of `max_bytes` at most.
    fn new(max_bytes: u64) -> World {
        let dir = tempfile::tempdir().unwrap();
        let config = SpoolConfig::new(dir.path().join("spool.db"), max_bytes);
        let (spool, join) = crate::spool::spawn(Spool::open(config).unwrap());
        World {
            _dir: dir,
            spool,
            join,
            fake: Fake::new(),
        }
    }

    /// The fake journalctl's configuration: from the beginning, two entries a submission.
    fn config(&self) -> Config {
        Config {
            enabled: true,
            journalctl: self.fake.path(),
            read_from: ReadFrom::Beginning,
            batch: 2,
            ..Config::default()
        }
    }

    /// Starts the source with `config`, on the fast timings.
    fn start(&self, config: Config) -> Running {
        let mut journal = Journal::new(config).unwrap();
        journal.timing = FAST;
        let telemetry = Arc::new(Telemetry::recording());
        let (stop, shutdown) = watch::channel(false);
        let ctx = Context::new(
            Journal::NAME,
            self.spool.clone(),
            shutdown,
            telemetry.clone(),
        );
        Running {
            spool: self.spool.clone(),
            telemetry,
            stop,
            task: tokio::spawn(journal.run(ctx)),
        }
    }

    /// The bodies of every event in the spool, oldest first; with `ack`, the batches are
    /// acknowledged (so they leave the spool).
    async fn bodies(&self, ack: bool) -> Vec<String> {
        let batches = self.spool.batches_after(0, 10_000).await.unwrap();
        if ack {
            let seqs = batches.iter().map(|b| b.seq).collect();
            self.spool.ack(seqs).await.unwrap();
        }
        batches
            .iter()
            .flat_map(|b| b.events().unwrap())
            .map(|e| match e {
                Event::Log(l) => l.body,
                other => panic!("a log record expected: {other:?}"),
            })
            .collect()
    }

    /// Stops `running` and closes the spool.
    async fn close(self, running: Running) {
        running.stop().await;
        drop(self.spool);
        self.join.join().unwrap();
    }
}

/// The journal source running.
struct Running {
    spool: SpoolHandle,
    telemetry: Arc<Telemetry>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits until the spool holds `n` events or more.
    async fn events(&self, n: u64) {
        let mut stats = self.spool.watch_stats();
        tokio::time::timeout(Duration::from_secs(60), stats.wait_for(|s| s.events >= n))
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {n} events in the spool"))
            .unwrap();
    }

    async fn stop(self) {
        self.stop.send(true).unwrap();
        self.task.await.unwrap();
    }
}

#[tokio::test]
async fn entries_are_committed_with_their_cursor_and_reading_resumes_after_it() {
    let world = World::new(1 << 20);
    world.fake.prints(1, &entry_lines(1..=5));

    let running = world.start(world.config());
    // Two full batches of two, and the fifth entry once it has lingered.
    running.events(5).await;
    assert!(world.fake.args(1).await.ends_with(" --lines=all"));
    assert_eq!(
        world
            .spool
            .checkpoint(Journal::NAME)
            .await
            .unwrap()
            .unwrap(),
        b"cursor-5"
    );
    assert_eq!(world.bodies(false).await, bodies_of(1..=5));
    assert!(running.telemetry.collector_errors().is_empty());
    running.stop().await;

    let running = world.start(world.config());
    let args = world.fake.args(2).await;
    assert!(
        args.ends_with(" --after-cursor=cursor-5 --lines=all"),
        "{args}"
    );
    world.close(running).await;
}

#[tokio::test]
async fn an_exit_is_reported_with_its_stderr_and_journalctl_resumes_after_the_committed_cursor() {
    let world = World::new(1 << 20);
    world.fake.prints(1, &entry_lines(1..=3));
    world
        .fake
        .fails(1, "Failed to iterate through journal: Bad message\n");
    world.fake.prints(2, &entry_lines(4..=4));

    let running = world.start(world.config());
    running.events(4).await;
    // The entries printed before the exit were committed, so the next run starts after them.
    let args = world.fake.args(2).await;
    assert!(args.contains(" --after-cursor=cursor-3 "), "{args}");
    let errors = running.telemetry.collector_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].collector, "journal");
    assert_eq!(
        errors[0].reason,
        format!(
            "{} exited: exit status: 3: Failed to iterate through journal: Bad message",
            world.fake.path().display()
        )
    );
    assert_eq!(world.bodies(false).await, bodies_of(1..=4));
    world.close(running).await;
}

#[tokio::test]
async fn lines_that_are_not_entries_are_skipped_and_counted() {
    let world = World::new(1 << 20);
    let long = entry_line(1).replace("entry 1", &"x".repeat(2000));
    let hint = "Hint: You are currently not seeing messages from other users".to_owned();
    world.fake.prints(1, &[hint, long, entry_line(2)]);
    let running = world.start(Config {
        max_entry_bytes: ByteSize::kib(1),
        ..world.config()
    });
    running.events(1).await;
    let counters = running.telemetry.counters();
    assert_eq!(
        (
            counters.journal_entries_malformed,
            counters.journal_entries_too_long
        ),
        (1, 1)
    );
    assert_eq!(
        running.telemetry.recorded(),
        ["journal_entry_malformed", "journal_entry_too_long"]
    );
    assert_eq!(world.bodies(false).await, ["entry 2"]);
    world.close(running).await;
}

#[tokio::test]
async fn a_full_spool_holds_the_source_and_nothing_is_lost_or_repeated() {
    // One byte: the spool takes one submission while empty, then holds the next until acked.
    let world = World::new(1);
    world.fake.prints(1, &entry_lines(1..=40));
    let running = world.start(world.config());
    let mut seen = Vec::new();
    while seen.len() < 40 {
        running.events(1).await;
        seen.extend(world.bodies(true).await);
    }
    assert_eq!(seen, bodies_of(1..=40));
    world.close(running).await;
}

#[tokio::test]
async fn a_journalctl_that_cannot_start_is_reported_and_tried_again() {
    let world = World::new(1 << 20);
    let missing = world.fake.path().with_file_name("no-journalctl");
    let running = world.start(Config {
        journalctl: missing.clone(),
        ..Config::default()
    });
    let reason = eventually("the failure to be reported", || {
        let errors = running.telemetry.collector_errors();
        errors.first().map(|e| e.reason.clone())
    })
    .await;
    assert_eq!(
        reason,
        format!(
            "cannot start {}: No such file or directory (os error 2)",
            missing.display()
        )
    );
    // Tried again, and failing the same way again: not given up.
    eventually("a second attempt", || {
        let recorded = running.telemetry.recorded();
        let failures = recorded.iter().filter(|n| **n == "collector_failed");
        (failures.count() >= 2).then_some(())
    })
    .await;
    world.close(running).await;
}
