//! Notifications: what the outbox sends, and the receivers that send it.

pub mod message;

pub use message::{Message, MessageAlert, Status};
