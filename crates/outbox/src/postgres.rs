//! The outbox in PostgreSQL: its tables live in a schema of the application's own database,
//! and [`PgOutbox::enqueue`] writes into the application's own transaction.
//!
//! Claims take rows `FOR UPDATE SKIP LOCKED`, so relays never wait for each other or for
//! the application's transactions, and times are the server's clock, so relays on hosts with
//! skewed clocks agree on leases. Every enqueue also notifies the channel
//! [`PgOutbox::channel`], delivered when its transaction commits: a relay listening there
//! wakes at once instead of at its next poll.
//!
//! Every call of the outbox's own is bounded ([`PgOutbox::with_timeout`], 5 s unless set), so
//! a database that stopped answering fails the relay's pass instead of hanging it. Enqueue
//! runs in the application's transaction and is the application's to bound.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use oncely_core::{Clock, Timestamp};
use oncely_db::migrate::{Migration, Migrations};
use oncely_db::postgres::{NoAnswer, DEFAULT_TIMEOUT};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::event::{EventId, NewEvent, OutboxEvent};
use crate::store::{
    settled_failure, validate, Claim, Failure, OutboxError, OutboxStats, OutboxStore, Settled,
};

/// The outbox's history, `{schema}` the quoted schema. The DDL is also what applications in
/// other languages create (docs/outbox.md).
const MIGRATIONS: Migrations = Migrations {
    concern: "outbox",
    steps: &[
        Migration {
            version: 1,
            description: "the outbox and its per-aggregate sequences",
            sql: "
CREATE TABLE IF NOT EXISTS {schema}.outbox (
    id             text  PRIMARY KEY,
    aggregate_type text  NOT NULL,
    aggregate_id   text  NOT NULL,
    sequence       int8  NOT NULL,
    event_type     text  NOT NULL,
    payload        jsonb NOT NULL,
    headers        jsonb NOT NULL,
    created_at     int8  NOT NULL,
    status         text  NOT NULL DEFAULT 'pending',
    attempts       int4  NOT NULL DEFAULT 0,
    available_at   int8  NOT NULL,
    lease_token    int8,
    lease_until    int8,
    last_error     text,
    delivered_at   int8,
    UNIQUE (aggregate_type, aggregate_id, sequence)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON {schema}.outbox (created_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS outbox_delivered ON {schema}.outbox (delivered_at)
    WHERE status = 'delivered';
CREATE TABLE IF NOT EXISTS {schema}.outbox_sequences (
    aggregate_type text NOT NULL,
    aggregate_id   text NOT NULL,
    last           int8 NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
);
",
        },
        Migration {
            version: 2,
            description: "pending events in claim order; room in each page for updates in place",
            // A claim reads pending events in (created_at, id) order: with the id in the index
            // it stops after its batch instead of sorting every event of one millisecond. Free
            // room in each page lets a claim's lease update stay on its page without touching
            // the indexes (a HOT update), which is most of a claim's cost.
            sql: "
CREATE INDEX IF NOT EXISTS outbox_pending_order ON {schema}.outbox (created_at, id)
    WHERE status = 'pending';
DROP INDEX IF EXISTS {schema}.outbox_pending;
ALTER TABLE {schema}.outbox SET (fillfactor = 50);
",
        },
    ],
};

/// How long `open` waits for the migrations.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

/// The server's clock in milliseconds since the epoch.
const NOW_MS: &str = "(extract(epoch FROM clock_timestamp()) * 1000)::int8";

const COLUMNS: &str = "o.id, o.aggregate_type, o.aggregate_id, o.sequence, o.event_type, \
                       o.payload::text, o.headers::text, o.created_at, o.attempts, o.last_error";

/// The outbox in one schema of the database behind a pool.
pub struct PgOutbox {
    pool: Pool,
    schema: String,
    channel: String,
    clock: Arc<dyn Clock>,
    sql: Statements,
    timeout: Duration,
}

struct Statements {
    enqueue: String,
    claim: String,
    delivered: String,
    delivered_all: String,
    failed: String,
    purge: String,
    stats: String,
    dead_letters: String,
    retry: String,
}

impl Statements {
    fn new(schema: &str) -> Statements {
        let t = format!("\"{schema}\".outbox");
        let seq = format!("\"{schema}\".outbox_sequences");
        Statements {
            // One round trip: the aggregate's next number (its counter row stays locked
            // until the transaction ends), the row, and the wake-up.
            enqueue: format!(
                "WITH s AS (INSERT INTO {seq} AS q (aggregate_type, aggregate_id, last) \
                   VALUES ($2, $3, 1) ON CONFLICT (aggregate_type, aggregate_id) \
                   DO UPDATE SET last = q.last + 1 RETURNING last) \
                 INSERT INTO {t} (id, aggregate_type, aggregate_id, sequence, event_type, payload, \
                   headers, created_at, available_at) \
                 SELECT $1, $2, $3, s.last, $4, $5::text::jsonb, $6::text::jsonb, {NOW_MS}, {NOW_MS} \
                 FROM s CROSS JOIN (SELECT pg_notify($7, '')) AS wake"
            ),
            // `= ANY (ARRAY (...))` and not a join with `picked`: once the statement runs
            // as a generic plan, the planner no longer knows the LIMIT and hashes the whole
            // table to join the picked ids back, several times slower per claim and growing
            // with the table.
            claim: format!(
                "WITH now AS (SELECT {NOW_MS} AS ms), picked AS ( \
                   SELECT o.id FROM {t} o, now \
                   WHERE o.status = 'pending' AND o.available_at <= now.ms \
                     AND (o.lease_until IS NULL OR o.lease_until <= now.ms) \
                     AND NOT EXISTS (SELECT 1 FROM {t} p \
                         WHERE p.aggregate_type = o.aggregate_type \
                           AND p.aggregate_id = o.aggregate_id \
                           AND p.sequence < o.sequence AND p.status <> 'delivered') \
                   ORDER BY o.created_at, o.id LIMIT $1 \
                   FOR UPDATE OF o SKIP LOCKED) \
                 UPDATE {t} o SET lease_token = $2, lease_until = now.ms + $3, \
                   attempts = o.attempts + 1 \
                 FROM now WHERE o.id = ANY (ARRAY (SELECT id FROM picked)) RETURNING {COLUMNS}"
            ),
            delivered: format!(
                "UPDATE {t} SET status = 'delivered', delivered_at = {NOW_MS}, \
                 lease_token = NULL, lease_until = NULL \
                 WHERE id = $1 AND lease_token = $2 AND status = 'pending'"
            ),
            // `delivered` for a whole batch in one statement, under the same conditions.
            // The token comes back with the id so that an entry with a stale token is told
            // apart from one of the same id with the live token.
            delivered_all: format!(
                "UPDATE {t} o SET status = 'delivered', delivered_at = {NOW_MS}, \
                 lease_token = NULL, lease_until = NULL \
                 FROM unnest($1::text[], $2::int8[]) AS s(id, token) \
                 WHERE o.id = s.id AND o.lease_token = s.token AND o.status = 'pending' \
                 RETURNING o.id, s.token"
            ),
            failed: format!(
                "UPDATE {t} SET lease_token = NULL, lease_until = NULL, last_error = $1, \
                 available_at = {NOW_MS} + $2, \
                 status = CASE WHEN attempts >= $3 THEN 'dead' ELSE 'pending' END \
                 WHERE id = $4 AND lease_token = $5 AND status = 'pending' RETURNING status"
            ),
            purge: format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE status = 'delivered' \
                 ORDER BY delivered_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
            ),
            stats: format!(
                "SELECT count(*) FILTER (WHERE status = 'pending'), \
                   count(*) FILTER (WHERE status = 'dead'), \
                   count(*) FILTER (WHERE status = 'delivered'), \
                   min(created_at) FILTER (WHERE status = 'pending') FROM {t}"
            ),
            dead_letters: format!(
                "SELECT {COLUMNS} FROM {t} o WHERE o.status = 'dead' \
                 ORDER BY o.created_at, o.id LIMIT $1"
            ),
            retry: format!(
                "UPDATE {t} SET status = 'pending', attempts = 0, available_at = {NOW_MS} \
                 WHERE id = $1 AND status = 'dead'"
            ),
        }
    }
}

impl PgOutbox {
    /// The outbox in schema `schema` of the database behind `pool` (the application's own),
    /// created or brought up to date, within the default bound of 5 s. `clock` only dates
    /// the event ids; leases and times are the server's.
    pub async fn open(
        pool: Pool,
        schema: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OutboxError> {
        oncely_db::postgres::validate_schema(schema)
            .map_err(|e| OutboxError::Invalid(format!("schema: {e}")))?;
        // A migration may build an index over a large outbox: it gets minutes, not the
        // seconds an ordinary call gets.
        oncely_db::postgres::migrate_pooled(&pool, schema, &MIGRATIONS, MIGRATION_TIMEOUT)
            .await
            .map_err(OutboxError::Unavailable)?;
        Ok(PgOutbox {
            pool,
            channel: channel_of(schema),
            schema: schema.to_owned(),
            clock,
            sql: Statements::new(schema),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Bounds each call of the outbox's own (claims, settling, purge, stats, dead letters,
    /// retry), waiting for a pooled connection included, by `timeout` (longer than zero)
    /// instead of 5 s: past it the call answers [`OutboxError::Unavailable`]. What the
    /// abandoned statement does is then unknown, as after any lost connection: a claim may
    /// still take its events, which come back when their lease ends; a settle may still be
    /// recorded.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The schema holding the outbox.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The `LISTEN` channel every enqueue notifies when its transaction commits.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// Enqueues `event` in the application's transaction `tx` (a tokio-postgres
    /// transaction; a deadpool one derefs to it): it commits or rolls back with the business write. The
    /// aggregate's counter row stays locked until `tx` ends, so a concurrent transaction on
    /// the same aggregate waits, and the sequence follows commits.
    ///
    /// Not bounded by [`PgOutbox::with_timeout`]: the transaction is the application's, and
    /// so is how long its statements may take (a `statement_timeout`, or a timeout around
    /// the whole transaction, which abandoning one statement in it would not end).
    pub async fn enqueue(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        event: &NewEvent,
    ) -> Result<EventId, OutboxError> {
        self.insert_event(tx, self.sql.enqueue.as_str(), event)
            .await
    }

    /// [`PgOutbox::enqueue`] on a transaction of a deadpool connection: the statement is
    /// prepared once per connection (its statement cache) instead of at every call, which
    /// saves a round trip per event.
    pub async fn enqueue_cached(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        event: &NewEvent,
    ) -> Result<EventId, OutboxError> {
        let statement = tx
            .prepare_cached(&self.sql.enqueue)
            .await
            .map_err(unavailable)?;
        self.insert_event(tx, &statement, event).await
    }

    /// The enqueue statement (as text or prepared) with `event`'s values, in `tx`.
    async fn insert_event<S>(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        statement: &S,
        event: &NewEvent,
    ) -> Result<EventId, OutboxError>
    where
        S: tokio_postgres::ToStatement + ?Sized + Sync,
    {
        validate(event)?;
        let id = EventId::new(self.clock.now());
        let headers = serde_json::to_string(&event.headers)
            .map_err(|e| OutboxError::Invalid(format!("headers: {e}")))?;
        tx.execute(
            statement,
            &[
                &id.to_string(),
                &event.aggregate_type,
                &event.aggregate_id,
                &event.event_type,
                &event.payload.to_string(),
                &headers,
                &self.channel,
            ],
        )
        .await
        .map_err(unavailable)?;
        Ok(id)
    }

    /// Runs `op` within the outbox's bound.
    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, OutboxError>>,
    ) -> Result<T, OutboxError> {
        oncely_db::postgres::bounded(self.timeout, op, no_answer).await
    }

    /// Runs `sql`, prepared once per connection, with `params` on a pooled connection,
    /// within the bound; the rows it returns.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, OutboxError> {
        oncely_db::postgres::query_prepared(&self.pool, self.timeout, sql, params)
            .await
            .map_err(OutboxError::Unavailable)
    }

    /// Like [`PgOutbox::query`], for a write: how many rows it touched.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, OutboxError> {
        self.bounded(async {
            let client = self.pool.get().await.map_err(unavailable)?;
            let stmt = client.prepare_cached(sql).await.map_err(unavailable)?;
            client.execute(&stmt, params).await.map_err(unavailable)
        })
        .await
    }
}

/// `oncely_outbox_{schema}`, cut to PostgreSQL's 63-byte identifier limit. Two long schema
/// names that share a prefix share a channel; their relays then wake for each other's
/// events too, which costs a claim that finds nothing, never a missed event.
fn channel_of(schema: &str) -> String {
    let mut channel = format!("oncely_outbox_{schema}");
    // Schema names are validated ASCII, so any byte is a char boundary.
    channel.truncate(63);
    channel
}

fn unavailable(e: impl std::error::Error) -> OutboxError {
    OutboxError::Unavailable(oncely_db::describe(&e))
}

/// A database that does not answer in time is unavailable: the relay tries again at its
/// next pass.
fn no_answer(e: NoAnswer) -> OutboxError {
    OutboxError::Unavailable(e.to_string())
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn read_event(r: &tokio_postgres::Row) -> Result<OutboxEvent, OutboxError> {
    let id: String = r.try_get(0).map_err(unavailable)?;
    let corrupt = |reason: String| OutboxError::Corrupt {
        id: id.clone(),
        reason,
    };
    let get_text = |i: usize| -> Result<String, OutboxError> {
        r.try_get(i).map_err(|e| corrupt(e.to_string()))
    };
    let attempts: i32 = r.try_get(8).map_err(|e| corrupt(e.to_string()))?;
    Ok(OutboxEvent {
        id: EventId::parse(&id).ok_or_else(|| corrupt("the id is not a UUID".into()))?,
        aggregate_type: get_text(1)?,
        aggregate_id: get_text(2)?,
        sequence: r.try_get(3).map_err(|e| corrupt(e.to_string()))?,
        event_type: get_text(4)?,
        payload: serde_json::from_str(&get_text(5)?)
            .map_err(|e| corrupt(format!("payload: {e}")))?,
        headers: serde_json::from_str(&get_text(6)?)
            .map_err(|e| corrupt(format!("headers: {e}")))?,
        created_at: Timestamp(r.try_get(7).map_err(|e| corrupt(e.to_string()))?),
        attempts: u32::try_from(attempts).unwrap_or(0),
        last_error: r.try_get(9).map_err(|e| corrupt(e.to_string()))?,
    })
}

#[async_trait]
impl OutboxStore for PgOutbox {
    async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Claim>, OutboxError> {
        let token: i64 = rand::random::<i64>() & i64::MAX;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(&self.sql.claim, &[&limit, &token, &millis(lease)])
            .await?;
        let mut claims = rows
            .iter()
            .map(|r| read_event(r).map(|event| Claim { event, token }))
            .collect::<Result<Vec<_>, _>>()?;
        // RETURNING has no order of its own.
        claims.sort_by(|a, b| {
            (a.event.created_at, a.event.id).cmp(&(b.event.created_at, b.event.id))
        });
        Ok(claims)
    }

    async fn delivered(&self, id: EventId, token: i64) -> Result<Settled, OutboxError> {
        let n = self
            .execute(&self.sql.delivered, &[&id.to_string(), &token])
            .await?;
        Ok(if n == 1 {
            Settled::Delivered
        } else {
            Settled::LeaseLost
        })
    }

    async fn delivered_all(&self, settled: &[(EventId, i64)]) -> Result<Vec<Settled>, OutboxError> {
        if settled.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = settled.iter().map(|(id, _)| id.to_string()).collect();
        let tokens: Vec<i64> = settled.iter().map(|&(_, token)| token).collect();
        let rows = self
            .query(&self.sql.delivered_all, &[&ids, &tokens])
            .await?;
        let mut updated = HashSet::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get(0).map_err(unavailable)?;
            let token: i64 = r.try_get(1).map_err(unavailable)?;
            updated.insert((id, token));
        }
        // Each updated row answers its first entry only: a repeat of it would have found
        // the event delivered already, as `delivered` one after another would.
        Ok(ids
            .into_iter()
            .zip(tokens)
            .map(|entry| {
                if updated.remove(&entry) {
                    Settled::Delivered
                } else {
                    Settled::LeaseLost
                }
            })
            .collect())
    }

    async fn failed(
        &self,
        id: EventId,
        token: i64,
        failure: &Failure,
    ) -> Result<Settled, OutboxError> {
        let dead_after = i32::try_from(failure.dead_after).unwrap_or(i32::MAX);
        let rows = self
            .query(
                &self.sql.failed,
                &[
                    &failure.error,
                    &millis(failure.retry_in),
                    &dead_after,
                    &id.to_string(),
                    &token,
                ],
            )
            .await?;
        match rows.first() {
            Some(r) => Ok(settled_failure(
                &r.try_get::<_, String>(0).map_err(unavailable)?,
            )),
            None => Ok(Settled::LeaseLost),
        }
    }

    async fn purge_delivered(&self, limit: usize) -> Result<u64, OutboxError> {
        self.execute(
            &self.sql.purge,
            &[&i64::try_from(limit).unwrap_or(i64::MAX)],
        )
        .await
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let rows = self.query(&self.sql.stats, &[]).await?;
        // An aggregate without GROUP BY always answers one row.
        let r = rows
            .first()
            .ok_or_else(|| OutboxError::Unavailable("stats: no row came back".into()))?;
        let count = |i: usize| -> Result<u64, OutboxError> {
            Ok(r.try_get::<_, i64>(i).map_err(unavailable)?.max(0) as u64)
        };
        Ok(OutboxStats {
            pending: count(0)?,
            dead: count(1)?,
            delivered: count(2)?,
            oldest_pending: r
                .try_get::<_, Option<i64>>(3)
                .map_err(unavailable)?
                .map(Timestamp),
        })
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<OutboxEvent>, OutboxError> {
        let rows = self
            .query(
                &self.sql.dead_letters,
                &[&i64::try_from(limit).unwrap_or(i64::MAX)],
            )
            .await?;
        rows.iter().map(read_event).collect()
    }

    async fn retry(&self, id: EventId) -> Result<bool, OutboxError> {
        let n = self.execute(&self.sql.retry, &[&id.to_string()]).await?;
        Ok(n == 1)
    }
}
