//! SIGHUP: the agent reads its configuration again. Added log sources start, removed ones stop,
//! unchanged ones keep running where they are, a source added back resumes from its committed
//! positions, and a bad file is refused whole with the running configuration kept.

use std::io::Write;
use std::path::Path;

use outpost_tests::{AgentOptions, Env, toml_string};

const AGENT: &str = "reload-1";

fn source(name: &str, file: &Path) -> String {
    format!(
        "[[logs.files]]\nname = \"{name}\"\ninclude = [{}]\nread_from = \"beginning\"\n",
        toml_string(file)
    )
}

fn append(path: &Path, from: u64, n: u64) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("the log file opens");
    for i in from..from + n {
        writeln!(f, "line {i:06}").expect("the log file takes a line");
    }
}

#[test]
fn sighup_applies_added_removed_and_unchanged_sources_and_refuses_a_bad_file() {
    let env = Env::new("reload");
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let a = env.path().join("a.log");
    let b = env.path().join("b.log");
    append(&a, 0, 100);
    append(&b, 0, 50);
    let agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions {
            extra_toml: source("a", &a),
            ..AgentOptions::default()
        },
    );
    let store = aggregator.store();
    let count = |file: &Path| {
        store
            .logs(AGENT, &file.display().to_string())
            .map(|l| l.len() as u64)
    };
    let wait_count = |file: &Path, n: u64| {
        env.wait_for(
            &format!("{n} lines of {} stored", file.display()),
            || match count(file)? {
                got if got == n => Ok(()),
                got if got > n => panic!("{got} lines of {} stored, {n} written", file.display()),
                got => Err(format!("{got} stored")),
            },
        );
    };
    wait_count(&a, 100);
    let config = std::fs::read_to_string(agent.config_path()).expect("the agent's config");
    let with = |sources: &str| {
        let text = config.replace(&source("a", &a), sources);
        std::fs::write(agent.config_path(), text).expect("the config is written");
    };
    let reloads = || agent.log_count("configuration reloaded");

    // B added, A unchanged: A keeps its files open and its place; B reads its file whole.
    with(&format!("{}{}", source("a", &a), source("b", &b)));
    agent.hangup();
    env.wait_until("the first reload", || reloads() == 1);
    append(&a, 100, 100);
    wait_count(&b, 50);
    wait_count(&a, 200);
    assert_eq!(agent.log_count("log file source starting source=a"), 1);
    assert_eq!(agent.log_count(r#"started=["logs:b"]"#), 1);

    // A bad file is refused whole; everything keeps running as it was.
    std::fs::write(agent.config_path(), "[[logs.files]]\ninclude = 3\n").expect("written");
    agent.hangup();
    env.wait_until("the bad file refused", || {
        agent.log_count("the new configuration is refused") == 1
    });
    assert!(agent.is_running());
    append(&a, 200, 10);
    append(&b, 50, 10);
    wait_count(&a, 210);
    wait_count(&b, 60);

    // B removed: it stops, and what is written to its file meanwhile waits there.
    with(&source("a", &a));
    agent.hangup();
    env.wait_until("the second reload", || reloads() == 2);
    assert_eq!(agent.log_count(r#"stopped=["logs:b"]"#), 1);
    append(&b, 60, 20);
    append(&a, 210, 10);
    wait_count(&a, 220);
    assert_eq!(count(&b), Ok(60), "a removed source reads nothing");

    // B back: it resumes from its committed position, so only the 20 new lines arrive.
    with(&format!("{}{}", source("a", &a), source("b", &b)));
    agent.hangup();
    env.wait_until("the third reload", || reloads() == 3);
    wait_count(&b, 80);
    let bodies: Vec<String> = store
        .logs(AGENT, &b.display().to_string())
        .expect("b's lines")
        .into_iter()
        .map(|l| l.body)
        .collect();
    let expected: Vec<String> = (0..80).map(|i| format!("line {i:06}")).collect();
    assert_eq!(bodies, expected, "each of b's lines once, in order");
}
