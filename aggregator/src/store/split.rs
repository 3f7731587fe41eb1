//! One store made of two backends: events in one, state in the other (`[store] backend` and
//! `[state] backend`), for the parts of the aggregator that read both (the API, the alerting
//! engine).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::alerting::{
    AlertingStore, Attempt, HistoryRow, LoadedAlerting, LogQuery, OutboxEntry, StoredSilence,
};
use super::{
    AgentRecord, AuditEntry, BatchCommit, Cursor, Enrollment, EventPage, EventQuery, EventStore,
    HostSummary, IncomingBatch, RegistryUpdate, Retention, RetentionReport, StateBackend,
    StateStore, StoreError, series,
};
use crate::enroll::token::EnrollmentToken;
use crate::rules::engine::{AlertRecord, Outcome};
use crate::rules::matcher::Silence;
use crate::tokens::TokenRecord;

/// Events in `events`, everything else in `state`.
pub struct SplitStore {
    events: Arc<dyn EventStore>,
    state: Arc<dyn StateBackend>,
}

impl SplitStore {
    pub fn new(events: Arc<dyn EventStore>, state: Arc<dyn StateBackend>) -> SplitStore {
        SplitStore { events, state }
    }

    /// Whether one store holds both (the embedded SQLite store).
    fn one_store(&self) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.events), Arc::as_ptr(&self.state))
    }
}

impl std::fmt::Debug for SplitStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SplitStore")
            .field("events", &self.events.backend_name())
            .field("state", &self.state.backend_name())
            .finish()
    }
}

impl EventStore for SplitStore {
    fn commit_batches(&self, batches: &[IncomingBatch]) -> Result<Vec<BatchCommit>, StoreError> {
        self.events.commit_batches(batches)
    }

    fn end(&self) -> Result<Cursor, StoreError> {
        self.events.end()
    }

    fn events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        self.events.events(query)
    }

    fn follow(&self, from: Cursor, limit: usize) -> Result<crate::store::FollowPage, StoreError> {
        self.events.follow(from, limit)
    }

    fn host_summaries(&self) -> Result<BTreeMap<String, HostSummary>, StoreError> {
        self.events.host_summaries()
    }

    fn metric_query(
        &self,
        query: &series::MetricQuery,
    ) -> Result<series::MetricAnswer, series::MetricQueryError> {
        self.events.metric_query(query)
    }

    fn enforce_retention(
        &self,
        retention: &Retention,
        now_ns: i64,
    ) -> Result<RetentionReport, StoreError> {
        self.events.enforce_retention(retention, now_ns)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.events.ping()
    }

    fn backend_name(&self) -> &'static str {
        self.events.backend_name()
    }
}

impl StateStore for SplitStore {
    fn record_all(&self, updates: &[RegistryUpdate]) -> Result<(), StoreError> {
        self.state.record_all(updates)
    }

    fn agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.state.agents()
    }

    /// The state store's when one store holds both (its generation then sees the host
    /// summaries commits write); otherwise `None`: the fleet view joins host summaries from the
    /// event store, whose changes the state store's generation does not see.
    fn registry_generation(&self) -> Option<u64> {
        self.one_store()
            .then(|| self.state.registry_generation())
            .flatten()
    }

    fn agent(&self, agent_id: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.state.agent(agent_id)
    }

    fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.state.insert_token(token)
    }

    fn token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.state.token(id)
    }

    fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.state.tokens()
    }

    fn revoke_token(
        &self,
        id_or_name: &str,
        now_ns: i64,
    ) -> Result<Option<TokenRecord>, StoreError> {
        self.state.revoke_token(id_or_name, now_ns)
    }

    fn touch_token(&self, id: &str, now_ns: i64) -> Result<(), StoreError> {
        self.state.touch_token(id, now_ns)
    }

    fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        self.state.append_audit(entries)
    }

    fn audit(&self, before: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.state.audit(before, limit)
    }

    fn remove_agent(&self, agent_id: &str, now_ns: i64) -> Result<bool, StoreError> {
        self.state.remove_agent(agent_id, now_ns)
    }

    fn insert_enrollment_token(&self, token: &EnrollmentToken) -> Result<(), StoreError> {
        self.state.insert_enrollment_token(token)
    }

    fn enrollment_token(&self, id: &str) -> Result<Option<EnrollmentToken>, StoreError> {
        self.state.enrollment_token(id)
    }

    fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>, StoreError> {
        self.state.enrollment_tokens()
    }

    fn revoke_enrollment_token(
        &self,
        id: &str,
        now_ns: i64,
    ) -> Result<Option<EnrollmentToken>, StoreError> {
        self.state.revoke_enrollment_token(id, now_ns)
    }

    fn key_enrolled(&self, key_sha256: &[u8; 32]) -> Result<bool, StoreError> {
        self.state.key_enrolled(key_sha256)
    }

    fn record_enrollment(&self, enrollment: &Enrollment) -> Result<(), StoreError> {
        self.state.record_enrollment(enrollment)
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.state.ping()
    }

    fn backend_name(&self) -> &'static str {
        self.state.backend_name()
    }
}

impl AlertingStore for SplitStore {
    fn load_alerting(&self) -> Result<LoadedAlerting, StoreError> {
        self.state.load_alerting()
    }

    fn save_alerting(
        &self,
        outcome: &Outcome,
        silences: Option<&[Silence]>,
        cursor: Option<Cursor>,
    ) -> Result<(), StoreError> {
        self.state.save_alerting(outcome, silences, cursor)
    }

    fn claim_alerting(
        &self,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<crate::store::alerting::Claim, StoreError> {
        self.state.claim_alerting(holder, ttl)
    }

    fn release_alerting(&self, holder: &str) -> Result<(), StoreError> {
        self.state.release_alerting(holder)
    }

    fn save_alerting_fenced(
        &self,
        epoch: i64,
        outcome: &Outcome,
        silences: Option<&[Silence]>,
        cursor: Option<Cursor>,
    ) -> Result<(), StoreError> {
        self.state
            .save_alerting_fenced(epoch, outcome, silences, cursor)
    }

    fn due_notifications(&self, now_ns: i64, limit: usize) -> Result<Vec<OutboxEntry>, StoreError> {
        self.state.due_notifications(now_ns, limit)
    }

    fn next_notification_ns(&self) -> Result<Option<i64>, StoreError> {
        self.state.next_notification_ns()
    }

    fn record_attempt(&self, id: i64, attempt: &Attempt) -> Result<(), StoreError> {
        self.state.record_attempt(id, attempt)
    }

    fn notifications(&self, query: &LogQuery) -> Result<Vec<OutboxEntry>, StoreError> {
        self.state.notifications(query)
    }

    fn alert_history(&self, query: &LogQuery) -> Result<Vec<HistoryRow>, StoreError> {
        self.state.alert_history(query)
    }

    fn alert_records(&self) -> Result<Vec<AlertRecord>, StoreError> {
        self.state.alert_records()
    }

    fn stored_silences(&self) -> Result<Vec<StoredSilence>, StoreError> {
        self.state.stored_silences()
    }

    fn expire_alerting(&self, cutoff_ns: i64) -> Result<u64, StoreError> {
        self.state.expire_alerting(cutoff_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;
    use crate::store::testutil::{T0, batch, hello, log};

    fn sqlite(dir: &tempfile::TempDir, name: &str) -> Arc<SqliteStore> {
        Arc::new(SqliteStore::open(&dir.path().join(name)).unwrap())
    }

    #[test]
    fn events_go_to_the_event_store_and_the_registry_to_the_state_store() {
        let dir = tempfile::tempdir().unwrap();
        let (events, state) = (sqlite(&dir, "events.db"), sqlite(&dir, "state.db"));
        let split = SplitStore::new(events.clone(), state.clone());
        let stored = split
            .commit_batches(&[batch("a", 1, 1, vec![log(T0, 10)])])
            .unwrap();
        assert!(matches!(stored[0], BatchCommit::Stored { .. }));
        split
            .record(&RegistryUpdate::Hello {
                agent_id: "a".into(),
                hello: hello(1, Default::default()),
                now_ns: T0,
            })
            .unwrap();
        let count = |s: &SqliteStore| s.events(&EventQuery::default()).unwrap().events.len();
        assert_eq!((count(&events), count(&state)), (1, 0));
        assert_eq!(split.agents().unwrap().len(), 1);
        assert_eq!(state.agents().unwrap().len(), 1);
        // Two stores: the state store's generation cannot see the event store's summaries.
        assert_eq!(split.registry_generation(), None);
        assert_eq!(
            (
                EventStore::backend_name(&split),
                StateStore::backend_name(&split)
            ),
            ("sqlite", "sqlite")
        );
        EventStore::ping(&split).unwrap();
        StateStore::ping(&split).unwrap();
    }

    #[test]
    fn one_store_for_both_keeps_its_registry_generation() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite(&dir, "store.db");
        let split = SplitStore::new(store.clone(), store.clone());
        assert!(store.registry_generation().is_some());
        assert_eq!(split.registry_generation(), store.registry_generation());
    }
}
