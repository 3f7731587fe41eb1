//! The shape of both programs' internal events.
//!
//! An internal event is something the program itself did or suffered: a batch acknowledged, a
//! frame refused, the spool found full. Each one is a struct whose `emit` writes the log line and
//! updates the counters it concerns, so a counter's name and the sentence that explains it are
//! written once, in one place, and cannot drift apart. Each program keeps its own events and
//! counters (`internal_events` in each crate); what they share lives here.
//!
//! [`Recorder`] lets a test assert that an event happened, by name, without parsing log lines.

use std::sync::{Mutex, PoisonError};

/// Names of the internal events emitted, in order, when recording is on.
///
/// Off (and free) unless made with [`Recorder::recording`]: production code never records.
#[derive(Debug, Default)]
pub struct Recorder {
    names: Option<Mutex<Vec<&'static str>>>,
}

impl Recorder {
    /// A recorder that keeps nothing.
    pub fn off() -> Recorder {
        Recorder { names: None }
    }

    /// A recorder that keeps the name of every event emitted.
    pub fn recording() -> Recorder {
        Recorder {
            names: Some(Mutex::new(Vec::new())),
        }
    }

    /// Notes that the event `name` was emitted, if recording.
    pub fn record(&self, name: &'static str) {
        if let Some(names) = &self.names {
            names
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(name);
        }
    }

    /// The names recorded so far, oldest first (empty unless recording).
    pub fn names(&self) -> Vec<&'static str> {
        self.names.as_ref().map_or_else(Vec::new, |names| {
            names.lock().unwrap_or_else(PoisonError::into_inner).clone()
        })
    }

    /// How many times `name` was recorded.
    pub fn count(&self, name: &str) -> usize {
        self.names().iter().filter(|n| **n == name).count()
    }
}

/// Something a program itself did or suffered, written once: `emit` writes its log line and
/// updates the counters it concerns in `T`, the program's telemetry.
pub trait InternalEvent<T: ?Sized> {
    /// A stable snake_case name, as tests know it.
    const NAME: &'static str;

    /// Writes the log line and updates the counters. Call the telemetry's `emit` instead, which
    /// also records the name when recording.
    fn emit(self, telemetry: &T);
}

/// Declares a program's counters once: the public snapshot struct (one documented `u64` per
/// counter), the enum that names a counter, and a private struct of atomics with `add` and
/// `snapshot`.
///
/// ```
/// outpost_common::counters! {
///     /// What was counted, at one moment.
///     pub struct Counters;
///     enum Counter;
///     struct AtomicCounters;
///     {
///         /// Batches sent.
///         batches_sent => BatchesSent,
///     }
/// }
/// let c = AtomicCounters::default();
/// c.add(Counter::BatchesSent, 2);
/// assert_eq!(c.snapshot().batches_sent, 2);
/// ```
#[macro_export]
macro_rules! counters {
    (
        $(#[$snapshot_meta:meta])*
        pub struct $snapshot:ident;
        $counter_vis:vis enum $counter:ident;
        struct $atomics:ident;
        { $( $(#[$field_meta:meta])* $field:ident => $variant:ident, )* }
    ) => {
        $(#[$snapshot_meta])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $snapshot {
            $( $(#[$field_meta])* pub $field: u64, )*
        }

        /// One of the counters.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $counter_vis enum $counter {
            $( $variant, )*
        }

        #[derive(Debug, Default)]
        struct $atomics {
            $( $field: ::std::sync::atomic::AtomicU64, )*
        }

        impl $atomics {
            /// Adds `n` to `counter`.
            fn add(&self, counter: $counter, n: u64) {
                let slot = match counter {
                    $( $counter::$variant => &self.$field, )*
                };
                slot.fetch_add(n, ::std::sync::atomic::Ordering::Relaxed);
            }

            /// Every counter now.
            fn snapshot(&self) -> $snapshot {
                $snapshot {
                    $( $field: self.$field.load(::std::sync::atomic::Ordering::Relaxed), )*
                }
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_recording_recorder_keeps_names() {
        let off = Recorder::off();
        off.record("a");
        assert!(off.names().is_empty());
        let on = Recorder::recording();
        on.record("a");
        on.record("b");
        on.record("a");
        assert_eq!(on.names(), ["a", "b", "a"]);
        assert_eq!(on.count("a"), 2);
    }
}
