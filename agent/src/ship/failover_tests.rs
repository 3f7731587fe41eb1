//! The failover state machine on a simulated clock, against endpoints that answer as a test says.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use outpost_common::config::parse_quic_uri;

use super::{Backoff, Candidate, Ending, Failover, FailoverEvent, Step, Target, reachable};

const MIN: Duration = Duration::from_millis(500);
const MAX: Duration = Duration::from_secs(8);

fn target(uri: &str) -> Target {
    let endpoint = parse_quic_uri(uri).unwrap();
    Target {
        server_name: endpoint.host.clone(),
        endpoint,
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A failover over `targets` and the clock it is driven with.
struct Sim {
    fo: Failover,
    start: Instant,
    now: Instant,
    /// What each target resolves to, by index; changed by tests.
    dns: Vec<Result<Vec<SocketAddr>, String>>,
    /// Every step taken: `"a"` for a connect to that address, `"resolve"`, `"wait <ms>"` (since
    /// the step before).
    log: Vec<String>,
    events: Vec<FailoverEvent>,
}

impl Sim {
    fn new(targets: &[&str], dns: Vec<Result<Vec<SocketAddr>, String>>) -> Sim {
        let targets = targets.iter().map(|t| target(t)).collect();
        let backoff = Backoff {
            min: MIN,
            max: MAX,
            jitter: false,
        };
        let now = Instant::now();
        Sim {
            fo: Failover::new(targets, backoff),
            start: now,
            now,
            dns,
            log: Vec::new(),
            events: Vec::new(),
        }
    }

    /// Endpoints given as IP addresses, each resolving to itself.
    fn ips(addrs: &[&str]) -> Sim {
        let uris: Vec<String> = addrs.iter().map(|a| format!("quic://{a}")).collect();
        let uris: Vec<&str> = uris.iter().map(String::as_str).collect();
        let dns = addrs.iter().map(|a| Ok(vec![addr(a)])).collect();
        Sim::new(&uris, dns)
    }

    /// Polls, resolving and waiting as asked, until the machine names a candidate to connect to;
    /// returns it.
    fn next(&mut self) -> Candidate {
        for _ in 0..100 {
            match self.fo.poll_action(self.now) {
                Some(Step::Resolve) => {
                    self.log.push("resolve".to_owned());
                    self.fo.handle_resolved(self.now, self.dns.clone());
                }
                Some(Step::Wait(until)) => {
                    assert!(until > self.now, "a wait that is over");
                    assert_eq!(self.fo.poll_timeout(), Some(until));
                    self.log
                        .push(format!("wait {}", (until - self.now).as_millis()));
                    self.now = until;
                }
                Some(Step::Connect(c)) => {
                    assert_eq!(self.fo.current(), Some(&c));
                    self.log.push(c.addr.to_string());
                    return c;
                }
                None => panic!("nothing to do, and no attempt under way"),
            }
        }
        panic!("no candidate after 100 polls: {:?}", self.log)
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.fo.poll_event() {
            self.events.push(e);
        }
    }

    /// The next attempt fails; returns the address it was made to.
    fn fail(&mut self) -> SocketAddr {
        let c = self.next();
        self.now += ms(10);
        self.fo.handle_ended(self.now, Ending::Failed);
        self.drain_events();
        c.addr
    }

    /// The next attempt connects; returns the address.
    fn connect(&mut self) -> SocketAddr {
        let c = self.next();
        self.now += ms(10);
        self.fo.handle_established(self.now);
        self.drain_events();
        assert_eq!(
            self.fo.poll_action(self.now),
            None,
            "connected: nothing to do"
        );
        c.addr
    }

    /// The connection, after `lasting`, ends `how`.
    fn end(&mut self, lasting: Duration, how: Ending) {
        self.now += lasting;
        self.fo.handle_ended(self.now, how);
        self.drain_events();
    }

    fn failovers(&self) -> Vec<(String, String)> {
        self.events
            .iter()
            .map(|e| match e {
                FailoverEvent::FailedOver { from, to } => (from.to_string(), to.to_string()),
            })
            .collect()
    }

    fn take_log(&mut self) -> Vec<String> {
        std::mem::take(&mut self.log)
    }
}

const A: &str = "10.0.0.1:4433";
const B: &str = "10.0.0.2:4433";
const C: &str = "10.0.0.3:4433";

fn log(steps: &[&str]) -> Vec<String> {
    steps.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn the_first_endpoint_is_tried_first_after_resolving() {
    let mut s = Sim::ips(&[A, B]);
    assert_eq!(s.fo.current(), None);
    assert_eq!(s.connect(), addr(A));
    assert_eq!(s.take_log(), log(&["resolve", A]));
    assert_eq!(s.fo.current().map(|c| c.addr), Some(addr(A)));
    assert!(s.events.is_empty(), "{:?}", s.events);
}

#[test]
fn a_failed_attempt_moves_on_to_the_next_endpoint_at_once() {
    let mut s = Sim::ips(&[A, B, C]);
    assert_eq!(s.fail(), addr(A));
    assert_eq!(s.fail(), addr(B));
    assert_eq!(s.connect(), addr(C));
    // No wait anywhere: the round was not over.
    assert_eq!(s.take_log(), log(&["resolve", A, B, C]));
    assert_eq!(s.now - s.start, ms(30));
}

#[test]
fn every_endpoint_is_tried_once_before_backing_off_and_the_delay_grows() {
    let mut s = Sim::ips(&[A, B]);
    for _ in 0..3 {
        s.fail();
        s.fail();
    }
    s.next();
    assert_eq!(
        s.take_log(),
        log(&[
            "resolve",
            A,
            B,
            "wait 500",
            "resolve",
            A,
            B,
            "wait 1000",
            "resolve",
            A,
            B,
            "wait 2000",
            "resolve",
            A
        ])
    );
}

#[test]
fn the_delay_stops_growing_at_the_maximum() {
    let mut s = Sim::ips(&[A]);
    for _ in 0..7 {
        s.fail();
    }
    s.next();
    let waits: Vec<String> = s
        .take_log()
        .into_iter()
        .filter(|l| l.starts_with("wait"))
        .collect();
    assert_eq!(
        waits,
        log(&[
            "wait 500",
            "wait 1000",
            "wait 2000",
            "wait 4000",
            "wait 8000",
            "wait 8000",
            "wait 8000"
        ])
    );
}

#[test]
fn a_single_dead_address_is_tried_once_per_backoff_delay() {
    // One endpoint, as the agent had before failover: each failure waits the next delay.
    let mut s = Sim::ips(&[A]);
    let mut attempts = Vec::new();
    for _ in 0..5 {
        s.fail();
        attempts.push(s.now);
    }
    let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
    // Each attempt takes 10 ms, after the delay: 500, 1000, 2000, 4000.
    assert_eq!(gaps, [ms(510), ms(1010), ms(2010), ms(4010)]);
}

#[test]
fn a_lost_connection_fails_over_at_once_and_is_reported_once() {
    let mut s = Sim::ips(&[A, B]);
    assert_eq!(s.connect(), addr(A));
    s.end(Duration::from_secs(3600), Ending::Failed);
    assert_eq!(s.connect(), addr(B));
    assert_eq!(s.take_log(), log(&["resolve", A, B]));
    assert_eq!(
        s.failovers(),
        [(format!("quic://{A}"), format!("quic://{B}"))]
    );
    // Renewing the certificate reconnects to B: no failover.
    s.end(Duration::from_secs(60), Ending::Renewed);
    assert_eq!(s.connect(), addr(B));
    assert_eq!(s.failovers().len(), 1);
}

#[test]
fn after_failing_over_the_agent_stays_on_the_new_endpoint() {
    let mut s = Sim::ips(&[A, B, C]);
    assert_eq!(s.connect(), addr(A));
    s.end(Duration::from_secs(3600), Ending::Failed);
    assert_eq!(s.connect(), addr(B));
    // Connected to B, nothing is ever asked for: A, first in the list, is not tried again,
    // however long B works.
    for _ in 0..10 {
        s.now += Duration::from_secs(3600);
        assert_eq!(s.fo.poll_action(s.now), None);
        assert_eq!(s.fo.poll_timeout(), None);
    }
    // Renewals reconnect to B, at once.
    for _ in 0..3 {
        s.end(Duration::from_secs(60), Ending::Renewed);
        assert_eq!(s.connect(), addr(B));
    }
    // When B is lost, the rotation goes on forward (C), not back to the first (A).
    s.end(Duration::from_secs(3600), Ending::Failed);
    assert_eq!(s.connect(), addr(C));
    s.end(Duration::from_secs(3600), Ending::Failed);
    assert_eq!(s.connect(), addr(A));
    let to: Vec<String> = s.failovers().into_iter().map(|(_, to)| to).collect();
    assert_eq!(
        to,
        [B, C, A].map(|a| format!("quic://{a}")),
        "{:?}",
        s.failovers()
    );
}

#[test]
fn a_round_that_fails_starts_again_from_the_endpoint_after_the_last_tried() {
    let mut s = Sim::ips(&[A, B, C]);
    assert_eq!(s.connect(), addr(A));
    s.end(Duration::from_secs(3600), Ending::Failed);
    assert_eq!(s.connect(), addr(B));
    s.end(Duration::from_secs(3600), Ending::Failed);
    // B lost after a long while: C, then A, then the backoff, then B first.
    assert_eq!(s.fail(), addr(C));
    assert_eq!(s.fail(), addr(A));
    s.take_log();
    assert_eq!(s.fail(), addr(B));
    assert_eq!(s.take_log(), log(&["wait 500", "resolve", B]));
}

#[test]
fn a_refusal_moves_on_like_a_failed_connect() {
    // A refusal (a Reject in place of Welcome, a TLS alert) ends the attempt as failed.
    let mut s = Sim::ips(&[A, B]);
    let c = s.next();
    assert_eq!(c.addr, addr(A));
    s.fo.handle_ended(s.now, Ending::Failed);
    assert_eq!(s.connect(), addr(B));
    assert_eq!(s.take_log(), log(&["resolve", A, B]));
}

#[test]
fn a_connection_to_another_endpoint_than_the_first_is_a_failover_from_the_start() {
    let mut s = Sim::ips(&[A, B]);
    s.fail();
    assert_eq!(s.connect(), addr(B));
    assert_eq!(
        s.failovers(),
        [(format!("quic://{A}"), format!("quic://{B}"))]
    );
    // Reconnecting where it was connected is no failover, even after a failed round.
    s.end(Duration::from_secs(3600), Ending::Failed);
    s.fail();
    assert_eq!(s.connect(), addr(B));
    assert_eq!(s.failovers().len(), 1);
}

#[test]
fn the_backoff_starts_again_once_an_established_connection_is_lost() {
    let mut s = Sim::ips(&[A, B]);
    for _ in 0..4 {
        s.fail();
    }
    s.take_log();
    assert_eq!(s.connect(), addr(A));
    s.end(Duration::from_secs(3600), Ending::Failed);
    s.fail();
    s.fail();
    s.next();
    assert_eq!(
        s.take_log(),
        log(&["wait 1000", "resolve", A, B, "wait 500", "resolve", A, B])
    );
}

#[test]
fn endpoints_that_accept_and_drop_connections_are_not_cycled_through_without_pause() {
    let mut s = Sim::ips(&[A, B]);
    for _ in 0..3 {
        s.connect();
        s.end(ms(20), Ending::Failed);
        s.connect();
        s.end(ms(20), Ending::Failed);
    }
    s.next();
    // Each address once per round, and rounds apart (the backoff starts again at each
    // connection, as it did with one endpoint).
    assert_eq!(
        s.take_log(),
        log(&[
            "resolve", A, B, "wait 500", "resolve", A, B, "wait 500", "resolve", A, B, "wait 500",
            "resolve", A
        ])
    );
}

#[test]
fn a_connection_that_lasted_starts_a_new_round() {
    // A worked for long, then B fails and A fails again: that is one round after A's loss, so
    // the backoff comes only then.
    let mut s = Sim::ips(&[A, B]);
    s.fail();
    s.connect();
    s.end(MAX, Ending::Failed);
    assert_eq!(s.fail(), addr(A));
    s.next();
    assert_eq!(
        s.take_log(),
        log(&["resolve", A, B, A, "wait 500", "resolve", B])
    );
}

#[test]
fn the_agents_own_trouble_retries_the_same_endpoint_after_the_delay() {
    let mut s = Sim::ips(&[A, B]);
    s.next();
    s.fo.handle_ended(s.now, Ending::Local);
    assert_eq!(s.next().addr, addr(A));
    s.fo.handle_ended(s.now, Ending::Local);
    assert_eq!(s.next().addr, addr(A));
    assert_eq!(
        s.take_log(),
        log(&[
            "resolve",
            A,
            "wait 500",
            "resolve",
            A,
            "wait 1000",
            "resolve",
            A
        ])
    );
    assert!(s.events.is_empty());
}

#[test]
fn every_address_of_a_name_is_a_candidate_tried_in_turn() {
    let mut s = Sim::new(
        &["quic://agg.example:4433"],
        vec![Ok(vec![addr(A), addr(B), addr(C)])],
    );
    assert_eq!(s.fail(), addr(A));
    assert_eq!(s.fail(), addr(B));
    let c = s.next();
    assert_eq!(c.addr, addr(C));
    assert_eq!(c.server_name, "agg.example");
    assert_eq!(c.to_string(), format!("quic://agg.example:4433 ({C})"));
    s.now += ms(10);
    s.fo.handle_established(s.now);
    s.drain_events();
    assert_eq!(
        s.failovers(),
        [(
            format!("quic://agg.example:4433 ({A})"),
            format!("quic://agg.example:4433 ({C})")
        )]
    );
    // C drops the connection at once, and all three are dead: the round that began with A
    // is over, and each is tried once per round.
    s.end(ms(20), Ending::Failed);
    s.fail();
    s.fail();
    s.fail();
    s.next();
    assert_eq!(
        s.take_log(),
        log(&[
            "resolve",
            A,
            B,
            C,
            "wait 500",
            "resolve",
            A,
            B,
            C,
            "wait 1000",
            "resolve",
            A
        ])
    );
}

#[test]
fn each_endpoint_verifies_its_own_name_and_an_address_is_tried_once_per_round() {
    // Two names for the same address (and one more): the address is tried once.
    let mut s = Sim::new(
        &["quic://a.example:4433", "quic://b.example:4433"],
        vec![Ok(vec![addr(A), addr(B)]), Ok(vec![addr(B), addr(C)])],
    );
    let names: Vec<(String, String)> = {
        s.next();
        s.fo.candidates()
            .iter()
            .map(|c| (c.addr.to_string(), c.server_name.clone()))
            .collect()
    };
    assert_eq!(
        names,
        [
            (A.to_owned(), "a.example".to_owned()),
            (B.to_owned(), "a.example".to_owned()),
            (C.to_owned(), "b.example".to_owned()),
        ]
    );
    s.fo.handle_ended(s.now, Ending::Failed);
    s.fail();
    s.fail();
    s.next();
    assert_eq!(
        s.take_log(),
        log(&["resolve", A, B, C, "wait 500", "resolve", A])
    );
}

#[test]
fn a_name_that_does_not_resolve_is_skipped_and_none_resolving_backs_off() {
    let mut s = Sim::new(
        &["quic://gone.example:4433", "quic://b.example:4433"],
        vec![Err("no such host".to_owned()), Ok(vec![addr(B)])],
    );
    assert_eq!(s.connect(), addr(B));
    // B is the first the agent tried: no failover.
    assert!(s.events.is_empty());
    // B, the only candidate, is lost: the round is over. Then nothing resolves: back off
    // again, and resolve again after the delay.
    s.end(MAX, Ending::Failed);
    s.dns = vec![
        Err("no such host".to_owned()),
        Err("no such host".to_owned()),
    ];
    for _ in 0..2 {
        match s.fo.poll_action(s.now) {
            Some(Step::Wait(until)) => s.now = until,
            other => panic!("{other:?}"),
        }
        assert_eq!(s.fo.poll_action(s.now), Some(Step::Resolve));
        s.fo.handle_resolved(s.now, s.dns.clone());
        assert!(s.fo.candidates().is_empty());
    }
    // Waited 500 ms, then 1 s: the delay grows.
    assert_eq!(s.fo.poll_timeout().map(|t| t - s.now), Some(ms(2000)));
    s.dns[1] = Ok(vec![addr(B)]);
    s.next();
    assert_eq!(
        s.take_log(),
        log(&["resolve", B, "wait 2000", "resolve", B])
    );
    assert!(s.events.is_empty());
}

#[test]
fn resolving_again_keeps_the_place_in_the_rotation() {
    let mut s = Sim::new(
        &["quic://agg.example:4433", "quic://other.example:4433"],
        vec![Ok(vec![addr(A), addr(B)]), Ok(vec![addr(C)])],
    );
    s.fail();
    s.fail();
    s.fail();
    // The round ended on C; the next starts at A. The name now resolves in another order:
    // A is still next, and C after it.
    s.dns[0] = Ok(vec![addr(B), addr(A)]);
    assert_eq!(s.fail(), addr(A));
    assert_eq!(s.fail(), addr(C));
    assert_eq!(
        s.take_log(),
        log(&["resolve", A, B, C, "wait 500", "resolve", A, C])
    );
}

#[test]
fn an_address_gone_from_its_name_gives_way_to_the_next_of_the_same_endpoint() {
    let mut s = Sim::new(
        &["quic://a.example:4433", "quic://b.example:4433"],
        vec![Ok(vec![addr(A)]), Ok(vec![addr(B)])],
    );
    s.fail();
    // The agent's own trouble at B: B again after the delay, but b.example now resolves to C:
    // C, not A, which comes first.
    assert_eq!(s.next().addr, addr(B));
    s.fo.handle_ended(s.now, Ending::Local);
    s.dns[1] = Ok(vec![addr(C)]);
    let c = s.next();
    assert_eq!((c.addr, c.server_name.as_str()), (addr(C), "b.example"));
    assert_eq!(
        s.take_log(),
        log(&["resolve", A, B, "wait 500", "resolve", C])
    );
}

#[test]
fn results_out_of_turn_are_ignored() {
    let mut s = Sim::ips(&[A, B]);
    s.fo.handle_established(s.now);
    s.fo.handle_ended(s.now, Ending::Failed);
    assert_eq!(s.fo.poll_event(), None);
    assert_eq!(s.connect(), addr(A));
    s.fo.handle_resolved(s.now, vec![Ok(vec![addr(C)])]);
    assert_eq!(s.fo.candidates().len(), 2);
    s.fo.handle_established(s.now);
    assert_eq!(s.fo.poll_event(), None);
}

#[test]
fn only_addresses_the_socket_can_reach_are_tried() {
    let v6 = addr("[2001:db8::1]:4433");
    assert_eq!(
        reachable(vec![v6, addr(A), addr(B)], false),
        Ok(vec![addr(A), addr(B)])
    );
    assert_eq!(reachable(vec![v6, addr(A)], true), Ok(vec![v6, addr(A)]));
    let e = reachable(vec![v6], false).unwrap_err();
    assert!(
        e.contains("only IPv6 addresses ([2001:db8::1]:4433)"),
        "{e}"
    );
    assert!(reachable(Vec::new(), true).is_err());
}
