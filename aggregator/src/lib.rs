//! The Outpost aggregator: accepts batches from agents over mutually authenticated QUIC, stores
//! each exactly once, and reports the fleet's state.

pub mod fleet;
pub mod pki;
pub mod store;
