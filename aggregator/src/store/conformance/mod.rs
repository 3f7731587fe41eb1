//! The store-trait conformance suite: the same tests, run against every backend.
//!
//! [`events`] checks the [`EventStore`] contract and [`state`] the [`StateBackend`] one (the
//! `StateStore` and [`AlertingStore`](super::alerting::AlertingStore) contracts). Each case
//! takes a fixture that makes a fresh, empty store, so cases never see each other's data. The
//! embedded SQLite store runs both in this crate's unit tests; the end-to-end tests run them
//! against ClickHouse and PostgreSQL servers they start (the `conformance` feature makes this
//! module public to them).
//!
//! [`run`] runs every case, reports each by name, and fails with the names of those that failed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

use super::{EventStore, StateBackend};

pub mod events;
pub mod state;

/// Makes fresh, empty event stores.
pub trait EventsFixture {
    fn fresh(&self) -> Arc<dyn EventStore>;
}

/// Makes fresh, empty state stores.
pub trait StateFixture {
    fn fresh(&self) -> Arc<dyn StateBackend>;
}

/// One conformance test.
pub struct Case<F: ?Sized> {
    pub name: &'static str,
    pub run: fn(&F),
}

impl<F: ?Sized> std::fmt::Debug for Case<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

/// Runs every case against `fixture`, printing one line per case; panics naming every case that
/// failed, after running them all.
pub fn run<F: ?Sized>(backend: &str, fixture: &F, cases: &[Case<F>]) {
    assert!(!cases.is_empty(), "the {backend} suite has no cases");
    let mut failed = Vec::new();
    for case in cases {
        let outcome = catch_unwind(AssertUnwindSafe(|| (case.run)(fixture)));
        match outcome {
            Ok(()) => println!("conformance ({backend}): {} ... ok", case.name),
            Err(_) => {
                println!("conformance ({backend}): {} ... FAILED", case.name);
                failed.push(case.name);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} conformance cases failed against {backend}: {}",
        failed.len(),
        cases.len(),
        failed.join(", ")
    );
}

/// The SQLite fixtures: a new store file in a temporary directory per case.
#[cfg(test)]
mod sqlite {
    use std::sync::{Arc, Mutex};

    use super::{EventsFixture, StateFixture};
    use crate::store::{EventStore, SqliteStore, StateBackend};

    #[derive(Default)]
    struct Sqlite {
        dirs: Mutex<Vec<tempfile::TempDir>>,
    }

    impl Sqlite {
        fn open(&self) -> Arc<SqliteStore> {
            let dir = tempfile::tempdir().unwrap();
            let store = SqliteStore::open(&dir.path().join("store.db")).unwrap();
            self.dirs.lock().unwrap().push(dir);
            Arc::new(store)
        }
    }

    impl EventsFixture for Sqlite {
        fn fresh(&self) -> Arc<dyn EventStore> {
            self.open()
        }
    }

    impl StateFixture for Sqlite {
        fn fresh(&self) -> Arc<dyn StateBackend> {
            self.open()
        }
    }

    #[test]
    fn the_sqlite_store_keeps_the_event_store_contract() {
        let fixture: &dyn EventsFixture = &Sqlite::default();
        super::run("sqlite", fixture, super::events::CASES);
    }

    #[test]
    fn the_sqlite_store_keeps_the_state_store_contract() {
        let fixture: &dyn StateFixture = &Sqlite::default();
        super::run("sqlite", fixture, super::state::CASES);
    }
}
