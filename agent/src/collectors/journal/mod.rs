//! The systemd journal, read through `journalctl`.
//!
//! - [`entry`]: one line of `journalctl --output=json` turned into a log record.
//! - [`gather`]: entries gathered into the next spool submission, with their cursor.
//! - [`journalctl`]: the journalctl child process.

pub mod entry;
pub mod gather;
pub mod journalctl;
