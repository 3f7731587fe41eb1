//! Fleet status.
