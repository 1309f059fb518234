//! The outbox in SQLite: its tables live in the application's own database file, and
//! [`SqliteOutbox::enqueue`] writes into the application's own transaction.
//!
//! SQLite has one writer at a time, so a claim (a `BEGIN IMMEDIATE` transaction) never
//! interleaves with an enqueue: every event it cannot see yet is in a transaction that has
//! not committed, and the next claim sees it.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::{Clock, Timestamp};
use oncely_db::migrate::{Migration, Migrations};
use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};

use crate::event::{EventId, NewEvent, OutboxEvent};
use crate::store::{
    settled_failure, validate, Claim, Failure, OutboxError, OutboxStats, OutboxStore, Settled,
};

/// The outbox's history. The DDL is also what applications in other languages create
/// (docs/outbox.md).
const MIGRATIONS: Migrations = Migrations {
    concern: "outbox",
    steps: &[Migration {
        version: 1,
        description: "the outbox and its per-aggregate sequences",
        sql: "
CREATE TABLE IF NOT EXISTS oncely_outbox (
    id             TEXT PRIMARY KEY,
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    sequence       INTEGER NOT NULL,
    event_type     TEXT NOT NULL,
    payload        TEXT NOT NULL,
    headers        TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    status         TEXT NOT NULL DEFAULT 'pending',
    attempts       INTEGER NOT NULL DEFAULT 0,
    available_at   INTEGER NOT NULL,
    lease_token    INTEGER,
    lease_until    INTEGER,
    last_error     TEXT,
    delivered_at   INTEGER,
    UNIQUE (aggregate_type, aggregate_id, sequence)
) STRICT;
CREATE INDEX IF NOT EXISTS oncely_outbox_pending ON oncely_outbox (created_at)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS oncely_outbox_delivered ON oncely_outbox (delivered_at)
    WHERE status = 'delivered';
CREATE TABLE IF NOT EXISTS oncely_outbox_sequences (
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    last           INTEGER NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id)
) STRICT;
",
    }],
};

const COLUMNS: &str = "id, aggregate_type, aggregate_id, sequence, event_type, payload, headers, \
                       created_at, attempts, last_error";

/// Settles one claimed event (`?1` now, `?2` id, `?3` token): only under its live lease, and
/// only once.
const DELIVERED: &str = "UPDATE oncely_outbox SET status = 'delivered', delivered_at = ?1, \
                         lease_token = NULL, lease_until = NULL \
                         WHERE id = ?2 AND lease_token = ?3 AND status = 'pending'";

fn delivered_answer(updated: usize) -> Settled {
    if updated == 1 {
        Settled::Delivered
    } else {
        Settled::LeaseLost
    }
}

/// The outbox on one SQLite file.
pub struct SqliteOutbox {
    conn: Arc<Mutex<Connection>>,
    clock: Arc<dyn Clock>,
}

impl SqliteOutbox {
    /// Opens (or creates) the outbox tables in the database at `path`, which is the
    /// application's own file. `busy_timeout` bounds how long a claim waits for the
    /// application's writers.
    pub fn open(
        path: impl AsRef<Path>,
        busy_timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, OutboxError> {
        let mut conn = oncely_db::sqlite::open(
            path.as_ref(),
            oncely_db::sqlite::OpenOptions::new(busy_timeout),
        )
        .map_err(OutboxError::Unavailable)?;
        oncely_db::sqlite::migrate(&mut conn, &MIGRATIONS)
            .map_err(|e| OutboxError::Unavailable(e.to_string()))?;
        Ok(SqliteOutbox {
            conn: Arc::new(Mutex::new(conn)),
            clock,
        })
    }

    /// Enqueues `event` in the application's transaction `tx`: it commits or rolls back
    /// with the business write. `now` is the application's clock. The event's aggregate
    /// counter stays locked (SQLite: the whole file) until `tx` ends, which is what makes
    /// the sequence follow commits.
    pub fn enqueue(
        tx: &rusqlite::Transaction<'_>,
        event: &NewEvent,
        now: Timestamp,
    ) -> Result<EventId, OutboxError> {
        validate(event)?;
        let id = EventId::new(now);
        let headers = serde_json::to_string(&event.headers)
            .map_err(|e| OutboxError::Invalid(format!("headers: {e}")))?;
        let payload = event.payload.to_string();
        let sequence: i64 = tx
            .prepare_cached(
                "INSERT INTO oncely_outbox_sequences (aggregate_type, aggregate_id, last) \
                 VALUES (?1, ?2, 1) ON CONFLICT (aggregate_type, aggregate_id) \
                 DO UPDATE SET last = last + 1 RETURNING last",
            )
            .and_then(|mut s| {
                s.query_row(params![event.aggregate_type, event.aggregate_id], |r| {
                    r.get(0)
                })
            })
            .map_err(unavailable)?;
        tx.prepare_cached(
            "INSERT INTO oncely_outbox (id, aggregate_type, aggregate_id, sequence, event_type, \
             payload, headers, created_at, available_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8)",
        )
        .and_then(|mut s| {
            s.execute(params![
                id.to_string(),
                event.aggregate_type,
                event.aggregate_id,
                sequence,
                event.event_type,
                payload,
                headers,
                now.0
            ])
        })
        .map_err(unavailable)?;
        Ok(id)
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, Timestamp) -> Result<T, OutboxError> + Send + 'static,
    ) -> Result<T, OutboxError> {
        let conn = self.conn.clone();
        let now = self.clock.now();
        tokio::task::spawn_blocking(move || f(&mut conn.lock_ignoring_poison(), now))
            .await
            .map_err(|e| OutboxError::Unavailable(format!("outbox thread: {e}")))?
    }
}

fn unavailable(e: rusqlite::Error) -> OutboxError {
    OutboxError::Unavailable(oncely_db::describe(&e))
}

fn read_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<OutboxEvent, OutboxError>> {
    let id: String = r.get(0)?;
    let payload: String = r.get(5)?;
    let headers: String = r.get(6)?;
    let attempts: i64 = r.get(8)?;
    let corrupt = |reason: String| OutboxError::Corrupt {
        id: id.clone(),
        reason,
    };
    let parsed = (|| {
        Ok(OutboxEvent {
            id: EventId::parse(&id).ok_or_else(|| corrupt("the id is not a UUID".into()))?,
            aggregate_type: r.get(1).map_err(|e| corrupt(e.to_string()))?,
            aggregate_id: r.get(2).map_err(|e| corrupt(e.to_string()))?,
            sequence: r.get(3).map_err(|e| corrupt(e.to_string()))?,
            event_type: r.get(4).map_err(|e| corrupt(e.to_string()))?,
            payload: serde_json::from_str(&payload)
                .map_err(|e| corrupt(format!("payload: {e}")))?,
            headers: serde_json::from_str(&headers)
                .map_err(|e| corrupt(format!("headers: {e}")))?,
            created_at: Timestamp(r.get(7).map_err(|e| corrupt(e.to_string()))?),
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
            last_error: r.get(9).map_err(|e| corrupt(e.to_string()))?,
        })
    })();
    Ok(parsed)
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl OutboxStore for SqliteOutbox {
    async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Claim>, OutboxError> {
        self.run(move |conn, now| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let ids: Vec<String> = {
                let mut s = tx
                    .prepare_cached(
                        "SELECT o.id FROM oncely_outbox o \
                         WHERE o.status = 'pending' AND o.available_at <= ?1 \
                           AND (o.lease_until IS NULL OR o.lease_until <= ?1) \
                           AND NOT EXISTS (SELECT 1 FROM oncely_outbox p \
                               WHERE p.aggregate_type = o.aggregate_type \
                                 AND p.aggregate_id = o.aggregate_id \
                                 AND p.sequence < o.sequence AND p.status <> 'delivered') \
                         ORDER BY o.created_at, o.id LIMIT ?2",
                    )
                    .map_err(unavailable)?;
                let rows = s
                    .query_map(
                        params![now.0, i64::try_from(limit).unwrap_or(i64::MAX)],
                        |r| r.get(0),
                    )
                    .map_err(unavailable)?;
                rows.collect::<Result<_, _>>().map_err(unavailable)?
            };
            let mut claims = Vec::with_capacity(ids.len());
            for id in ids {
                let token: i64 = rand::random::<i64>() & i64::MAX;
                let event = tx
                    .prepare_cached(&format!(
                        "UPDATE oncely_outbox SET lease_token = ?1, lease_until = ?2, \
                         attempts = attempts + 1 WHERE id = ?3 RETURNING {COLUMNS}"
                    ))
                    .and_then(|mut s| {
                        s.query_row(
                            params![token, now.0.saturating_add(millis(lease)), id],
                            read_event,
                        )
                    })
                    .map_err(unavailable)??;
                claims.push(Claim { event, token });
            }
            tx.commit().map_err(unavailable)?;
            Ok(claims)
        })
        .await
    }

    async fn delivered(&self, id: EventId, token: i64) -> Result<Settled, OutboxError> {
        self.run(move |conn, now| {
            let n = conn
                .prepare_cached(DELIVERED)
                .and_then(|mut s| s.execute(params![now.0, id.to_string(), token]))
                .map_err(unavailable)?;
            Ok(delivered_answer(n))
        })
        .await
    }

    async fn delivered_all(&self, settled: &[(EventId, i64)]) -> Result<Vec<Settled>, OutboxError> {
        if settled.is_empty() {
            return Ok(Vec::new());
        }
        let settled = settled.to_vec();
        self.run(move |conn, now| {
            // One write transaction for the batch: one fsync instead of one per event, and
            // the entries are applied in order, so each answer is what `delivered` would say.
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let mut answers = Vec::with_capacity(settled.len());
            {
                let mut s = tx.prepare_cached(DELIVERED).map_err(unavailable)?;
                for (id, token) in settled {
                    let n = s
                        .execute(params![now.0, id.to_string(), token])
                        .map_err(unavailable)?;
                    answers.push(delivered_answer(n));
                }
            }
            tx.commit().map_err(unavailable)?;
            Ok(answers)
        })
        .await
    }

    async fn failed(
        &self,
        id: EventId,
        token: i64,
        failure: &Failure,
    ) -> Result<Settled, OutboxError> {
        let failure = failure.clone();
        self.run(move |conn, now| {
            let status: Option<String> = conn
                .prepare_cached(
                    "UPDATE oncely_outbox SET lease_token = NULL, lease_until = NULL, \
                     last_error = ?1, available_at = ?2, \
                     status = CASE WHEN attempts >= ?3 THEN 'dead' ELSE 'pending' END \
                     WHERE id = ?4 AND lease_token = ?5 AND status = 'pending' RETURNING status",
                )
                .and_then(|mut s| {
                    s.query_row(
                        params![
                            failure.error,
                            now.0.saturating_add(millis(failure.retry_in)),
                            i64::from(failure.dead_after),
                            id.to_string(),
                            token
                        ],
                        |r| r.get(0),
                    )
                    .optional()
                })
                .map_err(unavailable)?;
            Ok(status.map_or(Settled::LeaseLost, |s| settled_failure(&s)))
        })
        .await
    }

    async fn purge_delivered(&self, limit: usize) -> Result<u64, OutboxError> {
        self.run(move |conn, _| {
            let n = conn
                .prepare_cached(
                    "DELETE FROM oncely_outbox WHERE id IN (SELECT id FROM oncely_outbox \
                     WHERE status = 'delivered' ORDER BY delivered_at LIMIT ?1)",
                )
                .and_then(|mut s| s.execute([i64::try_from(limit).unwrap_or(i64::MAX)]))
                .map_err(unavailable)?;
            Ok(n as u64)
        })
        .await
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.run(|conn, _| {
            conn.query_row(
                "SELECT \
                   (SELECT count(*) FROM oncely_outbox WHERE status = 'pending'), \
                   (SELECT count(*) FROM oncely_outbox WHERE status = 'dead'), \
                   (SELECT count(*) FROM oncely_outbox WHERE status = 'delivered'), \
                   (SELECT min(created_at) FROM oncely_outbox WHERE status = 'pending')",
                [],
                |r| {
                    let count = |i: usize| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
                    Ok(OutboxStats {
                        pending: count(0)?,
                        dead: count(1)?,
                        delivered: count(2)?,
                        oldest_pending: r.get::<_, Option<i64>>(3)?.map(Timestamp),
                    })
                },
            )
            .map_err(unavailable)
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<OutboxEvent>, OutboxError> {
        self.run(move |conn, _| {
            let mut s = conn
                .prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM oncely_outbox WHERE status = 'dead' \
                     ORDER BY created_at, id LIMIT ?1"
                ))
                .map_err(unavailable)?;
            let rows = s
                .query_map([i64::try_from(limit).unwrap_or(i64::MAX)], read_event)
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for row in rows {
                out.push(row.map_err(unavailable)??);
            }
            Ok(out)
        })
        .await
    }

    async fn retry(&self, id: EventId) -> Result<bool, OutboxError> {
        self.run(move |conn, now| {
            let n = conn
                .prepare_cached(
                    "UPDATE oncely_outbox SET status = 'pending', attempts = 0, available_at = ?1 \
                     WHERE id = ?2 AND status = 'dead'",
                )
                .and_then(|mut s| s.execute(params![now.0, id.to_string()]))
                .map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }
}
