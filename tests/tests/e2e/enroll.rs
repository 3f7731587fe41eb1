//! Enrollment end to end: an agent host with nothing but a token (no certificate copied) enrolls
//! with `outpost-agent enroll`, comes online with the token's labels, and ships; a token used
//! up, expired, from another CA, with a tampered CA hash, or not a token at all is refused with
//! the documented exit status and nothing written; and an agent with one-minute certificates
//! renews twice while shipping a numbered stream, losing and repeating nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use outpost_common::enroll::TokenBody;
use outpost_tests::{
    AgentOptions, Aggregator, AggregatorOptions, Env, Kind, LineWriter, Pace, Store, Synthetic,
    UnenrolledAgent, toml_string,
};
use serde_json::Value;

/// Exit statuses of `outpost-agent enroll` (its `--help`).
const EXIT_USAGE: i32 = 64;
const EXIT_UNAVAILABLE: i32 = 69;
const EXIT_PROTOCOL: i32 = 76;
const EXIT_REFUSED: i32 = 77;

/// The endpoint agents enroll at: the server certificate of `pki init` names 127.0.0.1.
fn endpoint(aggregator: &Aggregator) -> String {
    format!("127.0.0.1:{}", aggregator.addr().port())
}

/// `token create --enroll --endpoint <the aggregator> <args>` on `aggregator`: the token.
fn create_token(aggregator: &Aggregator, args: &[&str]) -> String {
    let endpoint = endpoint(aggregator);
    let mut all = vec!["token", "create", "--enroll", "--endpoint", &endpoint];
    all.extend_from_slice(args);
    let out = aggregator.cli_ok(&all);
    let token = out.trim().to_owned();
    assert!(
        token.starts_with("outpost-enroll-") && !token.contains('\n'),
        "token create printed {out:?}"
    );
    token
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts that `enroll` exited with `code` and said something containing `needle`.
fn assert_exit(out: &Output, code: i32, needle: &str) {
    let said = text(out);
    assert_eq!(out.status.code(), Some(code), "enroll said:\n{said}");
    assert!(
        said.contains(needle),
        "enroll exited {code} but did not say `{needle}`:\n{said}"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A refused enrollment leaves the host as it was: no key, no certificate, no CA, the same
/// configuration.
fn assert_untouched(host: &UnenrolledAgent, config_before: &str) {
    for path in [&host.key, &host.cert, &host.ca] {
        assert!(
            !path.exists(),
            "{} was written by a failed enrollment",
            path.display()
        );
    }
    assert_eq!(
        read(&host.config),
        config_before,
        "a failed enrollment changed the configuration"
    );
}

/// The certificates `agents certs --json` lists for `agent_id`: serial to not-after.
fn listed_certs(aggregator: &Aggregator, agent_id: &str) -> BTreeMap<String, i64> {
    let out = aggregator.cli_ok(&["agents", "certs", "--json"]);
    let all: Vec<Value> = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("agents certs --json printed invalid JSON ({e}):\n{out}"));
    all.iter()
        .filter(|c| c["agent_id"].as_str() == Some(agent_id))
        .map(|c| {
            (
                c["serial_hex"].as_str().unwrap_or_default().to_owned(),
                c["not_after_ns"].as_i64().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_fresh_agent_enrolls_with_a_token_and_comes_online() {
    const EVENTS: u64 = 300;
    let env = Env::new("enroll-fresh");
    let aggregator = env.start_aggregator();
    let token = create_token(&aggregator, &["--uses", "1", "--label", "team=web"]);

    let host = env.unenrolled_agent(
        "web-1",
        AgentOptions::synthetic(Synthetic::logs(EVENTS).rate(100)),
    );
    let out = env.enroll(&host, &["--token", &token, "--id", "web-1"]);
    assert_eq!(out.status.code(), Some(0), "enroll:\n{}", text(&out));

    // The configuration now names the aggregator that answered, and the token's label.
    let config = read(&host.config);
    let port = aggregator.addr().port();
    assert!(
        config.contains(&format!("endpoint = \"quic://127.0.0.1:{port}\"")),
        "{config}"
    );
    assert!(config.contains("server_name = \"127.0.0.1\""), "{config}");
    assert!(config.contains("[labels]"), "{config}");
    assert!(config.contains("team = \"web\""), "{config}");
    // The key was made here and only the agent may read it; the CA is the aggregator's.
    let mode = std::fs::metadata(&host.key)
        .unwrap_or_else(|e| panic!("{}: {e}", host.key.display()))
        .permissions()
        .mode()
        & 0o777;
    assert!(mode == 0o600 || mode == 0o640, "key mode {mode:o}");
    assert!(read(&host.cert).contains("BEGIN CERTIFICATE"));
    assert_eq!(read(&host.ca), read(&env.pki_dir().join("ca.pem")));
    assert!(
        read(&host.key).contains("PRIVATE KEY"),
        "the key file holds a key"
    );

    // Enrolled: it runs with what enrollment wrote, and the aggregator knows it.
    let _agent = env.start_agent_from_config(&host, "web-1");
    let store = aggregator.store();
    let report = env.wait_exactly_once(&store, "web-1", Kind::Log, EVENTS);
    assert!(report.is_exact(), "{report}");
    let entry = env.wait_for("web-1 online with the token's label", || {
        let entry = aggregator.agent_status("web-1").ok_or("not listed")?;
        if entry["status"] == "online" && entry["connected"] == true {
            Ok(entry)
        } else {
            Err(entry.to_string())
        }
    });
    assert_eq!(entry["labels"]["team"], "web", "{entry}");
    assert_eq!(entry["certificate_issued"], true, "{entry}");
    assert_eq!(listed_certs(&aggregator, "web-1").len(), 1);

    // The token allowed one enrollment: a second host is refused, and nothing is written.
    let second = env.unenrolled_agent("web-2", AgentOptions::default());
    let before = read(&second.config);
    let out = env.enroll(&second, &["--token", &token, "--id", "web-2"]);
    assert_exit(&out, EXIT_REFUSED, "the enrollment token is used up");
    assert_untouched(&second, &before);
    assert!(listed_certs(&aggregator, "web-2").is_empty());

    // Enrolling again over an identity needs --force.
    let out = env.enroll(&host, &["--token", &token, "--id", "web-1"]);
    assert_exit(&out, EXIT_USAGE, "enrolled already");
}

/// A configuration for an aggregator of another PKI (never started), to make tokens with.
fn foreign_aggregator_config(env: &Env) -> PathBuf {
    let pki = env.path().join("other-pki");
    env.pki_init(&pki);
    let config = env.path().join("other-aggregator.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {}\nlisten = \"127.0.0.1:0\"\n\n[tls]\ndir = {}\n\n[log]\ndir = {}\n\n\
             [api]\nlisten = \"127.0.0.1:0\"\n",
            toml_string(&env.path().join("other-aggregator")),
            toml_string(&pki),
            toml_string(&env.path().join("other-aggregator-logs")),
        ),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", config.display()));
    config
}

#[test]
fn bad_tokens_are_refused() {
    let env = Env::new("enroll-bad-tokens");
    let aggregator = env.start_aggregator();
    let host = env.unenrolled_agent("bad-1", AgentOptions::default());
    let before = read(&host.config);
    let enroll = |token: &str| env.enroll(&host, &["--token", token, "--id", "bad-1"]);

    // Expired: made with the shortest validity, then used once the aggregator lists it expired.
    let expired = create_token(&aggregator, &["--expires", "1s"]);
    let id = TokenBody::parse(&expired)
        .unwrap_or_else(|e| panic!("{e}"))
        .id_hex();
    env.wait_for("the token to be listed expired", || {
        let out = aggregator.cli_ok(&["token", "list", "--json"]);
        let all: Vec<Value> = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        let entry = all
            .iter()
            .find(|t| t["id"].as_str() == Some(id.as_str()))
            .ok_or_else(|| format!("{id} not listed: {out}"))?;
        if entry["state"] == "expired" {
            Ok(())
        } else {
            Err(entry.to_string())
        }
    });
    assert_exit(
        &enroll(&expired),
        EXIT_REFUSED,
        "the enrollment token expired",
    );
    assert_untouched(&host, &before);

    // From another CA, pointing at this aggregator: the agent will not talk to it.
    let other = foreign_aggregator_config(&env);
    let endpoint = endpoint(&aggregator);
    let other_path = other.display().to_string();
    let out = env.aggregator_cli_ok(&[
        "--config",
        &other_path,
        "token",
        "create",
        "--enroll",
        "--endpoint",
        &endpoint,
    ]);
    let foreign = out.trim();
    assert_exit(
        &enroll(foreign),
        EXIT_PROTOCOL,
        "the aggregator's CA is not the one the token names",
    );
    assert_untouched(&host, &before);

    // A valid token with one byte of its CA hash changed.
    let good = create_token(&aggregator, &[]);
    let mut body = TokenBody::parse(&good).unwrap_or_else(|e| panic!("{e}"));
    body.ca_sha256[7] ^= 0x01;
    assert_exit(
        &enroll(&body.encode()),
        EXIT_PROTOCOL,
        "the aggregator's CA is not the one the token names",
    );
    assert_untouched(&host, &before);

    // The same token pointing at a port where nothing listens.
    let closed = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut body = TokenBody::parse(&good).unwrap_or_else(|e| panic!("{e}"));
    body.endpoints = vec![closed.to_string()];
    assert_exit(
        &enroll(&body.encode()),
        EXIT_UNAVAILABLE,
        "no endpoint of the token answered",
    );
    assert_untouched(&host, &before);

    // Not tokens at all.
    for garbage in [
        "garbage",
        "outpost-enroll-",
        "outpost-enroll-!!!not-base64!!!",
        "outpost-enroll-AAAA",
    ] {
        assert_exit(&enroll(garbage), EXIT_USAGE, "enrollment token");
        assert_untouched(&host, &before);
    }

    // None of the refusals spent the good token: it still enrolls, once.
    let out = enroll(&good);
    assert_eq!(out.status.code(), Some(0), "enroll:\n{}", text(&out));
    assert_eq!(listed_certs(&aggregator, "bad-1").len(), 1);
}

/// Line numbers stored for `source`, with how many times each.
fn stored(store: &Store, agent: &str, source: &str) -> Result<BTreeMap<u64, u32>, String> {
    let mut seen = BTreeMap::new();
    for log in store.logs(agent, source)? {
        let n = log
            .body
            .strip_prefix("seq ")
            .and_then(|d| d.trim().parse::<u64>().ok())
            .ok_or_else(|| format!("not a numbered line: {:?}", log.body))?;
        *seen.entry(n).or_insert(0) += 1;
    }
    Ok(seen)
}

#[test]
fn an_agent_renews_its_certificate_twice_while_shipping_and_nothing_is_lost_or_doubled() {
    const AGENT: &str = "renew-1";
    const RENEWED: &str = "certificate renewed; reconnecting with it";
    let env = Env::new("enroll-renew");
    let aggregator = env.start_aggregator_with(AggregatorOptions {
        extra: "[enroll]\nagent_validity = \"1m\"\n".to_owned(),
        ..AggregatorOptions::default()
    });
    let token = create_token(&aggregator, &[]);
    let dir = env.path().join("logs");
    std::fs::create_dir_all(&dir).expect("the log directory is made");
    let log = dir.join("app.log");
    let source = log.display().to_string();
    // `seq NNNNNNNN` lines, a few every 10 ms.
    let writer = LineWriter::start(
        log.clone(),
        Pace {
            lines: 4,
            pause: Duration::from_millis(10),
            reopen: false,
        },
        |n| format!("seq {n:08}"),
    );
    let host = env.unenrolled_agent(
        AGENT,
        AgentOptions {
            extra_toml: format!(
                "[[logs.files]]\ninclude = [{}]\nread_from = \"beginning\"\n",
                toml_string(&log)
            ),
            ..AgentOptions::default()
        },
    );
    let out = env.enroll(&host, &["--token", &token, "--id", AGENT]);
    assert_eq!(out.status.code(), Some(0), "enroll:\n{}", text(&out));
    let agent = env.start_agent_from_config(&host, AGENT);
    let store = aggregator.store();

    // Every certificate the aggregator lists for the agent, as it lists them: expired ones are
    // dropped from its file when the next is issued, so they are collected while listed.
    let mut serials: BTreeSet<String> = BTreeSet::new();
    let mut wait_certs = |n: usize| {
        env.wait_for_every(
            Duration::from_millis(500),
            &format!("{n} certificates of {AGENT} issued"),
            || {
                serials.extend(listed_certs(&aggregator, AGENT).into_keys());
                let renewed = agent.log_count(RENEWED);
                if serials.len() >= n && renewed + 1 >= n {
                    Ok(())
                } else {
                    Err(format!(
                        "{} certificates seen, {renewed} renewals logged by the agent; \
                         {} lines written",
                        serials.len(),
                        writer.written()
                    ))
                }
            },
        );
    };
    // Each renewal comes 40 s into a one-minute certificate: one wait per renewal.
    wait_certs(1);
    wait_certs(2);
    wait_certs(3);
    assert!(agent.is_running(), "the agent stopped:\n{}", agent.log());
    // Two renewals (a third may have begun): a one-minute certificate is renewed 40 s into
    // its life, not at once and not again and again.
    let renewals = agent.log_count(RENEWED);
    assert!(
        (2..=3).contains(&renewals),
        "{renewals} renewals logged, where a one-minute certificate is renewed after 40 s; \
         certificates seen: {serials:?}\n{}",
        agent.log()
    );

    // Stopped appending: every line written reaches the store, each once.
    let written = writer.finish();
    assert!(written > 0);
    env.wait_for_every(
        Duration::from_millis(250),
        "every line stored exactly once",
        || {
            let seen = stored(&store, AGENT, &source)?;
            let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).take(5).collect();
            assert!(
                twice.is_empty(),
                "lines stored twice (line, times): {twice:?}"
            );
            assert!(
                seen.keys().all(|n| *n < written),
                "a line never written was stored"
            );
            if seen.len() as u64 == written {
                Ok(())
            } else {
                let missing: Vec<u64> = (0..written)
                    .filter(|n| !seen.contains_key(n))
                    .take(10)
                    .collect();
                Err(format!(
                    "{} of {written} stored; first missing {missing:?}",
                    seen.len()
                ))
            }
        },
    );
    let entry = aggregator
        .agent_status(AGENT)
        .unwrap_or_else(|| panic!("{AGENT} not in status"));
    assert_eq!(entry["connected"], true, "{entry}");
    assert_eq!(entry["certificate_issued"], true, "{entry}");
}

#[test]
fn an_agent_enrolls_at_its_first_start_with_a_token_file() {
    const EVENTS: u64 = 200;
    let env = Env::new("enroll-first-start");
    let aggregator = env.start_aggregator();
    let token = create_token(&aggregator, &["--label", "role=first-start"]);
    // At first start the agent asks for its host name as its id.
    let id = read(Path::new("/proc/sys/kernel/hostname"))
        .trim()
        .to_owned();
    let host = env.unenrolled_agent(
        "first-start",
        AgentOptions::synthetic(Synthetic::logs(EVENTS).rate(100)),
    );
    let token_file = env.path().join("enroll.token");
    std::fs::write(&token_file, format!("{token}\n")).expect("the token file is written");
    let config = read(&host.config).replacen(
        "[aggregator]\n",
        &format!(
            "[aggregator]\nenroll_token = {}\n",
            toml_string(&token_file)
        ),
        1,
    );
    std::fs::write(&host.config, config).expect("the configuration is written");

    let _agent = env.start_agent_from_config(&host, &id);
    let store = aggregator.store();
    let report = env.wait_exactly_once(&store, &id, Kind::Log, EVENTS);
    assert!(report.is_exact(), "{report}");
    assert!(
        !token_file.exists(),
        "the token file, a secret, is removed once enrolled"
    );
    let config = read(&host.config);
    let port = aggregator.addr().port();
    assert!(
        config.contains(&format!("endpoint = \"quic://127.0.0.1:{port}\"")),
        "{config}"
    );
    assert!(host.cert.exists() && host.key.exists() && host.ca.exists());
    let entry = env.wait_for("the agent listed with the token's label", || {
        let entry = aggregator.agent_status(&id).ok_or("not listed")?;
        if entry["labels"]["role"] == "first-start" {
            Ok(entry)
        } else {
            Err(entry.to_string())
        }
    });
    assert_eq!(entry["certificate_issued"], true, "{entry}");
}
