//! The agent's data directory is a small filesystem that fills up.
//!
//! With the aggregator away, log events fill the spool until the disk has no room beyond the
//! spool's reserve; the source then waits. When the aggregator is back the backlog drains by
//! itself (acknowledgements commit on the full disk), every event is stored exactly once, and
//! the spool's files shrink. When something else fills the disk, the host shows degraded with
//! the spool's reason, and resumes by itself once an operator frees space. An agent started on a
//! read-only data directory keeps running and opens its spool once the directory is writable.
//!
//! These tests mount a tmpfs, so they need root; without it (or without `mount`) they say why
//! and pass.

use std::io::Write as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use outpost_tests::{AgentOptions, Env, Kind, Synthetic};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) on `dir`; `None`, with the reason
    /// printed, when this machine does not allow it.
    fn mount(test: &str, dir: &Path, size: &str) -> Option<Tmpfs> {
        // /proc/self belongs to the effective user.
        let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        if !root {
            eprintln!("[{test}] skipped: mounting a small filesystem needs root");
            return None;
        }
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output();
        match out {
            Ok(out) if out.status.success() => Some(Tmpfs {
                dir: dir.to_path_buf(),
            }),
            Ok(out) => {
                eprintln!(
                    "[{test}] skipped: mount failed ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("[{test}] skipped: cannot run mount: {e}");
                None
            }
        }
    }

    fn remount(&self, how: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&self.dir)
            .output()
            .unwrap_or_else(|e| panic!("mount -o remount,{how}: {e}"));
        assert!(
            out.status.success(),
            "mount -o remount,{how} {}: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Bytes free, as the agent sees them.
    fn free(&self) -> u64 {
        let s = nix::sys::statvfs::statvfs(&self.dir).unwrap_or_else(|e| panic!("statvfs: {e}"));
        s.blocks_available() * s.fragment_size()
    }

    /// Writes a file that takes every free byte; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.dir.join("ballast");
        let mut file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("ballast: {e}"));
        let chunk = vec![0u8; 4096];
        while file.write_all(&chunk).is_ok() {}
        let _ = file.sync_all();
        path
    }
}

impl Tmpfs {
    /// An agent with its data directory on this file system, a 1 MiB reserve (room for the
    /// spool on a few MiB), and the synthetic source `synthetic`.
    fn agent_options(&self, synthetic: Synthetic) -> AgentOptions {
        AgentOptions {
            data_dir: Some(self.dir.clone()),
            reserve_bytes: Some("1MiB".to_owned()),
            uncompressed: true,
            ..AgentOptions::synthetic(synthetic)
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazily: a process of a failed test may still hold files in it.
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

#[test]
fn a_full_disk_drains_by_itself_once_the_aggregator_is_back() {
    const AGENT: &str = "disk-1";
    const TOTAL: u64 = 60_000;
    let env = Env::new("disk-full");
    let Some(disk) = Tmpfs::mount(env.name(), &env.path().join("small"), "8m") else {
        return;
    };
    // Started once to fix the port the agent will use, then stopped before the agent starts.
    let mut aggregator = env.start_aggregator();
    aggregator.terminate();
    let cert = env.issue_agent(AGENT);
    let agent = env.start_agent(
        &cert,
        &aggregator,
        disk.agent_options(Synthetic::logs(TOTAL)),
    );
    let full = env.wait_for("the spool to report its disk full", || {
        if agent.log().contains("the spool's disk is full") {
            agent.spool()
        } else {
            Err(format!("{:?}", agent.spool()))
        }
    });
    assert!(
        full.produced < TOTAL,
        "the disk must fill before the source is done: {full:?}"
    );
    assert!(
        disk.dir.join("spool.reserve").exists(),
        "the reserve stays in place while nothing needs it"
    );
    let full_bytes = agent.spool_file_bytes();
    assert!(disk.free() > 0, "the disk is never filled to the last byte");

    aggregator.restart();
    let store = aggregator.store();
    let report = env.wait_exactly_once(&store, AGENT, Kind::Log, TOTAL);
    assert_eq!(
        (report.min, report.max),
        (Some(0), Some(TOTAL - 1)),
        "{report}"
    );
    let drained = env.wait_for("the spool's files to shrink after the drain", || {
        let bytes = agent.spool_file_bytes();
        let spool = agent.spool()?;
        if spool.batches == 0 && bytes < full_bytes / 2 {
            Ok(bytes)
        } else {
            Err(format!(
                "{bytes} bytes on disk (full: {full_bytes}), {spool:?}"
            ))
        }
    });
    eprintln!("spool files: {full_bytes} bytes when full, {drained} after the drain");
    assert_eq!(agent.spool().map(|s| s.drops.total()), Ok(0));
    assert!(agent.is_running());
    assert_eq!(agent.starts(), 1, "no manual step, no restart");
    // One line when the state is entered, one when it is left: no retry loop of warnings. The
    // source may fill the disk again while the backlog drains, so the state can be entered more
    // than once; each time it is left once, the last time after the drain.
    env.wait_until(
        "the spool to leave the disk-full state as often as it entered it",
        || {
            let entered = agent.log_count("the spool's disk is full");
            entered >= 1 && entered == agent.log_count("the spool's disk has room again")
        },
    );
    assert_eq!(
        agent.log_count("collector failing"),
        0,
        "sources only waited"
    );
}

#[test]
fn the_agent_resumes_by_itself_when_an_operator_frees_space() {
    const AGENT: &str = "disk-2";
    const TOTAL: u64 = 20_000;
    let env = Env::new("disk-freed");
    let Some(disk) = Tmpfs::mount(env.name(), &env.path().join("small"), "8m") else {
        return;
    };
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let agent = env.start_agent(
        &cert,
        &aggregator,
        disk.agent_options(Synthetic::logs(TOTAL).rate(2_000)),
    );
    let store = aggregator.store();
    env.wait_stored(&store, AGENT, Kind::Log, 2_000);

    // Something else takes every free byte.
    let ballast = disk.fill();
    let entry = env.wait_for("the host to show degraded for the spool's disk", || {
        let entry = aggregator
            .agent_status(AGENT)
            .ok_or("not in status".to_owned())?;
        let reason = entry["reason"].as_str().unwrap_or_default();
        if entry["status"] == "degraded" && reason.contains("collector spool failing: disk full") {
            Ok(entry)
        } else {
            Err(entry.to_string())
        }
    });
    eprintln!("while full: {entry}");
    let paused = agent.spool().unwrap_or_else(|e| panic!("{e}"));
    assert!(paused.produced < TOTAL, "the source is paused: {paused:?}");

    // The operator frees space: no restart, no manual step.
    std::fs::remove_file(&ballast).unwrap_or_else(|e| panic!("{e}"));
    let report = env.wait_exactly_once(&store, AGENT, Kind::Log, TOTAL);
    assert_eq!(report.max, Some(TOTAL - 1), "{report}");
    env.wait_for("the host to show online again", || {
        let entry = aggregator
            .agent_status(AGENT)
            .ok_or("not in status".to_owned())?;
        if entry["status"] == "online" {
            Ok(())
        } else {
            Err(entry.to_string())
        }
    });
    env.wait_until("the reserve to be written back", || {
        disk.dir.join("spool.reserve").exists()
    });
    assert_eq!(agent.spool().map(|s| s.drops.total()), Ok(0));
    assert_eq!(agent.starts(), 1);
    assert!(agent.log().contains("the spool's disk has room again"));
}

/// A read-only data directory at start-up: the agent does not exit into a restart loop; it says
/// why in its log, keeps trying, and opens its spool once the directory is writable.
///
/// (Remounting read-only under a running agent is refused by the kernel while the spool's files
/// are open for writing, so the directory is read-only before the agent starts.) The status
/// cannot reach the aggregator meanwhile: without its spool the agent has no spool id to
/// introduce itself with, and it says nothing rather than a wrong one.
#[test]
fn an_agent_started_on_a_read_only_data_directory_waits_for_it() {
    const AGENT: &str = "disk-3";
    const TOTAL: u64 = 5_000;
    let env = Env::new("disk-read-only");
    let Some(disk) = Tmpfs::mount(env.name(), &env.path().join("small"), "16m") else {
        return;
    };
    disk.remount("ro");
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let agent = env.start_agent(
        &cert,
        &aggregator,
        disk.agent_options(Synthetic::logs(TOTAL).rate(2_000)),
    );
    env.wait_until("the agent to say its spool cannot be written", || {
        let log = agent.log();
        log.contains("the spool cannot be written") && log.contains("read-only")
    });
    assert!(agent.is_running(), "the agent keeps running");
    let store = aggregator.store();
    assert_eq!(
        store.batches(AGENT).unwrap_or(0),
        0,
        "nothing reaches the aggregator without a spool id"
    );

    disk.remount("rw");
    let report = env.wait_exactly_once(&store, AGENT, Kind::Log, TOTAL);
    assert_eq!(report.max, Some(TOTAL - 1), "{report}");
    assert!(agent.log().contains("the spool can be written again"));
    assert_eq!(agent.starts(), 1);
}
