//! A store that measures another: how long each operation takes, how many fail, how many
//! expired records were purged. The gateway wraps its store in one so that `/metrics` shows
//! the store as the engine sees it, whatever the backend.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oncely_core::{
    ClaimOutcome, Fingerprint, LeaseToken, Record, RecordKey, StoredResponse, Timestamp,
};
use oncely_metrics::{Counter, Histogram, Text};

use crate::{IdempotencyStore, StoreAdmin, StoreError, StoreResult, StoreStats};

/// The store operations, in the order they are rendered.
const OPS: [&str; 9] = [
    "claim", "complete", "release", "renew", "get", "purge", "stats", "evict", "list",
];

#[derive(Debug, Clone, Copy)]
enum Op {
    Claim,
    Complete,
    Release,
    Renew,
    Get,
    Purge,
    Stats,
    Evict,
    List,
}

/// What a [`TimedStore`] has measured.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    latency: [Histogram; 9],
    unavailable: [Counter; 9],
    corrupt: [Counter; 9],
    purged: Counter,
}

impl StoreMetrics {
    /// Expired records deleted by purges so far.
    pub fn purged(&self) -> u64 {
        self.purged.get()
    }

    /// Operations of `op` (e.g. `"claim"`) measured so far.
    pub fn count(&self, op: &str) -> u64 {
        OPS.iter()
            .position(|o| *o == op)
            .map(|i| self.latency[i].count())
            .unwrap_or(0)
    }

    /// Writes the store's metrics onto a `/metrics` page.
    pub fn render(&self, t: &mut Text) {
        t.family(
            "oncely_store_operation_duration_seconds",
            "histogram",
            "Time the idempotency store took per operation, failures included.",
        );
        for (i, op) in OPS.iter().enumerate() {
            t.histogram(
                "oncely_store_operation_duration_seconds",
                &[("op", op)],
                &self.latency[i],
            );
        }
        t.family(
            "oncely_store_errors_total",
            "counter",
            "Store operations that failed: unavailable (unreachable, timed out) or corrupt (a record that does not decode).",
        );
        for (i, op) in OPS.iter().enumerate() {
            t.counter(
                "oncely_store_errors_total",
                &[("op", op), ("kind", "unavailable")],
                &self.unavailable[i],
            );
            t.counter(
                "oncely_store_errors_total",
                &[("op", op), ("kind", "corrupt")],
                &self.corrupt[i],
            );
        }
        t.family(
            "oncely_records_purged_total",
            "counter",
            "Expired idempotency records deleted by the periodic purge.",
        );
        t.counter("oncely_records_purged_total", &[], &self.purged);
    }

    fn record<T>(&self, op: Op, started: Instant, result: &StoreResult<T>) {
        let i = op as usize;
        self.latency[i].observe(started.elapsed());
        match result {
            Err(StoreError::Unavailable(_)) => self.unavailable[i].inc(),
            Err(StoreError::Corrupt(_)) => self.corrupt[i].inc(),
            // A refusal is the record's state answering, not the store failing.
            Err(StoreError::Refused(_)) | Ok(_) => {}
        }
    }
}

/// Wraps a store, measuring every call into a shared [`StoreMetrics`].
pub struct TimedStore {
    inner: Arc<dyn StoreAdmin>,
    metrics: Arc<StoreMetrics>,
}

impl TimedStore {
    /// Meters every operation on `inner`.
    pub fn new(inner: Arc<dyn StoreAdmin>) -> Self {
        TimedStore {
            inner,
            metrics: Arc::new(StoreMetrics::default()),
        }
    }

    /// What was measured so far.
    pub fn metrics(&self) -> &Arc<StoreMetrics> {
        &self.metrics
    }
}

#[async_trait]
impl IdempotencyStore for TimedStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
        ttl: Duration,
    ) -> StoreResult<ClaimOutcome> {
        let t = Instant::now();
        let r = (*self.inner).claim(key, fingerprint, lease, ttl).await;
        self.metrics.record(Op::Claim, t, &r);
        r
    }
    async fn complete(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> StoreResult<()> {
        let t = Instant::now();
        let r = (*self.inner).complete(key, token, response, ttl).await;
        self.metrics.record(Op::Complete, t, &r);
        r
    }
    async fn release(&self, key: &RecordKey, token: LeaseToken) -> StoreResult<()> {
        let t = Instant::now();
        let r = (*self.inner).release(key, token).await;
        self.metrics.record(Op::Release, t, &r);
        r
    }
    async fn renew(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        lease: Duration,
    ) -> StoreResult<Timestamp> {
        let t = Instant::now();
        let r = (*self.inner).renew(key, token, lease).await;
        self.metrics.record(Op::Renew, t, &r);
        r
    }
    async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
        let t = Instant::now();
        let r = (*self.inner).get(key).await;
        self.metrics.record(Op::Get, t, &r);
        r
    }
}

#[async_trait]
impl StoreAdmin for TimedStore {
    async fn purge_expired(&self, batch: usize) -> StoreResult<u64> {
        let t = Instant::now();
        let r = (*self.inner).purge_expired(batch).await;
        self.metrics.record(Op::Purge, t, &r);
        if let Ok(n) = &r {
            self.metrics.purged.add(*n);
        }
        r
    }
    async fn stats(&self) -> StoreResult<StoreStats> {
        let t = Instant::now();
        let r = (*self.inner).stats().await;
        self.metrics.record(Op::Stats, t, &r);
        r
    }
    async fn evict(&self, key: &RecordKey) -> StoreResult<bool> {
        let t = Instant::now();
        let r = (*self.inner).evict(key).await;
        self.metrics.record(Op::Evict, t, &r);
        r
    }
    async fn list_in_progress(&self, limit: usize) -> StoreResult<Vec<(RecordKey, Record)>> {
        let t = Instant::now();
        let r = (*self.inner).list_in_progress(limit).await;
        self.metrics.record(Op::List, t, &r);
        r
    }
}
