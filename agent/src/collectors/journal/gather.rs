//! Entries gathered into the next submission.
//!
//! A submission is due when it holds `batch` entries, or `linger` after its first entry
//! arrived, whichever comes first: a busy journal is submitted in full batches, a quiet one
//! within `linger` of each entry, and no entry waits longer than that for more to come.
//! Time is passed in; the caller sleeps until [`Gather::deadline`].

use std::time::{Duration, Instant};

use outpost_common::event::Event;

use super::entry::Entry;
use crate::spool::{Checkpoint, Class, Submission};

/// The entries of the next submission and the cursor of the last of them.
#[derive(Debug)]
pub struct Gather {
    /// The checkpoint's source name.
    source: &'static str,
    batch: usize,
    linger: Duration,
    events: Vec<Event>,
    cursor: String,
    /// When the first entry gathered is due; `None` while there is none.
    deadline: Option<Instant>,
}

impl Gather {
    /// Gathers at most `batch` (at least 1) entries, for `linger` at most, checkpointed as
    /// `source`.
    pub fn new(source: &'static str, batch: usize, linger: Duration) -> Gather {
        Gather {
            source,
            batch: batch.max(1),
            linger,
            events: Vec::new(),
            cursor: String::new(),
            deadline: None,
        }
    }

    /// Adds an entry that arrived at `now`.
    pub fn push(&mut self, now: Instant, entry: Entry) {
        self.deadline.get_or_insert(now + self.linger);
        self.events.push(Event::Log(entry.record));
        self.cursor = entry.cursor;
    }

    /// Whether it holds a whole batch: submit before taking more.
    pub fn is_full(&self) -> bool {
        self.events.len() >= self.batch
    }

    /// When what is gathered must be submitted, full or not; `None` while empty.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The entries gathered, with the cursor of the last one as the checkpoint, committed
    /// together; `None` if there are none. Gathering starts again empty.
    pub fn take(&mut self) -> Option<Submission> {
        self.deadline.take()?;
        let events = std::mem::take(&mut self.events);
        let cursor = std::mem::take(&mut self.cursor);
        Some(
            Submission::new(Class::Wait, events)
                .with_checkpoint(Checkpoint::new(self.source, cursor.into_bytes())),
        )
    }
}

#[cfg(test)]
mod tests {
    use outpost_common::event::LogRecord;

    use super::*;

    fn entry(n: i64) -> Entry {
        Entry {
            cursor: format!("cursor-{n}"),
            record: LogRecord {
                time_ns: n,
                source: "journal".to_owned(),
                severity: None,
                body: format!("entry {n}"),
                attributes: Vec::new(),
            },
        }
    }

    fn times(sub: &Submission) -> Vec<i64> {
        sub.events.iter().map(Event::time_ns).collect()
    }

    const LINGER: Duration = Duration::from_millis(200);

    #[test]
    fn a_full_batch_is_due_at_once_with_the_last_cursor() {
        let t0 = Instant::now();
        let mut g = Gather::new("journal", 3, LINGER);
        assert_eq!(g.deadline(), None);
        for n in 0..3 {
            assert!(!g.is_full());
            g.push(t0, entry(n));
        }
        assert!(g.is_full());
        assert_eq!(g.deadline(), Some(t0 + LINGER));
        let sub = g.take().unwrap();
        assert_eq!(times(&sub), [0, 1, 2]);
        assert_eq!(sub.class, Class::Wait);
        assert_eq!(
            sub.checkpoints,
            [Checkpoint::new("journal", b"cursor-2".to_vec())]
        );
        assert!(g.take().is_none());
        assert_eq!(g.deadline(), None);
    }

    #[test]
    fn a_partial_batch_is_due_linger_after_its_first_entry() {
        let t0 = Instant::now();
        let mut g = Gather::new("journal", 500, LINGER);
        g.push(t0, entry(1));
        // Later entries do not push the deadline back: a steady trickle is still sent.
        g.push(t0 + Duration::from_millis(150), entry(2));
        assert_eq!(g.deadline(), Some(t0 + LINGER));
        assert!(!g.is_full());
        assert_eq!(times(&g.take().unwrap()), [1, 2]);
        // The next submission's clock starts at its own first entry.
        let t1 = t0 + Duration::from_secs(5);
        g.push(t1, entry(3));
        assert_eq!(g.deadline(), Some(t1 + LINGER));
        let sub = g.take().unwrap();
        assert_eq!(sub.checkpoints[0].value, b"cursor-3");
    }

    #[test]
    fn a_batch_of_zero_is_taken_as_one() {
        let mut g = Gather::new("journal", 0, LINGER);
        g.push(Instant::now(), entry(1));
        assert!(g.is_full());
    }
}
