//! The Outpost agent: collects events on a host, keeps them in a durable SQLite spool, and ships
//! them to the aggregator over mutually authenticated QUIC.
//!
//! Data flow: [`collectors`] → [`spool`] (events and source checkpoints in one transaction) →
//! [`ship`] (bounded window of in-flight batches, delete on ack). [`run`] wires them together;
//! [`sources`] starts the sources and changes them on a reload.
//!
//! The agent's identity (key and certificate) comes from [`enroll`] with a token, is kept on disk
//! by [`identity`], and is renewed by the shipper before it expires.

pub mod collectors;
pub mod config;
pub mod enroll;
pub mod host;
pub mod identity;
pub mod internal_events;
pub mod run;
pub mod ship;
pub mod sources;
pub mod spool;
pub mod telemetry;
#[cfg(test)]
mod test_ca;
