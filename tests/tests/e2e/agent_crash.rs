//! The agent is killed with SIGKILL at random moments, while producing and while shipping, and
//! restarted each time: the store still ends up with every event exactly once.

use rand::Rng;

use outpost_tests::{AgentOptions, Env, Kind, Synthetic};

const TOTAL: u64 = 200_000;
/// Events per second: production takes a few seconds, so kills land while the source is
/// producing as well as after it finished, while the backlog ships.
const RATE: u32 = 40_000;
const AGENT: &str = "crash-1";

#[test]
fn kill9_of_the_agent_loses_and_repeats_nothing() {
    let mut rng = crate::seeded_rng("agent_crash");
    let env = Env::new("agent-crash");
    let aggregator = env.start_aggregator();
    let cert = env.issue_agent(AGENT);
    let mut agent = env.start_agent(
        &cert,
        &aggregator,
        AgentOptions::synthetic(Synthetic::logs(TOTAL).rate(RATE)),
    );
    let store = aggregator.store();

    let kills = rng.random_range(4..=6u32);
    for kill in 1..=kills {
        let step = rng.random_range(5_000..=25_000u64);
        if rng.random_bool(0.5) {
            // Progress of the source into the spool (its checkpoint).
            let from = agent.spool().map_or(0, |s| s.produced);
            let target = (from + step).min(TOTAL);
            env.wait_for(
                &format!("kill {kill}: the source to reach {target}"),
                || {
                    let produced = agent.spool()?.produced;
                    if produced >= target {
                        Ok(())
                    } else {
                        Err(format!("{produced} produced"))
                    }
                },
            );
        } else {
            // Progress of the delivery into the store.
            let from = store.synthetic_count(AGENT, Kind::Log).unwrap_or(0);
            env.wait_stored(&store, AGENT, Kind::Log, (from + step).min(TOTAL));
        }
        agent.kill9();
        agent.restart();
    }

    let report = env.wait_exactly_once(&store, AGENT, Kind::Log, TOTAL);
    assert_eq!(
        (report.min, report.max),
        (Some(0), Some(TOTAL - 1)),
        "{report}"
    );
    assert_eq!(agent.starts(), kills + 1);
    assert_eq!(
        agent.log_count("outpost-agent starting"),
        kills as usize + 1,
        "every restart came up"
    );
}
