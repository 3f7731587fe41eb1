//! `outpost-aggregator quickstart`: a throwaway PKI, an aggregator and one agent on loopback,
//! and the fleet's status as the agent comes online. Ctrl-C stops both cleanly.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{config, pki, status};

/// The agent id the quickstart issues a certificate for.
pub const AGENT_ID: &str = "quickstart-agent";

fn quote(p: &Path) -> String {
    toml::Value::String(p.display().to_string()).to_string()
}

/// The name of the viewer token each quickstart run makes (revoking the previous run's).
pub const VIEWER_TOKEN: &str = "quickstart-viewer";

/// Makes the run's viewer token, revoking the one of the run before.
fn viewer_token(v: &config::Validated) -> anyhow::Result<String> {
    use crate::store::StateStore;
    let store = crate::run::open_store(v)?;
    let now = outpost_common::time::now_ns();
    store.revoke_token(VIEWER_TOKEN, now)?;
    let made = crate::tokens::create(VIEWER_TOKEN, crate::tokens::Role::Viewer, now, None);
    store.insert_token(&made.record)?;
    Ok(made.text)
}

/// Runs the quickstart in `dir` (created if needed; reused if it exists).
pub fn run(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("{}: cannot resolve", dir.display()))?;
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let agent_exe = exe.with_file_name("outpost-agent");
    if !agent_exe.exists() {
        bail!(
            "{} is missing: build both programs first with `cargo build --release`",
            agent_exe.display()
        );
    }
    let tls = dir.join("tls");
    if tls.join("ca.pem").exists() {
        println!("Reusing the PKI in {}", tls.display());
    } else {
        pki::init(
            &tls,
            &["localhost".to_owned()],
            Duration::from_secs(365 * 86400),
            false,
        )?;
        println!(
            "Created a throwaway CA and server certificate in {}",
            tls.display()
        );
    }
    let agent_cert = tls.join("agents").join(format!("{AGENT_ID}.pem"));
    if !agent_cert.exists() {
        pki::issue_agent(&tls, AGENT_ID, Duration::from_secs(30 * 86400), false)?;
        println!("Issued a certificate for agent `{AGENT_ID}`");
    }
    let log_dir = dir.join("log");
    let agg_data = dir.join("aggregator");
    let agg_conf = dir.join("aggregator.toml");
    std::fs::write(
        &agg_conf,
        format!(
            "# Written by `outpost-aggregator quickstart`.\n\
             data_dir = {}\nlisten = \"127.0.0.1:0\"\n\n[tls]\ndir = {}\n\n\
             [fleet]\nheartbeat_interval = \"2s\"\noffline_after = \"10s\"\n\n\
             [api]\nlisten = \"127.0.0.1:0\"\n\n[log]\ndir = {}\n",
            quote(&agg_data),
            quote(&tls),
            quote(&log_dir)
        ),
    )
    .with_context(|| format!("{}: cannot write", agg_conf.display()))?;
    let validated = config::load(&agg_conf)?;
    let _ = std::fs::remove_file(validated.listen_file());
    let _ = std::fs::remove_file(validated.api_listen_file());

    let mut children = Children::default();
    children.spawn(
        "aggregator",
        Command::new(&exe).arg("--config").arg(&agg_conf).arg("run"),
    )?;
    let addr = wait_for_file(
        &validated.listen_file(),
        Duration::from_secs(30),
        &mut children,
    )?;
    println!("Aggregator listening on {addr} (udp)");
    let api_addr = wait_for_file(
        &validated.api_listen_file(),
        Duration::from_secs(30),
        &mut children,
    )?;
    let viewer = viewer_token(&validated)?;
    println!(
        "HTTP API on http://{api_addr}/api/v1, with a viewer token (a new one each run):\n  \
         curl -H 'Authorization: Bearer {viewer}' http://{api_addr}/api/v1/agents\n\
         Web console on http://{api_addr}/ (sign in with the same token)."
    );

    let agent_conf = dir.join("agent.toml");
    let port = addr.rsplit(':').next().unwrap_or("4433").trim().to_owned();
    std::fs::write(
        &agent_conf,
        format!(
            "# Written by `outpost-aggregator quickstart`.\n\
             data_dir = {}\n\n[aggregator]\nendpoint = \"quic://127.0.0.1:{port}\"\nserver_name = \"localhost\"\n\
             ca = {}\ncert = {}\nkey = {}\n\n[ship]\nheartbeat_interval = \"2s\"\n\n\
             [synthetic]\nenabled = true\nrate = 20\n\n[log]\ndir = {}\n",
            quote(&dir.join("agent")),
            quote(&tls.join("ca.pem")),
            quote(&agent_cert),
            quote(&tls.join("agents").join(format!("{AGENT_ID}.key"))),
            quote(&log_dir)
        ),
    )
    .with_context(|| format!("{}: cannot write", agent_conf.display()))?;
    children.spawn(
        "agent",
        Command::new(&agent_exe)
            .arg("--config")
            .arg(&agent_conf)
            .arg("run"),
    )?;
    println!(
        "Agent `{AGENT_ID}` started. Logs in {}. Press Ctrl-C to stop.\n\
         In another terminal: {} status --config {}\n",
        log_dir.display(),
        exe.display(),
        agg_conf.display()
    );

    let interrupted = watch_status(&validated, &mut children);
    println!("\nStopping the agent and the aggregator...");
    children.stop_all(Duration::from_secs(15));
    println!(
        "Stopped. Quickstart data stays in {}; run again to reuse it.",
        dir.display()
    );
    interrupted
}

/// Prints the fleet's status whenever it changes, until Ctrl-C or a child exits.
fn watch_status(v: &config::Validated, children: &mut Children) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a timer")?;
    rt.block_on(async {
        let mut last = String::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut online_said = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::signal::ctrl_c() => return Ok(()),
            }
            if let Some(name) = children.exited() {
                bail!("the {name} exited unexpectedly; see its log");
            }
            let table = match status::render(v, false) {
                Ok(t) => t,
                Err(e) => format!("(status unavailable: {e:#})\n"),
            };
            // Only the status column matters for "changed"; "last seen" ticks every second.
            let key: String = table
                .lines()
                .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                .collect();
            if key != last {
                last = key;
                println!("{table}");
                if !online_said
                    && table
                        .lines()
                        .any(|l| l.starts_with(AGENT_ID) && l.contains("online"))
                {
                    online_said = true;
                    println!("Agent `{AGENT_ID}` is online: events are flowing into the store.\n");
                }
            }
        }
    })
}

fn wait_for_file(
    path: &Path,
    deadline: Duration,
    children: &mut Children,
) -> anyhow::Result<String> {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if let Ok(s) = std::fs::read_to_string(path)
            && !s.trim().is_empty()
        {
            return Ok(s.trim().to_owned());
        }
        if let Some(name) = children.exited() {
            bail!("the {name} exited during start-up; see the messages above");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the aggregator did not start listening within {deadline:?}")
}

/// Child processes stopped with SIGTERM (then SIGKILL after a grace period).
#[derive(Debug, Default)]
struct Children {
    list: Vec<(&'static str, Child)>,
}

impl Children {
    fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> anyhow::Result<()> {
        // A process group of its own: Ctrl-C reaches only the quickstart, which then stops the
        // agent before the aggregator so the agent's last acknowledgements arrive.
        let child = cmd
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start the {name}"))?;
        self.list.push((name, child));
        Ok(())
    }

    fn exited(&mut self) -> Option<&'static str> {
        self.list
            .iter_mut()
            .find_map(|(n, c)| matches!(c.try_wait(), Ok(Some(_))).then_some(*n))
    }

    fn stop_all(&mut self, grace: Duration) {
        // Stop the agent first so it can hand over its last acknowledgements.
        for (_, child) in self.list.iter_mut().rev() {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < grace {
                std::thread::sleep(Duration::from_millis(50));
            }
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop_all(Duration::from_secs(5));
    }
}

/// The default quickstart directory.
pub fn default_dir() -> PathBuf {
    PathBuf::from("quickstart-data")
}
