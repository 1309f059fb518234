//! The PostgreSQL backend against the shared conformance suite: a fresh schema per case.

use oncely_core::ManualClock;

oncely_store::conformance_tests!(
    if crate::common::available => |clock: ManualClock| crate::common::temp_store(clock),
    shared: crate::common::Schema::new() => store,
    server_now: crate::common::server_now_ms
);
