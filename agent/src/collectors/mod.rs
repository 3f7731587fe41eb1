//! Sources of events. Each collector hands the spool its events together with its checkpoint,
//! so that after a crash it resumes exactly where the last committed submission left it.

pub mod metrics;
pub mod self_status;
pub mod synthetic;
