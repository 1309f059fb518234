//! The PostgreSQL backend: many gateway replicas on one database.
//!
//! - **One statement per transition.** A claim is one `INSERT ... ON CONFLICT DO UPDATE ...
//!   WHERE ... RETURNING`: it inserts, or takes over a record whose lease (same request) or
//!   retention has ended, atomically under the row's lock; never a read followed by a write.
//!   Complete, release and renew are single statements conditioned on the fencing token.
//! - **The database's clock.** By default every statement takes `now` from PostgreSQL, so
//!   replicas whose own clocks disagree still agree on every lease and expiry (a gateway whose
//!   clock runs an hour ahead cannot take over a live holder's key). Tests and single-node
//!   users may inject a clock ([`TimeSource::Local`]).
//! - **Bounded.** Every operation, connecting included, is bounded by the `timeout` option;
//!   past it the store is unavailable and the gateway answers 503 instead of hanging. The
//!   pool reconnects by itself when the database comes back.
//! - **Purge never blocks the hot path**: small batches, oldest first, `SKIP LOCKED`.
//!
//! Migrations are embedded ([`schema`]) and applied by [`PgStore::connect`] and
//! [`migrate`], under an advisory lock so replicas starting together apply them once.
//!
//! Connections are plain TCP (no TLS in this version): run the database on a private network
//! or put a TLS tunnel beside the gateway.

#![warn(missing_docs)]

mod batch;
mod codec;
pub mod schema;
mod sql;

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Object, Pool};
use oncely_core::{
    ClaimOutcome, Fingerprint, IdempotencyKey, LeaseToken, Record, RecordKey, Refusal,
    StoredResponse, Tenant, Timestamp,
};
use oncely_store::{IdempotencyStore, StoreAdmin, StoreError, StoreResult, StoreStats, TimeSource};
use tokio_postgres::types::ToSql;

use codec::{millis, no_answer, record_from_row, token_bytes, unavailable, STATE_COMPLETED};
pub use oncely_db::describe as describe_error;
pub use oncely_db::migrate::MigrationReport;
pub use oncely_db::postgres::{hide_password, validate_schema, PgOptions};
use sql::Statements;

/// Idempotency records in a PostgreSQL schema, shared by any number of gateways.
pub struct PgStore {
    pool: Pool,
    batcher: batch::Batcher,
    sql: Statements,
    time: TimeSource,
    timeout: Duration,
    schema: String,
}

/// How many times a claim re-runs when the record that stopped it was committed after the
/// statement's snapshot (it then sees neither a won claim nor a record). Each re-run sees a
/// newer snapshot; needing more than a couple means something else is wrong.
const CLAIM_ATTEMPTS: usize = 8;

/// A connection pool for `opts`, every wait bounded by its timeout (see [`oncely_db::postgres::pool`]).
pub fn pool(opts: &PgOptions) -> StoreResult<Pool> {
    oncely_db::postgres::pool(opts).map_err(StoreError::Unavailable)
}

/// Applies the embedded migrations to the database named by `opts` and reports what it did.
pub async fn migrate(opts: &PgOptions) -> StoreResult<MigrationReport> {
    let pool = pool(opts)?;
    bounded(opts.timeout, async {
        let mut client = pool.get().await.map_err(unavailable)?;
        oncely_db::postgres::migrate(&mut client, &opts.schema, &schema::MIGRATIONS)
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    })
    .await
}

async fn bounded<T>(limit: Duration, op: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
    oncely_db::postgres::bounded(limit, op, no_answer).await
}

impl PgStore {
    /// Connects, applies the embedded migrations, and returns the store.
    pub async fn connect(opts: PgOptions, time: TimeSource) -> StoreResult<PgStore> {
        migrate(&opts).await?;
        let pool = pool(&opts)?;
        // A quarter of the connections commit batches; the rest serve contended claims,
        // refusals, reads and the purge.
        let workers = (opts.pool_size / 4).clamp(1, 8);
        Ok(PgStore {
            batcher: batch::Batcher::start(pool.clone(), &opts.schema, workers, opts.timeout),
            pool,
            sql: Statements::new(&opts.schema),
            time,
            timeout: opts.timeout,
            schema: opts.schema,
        })
    }

    /// The schema holding this store's tables.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Runs `sql` with `params` on a pooled connection, within the operation timeout.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> StoreResult<Vec<tokio_postgres::Row>> {
        bounded(self.timeout, async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(unavailable)?;
            client.query(&stmt, params).await.map_err(unavailable)
        })
        .await
    }

    /// Runs a write with `params`; returns how many rows it touched.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> StoreResult<u64> {
        bounded(self.timeout, async {
            let client = self.client().await?;
            let stmt = client.prepare_cached(sql).await.map_err(unavailable)?;
            client.execute(&stmt, params).await.map_err(unavailable)
        })
        .await
    }

    /// Runs `sql`, whose parameters are the key's parts ($1 to $4) and the local now ($5).
    async fn query_key(&self, sql: &str, key: &RecordKey) -> StoreResult<Vec<tokio_postgres::Row>> {
        self.query(
            sql,
            &[
                &key.scope.tenant.as_str(),
                &key.scope.method,
                &key.scope.route,
                &key.key.as_str(),
                &self.now_param(),
            ],
        )
        .await
    }

    /// Why a write conditioned on `key`'s token did nothing.
    async fn refusal(&self, key: &RecordKey) -> StoreResult<StoreError> {
        let rows = self.query_key(&self.sql.live_state, key).await?;
        let state = match rows.first() {
            Some(row) => Some(row.try_get::<_, i16>(0).map_err(unavailable)?),
            None => None,
        };
        Ok(StoreError::Refused(refusal(state)))
    }

    async fn client(&self) -> StoreResult<Object> {
        self.pool.get().await.map_err(unavailable)
    }

    fn now_param(&self) -> Option<i64> {
        self.time.local_now().map(Timestamp::as_millis)
    }
}

/// Why a write conditioned on the token did nothing, from the live record's state.
fn refusal(state: Option<i16>) -> Refusal {
    match state {
        None => Refusal::Missing,
        Some(STATE_COMPLETED) => Refusal::AlreadyCompleted,
        Some(_) => Refusal::StaleToken,
    }
}

#[async_trait]
impl IdempotencyStore for PgStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
        ttl: Duration,
    ) -> StoreResult<ClaimOutcome> {
        let token = LeaseToken::random();
        let (fp, tok) = (fingerprint.0.to_vec(), token_bytes(token));
        let (ttl, lease) = (millis(ttl), millis(lease));
        // The common case, a key nobody holds, is one insert, group-committed with others.
        let inserted = self
            .batcher
            .claim_new(batch::NewClaim {
                tenant: key.scope.tenant.as_str().to_owned(),
                method: key.scope.method.clone(),
                route: key.scope.route.clone(),
                idem_key: key.key.as_str().to_owned(),
                fingerprint: fp.clone(),
                token: tok.clone(),
                ttl_ms: ttl,
                lease_ms: lease,
                now: self.now_param(),
            })
            .await?;
        if let Some(lease_expires_at) = inserted {
            return Ok(ClaimOutcome::Claimed {
                token,
                lease_expires_at: Timestamp(lease_expires_at),
                takeover: false,
            });
        }
        // The key exists: take it over if its lease or retention ended, else report it (again,
        // in the rare snapshot race the statement documents).
        let (tenant, idem) = (key.scope.tenant.as_str(), key.key.as_str());
        for _ in 0..CLAIM_ATTEMPTS {
            let now = self.now_param();
            let (method, route) = (&key.scope.method, &key.scope.route);
            let params: [&(dyn ToSql + Sync); 9] =
                [&tenant, method, route, &idem, &fp, &tok, &ttl, &lease, &now];
            let rows = self.query(&self.sql.claim_contended, &params).await?;
            let Some(row) = rows.first() else { continue };
            let won: bool = row.try_get(0).map_err(unavailable)?;
            if won {
                let lease_expires_at: i64 = row.try_get(1).map_err(unavailable)?;
                let takeover: bool = row.try_get(2).map_err(unavailable)?;
                return Ok(ClaimOutcome::Claimed {
                    token,
                    lease_expires_at: Timestamp(lease_expires_at),
                    takeover,
                });
            }
            return Ok(ClaimOutcome::Exists(record_from_row(row, 3, key)?));
        }
        Err(StoreError::Unavailable(format!(
            "postgres: the claim of {key} neither won nor found a record {CLAIM_ATTEMPTS} times"
        )))
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> StoreResult<()> {
        let status = i16::try_from(response.status).map_err(|_| {
            StoreError::Corrupt(format!("{key}: status {} out of range", response.status))
        })?;
        let applied = self
            .batcher
            .complete(batch::Completion {
                tenant: key.scope.tenant.as_str().to_owned(),
                method: key.scope.method.clone(),
                route: key.scope.route.clone(),
                idem_key: key.key.as_str().to_owned(),
                token: token_bytes(token),
                status,
                headers: response.encode_headers(),
                body: response.body.to_vec(),
                ttl_ms: millis(ttl),
                now: self.now_param(),
            })
            .await?;
        match applied {
            true => Ok(()),
            false => Err(self.refusal(key).await?),
        }
    }
    async fn release(&self, key: &RecordKey, token: LeaseToken) -> StoreResult<()> {
        let deleted = self
            .execute(
                &self.sql.release,
                &[
                    &key.scope.tenant.as_str(),
                    &key.scope.method,
                    &key.scope.route,
                    &key.key.as_str(),
                    &token_bytes(token),
                    &self.now_param(),
                ],
            )
            .await?;
        match deleted {
            0 => Err(self.refusal(key).await?),
            _ => Ok(()),
        }
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        lease: Duration,
    ) -> StoreResult<Timestamp> {
        let rows = self
            .query(
                &self.sql.renew,
                &[
                    &key.scope.tenant.as_str(),
                    &key.scope.method,
                    &key.scope.route,
                    &key.key.as_str(),
                    &token_bytes(token),
                    &millis(lease),
                    &self.now_param(),
                ],
            )
            .await?;
        match rows.first() {
            Some(row) => Ok(Timestamp(row.try_get(0).map_err(unavailable)?)),
            None => Err(self.refusal(key).await?),
        }
    }

    async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
        let rows = self.query_key(&self.sql.get, key).await?;
        rows.first()
            .map(|row| record_from_row(row, 0, key))
            .transpose()
    }
}

#[async_trait]
impl StoreAdmin for PgStore {
    async fn purge_expired(&self, batch: usize) -> StoreResult<u64> {
        let batch = i64::try_from(batch).unwrap_or(i64::MAX);
        let now = self.now_param();
        bounded(self.timeout, async {
            let client = self.client().await?;
            let stmt = client
                .prepare_cached(&self.sql.purge)
                .await
                .map_err(unavailable)?;
            client
                .execute(&stmt, &[&batch, &now])
                .await
                .map_err(unavailable)
        })
        .await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let rows = self.query(&self.sql.stats, &[&self.now_param()]).await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Corrupt("stats: no answer row".into()))?;
        let count = |i: usize| -> StoreResult<u64> {
            let n: i64 = row.try_get(i).map_err(unavailable)?;
            Ok(u64::try_from(n).unwrap_or(0))
        };
        Ok(StoreStats {
            in_progress: count(0)?,
            completed: count(1)?,
        })
    }

    async fn evict(&self, key: &RecordKey) -> StoreResult<bool> {
        let rows = self.query_key(&self.sql.evict, key).await?;
        match rows.first() {
            Some(row) => row.try_get::<_, bool>(0).map_err(unavailable),
            None => Ok(false),
        }
    }

    async fn list_in_progress(&self, limit: usize) -> StoreResult<Vec<(RecordKey, Record)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(&self.sql.list_in_progress, &[&self.now_param(), &limit])
            .await?;
        rows.iter()
            .map(|row| {
                let text = |i: usize| -> StoreResult<String> {
                    row.try_get(i)
                        .map_err(|_| StoreError::Corrupt(format!("key column {i} is not text")))
                };
                let k = IdempotencyKey::new(&text(12)?)
                    .map_err(|e| StoreError::Corrupt(format!("stored key: {e}")))?;
                let key = RecordKey::new(Tenant::from_stored(text(9)?), &text(10)?, &text(11)?, k);
                let record = record_from_row(row, 0, &key)?;
                Ok((key, record))
            })
            .collect()
    }
}
