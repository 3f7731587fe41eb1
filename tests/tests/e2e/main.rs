//! End-to-end tests: the real `outpost-aggregator` and `outpost-agent` on loopback.
//!
//! Build the programs first (`cargo build --workspace --bins`; `scripts/test` does). Each test has
//! its own temporary directory, PKI and ports, so they run in parallel. Set `OUTPOST_E2E_SEED` to
//! replay the random choices of a failed run (the seed is printed by each test that uses one).

mod admission;
mod agent_crash;
mod aggregator_outage;
mod alerting;
mod api;
mod auth;
mod browser_harness;
mod check_config;
mod cluster;
mod console;
mod delivery;
mod disk_full;
mod enroll;
mod failover;
mod fim;
mod fim_trail;
mod fleetsim;
mod garbage;
mod host_metrics;
mod journal;
mod limits;
mod logs;
mod querybench;
mod quickstart;
mod reload;
mod service;
mod spool_cap;
mod status;
mod store_clickhouse;
mod store_postgres;

use rand::SeedableRng;
use rand::rngs::StdRng;

/// A random generator seeded from `OUTPOST_E2E_SEED` or at random; the seed is printed.
pub fn seeded_rng(test: &str) -> StdRng {
    let seed = std::env::var("OUTPOST_E2E_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    eprintln!("[{test}] OUTPOST_E2E_SEED={seed}");
    StdRng::seed_from_u64(seed)
}
