//! The [`EventStore`](crate::store::EventStore) contract.

use super::{Case, EventsFixture};

/// Every case of the event-store contract.
pub const CASES: &[Case<dyn EventsFixture>] = &[];
