//! Log files: the file source ([`files`]) and the pieces it reads them with.
//!
//! - [`tailer`]: which files are read, from where, and what became of their bytes.
//! - [`pipeline`]: bytes to lines, records and events.
//! - [`identity`]: whether a file is still the one a checkpoint was taken on.
//! - [`lines`]: the bytes of a file cut into lines, with the offset a checkpoint may hold.
//! - [`multiline`]: lines grouped into records (stack traces, tracebacks).
//! - [`parse`]: plain, JSON, syslog (RFC 5424 and 3164) and regex parsers.
//! - [`redact`]: secrets and personal data replaced before a line leaves the host.
//! - [`select`]: which files a source reads (include and exclude globs).
//! - [`severity`]: level names as programs write them, on the syslog scale.

pub mod files;
pub mod identity;
pub mod lines;
pub mod multiline;
pub mod parse;
pub mod pipeline;
pub mod redact;
pub mod select;
pub mod severity;
pub mod tailer;
