//! Notifications: what the outbox sends, and the receivers that send it.
//!
//! A [`Message`] is one group's alerts for one receiver. The receivers are configured as
//! `[[alerting.receivers]]` entries ([`ReceiverConfig`]: a `name` and one of `webhook`, `slack`,
//! `pagerduty`, `email`, `alertmanager`), checked together by [`Receivers::from_config`] while
//! the configuration loads. [`Receivers::deliver`] makes one attempt to send a message; when it
//! fails, [`DeliveryError`] says whether to try again and when: after
//! [`DeliveryError::retry_after`] when the receiver asked, else after [`backoff_delay`] of the
//! attempts so far, which the outbox keeps with the message.
//!
//! Each receiver is one module: its configuration, its checks, a pure function from the message
//! to what it sends (tested against the format's documentation), and the sending. Words shared by
//! the human-facing formats are in [`text`]; secrets are handled by [`secret`].
//!
//! ```no_run
//! # async fn example(
//! #     configs: &[outpost_aggregator::notify::ReceiverConfig],
//! #     msg: &outpost_aggregator::notify::Message,
//! #     attempts: u32,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use outpost_aggregator::notify::{Receivers, backoff_delay};
//!
//! let receivers = Receivers::from_config(configs)?;
//! if let Err(e) = receivers.deliver(msg).await {
//!     if e.is_retryable() {
//!         let wait = e.retry_after().unwrap_or_else(|| backoff_delay(attempts, rand::random()));
//!         // … keep the message and try again after `wait` …
//!     }
//! }
//! # Ok(())
//! # }
//! ```

pub mod alertmanager;
pub mod config;
pub mod delivery;
pub mod email;
pub mod message;
pub mod pagerduty;
mod receivers;
pub mod secret;
pub mod slack;
pub mod text;
pub mod webhook;

#[cfg(test)]
pub(crate) mod testutil;

pub use config::{ConfigProblem, DEFAULT_TIMEOUT, ReceiverConfig, ReceiversError};
pub use delivery::{
    BACKOFF_BASE, BACKOFF_CAP, DeliveryError, RETRY_AFTER_CAP, Retry, backoff_delay,
};
pub use message::{Message, MessageAlert, Status};
pub use receivers::Receivers;
pub use secret::Secret;
