//! The Outpost aggregator: accepts batches from agents over mutually authenticated QUIC, stores
//! each exactly once, and reports the fleet's state.
//!
//! Data flow: [`ingest`] (QUIC listener, sessions, validation) → [`store`] (group commit; ack only
//! after commit) → [`fleet`] status. Ingest reports what it does through typed
//! [`internal_events`]. [`pki`] makes the certificates; [`run`] wires it together.

pub mod agents_cli;
pub mod alerts;
pub mod alerts_cli;
pub mod api;
pub mod config;
pub mod console;
pub mod enroll;
pub mod fim;
pub mod fleet;
pub mod ingest;
pub mod internal_events;
pub mod notify;
pub mod pki;
pub mod quickstart;
pub mod remote;
pub mod rules;
pub mod rules_cli;
pub mod run;
pub mod status;
pub mod store;
pub mod token_cli;
pub mod tokens;
