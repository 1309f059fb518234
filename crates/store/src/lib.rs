//! Where idempotency records live.
//!
//! [`IdempotencyStore`] is the one storage concern of the engine. Each engine implements it
//! in its own crate (the in-memory backend lives here, for tests and embedding); every
//! backend runs the shared `conformance` suite (feature `conformance`), which drives it through the transitions of
//! [`oncely_core::record`] and compares it with that pure model.
//!
//! A store owns its clock: leases and TTLs are decided against the store's notion of now
//! (the gateway's clock for SQLite and memory; a shared database may use its own), so callers
//! pass durations, never instants.

#![warn(missing_docs)]

use std::time::Duration;

use async_trait::async_trait;
use oncely_core::{
    ClaimOutcome, Fingerprint, LeaseToken, Record, RecordKey, Refusal, StoredResponse, Timestamp,
};

mod memory;
pub mod sealed;
mod timed;
pub use memory::MemoryStore;
pub use sealed::{Keyring, SealedStore};
pub use timed::{StoreMetrics, TimedStore};

#[cfg(feature = "conformance")]
pub mod conformance;

/// Whose clock decides leases and TTLs in a store shared by several gateways.
///
/// Gateways on different hosts disagree about the time; if each judged leases by its own
/// clock, one running ahead would take over keys whose holders are alive. A shared store
/// therefore decides time itself by default ([`TimeSource::Server`]): every transition reads
/// the server's clock inside the same atomic statement or script that applies it.
#[derive(Clone)]
pub enum TimeSource {
    /// The database or Redis server's clock: all gateways agree, whatever their own clocks say.
    Server,
    /// A clock supplied by the caller: tests drive time with a `ManualClock`, and a single
    /// gateway may choose its own clock.
    Local(std::sync::Arc<dyn oncely_core::Clock>),
}

impl std::fmt::Debug for TimeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TimeSource::Server => f.write_str("Server"),
            TimeSource::Local(_) => f.write_str("Local(..)"),
        }
    }
}

impl TimeSource {
    /// The local clock's now, or `None` when the server decides.
    pub fn local_now(&self) -> Option<Timestamp> {
        match self {
            TimeSource::Server => None,
            TimeSource::Local(c) => Some(c.now()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
/// Why a store operation did not happen.
pub enum StoreError {
    /// The transition was refused by the record's state; the store is healthy.
    #[error("refused: {0}")]
    Refused(Refusal),
    /// The store could not be reached or did not answer in time. The engine fails closed.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A stored record could not be decoded.
    #[error("store holds a corrupt record: {0}")]
    Corrupt(String),
}

/// The result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// Counts reported by [`StoreAdmin::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Records whose request is still running (or was abandoned within its lease).
    pub in_progress: u64,
    /// Records holding a stored response.
    pub completed: u64,
}

#[async_trait]
/// Where records live, as the request path sees them: every transition of
/// `oncely_core::record` as one atomic operation. Every backend passes the `conformance` suite.
///
/// This is all an engine needs, so a wrapper on the request path (a meter, a fault injector)
/// forwards these five calls and nothing else. The operator's calls are [`StoreAdmin`].
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Atomically claims `key` for a request with `fingerprint`: inserts an in-progress record
    /// with a fresh lease token if there is no live record, takes over one whose lease has
    /// expired if the fingerprint matches, and otherwise reports the live record.
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
        ttl: Duration,
    ) -> StoreResult<ClaimOutcome>;

    /// Stores the outcome; refused unless `token` is the current lease token.
    async fn complete(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> StoreResult<()>;

    /// Deletes the record so a retry executes again; refused unless `token` is current.
    async fn release(&self, key: &RecordKey, token: LeaseToken) -> StoreResult<()>;

    /// Extends the lease of the current holder; returns the new lease expiry.
    async fn renew(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        lease: Duration,
    ) -> StoreResult<Timestamp>;

    /// The live record for `key`, if any (expired records are absent even before purge).
    async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>>;
}

#[async_trait]
/// The operator's surface of a store: the periodic purge, counts, eviction and the list of
/// what is in flight. Kept apart from [`IdempotencyStore`] because none of it is on the
/// request path: the gateway's purge loop and admin API hold a `StoreAdmin`, the engine
/// only the hot path (an `Arc<dyn StoreAdmin>` converts into an `Arc<dyn IdempotencyStore>`).
pub trait StoreAdmin: IdempotencyStore {
    /// Deletes up to `batch` expired records; returns how many were deleted.
    async fn purge_expired(&self, batch: usize) -> StoreResult<u64>;

    /// Live record counts.
    async fn stats(&self) -> StoreResult<StoreStats>;

    /// Deletes the record of `key` whatever its state: an operator's eviction of a key that
    /// must execute again. Returns whether a live record was there. A holder still running
    /// loses its lease: its completion is then refused like any stale one.
    async fn evict(&self, key: &RecordKey) -> StoreResult<bool>;

    /// Up to `limit` live in-progress records, the oldest claim first: what is in flight
    /// now, and what a crash left behind (listed until a retry takes it over or the record
    /// expires; past its lease end a retry may take it over).
    async fn list_in_progress(&self, limit: usize) -> StoreResult<Vec<(RecordKey, Record)>>;
}

#[async_trait]
impl<S: IdempotencyStore + ?Sized> IdempotencyStore for std::sync::Arc<S> {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
        ttl: Duration,
    ) -> StoreResult<ClaimOutcome> {
        (**self).claim(key, fingerprint, lease, ttl).await
    }
    async fn complete(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> StoreResult<()> {
        (**self).complete(key, token, response, ttl).await
    }
    async fn release(&self, key: &RecordKey, token: LeaseToken) -> StoreResult<()> {
        (**self).release(key, token).await
    }
    async fn renew(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        lease: Duration,
    ) -> StoreResult<Timestamp> {
        (**self).renew(key, token, lease).await
    }
    async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
        (**self).get(key).await
    }
}

#[async_trait]
impl<S: StoreAdmin + ?Sized> StoreAdmin for std::sync::Arc<S> {
    async fn purge_expired(&self, batch: usize) -> StoreResult<u64> {
        (**self).purge_expired(batch).await
    }
    async fn stats(&self) -> StoreResult<StoreStats> {
        (**self).stats().await
    }
    async fn evict(&self, key: &RecordKey) -> StoreResult<bool> {
        (**self).evict(key).await
    }
    async fn list_in_progress(&self, limit: usize) -> StoreResult<Vec<(RecordKey, Record)>> {
        (**self).list_in_progress(limit).await
    }
}
