//! The harness of Outpost's end-to-end tests: it runs the real `outpost-aggregator` and
//! `outpost-agent` binaries on loopback, with a throwaway PKI made through the real CLI, and
//! inspects what they did through their own files (the aggregator's store, the agent's spool,
//! their logs).
//!
//! Tests wait on conditions, never on the clock: [`Env::wait_for`] polls a condition until a
//! generous deadline and, on timeout, panics with the last state it saw and the tail of every
//! process's log. Every child process is killed when its wrapper is dropped, so a failing test
//! leaks nothing; the temporary directory of a failed test is kept for inspection.
//!
//! The harness reports problems by panicking with context: it only ever runs inside a test, where
//! a panic *is* the failure report.
//!
//! ```no_run
//! use outpost_tests::{AgentOptions, Env, Synthetic};
//!
//! let env = Env::new("example");
//! let aggregator = env.start_aggregator();
//! let cert = env.issue_agent("web-01");
//! let _agent = env.start_agent(&cert, &aggregator, AgentOptions::synthetic(Synthetic::logs(1000)));
//! env.wait_for("every event stored once", || {
//!     let report = aggregator.store().seq_report("web-01", outpost_tests::Kind::Log, 1000)?;
//!     if report.is_exact() { Ok(()) } else { Err(report.to_string()) }
//! });
//! ```

mod agent;
mod aggregator;
mod browser;
pub mod clickhouse_server;
mod env;
pub mod fleetsim;
pub mod hostsim;
pub mod impair;
pub mod postgres_server;
mod process;
pub mod querybench;
pub mod raw;
mod seqs;
mod store;
mod writer;

pub use agent::{Agent, AgentOptions, Kind, SpoolView, Synthetic, UnenrolledAgent};
pub use aggregator::{Aggregator, AggregatorOptions};
pub use browser::{Browser, Element, LogEntry, Problems, Timing};
pub use env::{AgentCert, DEADLINE, Env, binary};
pub use process::Process;
pub use seqs::SeqReport;
pub use store::{Store, StoredFim, StoredLog};
pub use writer::{LineWriter, Pace};

/// A path as a TOML basic string, quotes included. JSON string escapes are valid TOML.
pub fn toml_string(path: &std::path::Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}
