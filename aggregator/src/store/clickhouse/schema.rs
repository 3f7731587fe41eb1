//! The tables, and the migrations that make them.
//!
//! Written for the subset of SQL that ClickHouse 18.16 and current releases both accept: Int64
//! nanosecond times (no DateTime64), parallel key/value arrays (no Map), deduplication by
//! `ReplacingMergeTree` keys and retention by dropping partitions (no TTL), no LowCardinality.
//!
//! - `metrics`, `logs`, `fim`, `status`: one row per event. Each is a `ReplacingMergeTree`
//!   whose `ORDER BY` is the event's identity (agent, then for metrics the name, then
//!   `(spool_id, seq, idx)`), so the same event written twice is one row to every `FINAL` read,
//!   the copy with the highest cursor. They are partitioned by the UTC day of the event's own
//!   time: a function of the event, so both copies land in the same partition (rows of different
//!   partitions never collapse), and retention drops whole days.
//! - `batches`: a row per stored batch, `ORDER BY (agent_id, spool_id, seq)`, partitioned by the
//!   UTC day it was received and dropped after the longest retention period.
//! - `spools`: each spool's low-water mark (the highest written wins).
//! - `fim_trails`: each agent's file-integrity trail (the highest version wins).
//! - `host_summaries`: each host's latest CPU, memory and filesystem fill, one row per agent, gauge
//!   and mountpoint (the latest in agent time wins).
//! - `feed` (version 2): a row per stored batch, its events and notices compressed, `ORDER BY
//!   start` (the batch's first cursor) and partitioned by the UTC day of that cursor, for the
//!   aggregator that follows every commit ([`super::follow`]); kept two days.
//! - `schema_versions`: the versions applied.
//!
//! Days are UTC (`toYYYYMMDD(…, 'UTC')`) whatever the server's time zone, so retention can tell
//! from a partition's name which events it holds.

use super::rows::{FIM_CHANGES, FIM_DETECTIONS, METRIC_KINDS, enum8};

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The partition key of a table by the UTC day of the nanosecond time in `column`.
fn day_of(column: &str) -> String {
    format!("toYYYYMMDD(toDateTime(intDiv({column}, 1000000000)), 'UTC')")
}

/// The columns every event table starts with.
const EVENT_COLUMNS: &str = "agent_id String, spool_id UInt64, seq UInt64, idx UInt32, \
     cursor UInt64, received_ns Int64, time_ns Int64";

/// The statements that create the tables of schema 1 in `db` (a checked name), each idempotent.
pub(super) fn version_1(db: &str) -> Vec<String> {
    let event_table = |name: &str, columns: String, key: &str| {
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.{name} ({EVENT_COLUMNS}, {columns})
             ENGINE = ReplacingMergeTree(cursor)
             PARTITION BY {day}
             ORDER BY ({key})",
            day = day_of("time_ns"),
        )
    };
    vec![
        event_table(
            "metrics",
            format!(
                "name String, unit String, kind {}, attr_keys Array(String), \
                 attr_values Array(String), value Float64",
                enum8(&METRIC_KINDS)
            ),
            "agent_id, name, spool_id, seq, idx",
        ),
        event_table(
            "logs",
            "source String, severity Nullable(UInt8), body String, attr_keys Array(String), \
             attr_values Array(String)"
                .to_owned(),
            "agent_id, spool_id, seq, idx",
        ),
        event_table(
            "fim",
            format!(
                "path String, change {}, changed Array(String), moved_from Nullable(String), \
                 before String, after String, detected_by {}, fim_seq UInt64, chain String",
                enum8(&FIM_CHANGES),
                enum8(&FIM_DETECTIONS)
            ),
            "agent_id, spool_id, seq, idx",
        ),
        event_table(
            "status",
            "status String".to_owned(),
            "agent_id, spool_id, seq, idx",
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.batches (agent_id String, spool_id UInt64,
                 seq UInt64, received_ns Int64, start UInt64, events UInt32)
             ENGINE = ReplacingMergeTree()
             PARTITION BY {day}
             ORDER BY (agent_id, spool_id, seq)",
            day = day_of("received_ns"),
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.spools (agent_id String, spool_id UInt64,
                 low_water UInt64, last_batch_ns Int64)
             ENGINE = ReplacingMergeTree(low_water)
             ORDER BY (agent_id, spool_id)"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.fim_trails (agent_id String, version UInt64,
                 has_end UInt8, end_seq UInt64, end_chain String, ahead String)
             ENGINE = ReplacingMergeTree(version)
             ORDER BY agent_id"
        ),
        format!(
            "CREATE TABLE IF NOT EXISTS `{db}`.host_summaries (agent_id String,
                 gauge Enum8('cpu' = 1, 'memory' = 2, 'filesystem' = 3), mountpoint String,
                 value Float64, time_ns Int64, time_order UInt64)
             ENGINE = ReplacingMergeTree(time_order)
             ORDER BY (agent_id, gauge, mountpoint)"
        ),
    ]
}

/// The partition key of `feed`: the UTC day of the milliseconds a cursor carries.
pub(super) const FEED_DAY: &str = "toYYYYMMDD(toDateTime(intDiv(start, 4194304000)), 'UTC')";

/// The statements that make schema 2 of schema 1: the feed.
pub(super) fn version_2(db: &str) -> Vec<String> {
    vec![format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.feed (start UInt64, agent_id String, spool_id UInt64,
             seq UInt64, received_ns Int64, events UInt32, codec UInt8, raw_bytes UInt32,
             data String)
         ENGINE = MergeTree()
         PARTITION BY {FEED_DAY}
         ORDER BY start"
    )]
}

/// The statements of one migration, for a database name.
type Statements = fn(&str) -> Vec<String>;

/// Each schema version and what makes it of the one before.
pub(super) const MIGRATIONS: [(u32, Statements); 2] = [(1, version_1), (2, version_2)];

/// The statement that creates the version table.
pub(super) fn versions_table(db: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS `{db}`.schema_versions (version UInt32, applied_ns Int64)
         ENGINE = MergeTree() ORDER BY version"
    )
}

/// Whether `name` can be a database name here: letters, digits and underscores, not starting
/// with a digit, so that it can be written into statements as it is.
pub(super) fn valid_database_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64
}

/// An `i64` mapped to a `u64` of the same order, for a `ReplacingMergeTree` version column
/// (which must be unsigned).
pub(super) fn order_key(time_ns: i64) -> u64 {
    time_ns.cast_unsigned() ^ (1 << 63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_plain_identifiers() {
        for good in ["outpost", "_x", "Outpost_2"] {
            assert!(valid_database_name(good), "{good}");
        }
        for bad in ["", "2x", "out-post", "a`b", "a.b", "é", &"x".repeat(65)] {
            assert!(!valid_database_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_feed_partition_is_the_day_of_a_cursor() {
        // A cursor's milliseconds sit above 22 bits: 2^22 * 1000 per second.
        assert!(FEED_DAY.contains(&(1u64 << 22).saturating_mul(1000).to_string()));
        assert!(version_2("outpost")[0].contains("ORDER BY start"));
    }

    #[test]
    fn the_order_key_keeps_the_order_of_times() {
        let times = [i64::MIN, -1, 0, 1, 1_700_000_000_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(order_key(pair[0]) < order_key(pair[1]), "{pair:?}");
        }
    }

    #[test]
    fn event_tables_deduplicate_by_identity_and_partition_by_event_day() {
        let statements = version_1("outpost");
        let metrics = &statements[0];
        assert!(
            metrics.contains("ORDER BY (agent_id, name, spool_id, seq, idx)"),
            "{metrics}"
        );
        for table in &statements[..4] {
            assert!(table.contains("ReplacingMergeTree(cursor)"), "{table}");
            assert!(
                table.contains(
                    "PARTITION BY toYYYYMMDD(toDateTime(intDiv(time_ns, 1000000000)), 'UTC')"
                ),
                "{table}"
            );
            assert!(table.contains("spool_id, seq, idx)"), "{table}");
        }
    }
}
