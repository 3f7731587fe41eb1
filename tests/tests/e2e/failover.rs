//! Two aggregators behind one service (one CA, one server certificate; each with its own
//! embedded store for now) and an agent configured with both. The first is killed with SIGKILL
//! while the agent streams to it: the agent fails over to the second and streams on, and every
//! event reaches one of the stores, with nothing lost on the way.

use outpost_tests::{AgentOptions, AggregatorOptions, Env, Kind, Store, Synthetic};

const TOTAL: u64 = 60_000;
/// Slow enough that production outlasts the failover.
const RATE: u32 = 4_000;
const AGENT: &str = "failover-1";
const FAILED_OVER: &str = "failed over to another aggregator";

#[test]
fn the_agent_fails_over_to_the_second_aggregator_and_loses_nothing() {
    let env = Env::new("failover");
    let mut first = env.start_aggregator_with(AggregatorOptions::named("aggregator-a"));
    let second = env.start_aggregator_with(AggregatorOptions::named("aggregator-b"));
    let cert = env.issue_agent(AGENT);
    let agent = env.start_agent_with_all(
        &cert,
        &[&first, &second],
        AgentOptions::synthetic(Synthetic::logs(TOTAL).rate(RATE)),
    );
    let (a, b) = (first.store(), second.store());

    // The agent streams to the first, the first it is configured with.
    env.wait_stored(&a, AGENT, Kind::Log, 5_000);
    assert_eq!(
        b.knows_agent(AGENT),
        Ok(false),
        "the second aggregator heard of the agent while the first was up"
    );

    first.kill9();
    // Events numbered from here on were made after the kill.
    let at_kill = agent.spool().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        at_kill.produced < TOTAL,
        "the source finished before the first aggregator was killed ({at_kill:?}); lower RATE \
         or raise TOTAL"
    );

    // The agent fails over to the second and keeps streaming: the second stores events made
    // after the first was killed, which only it can have.
    env.wait_for(
        "the agent to fail over to the second aggregator",
        || match agent.log_count(FAILED_OVER) {
            0 => Err("no failover logged yet".to_owned()),
            _ => Ok(()),
        },
    );
    env.wait_for("events made after the kill stored by the second", || {
        let report = b.seq_report(AGENT, Kind::Log, TOTAL)?;
        match report.max {
            Some(max) if max >= at_kill.produced => Ok(()),
            _ => Err(format!(
                "{report} (produced at the kill: {})",
                at_kill.produced
            )),
        }
    });

    // Every number is stored at least once in the two stores together (a batch the first
    // committed but did not acknowledge before it died is stored again by the second).
    let report = env.wait_for_every(
        std::time::Duration::from_millis(500),
        "every event stored in one of the two stores",
        || {
            let report = Store::union_seq_report(&[&a, &b], AGENT, Kind::Log, TOTAL)?;
            if report.missing == 0 {
                Ok(report)
            } else {
                Err(report.to_string())
            }
        },
    );
    assert_eq!(
        (report.min, report.max, report.out_of_range),
        (Some(0), Some(TOTAL - 1), 0),
        "{report}"
    );
    assert!(report.mismatched.is_empty(), "{report}");
    // Each store on its own holds every event at most once.
    for (name, store) in [("first", &a), ("second", &b)] {
        let own = store
            .seq_report(AGENT, Kind::Log, TOTAL)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(own.repeated_count, 0, "the {name} store: {own}");
    }

    // Nothing was lost: everything produced was acknowledged, and nothing dropped.
    let spool = env.wait_for("the agent's spool to drain", || {
        let spool = agent.spool()?;
        if spool.produced == TOTAL && spool.batches == 0 {
            Ok(spool)
        } else {
            Err(format!("{spool:?}"))
        }
    });
    assert_eq!(spool.events, 0, "{spool:?}");
    assert_eq!(spool.drops.total(), 0, "{spool:?}");

    // The second aggregator knows the agent: its log, and its registry.
    assert!(
        second.log_count("agent connected") >= 1 && second.log().contains(AGENT),
        "{}",
        second.log()
    );
    let status = env.wait_for("the second aggregator's registry to list the agent", || {
        second
            .agent_status(AGENT)
            .ok_or_else(|| "not listed".to_owned())
    });
    assert_eq!(status["agent_id"], AGENT, "{status}");

    // The failover was logged once, from the first to the second; the agent never stopped.
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(FAILED_OVER)).collect();
    assert_eq!(lines.len(), 1, "{log}");
    let (from, to) = (first.addr().to_string(), second.addr().to_string());
    assert!(
        lines[0].contains(&format!("from=\"quic://{from}\""))
            && lines[0].contains(&format!("to=\"quic://{to}\"")),
        "{}",
        lines[0]
    );
    assert!(agent.is_running(), "the agent survived the failover");
    assert_eq!(agent.starts(), 1);
}
