//! `check-config` of both programs: a malformed file fails with exit status 64 and a message that
//! names the file, line and column; the shipped example configurations pass once the files
//! they name exist.

use std::path::Path;

use outpost_tests::{Env, toml_string};

/// Exit status of both programs for configuration errors (EX_USAGE).
const EXIT_CONFIG: i32 = 64;

/// (what, file content, line, column, words the message must contain)
type Case = (&'static str, &'static str, usize, usize, &'static str);

const AGENT_CASES: [Case; 4] = [
    (
        "syntax error",
        "data_dir = \"/tmp/x\"\n[aggregator\nendpoint = \"quic://127.0.0.1:4433\"\n",
        2,
        12,
        "unclosed table",
    ),
    (
        "unknown field",
        "[aggregator]\nendpoint = \"quic://127.0.0.1:4433\"\n\n[ship]\n  max_inflight = 3\n",
        5,
        3,
        "unknown field `max_inflight`",
    ),
    (
        "bad type",
        "[aggregator]\nendpoint = \"quic://127.0.0.1:4433\"\n[spool]\nmax_batch_events = \"many\"\n",
        4,
        20,
        "invalid type",
    ),
    (
        "bad endpoint URI",
        "# the scheme is missing\n[aggregator]\nendpoint = \"aggregator:4433\"\n",
        3,
        12,
        "aggregator.endpoint",
    ),
];

const AGGREGATOR_CASES: [Case; 4] = [
    (
        "syntax error",
        "data_dir = \"/tmp/x\"\nlisten = \n",
        2,
        10,
        "must be quoted",
    ),
    (
        "unknown field",
        "[fleet]\nheartbeat_interval = \"1s\"\n\n[ingest]\n    max_frame = 1\n",
        5,
        5,
        "unknown field `max_frame`",
    ),
    (
        "bad type",
        "[ingest]\nqueue = \"big\"\n",
        2,
        9,
        "invalid type",
    ),
    (
        "bad listen address",
        "data_dir = \"/tmp/x\"\nlisten = \"localhost:4433\"\n",
        2,
        10,
        "listen: `localhost:4433` is not a socket address",
    ),
];

fn check(env: &Env, program: &str, cases: &[Case]) {
    for (i, (what, text, line, column, words)) in cases.iter().enumerate() {
        let path = env.path().join(format!("{program}-{i}.toml"));
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let config = path.display().to_string();
        let args = ["--config", config.as_str(), "check-config"];
        let out = match program {
            "outpost-agent" => env.agent_cli(&args),
            _ => env.aggregator_cli(&args),
        };
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(EXIT_CONFIG),
            "{program}, {what}: {stderr}"
        );
        let prefix = format!("{program}: configuration error: {config}:{line}:{column}: ");
        assert!(
            stderr.starts_with(&prefix),
            "{program}, {what}: expected `{prefix}...`, got: {stderr}"
        );
        assert!(
            stderr.contains(words),
            "{program}, {what}: expected `{words}` in: {stderr}"
        );
    }
}

#[test]
fn malformed_agent_configurations_are_located() {
    check(
        &Env::new("check-config-agent"),
        "outpost-agent",
        &AGENT_CASES,
    );
}

#[test]
fn malformed_aggregator_configurations_are_located() {
    check(
        &Env::new("check-config-aggregator"),
        "outpost-aggregator",
        &AGGREGATOR_CASES,
    );
}

/// The shipped file, with the given (line prefix, replacement line) substitutions.
fn shipped(name: &str, substitutions: &[(&str, String)]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = String::new();
    let mut used = vec![false; substitutions.len()];
    for line in text.lines() {
        match substitutions
            .iter()
            .position(|(prefix, _)| line.starts_with(prefix))
        {
            Some(i) => {
                used[i] = true;
                out.push_str(&substitutions[i].1);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    for ((prefix, _), used) in substitutions.iter().zip(used) {
        assert!(used, "{name} has no line starting with `{prefix}`");
    }
    out
}

/// `check-config` of the shipped aggregator.toml with its TLS directory set to `tls_dir`.
fn check_shipped_aggregator(env: &Env, tls_dir: &Path) -> std::process::Output {
    let path = env.path().join("aggregator.toml");
    let tls = format!("dir = {}", toml_string(tls_dir));
    let text = shipped("aggregator.toml", &[("dir = \"/etc/outpost/tls\"", tls)]);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    env.aggregator_cli(&["--config", &path.display().to_string(), "check-config"])
}

fn assert_valid(out: &std::process::Output, what: &str) {
    assert!(
        out.status.success(),
        "{what}: check-config failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("configuration is valid"),
        "{what}: {stdout}"
    );
}

#[test]
fn the_shipped_configurations_pass_when_their_files_exist() {
    let env = Env::new("check-config-shipped");
    let pki = env.pki_dir();

    // The aggregator's file as shipped, its TLS directory pointed first at nothing, then at a
    // real PKI.
    let missing = env.path().join("no-pki-here");
    let out = check_shipped_aggregator(&env, &missing);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG), "{stderr}");
    assert!(
        stderr.contains(&missing.join("ca.pem").display().to_string()),
        "names the missing file: {stderr}"
    );
    assert_valid(&check_shipped_aggregator(&env, &pki), "aggregator.toml");

    // As shipped, the agent refuses to run without an aggregator; named, with real TLS files,
    // it passes.
    let shipped_agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
    let out = env.agent_cli(&[
        "--config",
        &shipped_agent.display().to_string(),
        "check-config",
    ]);
    assert_eq!(out.status.code(), Some(EXIT_CONFIG));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no aggregator configured"));

    let cert = env.issue_agent("shipped-1");
    let path = env.path().join("agent.toml");
    let text = shipped(
        "agent.toml",
        &[
            (
                "#endpoint = ",
                "endpoint = \"quic://127.0.0.1:4433\"".to_owned(),
            ),
            ("ca = ", format!("ca = {}", toml_string(&cert.ca))),
            ("cert = ", format!("cert = {}", toml_string(&cert.cert))),
            ("key = ", format!("key = {}", toml_string(&cert.key))),
        ],
    );
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let config = path.display().to_string();
    assert_valid(
        &env.agent_cli(&["--config", &config, "check-config"]),
        "agent.toml",
    );
}
