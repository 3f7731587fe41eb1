//! Agents the aggregator must refuse: a certificate from another CA, a revoked one (refused
//! from the moment the aggregator reloads its CRL, and disconnected if already connected), none
//! at all, and an expired one. Each is refused with its reason in the aggregator's log, and
//! nothing of theirs is stored.

use std::time::{Duration, SystemTime};

use outpost_common::wire::close_code;
use outpost_tests::raw::{self, RawClient};
use outpost_tests::{Agent, AgentCert, AgentOptions, Aggregator, Env, Kind, Synthetic};

/// Refusals an agent must have logged before the test believes it cannot get in.
const ATTEMPTS: usize = 3;

/// The agent's log line for an established connection (not to be confused with "not connected").
const CONNECTED: &str = "INFO connected to the aggregator";

/// Lines of the aggregator's log that report a refused connection.
fn refusals(aggregator: &Aggregator) -> Vec<String> {
    aggregator
        .log()
        .lines()
        .filter(|l| l.contains("refused a connection"))
        .map(str::to_owned)
        .collect()
}

/// Waits until the aggregator has logged a refusal whose line contains `reason`.
fn wait_refusal(env: &Env, aggregator: &Aggregator, reason: &str) -> String {
    env.wait_for(
        &format!("a refusal for `{reason}` in the aggregator's log"),
        || {
            let all = refusals(aggregator);
            all.iter()
                .find(|l| l.contains(reason))
                .cloned()
                .ok_or_else(|| format!("refusals so far: {all:#?}"))
        },
    )
}

/// Waits until `agent` has failed to connect `n` more times than `before` failures.
fn wait_failed_attempts(env: &Env, agent: &Agent, before: usize, n: usize) {
    env.wait_for("the agent to fail to connect, again and again", || {
        let failed = agent.log_count("not connected to the aggregator");
        if failed >= before + n {
            Ok(())
        } else {
            Err(format!("{} failed attempts", failed - before))
        }
    });
}

/// An agent that never got in: never connected, never registered, nothing stored.
fn assert_never_admitted(env: &Env, aggregator: &Aggregator, agent: &Agent) {
    wait_failed_attempts(env, agent, 0, ATTEMPTS);
    let id = agent.agent_id();
    assert_eq!(agent.log_count(CONNECTED), 0, "{}", agent.log());
    let store = aggregator.store();
    assert_eq!(
        store.knows_agent(id),
        Ok(false),
        "{id} must not be registered"
    );
    assert_eq!(store.all_events(id), Ok(0), "nothing of {id} may be stored");
}

#[test]
fn a_certificate_from_another_ca_is_refused() {
    let env = Env::new("auth-foreign-ca");
    let aggregator = env.start_aggregator();
    let other = env.path().join("other-pki");
    env.pki_init(&other);
    let foreign = env.issue_agent_in(&other, "foreign-1");
    // The agent trusts the real aggregator; only its own certificate is foreign.
    let cert = AgentCert {
        ca: env.pki_dir().join("ca.pem"),
        ..foreign
    };
    let agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions::synthetic(Synthetic::logs(100)),
    );
    let line = wait_refusal(&env, &aggregator, "invalid peer certificate");
    // Two Outpost CAs made on the same day share their subject name, so the verifier finds
    // "the" issuer and then the signature does not match; a CA with another name is unknown.
    assert!(
        line.contains("BadSignature") || line.contains("UnknownIssuer"),
        "{line}"
    );
    assert_never_admitted(&env, &aggregator, &agent);
}

#[test]
fn an_expired_certificate_is_refused() {
    let env = Env::new("auth-expired");
    let aggregator = env.start_aggregator();
    let day = Duration::from_secs(86_400);
    let now = SystemTime::now();
    let issued = outpost_aggregator::pki::issue_agent_with_validity(
        &env.pki_dir(),
        "expired-1",
        now - 30 * day,
        now - day,
        false,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let cert = AgentCert {
        agent_id: issued.agent_id,
        ca: env.pki_dir().join("ca.pem"),
        cert: issued.cert_path,
        key: issued.key_path,
    };
    let agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions::synthetic(Synthetic::logs(100)),
    );
    wait_refusal(
        &env,
        &aggregator,
        "invalid peer certificate: certificate expired",
    );
    assert_never_admitted(&env, &aggregator, &agent);
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let env = Env::new("auth-no-cert");
    let aggregator = env.start_aggregator();
    let config = raw::client_without_certificate(&env.pki_dir().join("ca.pem"));
    let outcome = raw::block_on(async {
        // The handshake may look complete to the client; the refusal shows at the first
        // stream operation at the latest.
        let client = match RawClient::connect(aggregator.addr(), config).await {
            Ok(c) => c,
            Err(e) => return e,
        };
        let refused = match client.hello().await {
            Ok(_) => panic!("a client without a certificate got a Welcome"),
            Err(e) => e,
        };
        let closed = client.closed().await.unwrap_or_else(|e| panic!("{e}"));
        client.finish().await;
        format!("{refused}; connection closed: {closed}")
    });
    // The handshake completes (a client without a certificate may enroll), then the agent
    // ALPN without a certificate is refused before any session.
    wait_refusal(&env, &aggregator, "the peer presented no certificate");
    assert!(
        outcome.contains("certificate"),
        "the client is told why: {outcome}"
    );
    assert!(
        !aggregator.log().contains("agent connected"),
        "{}",
        aggregator.log()
    );
}

#[test]
fn a_revoked_agent_is_disconnected_and_cannot_reconnect() {
    const AGENT: &str = "revoked-1";
    let env = Env::new("auth-revoked");
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    // Produces for as long as the test runs.
    let agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions::synthetic(Synthetic::logs(0).rate(500)),
    );
    let store = aggregator.store();
    env.wait_stored(&store, AGENT, Kind::Log, 1);
    let connects = agent.log_count(CONNECTED);
    assert_eq!(connects, 1, "{}", agent.log());
    let failures = agent.log_count("not connected to the aggregator");

    env.revoke(AGENT);
    env.wait_until(
        "the aggregator to close the revoked agent's connection",
        || {
            aggregator
                .log()
                .contains("certificate revoked; closing the agent's connection")
        },
    );
    wait_refusal(&env, &aggregator, "invalid peer certificate: Revoked");
    // Batches received before the close may still be committing; once the agent has been
    // refused twice they have landed, and from then on nothing more may.
    wait_failed_attempts(&env, &agent, failures, 2);
    let frozen = store
        .synthetic_count(AGENT, Kind::Log)
        .unwrap_or_else(|e| panic!("{e}"));
    wait_failed_attempts(&env, &agent, failures, 2 + ATTEMPTS);
    assert_eq!(
        agent.log_count(CONNECTED),
        connects,
        "the revoked agent got back in:\n{}",
        agent.log()
    );
    assert_eq!(
        store.synthetic_count(AGENT, Kind::Log),
        Ok(frozen),
        "stored after the refusal"
    );
    let entry = aggregator
        .agent_status(AGENT)
        .unwrap_or_else(|| panic!("{AGENT} not in status"));
    assert_eq!(entry["connected"], false, "{entry}");
    assert_eq!(entry["status"], "offline", "{entry}");
    assert_eq!(
        entry["certificate_issued"], false,
        "a revoked certificate is not listed as issued: {entry}"
    );
    let closed = agent.log();
    assert!(
        closed.contains(&format!("code {}", close_code::UNAUTHORIZED)),
        "the agent was told why its connection closed:\n{closed}"
    );
}
