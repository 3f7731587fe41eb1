//! What a service manager sees: `--version` names the git revision, and under systemd's
//! `Type=notify` both programs report READY=1 once up and STOPPING=1 on SIGTERM.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use outpost_tests::{AgentOptions, Env, binary};

/// The revision `git` reports for the checkout the binaries were built from, if there is git.
fn checkout_revision() -> Option<String> {
    let out = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

#[test]
fn version_names_the_release_and_the_git_revision() {
    let revision = std::env::var("OUTPOST_GIT_REVISION")
        .ok()
        .or_else(checkout_revision)
        .unwrap_or_else(|| "unknown".to_owned());
    for program in ["outpost-agent", "outpost-aggregator"] {
        let out = Command::new(binary(program))
            .arg("--version")
            .output()
            .unwrap();
        assert!(out.status.success(), "{program} --version: {}", out.status);
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.trim(),
            format!("{program} {} (git {revision})", env!("CARGO_PKG_VERSION"))
        );
    }
}

/// Runs `program --config <config> run` with `NOTIFY_SOCKET` pointing at a fresh socket, and
/// checks READY=1 arrives, then STOPPING=1 after SIGTERM, and a clean exit.
fn notifies(dir: &Path, program: &str, config: &Path) {
    let socket_path = dir.join(format!("{program}-notify.sock"));
    let socket = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    // A deadline on a blocking receive, not a sleep: the datagram normally arrives at once.
    socket
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("set a receive deadline");
    let log =
        std::fs::File::create(dir.join(format!("{program}-notify.log"))).expect("create the log");
    let mut child = Command::new(binary(program))
        .arg("--config")
        .arg(config)
        .arg("run")
        .env("NOTIFY_SOCKET", &socket_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the program");
    let mut buf = [0u8; 512];
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("{program} never said READY=1: {e}"));
    assert_eq!(&buf[..n], b"READY=1\n", "{program}");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits i32"));
    kill(pid, Signal::SIGTERM).expect("SIGTERM");
    let n = socket
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("{program} never said STOPPING=1: {e}"));
    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(
        text.starts_with("STOPPING=1\nSTATUS="),
        "{program}: {text:?}"
    );
    let status = child.wait().expect("wait for the exit");
    assert!(status.success(), "{program} exited with {status}");
}

#[test]
fn both_programs_tell_systemd_when_they_are_ready_and_stopping() {
    let env = Env::new("service");
    let mut aggregator = env.start_aggregator();
    let cert = env.issue_agent("notify-1");
    let mut agent = env.start_agent(&cert, &aggregator, AgentOptions::default());
    // The harness wrote working configurations; once they are shown to work, run each program
    // again under a notify socket.
    env.wait_for("the agent to be online", || {
        let entry = aggregator.agent_status("notify-1");
        match entry.as_ref().and_then(|e| e["status"].as_str()) {
            Some("online") => Ok(()),
            _ => Err(format!("{entry:?}")),
        }
    });
    agent.terminate();
    aggregator.terminate();
    let aggregator_config = aggregator.config_path().to_owned();
    let agent_config = agent.config_path().to_owned();
    notifies(env.path(), "outpost-aggregator", &aggregator_config);
    notifies(env.path(), "outpost-agent", &agent_config);
}
