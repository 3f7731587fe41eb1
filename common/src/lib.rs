//! Outpost's shared library.
//!
//! Both programs use it: the agent to produce and send events, the aggregator to receive and
//! store them.
//!
//! - [`event`]: what is collected (metrics, logs, file-integrity changes, agent status).
//! - [`wire`]: the framed protocol spoken over QUIC, behind [`wire::encode`] and [`wire::decode`].
//! - [`enroll`]: enrollment tokens, and the messages of enrollment and certificate renewal.
//! - [`tls`]: the one place that builds TLS configurations and reads certificate identities.
//! - [`config`]: TOML loading with file, line and column in errors; URI validation.
//! - [`time`]: nanosecond timestamps.
//! - [`telemetry`]: what both programs' typed internal events share.
//!
//! ```
//! use outpost_common::wire::{self, Ack, Message};
//!
//! let frame = wire::encode(&Message::Ack(Ack { seq: 1, duplicate: false })).unwrap();
//! let back = wire::decode_frame(&frame, wire::DEFAULT_MAX_FRAME_BYTES).unwrap();
//! assert_eq!(back, Message::Ack(Ack { seq: 1, duplicate: false }));
//! ```

pub mod config;
pub mod enroll;
pub mod event;
pub mod logging;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod wire;

/// This build's version, as reported in Hello/Welcome.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git revision this build was made from (12 hex digits), or `unknown`.
pub const GIT_REVISION: &str = env!("OUTPOST_GIT_REVISION");

/// What `--version` prints after the program's name: `0.1.0 (git 0123456789ab)`.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("OUTPOST_GIT_REVISION"),
    ")"
);
