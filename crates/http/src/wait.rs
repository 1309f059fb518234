//! Wake-ups for duplicates waiting on an in-flight request (`wait` mode).
//!
//! A fixed set of `Notify` shards indexed by a hash of the record key: the holder notifies
//! its shard when it completes or releases, and waiters recheck the store. Sharing a shard
//! only costs a spurious recheck, and unlike a map of per-key entries nothing accumulates.
//! Waiters also poll, because the holder may be another gateway process.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};

use oncely_core::RecordKey;
use tokio::sync::Notify;

const SHARDS: usize = 64;

pub(crate) struct Waiters {
    shards: Vec<Notify>,
}

impl Waiters {
    pub(crate) fn new() -> Self {
        Waiters {
            shards: (0..SHARDS).map(|_| Notify::new()).collect(),
        }
    }

    pub(crate) fn shard(&self, key: &RecordKey) -> &Notify {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    pub(crate) fn wake(&self, key: &RecordKey) {
        self.shard(key).notify_waiters();
    }
}
