//! A store on a file in its own temporary directory, removed when the store is dropped.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::{
    ClaimOutcome, Clock, Fingerprint, LeaseToken, Record, RecordKey, StoredResponse, Timestamp,
};
use oncely_store::{IdempotencyStore, StoreResult, StoreStats};
use oncely_store_sqlite::{SqliteOptions, SqliteStore};
use tempfile::TempDir;

/// Field order matters: the store (and its writer thread) goes before the directory.
pub struct TempStore {
    pub store: SqliteStore,
    pub dir: TempDir,
}

impl TempStore {
    pub fn new(clock: impl Clock) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(
            SqliteOptions::new(dir.path().join("records.db")),
            Arc::new(clock),
        )
        .expect("open store");
        TempStore { store, dir }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("records.db")
    }
}

#[async_trait]
impl IdempotencyStore for TempStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
        ttl: Duration,
    ) -> StoreResult<ClaimOutcome> {
        self.store.claim(key, fingerprint, lease, ttl).await
    }
    async fn complete(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> StoreResult<()> {
        self.store.complete(key, token, response, ttl).await
    }
    async fn release(&self, key: &RecordKey, token: LeaseToken) -> StoreResult<()> {
        self.store.release(key, token).await
    }
    async fn renew(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        lease: Duration,
    ) -> StoreResult<Timestamp> {
        self.store.renew(key, token, lease).await
    }
    async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
        self.store.get(key).await
    }
    async fn purge_expired(&self, batch: usize) -> StoreResult<u64> {
        self.store.purge_expired(batch).await
    }
    async fn stats(&self) -> StoreResult<StoreStats> {
        self.store.stats().await
    }
}
