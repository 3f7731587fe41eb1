//! Log files: the pieces the file source reads them with.
//!
//! - [`lines`]: the bytes of a file cut into lines, with the offset a checkpoint may hold.

pub mod lines;
