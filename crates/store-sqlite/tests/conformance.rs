//! The SQLite backend against the shared conformance suite: a fresh file per case.

mod common;

use oncely_core::ManualClock;

oncely_store::conformance_tests!(|clock: ManualClock| async move { common::temp_store(clock) });
