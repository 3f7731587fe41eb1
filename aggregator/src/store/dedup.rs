//! The exactly-once rule, free of any backend: what a store does with an incoming batch given
//! what it holds for the batch's `(agent, spool)`.
//!
//! A batch is identified by `(agent_id, spool_id, seq)`. Each spool also has a low-water mark:
//! the agent's promise that no `seq` below it will ever be sent again. A store keeps the keys it
//! has stored (it may forget those below the mark) and the highest mark it has seen:
//!
//! 1. [`admit`]: a `seq` below the stored mark is a duplicate without looking further (its key
//!    may already be forgotten); anything else must be claimed in the stored keys.
//! 2. The claim decides: a key already there is a duplicate; a new key is stored, and the spool's
//!    mark becomes [`Admission::Claim`]'s `low_water` (marks never go down, so a batch delivered
//!    late cannot lower it).

use super::CommitOutcome;

/// What to do with an incoming batch before touching the stored keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Below the spool's low-water mark: acknowledged before; write nothing.
    BelowLowWater,
    /// Claim the batch's key: new if the key was not stored yet. If it is new, the spool's mark
    /// becomes `low_water`.
    Claim { low_water: u64 },
}

/// Decides on a batch `seq` carrying `batch_low_water`, given the spool's stored mark (`None`:
/// the spool has never stored a batch).
pub fn admit(stored_low_water: Option<u64>, seq: u64, batch_low_water: u64) -> Admission {
    match stored_low_water {
        Some(mark) if seq < mark => Admission::BelowLowWater,
        _ => Admission::Claim {
            low_water: stored_low_water.unwrap_or(0).max(batch_low_water),
        },
    }
}

/// The outcome of a batch: `claimed` tells whether its key was newly stored.
pub fn outcome(admission: Admission, claimed: bool) -> CommitOutcome {
    match admission {
        Admission::Claim { .. } if claimed => CommitOutcome::Stored,
        _ => CommitOutcome::Duplicate,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_new_spool_claims_every_seq() {
        assert_eq!(admit(None, 0, 0), Admission::Claim { low_water: 0 });
        assert_eq!(admit(None, 7, 5), Admission::Claim { low_water: 5 });
    }

    #[test]
    fn below_the_mark_is_a_duplicate_at_and_above_is_claimed() {
        assert_eq!(admit(Some(4), 3, 9), Admission::BelowLowWater);
        assert_eq!(admit(Some(4), 0, 0), Admission::BelowLowWater);
        assert_eq!(admit(Some(4), 4, 4), Admission::Claim { low_water: 4 });
        assert_eq!(admit(Some(4), 9, 6), Admission::Claim { low_water: 6 });
        assert_eq!(
            admit(Some(u64::MAX), u64::MAX - 1, 0),
            Admission::BelowLowWater
        );
    }

    #[test]
    fn the_mark_never_goes_down() {
        // A batch sent before the agent advanced its mark, delivered late.
        assert_eq!(admit(Some(10), 12, 3), Admission::Claim { low_water: 10 });
    }

    #[test]
    fn outcomes() {
        let claim = Admission::Claim { low_water: 1 };
        assert_eq!(outcome(claim, true), CommitOutcome::Stored);
        assert_eq!(outcome(claim, false), CommitOutcome::Duplicate);
        assert_eq!(
            outcome(Admission::BelowLowWater, true),
            CommitOutcome::Duplicate
        );
    }

    proptest! {
        /// Whatever order batches arrive in, resends included, each key is stored at most once,
        /// and a key is refused only if it was stored or lies below a mark an agent promised.
        #[test]
        fn every_key_is_stored_at_most_once(
            arrivals in prop::collection::vec((0u64..3, 0u64..12, 0u64..12), 0..60)
        ) {
            let mut keys: HashSet<(u64, u64)> = HashSet::new();
            let mut marks: HashMap<u64, u64> = HashMap::new();
            let mut stored = Vec::new();
            for (spool, seq, lw) in arrivals {
                let admission = admit(marks.get(&spool).copied(), seq, lw);
                let claimed = matches!(admission, Admission::Claim { .. })
                    && keys.insert((spool, seq));
                if outcome(admission, claimed) == CommitOutcome::Stored {
                    let Admission::Claim { low_water } = admission else { unreachable!() };
                    prop_assert!(low_water >= marks.get(&spool).copied().unwrap_or(0));
                    marks.insert(spool, low_water);
                    prop_assert!(!stored.contains(&(spool, seq)));
                    stored.push((spool, seq));
                } else if !claimed && matches!(admission, Admission::Claim { .. }) {
                    prop_assert!(stored.contains(&(spool, seq)));
                }
            }
        }
    }
}
