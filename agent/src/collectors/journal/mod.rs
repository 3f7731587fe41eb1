//! The systemd journal, read through `journalctl`.
//!
//! - [`entry`]: one line of `journalctl --output=json` turned into a log record.

pub mod entry;
