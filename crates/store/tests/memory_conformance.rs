//! The in-memory backend against the shared conformance suite.

use std::sync::Arc;

use oncely_core::ManualClock;
use oncely_store::MemoryStore;

oncely_store::conformance_tests!(
    |clock: ManualClock| async move { MemoryStore::new(Arc::new(clock)) }
);
