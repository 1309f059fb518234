//! The in-memory backend: the pure transitions of `oncely_core::record` behind one mutex.
//!
//! For tests and trials only. It loses everything on restart, and it has no memory bound:
//! every record, with its whole stored response, stays in this process until its TTL ends and
//! a purge removes it (24 h by default), so under real traffic it grows with the request rate.
//! Production gateways and layers use SQLite, PostgreSQL or Redis, whose in-process memory is
//! bounded by the replay cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::record::{self, ClaimRequest};
use oncely_core::{
    ClaimOutcome, Clock, Fingerprint, LeaseToken, Record, RecordKey, RecordState, StoredResponse,
    Timestamp,
};

use crate::{IdempotencyStore, StoreAdmin, StoreError, StoreResult, StoreStats};
use oncely_core::sync::LockIgnoringPoison;

/// Records in this process (see the module's limits).
pub struct MemoryStore {
    records: Mutex<HashMap<RecordKey, Record>>,
    clock: Arc<dyn Clock>,
}

impl MemoryStore {
    /// An empty store on `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        MemoryStore {
            records: Mutex::new(HashMap::new()),
            clock,
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<RecordKey, Record>> {
        // A panic while holding the lock cannot leave a half-applied transition (each one is a
        // single insert or remove), so a poisoned map is still consistent.
        self.records.lock_ignoring_poison()
    }
}

#[async_trait]
impl IdempotencyStore for MemoryStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
        ttl: Duration,
    ) -> StoreResult<ClaimOutcome> {
        let req = ClaimRequest {
            fingerprint,
            now: self.clock.now(),
            lease,
            ttl,
            token: LeaseToken::random(),
        };
        let mut map = self.lock();
        let (write, outcome) = record::claim(map.get(key), &req);
        if let Some(r) = write {
            map.insert(key.clone(), r);
        }
        Ok(outcome)
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> StoreResult<()> {
        let now = self.clock.now();
        let mut map = self.lock();
        let done = record::complete(map.get(key), token, response, now, ttl)
            .map_err(StoreError::Refused)?;
        map.insert(key.clone(), done);
        Ok(())
    }

    async fn release(&self, key: &RecordKey, token: LeaseToken) -> StoreResult<()> {
        let now = self.clock.now();
        let mut map = self.lock();
        record::release(map.get(key), token, now).map_err(StoreError::Refused)?;
        map.remove(key);
        Ok(())
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        lease: Duration,
    ) -> StoreResult<Timestamp> {
        let now = self.clock.now();
        let mut map = self.lock();
        let renewed =
            record::renew(map.get(key), token, now, lease).map_err(StoreError::Refused)?;
        map.insert(key.clone(), renewed);
        Ok(now.plus(lease))
    }

    async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
        let now = self.clock.now();
        Ok(self.lock().get(key).filter(|r| !r.is_expired(now)).cloned())
    }
}

#[async_trait]
impl StoreAdmin for MemoryStore {
    async fn purge_expired(&self, batch: usize) -> StoreResult<u64> {
        let now = self.clock.now();
        let mut map = self.lock();
        let expired: Vec<RecordKey> = map
            .iter()
            .filter(|(_, r)| r.is_expired(now))
            .map(|(k, _)| k.clone())
            .take(batch)
            .collect();
        for k in &expired {
            map.remove(k);
        }
        Ok(expired.len() as u64)
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let now = self.clock.now();
        let map = self.lock();
        let mut stats = StoreStats::default();
        for r in map.values().filter(|r| !r.is_expired(now)) {
            match r.state {
                RecordState::InProgress { .. } => stats.in_progress += 1,
                RecordState::Completed { .. } => stats.completed += 1,
            }
        }
        Ok(stats)
    }

    async fn evict(&self, key: &RecordKey) -> StoreResult<bool> {
        let now = self.clock.now();
        Ok(self.lock().remove(key).is_some_and(|r| !r.is_expired(now)))
    }

    async fn list_in_progress(&self, limit: usize) -> StoreResult<Vec<(RecordKey, Record)>> {
        let now = self.clock.now();
        let mut held: Vec<(RecordKey, Record)> = self
            .lock()
            .iter()
            .filter(|(_, r)| !r.is_expired(now) && !r.is_completed())
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        held.sort_by_key(|(k, r)| (r.created_at, k.clone()));
        held.truncate(limit);
        Ok(held)
    }
}
