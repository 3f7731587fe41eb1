//! Log files: the pieces the file source reads them with.
//!
//! - [`lines`]: the bytes of a file cut into lines, with the offset a checkpoint may hold.
//! - [`severity`]: level names as programs write them, on the syslog scale.

pub mod lines;
pub mod severity;
