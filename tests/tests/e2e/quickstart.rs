//! The README's first command: `outpost-aggregator quickstart` makes a PKI, starts an aggregator
//! and an agent on loopback, shows the agent online, and stops both cleanly on Ctrl-C.

use std::process::{Child, Command, Stdio};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use outpost_tests::{Env, binary};

/// Kills the quickstart if the test fails before it stopped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn quickstart_shows_the_agent_online_and_stops_cleanly_on_ctrl_c() {
    let env = Env::new("quickstart");
    let dir = env.path().join("qs");
    let out_path = env.path().join("quickstart.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let child = Command::new(binary("outpost-aggregator"))
        .arg("quickstart")
        .arg("--dir")
        .arg(&dir)
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    let mut guard = Guard(child);
    let output = || std::fs::read_to_string(&out_path).unwrap_or_default();

    env.wait_for("the quickstart to show the agent online", || {
        let text = output();
        if text.contains("Agent `quickstart-agent` is online") {
            Ok(())
        } else {
            Err(text)
        }
    });
    let text = output();
    assert!(text.contains("Created a throwaway CA"), "{text}");
    assert!(text.contains("quickstart-agent  online"), "{text}");
    // The printed API command works as printed: the viewer token reads the fleet.
    let curl = text
        .lines()
        .find(|l| {
            l.trim_start()
                .starts_with("curl -H 'Authorization: Bearer ")
        })
        .unwrap_or_else(|| panic!("no API command printed:\n{text}"));
    let token = curl
        .split("Bearer ")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .unwrap_or_else(|| panic!("{curl}"));
    let url = curl.rsplit(' ').next().unwrap_or_else(|| panic!("{curl}"));
    let agents: serde_json::Value = reqwest::blocking::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .and_then(reqwest::blocking::Response::json)
        .unwrap_or_else(|e| panic!("{url}: {e}"));
    assert_eq!(
        agents["items"][0]["agent_id"], "quickstart-agent",
        "{agents}"
    );

    let pid = Pid::from_raw(i32::try_from(guard.0.id()).unwrap());
    kill(pid, Signal::SIGINT).unwrap();
    let status = env.wait_for("the quickstart to exit after Ctrl-C", || {
        match guard.0.try_wait() {
            Ok(Some(status)) => Ok(status),
            Ok(None) => Err(output()),
            Err(e) => Err(e.to_string()),
        }
    });
    let text = output();
    assert!(status.success(), "quickstart exited with {status}:\n{text}");
    // Both programs stopped cleanly, the agent first, so its last acknowledgements arrived.
    let agent = text
        .find("outpost-agent stopped")
        .unwrap_or_else(|| panic!("{text}"));
    let aggregator = text
        .find("outpost-aggregator stopped")
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        agent < aggregator,
        "the agent must stop before the aggregator:\n{text}"
    );
    assert!(text.contains("Stopped. Quickstart data stays in"), "{text}");
    assert!(dir.join("tls/ca.key").exists());
}
