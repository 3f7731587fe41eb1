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
