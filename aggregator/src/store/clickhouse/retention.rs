//! Retention by whole days: a partition goes once every event in it is older than its kind's
//! period, so events older than the period by more than a day are gone and none younger is
//! lost. Dropping a partition is one cheap statement that never holds up an insert.
//!
//! The event tables are partitioned by the UTC day of the event's own time, `batches` by the UTC
//! day a batch was received ([`super::schema`]); a partition's name is that day, `YYYYMMDD`.

use outpost_common::event::EventKind;
use outpost_common::time::duration_ns;

use super::rows;
use super::{ClickHouseStore, Failure};
use crate::store::{Retention, RetentionReport};

const DAY_NS: i64 = 86_400_000_000_000;
/// How long the feed is kept ([`super::follow`]).
const FEED_KEEP_NS: i64 = 2 * DAY_NS;

impl ClickHouseStore {
    /// One retention pass ([`crate::store::EventStore::enforce_retention`]).
    pub(super) async fn enforce(
        &self,
        retention: &Retention,
        now_ns: i64,
    ) -> Result<RetentionReport, Failure> {
        let mut report = RetentionReport::default();
        for kind in EventKind::ALL {
            let cutoff = now_ns.saturating_sub(duration_ns(retention.for_kind(kind)));
            let dropped = self
                .drop_days(rows::table(kind), cutoff, None, &mut report)
                .await?;
            report.add_deleted(kind, dropped);
        }
        let stale = now_ns.saturating_sub(duration_ns(retention.longest()));
        report.dedup_entries += self
            .drop_days("batches", stale, Some(now_ns), &mut report)
            .await?;
        // The feed serves a follower a few seconds behind; two days cover any outage it
        // may catch up from. Its rows are copies, not counted.
        self.drop_days(
            "feed",
            now_ns.saturating_sub(FEED_KEEP_NS),
            None,
            &mut report,
        )
        .await?;
        Ok(report)
    }

    /// Drops the partitions of `table` whose whole day lies before `cutoff_ns`; answers the rows
    /// they held (copies of one event not merged yet count each). With `carry_to_ns` (the
    /// `batches` table), the entries still needed move to that day's partition first
    /// ([`ClickHouseStore::carry_live_batches`]) and are not counted.
    async fn drop_days(
        &self,
        table: &str,
        cutoff_ns: i64,
        carry_to_ns: Option<i64>,
        report: &mut RetentionReport,
    ) -> Result<u64, Failure> {
        let query = self
            .client()
            .query(
                "SELECT partition, sum(rows) FROM system.parts
                 WHERE database = ? AND table = ? AND active
                 GROUP BY partition ORDER BY partition",
            )
            .bind(self.database.as_str())
            .bind(table);
        let partitions: Vec<(String, u64)> = self.timed(query.fetch_all()).await?;
        let mut dropped = 0;
        for (partition, rows) in partitions {
            let Some(start) = day_start_ns(&partition) else {
                tracing::warn!(
                    table,
                    partition,
                    "A partition not named after a day is left alone by retention."
                );
                continue;
            };
            if start.saturating_add(DAY_NS) > cutoff_ns {
                continue;
            }
            let carried = match carry_to_ns {
                Some(now_ns) => self.carry_live_batches(start, now_ns).await?,
                None => 0,
            };
            // A day number checked to be eight digits: safe to write into the statement.
            self.timed(
                self.client()
                    .query(&format!("ALTER TABLE {table} DROP PARTITION {partition}"))
                    .execute(),
            )
            .await?;
            dropped += rows.saturating_sub(carried);
            report.chunks += 1;
        }
        Ok(dropped)
    }
}

impl ClickHouseStore {
    /// Before the `batches` partition of the day from `day_start_ns` goes: copies into the
    /// partition of `now_ns`'s day the entries the deduplication rule still needs, those at or
    /// above their spool's low-water mark (a batch the agent may still send again), so that
    /// only entries below a mark are forgotten, as the trait promises. They are few: an agent's
    /// batches in flight when its spool last moved.
    async fn carry_live_batches(&self, day_start_ns: i64, now_ns: i64) -> Result<u64, Failure> {
        let day_end_ns = day_start_ns.saturating_add(DAY_NS);
        // The entries still needed: at or above their spool's mark.
        let live = format!(
            "FROM batches
             ANY LEFT JOIN (
                 SELECT agent_id, spool_id, max(low_water) AS mark FROM spools
                 GROUP BY agent_id, spool_id
             ) USING (agent_id, spool_id)
             WHERE received_ns >= {day_start_ns} AND received_ns < {day_end_ns} AND seq >= mark"
        );
        let count = format!("SELECT count() {live}");
        // Inserted by position: the receive time is `now_ns`, the rest as it was.
        let carry = format!(
            "INSERT INTO batches
             SELECT agent_id, spool_id, seq, toInt64({now_ns}), start, events {live}"
        );
        let carried: u64 = self
            .timed(self.client().query(&count).fetch_one::<u64>())
            .await?;
        if carried > 0 {
            self.timed(self.client().query(&carry).execute()).await?;
        }
        Ok(carried)
    }
}

/// The start of the UTC day a partition is named after (`20231114`), in nanoseconds since the
/// epoch; `None` for any other name.
fn day_start_ns(partition: &str) -> Option<i64> {
    if partition.len() != 8 || !partition.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let year: i32 = partition[..4].parse().ok()?;
    let month: u8 = partition[4..6].parse().ok()?;
    let day: u8 = partition[6..].parse().ok()?;
    let date =
        time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, day).ok()?;
    let days =
        i64::from(date.to_julian_day() - time::OffsetDateTime::UNIX_EPOCH.date().to_julian_day());
    days.checked_mul(DAY_NS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_named_after_utc_days() {
        // 2023-11-14T22:13:20Z lies in the day starting 2023-11-14T00:00:00Z.
        let t0 = 1_700_000_000 * 1_000_000_000i64;
        let start = day_start_ns("20231114").unwrap();
        assert!(start <= t0 && t0 < start + DAY_NS);
        assert_eq!(day_start_ns("19700101"), Some(0));
        assert_eq!(day_start_ns("19700102"), Some(DAY_NS));
        for bad in [
            "",
            "2023111",
            "20231332",
            "2023-11-",
            "tuple()",
            "202311140",
        ] {
            assert_eq!(day_start_ns(bad), None, "{bad}");
        }
    }
}
