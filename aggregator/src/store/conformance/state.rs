//! The [`StateStore`](crate::store::StateStore) and
//! [`AlertingStore`](crate::store::alerting::AlertingStore) contracts.

use super::{Case, StateFixture};

/// Every case of the state-store contract.
pub const CASES: &[Case<dyn StateFixture>] = &[];
