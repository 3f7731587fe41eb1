//! Log files end to end: a writer appends uniquely numbered lines at a steady rate, the real
//! `logrotate` rotates the file (create or copytruncate, with compress and delaycompress), and
//! the agent is killed with SIGKILL and restarted in the middle. The store must hold every line
//! exactly once (create). With copytruncate, lines written between the end of logrotate's copy and
//! its truncation are destroyed before any reader can see them: every line some file still holds
//! must be stored exactly once, and the agent may count as lost only lines that are missing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use outpost_tests::{Agent, AgentOptions, Env, LineWriter, Pace, Store, toml_string};

/// Bytes per line, its newline included: the lost byte count converts to lines exactly.
const LINE: usize = 64;
/// Lines the writer appends between two rotations.
const PER_ROTATION: u64 = 1_500;
const ROTATIONS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `create`: the file is renamed and a new one created; the writer reopens by name.
    Create,
    /// `copytruncate`: the file is copied then truncated; the writer keeps its descriptor.
    CopyTruncate,
}

/// The real logrotate with its own configuration and state file.
struct Logrotate {
    config: PathBuf,
    state: PathBuf,
}

impl Logrotate {
    fn new(dir: &Path, log: &Path, mode: Mode) -> Logrotate {
        let how = match mode {
            Mode::Create => "create",
            Mode::CopyTruncate => "copytruncate",
        };
        let config = dir.join("logrotate.conf");
        std::fs::write(
            &config,
            format!(
                "{} {{\n    rotate 100\n    {how}\n    compress\n    delaycompress\n    \
                 missingok\n    nomail\n}}\n",
                log.display()
            ),
        )
        .expect("the logrotate configuration is written");
        Logrotate {
            config,
            state: dir.join("logrotate.state"),
        }
    }

    fn rotate(&self) {
        let out = std::process::Command::new(logrotate_bin())
            .arg("--force")
            .arg("--state")
            .arg(&self.state)
            .arg(&self.config)
            .output()
            .expect("logrotate runs (scripts/test installs it)");
        assert!(
            out.status.success(),
            "logrotate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn logrotate_bin() -> &'static str {
    if Path::new("/usr/sbin/logrotate").exists() {
        "/usr/sbin/logrotate"
    } else {
        "logrotate"
    }
}

/// Line numbers stored for `source`, with how many times each.
fn stored(store: &Store, agent: &str, source: &str) -> Result<BTreeMap<u64, u32>, String> {
    let mut seen = BTreeMap::new();
    for log in store.logs(agent, source)? {
        let n = log
            .body
            .get(5..13)
            .and_then(|d| d.parse::<u64>().ok())
            .ok_or_else(|| format!("not a numbered line: {:?}", log.body))?;
        *seen.entry(n).or_insert(0) += 1;
    }
    Ok(seen)
}

/// Increasing numbers as ranges of consecutive ones (the first ten).
fn ranges(numbers: impl Iterator<Item = u64>) -> String {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for n in numbers {
        match out.last_mut() {
            Some((_, end)) if *end == n => *end = n + 1,
            _ => out.push((n, n + 1)),
        }
    }
    let shown: Vec<String> = out
        .iter()
        .take(10)
        .map(|(a, b)| format!("{a}..{b}"))
        .collect();
    shown.join(", ")
}

/// Line numbers in any file of `dir`, compressed ones read through `gzip -dc`.
fn lines_on_disk(dir: &Path) -> std::collections::BTreeSet<u64> {
    let mut lines = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(dir).expect("the log directory").flatten() {
        let path = entry.path();
        let text = if path.extension().is_some_and(|e| e == "gz") {
            let out = std::process::Command::new("gzip")
                .arg("-dc")
                .arg(&path)
                .output()
                .expect("gzip runs");
            String::from_utf8_lossy(&out.stdout).into_owned()
        } else {
            String::from_utf8_lossy(&std::fs::read(&path).expect("a rotated log reads"))
                .into_owned()
        };
        lines.extend(
            text.lines()
                .filter_map(|l| l.get(5..13).and_then(|d| d.parse::<u64>().ok())),
        );
    }
    lines
}

/// Bytes the agent's log says it counted as lost to truncation, across its restarts.
fn lost_bytes(agent: &Agent) -> u64 {
    agent
        .log()
        .lines()
        .filter(|l| l.contains("truncated before all of it was read"))
        .filter_map(|l| {
            let at = l.find("lost_bytes=")? + "lost_bytes=".len();
            l[at..]
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

fn run(mode: Mode, name: &str) {
    let env = Env::new(name);
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(name);
    let dir = env.path().join("logs");
    std::fs::create_dir_all(&dir).expect("the log directory is made");
    let log = dir.join("app.log");
    let source = log.display().to_string();
    // `line NNNNNNNN xxx…` lines, a few every millisecond.
    let writer = LineWriter::start(
        log.clone(),
        Pace {
            lines: 4,
            pause: Duration::from_millis(1),
            reopen: mode == Mode::Create,
        },
        |n| {
            let head = format!("line {n:08} ");
            let pad = LINE - head.len() - 1;
            head + &"x".repeat(pad)
        },
    );
    let rotate = Logrotate::new(env.path(), &log, mode);
    let options = AgentOptions {
        extra_toml: format!(
            "[[logs.files]]\ninclude = [{}]\nread_from = \"beginning\"\nrotate_wait = \"2s\"\n",
            toml_string(&log)
        ),
        ..AgentOptions::default()
    };
    let mut agent = env.start_agent(&cert, &aggregator, options);
    let store = aggregator.store();

    let wait_written = |target: u64| {
        env.wait_until(&format!("the writer to reach line {target}"), || {
            writer.written() >= target
        });
    };
    for r in 1..=ROTATIONS {
        wait_written(u64::from(r) * PER_ROTATION);
        if r == ROTATIONS / 2 {
            // Killed with lines unread, then one rotation while it is down.
            agent.kill9();
            wait_written(u64::from(r) * PER_ROTATION + PER_ROTATION / 2);
            rotate.rotate();
            wait_written(u64::from(r) * PER_ROTATION + PER_ROTATION);
            agent.restart();
            // Back at work (it has found its files again) before the next rotation compresses
            // the file it was reading when killed: a file compressed before the agent reopened
            // it would be lost to any reader.
            let target = writer.written();
            env.wait_for_every(Duration::from_millis(100), "the agent to catch up", || {
                let newest = stored(&store, name, &source)?.keys().next_back().copied();
                match newest {
                    Some(n) if n + 1 >= target => Ok(()),
                    other => Err(format!("newest line stored {other:?}, written {target}")),
                }
            });
        } else {
            rotate.rotate();
        }
    }
    wait_written(u64::from(ROTATIONS + 1) * PER_ROTATION);
    let written = writer.finish();
    let rotated = std::fs::read_dir(&dir).expect("the log directory").count();
    assert!(rotated > 3, "logrotate rotated: {rotated} files in {dir:?}");

    // Lines no file holds any more were destroyed before any reader could see them:
    // copytruncate's window, between the end of its copy and its truncation.
    let on_disk = lines_on_disk(&dir);
    let seen = env.wait_for_every(
        Duration::from_millis(250),
        "every line some file still holds, stored",
        || {
            let seen = stored(&store, name, &source)?;
            let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
            assert!(twice.is_empty(), "lines stored twice: {twice:?}");
            let absent: std::collections::BTreeSet<u64> = (0..written)
                .filter(|n| !seen.contains_key(n) && on_disk.contains(n))
                .collect();
            if absent.is_empty() {
                Ok(seen)
            } else {
                Err(format!(
                    "{} of {written} lines stored; on disk and not stored: {}",
                    seen.len(),
                    ranges(absent.iter().copied())
                ))
            }
        },
    );
    assert!(seen.keys().all(|n| *n < written), "a line never written");
    let missing = written - seen.len() as u64;
    let lost = lost_bytes(&agent);
    assert_eq!(lost % LINE as u64, 0, "lost bytes are whole lines: {lost}");
    let lost = lost / LINE as u64;
    match mode {
        Mode::Create => assert_eq!((missing, lost), (0, 0), "nothing lost in create mode"),
        Mode::CopyTruncate => {
            // Every line missing is on no disk either; the agent counts those it saw before
            // they went, and can count no more than that.
            assert!(
                lost <= missing,
                "{lost} lines counted lost but only {missing} missing"
            );
            eprintln!(
                "[{name}] {written} lines written, {missing} destroyed by copytruncate before \
                 any read, {lost} of them seen and counted by the agent"
            );
        }
    }
    assert_eq!(agent.starts(), 2);
    // The fleet status shows how far behind its log files the host is: caught up now.
    env.wait_for("the status to show the host's log lag", || {
        let status = aggregator.agent_status(name).ok_or("no status")?;
        match status["log_lag_bytes"].as_u64() {
            Some(0) => Ok(()),
            other => Err(format!("log_lag_bytes {other:?}")),
        }
    });
}

#[test]
fn logrotate_create_with_a_crash_loses_and_repeats_nothing() {
    run(Mode::Create, "logs-create");
}

#[test]
fn logrotate_copytruncate_with_a_crash_stores_every_line_a_file_holds_once() {
    run(Mode::CopyTruncate, "logs-copytruncate");
}

/// Appends lines `from..from + n` to `path` at once.
fn append_lines(path: &Path, from: u64, n: u64) {
    let mut text = String::new();
    for i in from..from + n {
        let head = format!("line {i:08} ");
        text.push_str(&head);
        text.push_str(&"x".repeat(LINE - head.len() - 1));
        text.push('\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the log opens");
    f.write_all(text.as_bytes())
        .expect("the log takes the lines");
}

#[test]
fn a_full_spool_pauses_reading_and_a_rotation_meanwhile_loses_nothing() {
    const FIRST: u64 = 30_000;
    const SECOND: u64 = 10_000;
    let name = "logs-backpressure";
    let env = Env::new(name);
    // Started once to fix the port the agent will use, then stopped: nothing drains the spool.
    let mut aggregator = env.start_aggregator();
    aggregator.terminate();
    let cert = env.issue_agent(name);
    let dir = env.path().join("logs");
    std::fs::create_dir_all(&dir).expect("the log directory is made");
    let log = dir.join("app.log");
    append_lines(&log, 0, FIRST);
    let agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions {
            spool_max_bytes: Some("256KiB".to_owned()),
            max_batch_bytes: Some("64KiB".to_owned()),
            // The cap counts stored bytes: these lines compress so well that 30,000 of them
            // fit in 256 KiB, and whether the spool was sampled before the reading ended was a
            // race. Uncompressed, they fill it.
            uncompressed: true,
            extra_toml: format!(
                "[[logs.files]]\ninclude = [{}]\nread_from = \"beginning\"\n",
                toml_string(&log)
            ),
            ..AgentOptions::default()
        },
    );
    // The spool fills and the source waits: far fewer lines spooled than the file holds.
    env.wait_for("the spool to fill", || {
        let spool = agent.spool()?;
        if spool.events >= 1_000 {
            Ok(())
        } else {
            Err(format!("{spool:?}"))
        }
    });
    let spooled = agent.spool().map(|s| s.events).unwrap_or(0);
    assert!(
        spooled < FIRST / 2,
        "{spooled} of {FIRST} spooled under a 256 KiB cap"
    );
    // Rotated while reading is paused: the old file must still be read to its end.
    std::fs::rename(&log, dir.join("app.log.1")).expect("rotated");
    append_lines(&log, FIRST, SECOND);

    aggregator.restart();
    let store = aggregator.store();
    let source = log.display().to_string();
    let total = FIRST + SECOND;
    env.wait_for_every(Duration::from_millis(250), "every line stored once", || {
        let seen = stored(&store, name, &source)?;
        let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
        assert!(twice.is_empty(), "lines stored twice: {twice:?}");
        if seen.len() as u64 == total && seen.keys().next_back() == Some(&(total - 1)) {
            Ok(())
        } else {
            Err(format!(
                "{} of {total} stored; missing {}",
                seen.len(),
                ranges((0..total).filter(|n| !seen.contains_key(n)))
            ))
        }
    });
    assert_eq!(lost_bytes(&agent), 0);
}
