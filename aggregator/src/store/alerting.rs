//! What the alerting engine keeps in the state store: alert records, their history, the
//! dispatcher's groups, silences, the notification outbox and the feed cursor evaluated up to.
//!
//! [`AlertingStore::save_alerting`] writes one engine [`Outcome`] in one transaction, its
//! notifications into the outbox with them: a notification exists in the store exactly when the
//! alert state that made it does, so a crash at any point neither loses nor repeats one. The
//! outbox then keeps each notification's attempts and outcome; it is the notification log.

use serde::{Deserialize, Serialize};

use super::{Cursor, StoreError};
use crate::notify::Message;
use crate::rules::engine::{AlertRecord, HistoryEntry, Outcome, Saved};
use crate::rules::matcher::{self, Silence};

/// Where a notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Not sent yet, or to be tried again at `next_attempt_ns`.
    Pending,
    /// The receiver confirmed it.
    Sent,
    /// The receiver refused it for good (a 4xx other than 429, a configuration error) or the
    /// receiver no longer exists.
    Failed,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Sent => "sent",
            OutboxState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<OutboxState> {
        match s {
            "pending" => Some(OutboxState::Pending),
            "sent" => Some(OutboxState::Sent),
            "failed" => Some(OutboxState::Failed),
            _ => None,
        }
    }
}

/// One notification in the outbox.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutboxEntry {
    pub id: i64,
    pub message: Message,
    pub state: OutboxState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (pending ones).
    pub next_attempt_ns: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the receiver confirmed it.
    pub sent_ns: Option<i64>,
}

/// The outcome of one attempt to send a notification.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Sent {
        at_ns: i64,
    },
    /// Failed in a way worth another try, at `retry_at_ns`.
    Retry {
        retry_at_ns: i64,
        error: String,
    },
    Failed {
        error: String,
    },
}

/// A silence as the store keeps it: the matchers as text ([`matcher::render`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredSilence {
    pub id: String,
    pub matchers: Vec<String>,
    pub starts_ns: i64,
    pub ends_ns: i64,
    pub author: String,
    pub comment: String,
}

impl From<&Silence> for StoredSilence {
    fn from(s: &Silence) -> Self {
        StoredSilence {
            id: s.id.clone(),
            matchers: s.matchers.iter().map(matcher::render).collect(),
            starts_ns: s.starts_ns,
            ends_ns: s.ends_ns,
            author: s.author.clone(),
            comment: s.comment.clone(),
        }
    }
}

impl StoredSilence {
    pub fn to_silence(&self) -> Result<Silence, String> {
        Ok(Silence {
            id: self.id.clone(),
            matchers: self
                .matchers
                .iter()
                .map(|m| matcher::parse(m))
                .collect::<Result<_, _>>()?,
            starts_ns: self.starts_ns,
            ends_ns: self.ends_ns,
            author: self.author.clone(),
            comment: self.comment.clone(),
        })
    }
}

/// Which history entries or notifications to list: newest first, before an id (a page's last).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Entries of one alert only.
    pub fingerprint: Option<String>,
    /// Entries with a smaller id only (the previous page's `next`).
    pub before: Option<i64>,
    /// Entries at most; zero counts as one.
    pub limit: usize,
}

/// One history entry with its id.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryRow {
    pub id: i64,
    #[serde(flatten)]
    pub entry: HistoryEntry,
}

/// What was kept of the engine, and where in the feed it had got to.
#[derive(Debug, Default, Clone)]
pub struct LoadedAlerting {
    pub saved: Saved,
    /// Every event before this was evaluated; `None` the first time.
    pub cursor: Option<Cursor>,
}

/// The alerting lease as [`AlertingStore::claim_alerting`] answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The claimer holds the lease for `remaining` from now (by the store's clock).
    Held {
        /// Grows each time the lease changes hands. Writes carry it
        /// ([`AlertingStore::save_alerting_fenced`]) and the store refuses those of an earlier
        /// holder: a fencing token.
        epoch: i64,
        remaining: std::time::Duration,
    },
    /// Another aggregator holds it for `remaining` from now, unless it renews.
    Taken {
        holder: String,
        remaining: std::time::Duration,
    },
}

/// The alerting part of the state store. Implementations are shared between threads; every
/// method may block on I/O.
///
/// # One engine at a time
///
/// When several aggregators share a state store, one of them runs alerting: the one holding
/// the alerting lease ([`claim_alerting`](Self::claim_alerting)). It writes with the lease's
/// epoch ([`save_alerting_fenced`](Self::save_alerting_fenced)), so that an aggregator that lost
/// the lease without knowing it (paused, cut off) cannot write over its successor. A store only
/// one aggregator opens (the embedded one) grants the lease always, with epoch 0.
pub trait AlertingStore: Send + Sync + 'static {
    /// Takes the alerting lease for `holder` for `ttl`, or renews it when `holder` has it;
    /// answers who holds it now. A lease not renewed within `ttl` may be taken by another
    /// holder, which gets the next epoch.
    fn claim_alerting(&self, holder: &str, ttl: std::time::Duration) -> Result<Claim, StoreError> {
        let _ = holder;
        Ok(Claim::Held {
            epoch: 0,
            remaining: ttl,
        })
    }

    /// Gives the lease up if `holder` has it, so that another aggregator takes over at once
    /// (at shutdown).
    fn release_alerting(&self, holder: &str) -> Result<(), StoreError> {
        let _ = holder;
        Ok(())
    }

    /// [`save_alerting`](Self::save_alerting), only while the lease is at `epoch`: when it has
    /// passed to another holder, nothing is written and the answer is
    /// [`StoreError::LeaseLost`].
    fn save_alerting_fenced(
        &self,
        epoch: i64,
        outcome: &Outcome,
        silences: Option<&[Silence]>,
        cursor: Option<Cursor>,
    ) -> Result<(), StoreError> {
        let _ = epoch;
        self.save_alerting(outcome, silences, cursor)
    }

    /// What [`save_alerting`](Self::save_alerting) wrote so far.
    fn load_alerting(&self) -> Result<LoadedAlerting, StoreError>;

    /// Writes an engine outcome, the silences when they changed, and the cursor every event
    /// before which was evaluated, in one transaction. The outcome's messages enter the outbox
    /// as pending, due at once.
    fn save_alerting(
        &self,
        outcome: &Outcome,
        silences: Option<&[Silence]>,
        cursor: Option<Cursor>,
    ) -> Result<(), StoreError>;

    /// Pending notifications due at `now_ns`, oldest first; of one group for one receiver, only
    /// the oldest pending one, so that a group's notifications arrive in order (a resolution
    /// never overtakes the firing it resolves while that waits for a retry).
    fn due_notifications(&self, now_ns: i64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError>;

    /// When the next pending notification is due, if there is one.
    fn next_notification_ns(&self) -> Result<Option<i64>, StoreError>;

    /// Records an attempt's outcome (and counts the attempt).
    fn record_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError>;

    /// The notification log, newest first.
    fn notifications(&self, query: &LogQuery) -> Result<Vec<OutboxEntry>, StoreError>;

    /// Alert history, newest first.
    fn alert_history(&self, query: &LogQuery) -> Result<Vec<HistoryRow>, StoreError>;

    /// The alert records as last saved: pending, firing, and resolved not yet notified.
    fn alert_records(&self) -> Result<Vec<AlertRecord>, StoreError>;

    /// Every silence kept (active, pending and expired ones not yet forgotten).
    fn stored_silences(&self) -> Result<Vec<StoredSilence>, StoreError>;

    /// Forgets notifications finished, history entries and silences ended before `cutoff_ns`.
    fn expire_alerting(&self, cutoff_ns: i64) -> Result<u64, StoreError>;
}
