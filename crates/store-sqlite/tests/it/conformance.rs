//! The SQLite backend against the shared conformance suite: a fresh file per case.

use oncely_core::ManualClock;

oncely_store::conformance_tests!(
    |clock: ManualClock| async move { crate::common::temp_store(clock) }
);
