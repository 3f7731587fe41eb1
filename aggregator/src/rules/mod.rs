//! Rules: what turns the stream of committed events into alerts.
//!
//! Each part is pure, taking events and `now` and giving back decisions, so that it is tested
//! without sockets, sleeps or wall clocks:
//!
//! - [`file`]: rule files under `rules.d/`, checked whole when they load;
//! - [`window`]: a metric series' recent samples and the aggregates rules compare;
//! - [`lifecycle`]: one alert's states, inactive → pending → firing → resolved;
//! - [`alert`]: one alert as every rule kind keeps it, its labels and fingerprint;
//! - [`threshold`]: threshold rules over metric points, one alert per rule, host and series;
//! - [`logs`]: log rules (a matching record), frequency rules (so many within so long, grouped
//!   by fields, per host or across hosts), sequence rules (these records, then that one with the
//!   same key) and file-integrity rules (a change of a watched path);
//! - [`absence`]: a host, or one of its metrics or log sources, silent for so long;
//! - [`composite`]: other rules' alerts on the same host, combined with all, any and none;
//! - [`matcher`]: label matchers as Alertmanager reads them, inhibitions and silences;
//! - [`route`]: the route tree and the grouping of alerts into notifications;
//! - [`template`]: annotation templates (`{{ host }}`, `{{ value }}`, `{{ labels.NAME }}`);
//! - [`engine`]: all of it together, the pure state machine the aggregator runs.

pub mod absence;
pub mod alert;
pub mod composite;
pub mod engine;
pub mod file;
pub mod lifecycle;
pub mod logs;
pub mod matcher;
pub mod route;
pub mod template;
pub mod threshold;
pub mod window;

#[cfg(test)]
mod bench;
#[cfg(test)]
mod pack_tests;
#[cfg(test)]
mod proptests;

pub use absence::AbsenceEvaluator;
pub use alert::{ActiveAlert, Change, Evaluates};
pub use composite::CompositeEvaluator;
pub use file::{
    AbsenceRule, CompositeRule, Condition, FimRule, FrequencyRule, LogMatch, Rule, RuleKind,
    SequenceRule, Severity, Silent, ThresholdRule, load_dir, load_file,
};
pub use lifecycle::{AlertState, Lifecycle, Transition};
pub use logs::LogEvaluator;
pub use matcher::{Inhibition, MatchOp, Matcher, Silence};
pub use route::{Dispatcher, Notification, Route};
pub use threshold::Evaluator;
pub use window::{Aggregate, Op, Window};
