//! The marks fleet status derives from an agent's successive status reports: when its drops last
//! grew (and by how much), and since when its backlog has been rising. Pure: the previous status,
//! the next one and `now` go in, the new marks come out.

use outpost_common::event::{AgentStatus, DropCounters, DropReason};

/// The derived marks fleet status needs, carried from one status report to the next.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatusMarks {
    /// When the agent's total of dropped events last increased.
    pub drops_changed_ns: Option<i64>,
    /// How much each drop counter grew at that last increase.
    pub drops_last_increase: DropCounters,
    /// Set when the backlog grows, kept while it does not shrink, cleared when it shrinks.
    pub backlog_rising_since_ns: Option<i64>,
}

impl StatusMarks {
    /// The marks after `next` arrives at `now_ns`, given the previous status.
    ///
    /// Drops: any counter that grew sets the change time and the increase. A first status with
    /// drops counts them as new, since the aggregator cannot know when they happened. A counter
    /// that went down (the agent's spool was recreated) is not an increase.
    ///
    /// Backlog: growing sets the rising time (keeping an earlier one), shrinking or reaching zero
    /// clears it, staying level keeps it. A first status sets nothing: a backlog found on
    /// connecting is not yet known to be rising.
    pub fn advance(self, prev: Option<&AgentStatus>, next: &AgentStatus, now_ns: i64) -> Self {
        let empty = DropCounters::default();
        let before = prev.map_or(&empty, |p| &p.drops);
        let mut increase = DropCounters::default();
        for reason in DropReason::ALL {
            increase.add(
                reason,
                next.drops.get(reason).saturating_sub(before.get(reason)),
            );
        }
        let dropped = DropReason::ALL.iter().any(|&r| increase.get(r) > 0);
        let (drops_changed_ns, drops_last_increase) = if dropped {
            (Some(now_ns), increase)
        } else {
            (self.drops_changed_ns, self.drops_last_increase)
        };

        let backlog_rising_since_ns = match prev {
            _ if next.backlog_batches == 0 => None,
            None => None,
            Some(p) if next.backlog_batches > p.backlog_batches => {
                Some(self.backlog_rising_since_ns.unwrap_or(now_ns))
            }
            Some(p) if next.backlog_batches < p.backlog_batches => None,
            Some(_) => self.backlog_rising_since_ns,
        };
        StatusMarks {
            drops_changed_ns,
            drops_last_increase,
            backlog_rising_since_ns,
        }
    }
}

/// The clock skew a status shows: the agent's time (it stamps a status when it sends it) minus the
/// aggregator's when it arrived; positive when the agent is ahead.
pub fn clock_skew_ns(status: &AgentStatus, received_ns: i64) -> i64 {
    status.time_ns.saturating_sub(received_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_marks_follow_drops_and_backlog() {
        let at = |backlog, evicted| {
            let mut s = AgentStatus {
                backlog_batches: backlog,
                ..AgentStatus::default()
            };
            s.drops.add(DropReason::SpoolFullEvicted, evicted);
            s
        };
        let none = StatusMarks::default();

        // A first status: drops are news, a backlog is not yet "rising".
        let m = none.clone().advance(None, &at(10, 3), 100);
        assert_eq!(m.drops_changed_ns, Some(100));
        assert_eq!(m.drops_last_increase.spool_full_evicted, 3);
        assert_eq!(m.backlog_rising_since_ns, None);
        assert_eq!(none.clone().advance(None, &at(0, 0), 100), none);

        // Growing backlog and drops.
        let m = m.advance(Some(&at(10, 3)), &at(11, 5), 200);
        assert_eq!(m.backlog_rising_since_ns, Some(200));
        assert_eq!(m.drops_changed_ns, Some(200));
        assert_eq!(m.drops_last_increase.spool_full_evicted, 2);
        // Level: both kept.
        let m = m.advance(Some(&at(11, 5)), &at(11, 5), 300);
        assert_eq!(m.backlog_rising_since_ns, Some(200));
        assert_eq!(m.drops_changed_ns, Some(200));
        // Growing again: the rise started at 200.
        let m = m.advance(Some(&at(11, 5)), &at(20, 5), 400);
        assert_eq!(m.backlog_rising_since_ns, Some(200));
        // Shrinking clears it; counters that went down (a new spool) are no increase.
        let m = m.advance(Some(&at(20, 5)), &at(19, 0), 500);
        assert_eq!(m.backlog_rising_since_ns, None);
        assert_eq!(m.drops_changed_ns, Some(200));
        // Reaching zero clears it even from a rise.
        let m = m.advance(Some(&at(19, 0)), &at(25, 0), 600);
        assert_eq!(m.backlog_rising_since_ns, Some(600));
        let m = m.advance(Some(&at(25, 0)), &at(0, 0), 700);
        assert_eq!(m.backlog_rising_since_ns, None);
    }

    #[test]
    fn a_drop_in_one_counter_is_reported_alone() {
        let mut prev = AgentStatus::default();
        prev.drops.add(DropReason::SpoolFullEvicted, 5);
        let mut next = prev.clone();
        next.drops.add(DropReason::SpoolFullRejected, 2);
        let m = StatusMarks::default().advance(Some(&prev), &next, 10);
        assert_eq!(m.drops_changed_ns, Some(10));
        assert_eq!(m.drops_last_increase.get(DropReason::SpoolFullEvicted), 0);
        assert_eq!(m.drops_last_increase.get(DropReason::SpoolFullRejected), 2);
    }

    #[test]
    fn clock_skew_is_agent_time_minus_receive_time_and_saturates() {
        let at = |time_ns| AgentStatus {
            time_ns,
            ..AgentStatus::default()
        };
        assert_eq!(clock_skew_ns(&at(1_012), 1_000), 12);
        assert_eq!(clock_skew_ns(&at(990), 1_000), -10);
        assert_eq!(clock_skew_ns(&at(i64::MIN), i64::MAX), i64::MIN);
    }
}
