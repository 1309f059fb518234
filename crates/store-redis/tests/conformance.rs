//! The Redis backend against the shared conformance suite: a fresh key prefix per case.

mod common;

use oncely_core::ManualClock;

oncely_store::conformance_tests!(
    if common::available => |clock: ManualClock| common::temp_store(clock)
);
