//! Rules: what turns the stream of committed events into alerts.
//!
//! Each part is pure, taking events and `now` and giving back decisions, so that it is tested
//! without sockets, sleeps or wall clocks:
//!
//! - [`file`]: rule files under `rules.d/`, checked whole when they load;
//! - [`window`]: a metric series' recent samples and the aggregates rules compare;
//! - [`lifecycle`]: one alert's states, inactive → pending → firing → resolved;
//! - [`threshold`]: threshold rules over metric points, one alert per rule, host and series.

pub mod file;
pub mod lifecycle;
pub mod threshold;
pub mod window;

pub use file::{Rule, RuleKind, Severity, ThresholdRule, load_dir, load_file};
pub use lifecycle::{AlertState, Lifecycle, Transition};
pub use threshold::{ActiveAlert, Change, Evaluator};
pub use window::{Aggregate, Op, Window};
