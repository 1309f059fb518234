//! The in-memory backend against the shared conformance suite.

use std::sync::Arc;

use oncely_core::ManualClock;
use oncely_store::MemoryStore;

oncely_store::conformance_tests!(
    |clock: ManualClock| async move { MemoryStore::new(Arc::new(clock)) }
);

/// The same suite through a store that seals every response: sealing changes nothing a
/// caller can see.
mod sealed {
    use super::*;
    use oncely_store::{Keyring, SealedStore};

    oncely_store::conformance_tests!(|clock: ManualClock| async move {
        let ring = Keyring::from_hex([("k1", &"ab".repeat(32)[..])]).unwrap();
        SealedStore::new(MemoryStore::new(Arc::new(clock)), ring)
    });
}
