//! One alert's lifecycle, as Prometheus defines it: inactive → pending → firing → resolved.
//!
//! A rule says, for each of its groups, whether its condition holds now; [`Lifecycle::step`] turns
//! that and `now` into the alert's next state and the transition, if any. Nothing here reads a
//! clock or the store: the engine keeps the states (in the state store, so that a restart restores
//! pending and firing alerts without notifying again) and hands them in.
//!
//! - A condition that starts to hold makes the alert **pending**, or **firing** at once when the
//!   rule's `for` is zero.
//! - It fires once the condition held for `for` without a break; a pending alert whose condition
//!   stops holding goes back to inactive without a notification (it never fired).
//! - A firing alert whose condition stops holding stays firing for `keep_firing_for`, and is
//!   **resolved** when that passed without the condition holding again.

use serde::{Deserialize, Serialize};

/// Where one alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AlertState {
    /// The condition does not hold (or no longer does, past `keep_firing_for`).
    #[default]
    Inactive,
    /// The condition holds since `since_ns`, for less than the rule's `for`.
    Pending { since_ns: i64 },
    /// Firing since `since_ns`; the condition last held at `last_held_ns`.
    Firing { since_ns: i64, last_held_ns: i64 },
}

/// What changed in a step, for the routing and the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Inactive → pending.
    Pending,
    /// Pending (or inactive, with `for` zero) → firing: notified.
    Fired,
    /// Pending → inactive: the condition stopped before `for` passed; not notified.
    Cleared,
    /// Firing → inactive: notified.
    Resolved,
}

/// A rule's timing: how long its condition must hold to fire, and how long an alert keeps firing
/// after it stopped holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lifecycle {
    pub for_ns: i64,
    pub keep_firing_for_ns: i64,
}

impl Lifecycle {
    /// The state after evaluating the condition (`holds`) at `now_ns`, and the transition if the
    /// state changed kind. Times that go back (an evaluation at an earlier `now`) count as no time
    /// passing.
    pub fn step(
        &self,
        state: AlertState,
        holds: bool,
        now_ns: i64,
    ) -> (AlertState, Option<Transition>) {
        match (state, holds) {
            (AlertState::Inactive, false) => (state, None),
            (AlertState::Inactive, true) if self.for_ns <= 0 => (
                AlertState::Firing {
                    since_ns: now_ns,
                    last_held_ns: now_ns,
                },
                Some(Transition::Fired),
            ),
            (AlertState::Inactive, true) => (
                AlertState::Pending { since_ns: now_ns },
                Some(Transition::Pending),
            ),
            (AlertState::Pending { since_ns }, true) => {
                if now_ns.saturating_sub(since_ns) >= self.for_ns {
                    (
                        AlertState::Firing {
                            since_ns: now_ns,
                            last_held_ns: now_ns,
                        },
                        Some(Transition::Fired),
                    )
                } else {
                    (state, None)
                }
            }
            (AlertState::Pending { .. }, false) => {
                (AlertState::Inactive, Some(Transition::Cleared))
            }
            (
                AlertState::Firing {
                    since_ns,
                    last_held_ns,
                },
                true,
            ) => (
                AlertState::Firing {
                    since_ns,
                    last_held_ns: last_held_ns.max(now_ns),
                },
                None,
            ),
            (AlertState::Firing { last_held_ns, .. }, false) => {
                if now_ns.saturating_sub(last_held_ns) < self.keep_firing_for_ns {
                    (state, None)
                } else {
                    (AlertState::Inactive, Some(Transition::Resolved))
                }
            }
        }
    }

    /// When the alert next changes state if the condition keeps its current value (`holds`):
    /// pending alerts fire once `for` passed, firing ones whose condition stopped resolve once
    /// `keep_firing_for` passed. `None`: not without a change of the condition.
    pub fn next_change_ns(&self, state: AlertState, holds: bool) -> Option<i64> {
        match (state, holds) {
            (AlertState::Pending { since_ns }, true) => Some(since_ns.saturating_add(self.for_ns)),
            (AlertState::Firing { last_held_ns, .. }, false) => {
                Some(last_held_ns.saturating_add(self.keep_firing_for_ns))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    /// The transitions of a run of evaluations `(seconds, holds)`, with their times.
    fn run(lifecycle: Lifecycle, evaluations: &[(i64, bool)]) -> Vec<(i64, Transition)> {
        let mut state = AlertState::Inactive;
        let mut seen = Vec::new();
        for &(t, holds) in evaluations {
            let (next, transition) = lifecycle.step(state, holds, t * S);
            if let Some(tr) = transition {
                seen.push((t, tr));
            }
            state = next;
        }
        seen
    }

    #[test]
    fn with_for_zero_an_alert_fires_at_once_and_resolves_when_the_condition_stops() {
        let l = Lifecycle::default();
        assert_eq!(
            run(
                l,
                &[(0, false), (1, true), (2, true), (3, false), (4, false)]
            ),
            [(1, Transition::Fired), (3, Transition::Resolved)]
        );
    }

    #[test]
    fn an_alert_fires_once_its_condition_held_for_the_whole_of_for() {
        let l = Lifecycle {
            for_ns: 60 * S,
            keep_firing_for_ns: 0,
        };
        let evaluations: Vec<(i64, bool)> = (0..=120).step_by(10).map(|t| (t, t >= 10)).collect();
        assert_eq!(
            run(l, &evaluations),
            [(10, Transition::Pending), (70, Transition::Fired)]
        );
    }

    #[test]
    fn a_break_before_for_passed_clears_a_pending_alert_without_firing_and_starts_over() {
        let l = Lifecycle {
            for_ns: 60 * S,
            keep_firing_for_ns: 0,
        };
        assert_eq!(
            run(
                l,
                &[
                    (0, true),
                    (50, true),
                    (55, false),
                    (60, true),
                    (119, true),
                    (120, true)
                ]
            ),
            [
                (0, Transition::Pending),
                (55, Transition::Cleared),
                (60, Transition::Pending),
                (120, Transition::Fired)
            ]
        );
    }

    #[test]
    fn keep_firing_for_rides_out_a_short_gap_and_resolves_after_a_long_one() {
        let l = Lifecycle {
            for_ns: 0,
            keep_firing_for_ns: 30 * S,
        };
        assert_eq!(
            run(
                l,
                &[
                    (0, true),
                    (10, false),
                    (29, false),
                    (35, true),
                    (40, false),
                    (64, false),
                    (65, false)
                ]
            ),
            [(0, Transition::Fired), (65, Transition::Resolved)]
        );
    }

    #[test]
    fn a_clock_that_goes_back_passes_no_time() {
        let l = Lifecycle {
            for_ns: 60 * S,
            keep_firing_for_ns: 0,
        };
        assert_eq!(
            run(l, &[(100, true), (40, true), (159, true), (160, true)]),
            [(100, Transition::Pending), (160, Transition::Fired)]
        );
        // A firing alert keeps the latest time its condition held.
        let (state, _) = l.step(
            AlertState::Firing {
                since_ns: 0,
                last_held_ns: 100 * S,
            },
            true,
            50 * S,
        );
        assert_eq!(
            state,
            AlertState::Firing {
                since_ns: 0,
                last_held_ns: 100 * S
            }
        );
    }

    #[test]
    fn the_next_change_is_when_for_or_keep_firing_for_runs_out() {
        let l = Lifecycle {
            for_ns: 60 * S,
            keep_firing_for_ns: 30 * S,
        };
        let pending = AlertState::Pending { since_ns: 10 * S };
        assert_eq!(l.next_change_ns(pending, true), Some(70 * S));
        assert_eq!(l.next_change_ns(pending, false), None);
        let firing = AlertState::Firing {
            since_ns: 0,
            last_held_ns: 100 * S,
        };
        assert_eq!(l.next_change_ns(firing, false), Some(130 * S));
        assert_eq!(l.next_change_ns(firing, true), None);
        assert_eq!(l.next_change_ns(AlertState::Inactive, true), None);
        // At that time, the step makes the change.
        assert_eq!(l.step(pending, true, 70 * S).1, Some(Transition::Fired));
        assert_eq!(l.step(firing, false, 130 * S).1, Some(Transition::Resolved));
    }
}
