//! The durable SQLite spool.
