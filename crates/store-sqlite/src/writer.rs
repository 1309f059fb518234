//! The writer thread: every write of the store, group-committed.
//!
//! One OS thread owns the only read-write connection. It blocks for a command, drains
//! whatever else is queued (up to `max_batch`), applies them all in order inside one
//! `BEGIN IMMEDIATE` ... `COMMIT`, and only after the COMMIT has succeeded answers each
//! caller. A batch therefore costs one WAL append (and, with `synchronous=FULL`, one fsync)
//! however many requests it carries, and no caller ever hears "claimed" or "completed" for a
//! write that could still be rolled back.
//!
//! **Per-op isolation.** Each op runs inside its own `SAVEPOINT`: an op that fails (a
//! refused transition changes nothing, but a corrupt row or an SQL error might have left
//! partial effects) is rolled back to its savepoint alone and its caller gets its own error,
//! while the rest of the batch commits. If SQLite itself abandons the transaction (it does
//! so on some I/O errors, disk full, out of memory), nothing of the batch is kept: the
//! remaining ops are not run and every caller of the batch gets `Unavailable`, as they also
//! do when `BEGIN` or `COMMIT` fails.
//!
//! **Time.** Each op reads `now` from the injected clock when it executes here, so every
//! decision of the op (expiry, lease, the instants it writes and reports) uses one instant,
//! exactly as the pure transitions of `oncely_core::record` do.
//!
//! **Cancellation.** A caller that stops waiting does not cancel its op: a claim whose
//! answer nobody hears still holds its key, but only until its lease expires (invariant 5).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oncely_core::{
    ClaimOutcome, Clock, Fingerprint, LeaseToken, RecordKey, Refusal, StoredResponse, Timestamp,
};
use oncely_store::{StoreError, StoreResult};
use rusqlite::{params, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::codec::{self, unavailable, STATE_COMPLETED, STATE_IN_PROGRESS};

/// A write, as submitted by the async side.
pub(crate) enum Op {
    Claim {
        key: RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
        ttl: Duration,
        /// Minted by the caller; installed only if the claim wins.
        token: LeaseToken,
    },
    Complete {
        key: RecordKey,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    },
    Release {
        key: RecordKey,
        token: LeaseToken,
    },
    Renew {
        key: RecordKey,
        token: LeaseToken,
        lease: Duration,
    },
    Purge {
        batch: usize,
    },
    Evict {
        key: RecordKey,
    },
}

/// What an op produced; the async side unwraps the variant it asked for.
#[derive(Debug)]
pub(crate) enum Answer {
    Claimed(ClaimOutcome),
    Done,
    Renewed(Timestamp),
    Purged(u64),
    Evicted(bool),
}

pub(crate) struct Command {
    pub(crate) op: Op,
    pub(crate) reply: oneshot::Sender<StoreResult<Answer>>,
}

pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) commands: mpsc::Receiver<Command>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) max_batch: usize,
    pub(crate) committed_batches: Arc<AtomicU64>,
}

impl Writer {
    /// The thread's body: returns when every sender is gone and the queue is drained, so
    /// dropping the store still commits what was already submitted.
    pub(crate) fn run(mut self) {
        let mut batch = Vec::with_capacity(self.max_batch);
        while let Some(first) = self.commands.blocking_recv() {
            batch.push(first);
            while batch.len() < self.max_batch {
                match self.commands.try_recv() {
                    Ok(cmd) => batch.push(cmd),
                    Err(_) => break,
                }
            }
            self.run_batch(&mut batch);
        }
        tracing::debug!("sqlite writer stopped: the store was dropped");
    }

    fn run_batch(&self, batch: &mut Vec<Command>) {
        let size = batch.len();
        match self.apply_all(batch) {
            Ok(results) => {
                self.committed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::trace!(ops = size, "sqlite batch committed");
                for (cmd, result) in batch.drain(..).zip(results) {
                    // A caller that gave up waiting is not an error of the store.
                    let _ = cmd.reply.send(result);
                }
            }
            Err(why) => {
                tracing::warn!(ops = size, error = %why, "sqlite batch failed; nothing of it was kept");
                self.abandon();
                let err = StoreError::Unavailable(why);
                for cmd in batch.drain(..) {
                    let _ = cmd.reply.send(Err(err.clone()));
                }
            }
        }
    }

    /// Runs the batch in one transaction and returns each op's result, in order, once the
    /// COMMIT has succeeded. On failure nothing is committed and the error says why; the
    /// commands stay in `batch` so that every caller can be told.
    fn apply_all(&self, batch: &[Command]) -> Result<Vec<StoreResult<Answer>>, String> {
        let conn = &self.conn;
        exec(conn, "BEGIN IMMEDIATE").map_err(|e| format!("sqlite BEGIN: {e}"))?;
        let mut results = Vec::with_capacity(batch.len());
        for cmd in batch {
            exec(conn, "SAVEPOINT op").map_err(|e| format!("sqlite SAVEPOINT: {e}"))?;
            let result = self.apply(&cmd.op);
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back under us: the ops already run in
                // this batch are gone too, so none of them may be reported as done.
                return Err(match result {
                    Err(e) => format!("sqlite rolled the batch back: {e}"),
                    Ok(_) => "sqlite rolled the batch back".to_owned(),
                });
            }
            if result.is_err() {
                exec(conn, "ROLLBACK TO op").map_err(|e| format!("sqlite ROLLBACK TO: {e}"))?;
            }
            exec(conn, "RELEASE op").map_err(|e| format!("sqlite RELEASE: {e}"))?;
            results.push(result);
        }
        exec(conn, "COMMIT").map_err(|e| format!("sqlite COMMIT: {e}"))?;
        Ok(results)
    }

    /// Leaves no transaction open after a failed batch, so the next batch starts clean.
    fn abandon(&self) {
        if !self.conn.is_autocommit() {
            if let Err(e) = self.conn.execute_batch("ROLLBACK") {
                tracing::error!(error = %e, "sqlite ROLLBACK after a failed batch failed");
            }
        }
    }

    fn apply(&self, op: &Op) -> StoreResult<Answer> {
        let now = self.clock.now();
        let conn = &self.conn;
        match op {
            Op::Claim {
                key,
                fingerprint,
                lease,
                ttl,
                token,
            } => claim(conn, key, *fingerprint, now, *lease, *ttl, *token).map(Answer::Claimed),
            Op::Complete {
                key,
                token,
                response,
                ttl,
            } => complete(conn, key, *token, response, now, *ttl).map(|()| Answer::Done),
            Op::Release { key, token } => release(conn, key, *token, now).map(|()| Answer::Done),
            Op::Renew { key, token, lease } => {
                renew(conn, key, *token, now, *lease).map(Answer::Renewed)
            }
            Op::Purge { batch } => purge(conn, now, *batch).map(Answer::Purged),
            Op::Evict { key } => evict(conn, key, now).map(Answer::Evicted),
        }
    }
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// `record::claim` as one UPSERT. The conflict branch fires only where the model writes:
/// the existing record is expired (a fresh claim: new fingerprint, `created_at = now`,
/// `takeovers = 0`), or it is in progress with a lapsed lease and the same fingerprint (a
/// takeover: `created_at` kept, `takeovers + 1`). SET expressions see the old row, so the
/// CASEs test the old `expires_at`. RETURNING yields a row exactly when the claim won.
const CLAIM_SQL: &str = "
INSERT INTO idempotency_records
    (tenant, method, route, idem_key, fingerprint, created_at, expires_at, state,
     lease_token, lease_expires_at, status, headers, body, takeovers)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, ?8, ?9, NULL, NULL, NULL, 0)
ON CONFLICT (tenant, method, route, idem_key) DO UPDATE SET
    fingerprint = excluded.fingerprint,
    created_at = CASE WHEN idempotency_records.expires_at <= ?6
                      THEN excluded.created_at ELSE idempotency_records.created_at END,
    takeovers = CASE WHEN idempotency_records.expires_at <= ?6
                     THEN 0 ELSE idempotency_records.takeovers + 1 END,
    expires_at = excluded.expires_at,
    state = 0,
    lease_token = excluded.lease_token,
    lease_expires_at = excluded.lease_expires_at,
    status = NULL,
    headers = NULL,
    body = NULL
WHERE idempotency_records.expires_at <= ?6
   OR (idempotency_records.state = 0
       AND idempotency_records.lease_expires_at <= ?6
       AND idempotency_records.fingerprint = excluded.fingerprint)
RETURNING takeovers";

const SELECT_RECORD_SQL: &str = concat!(
    "SELECT ",
    codec::record_columns!(),
    " FROM idempotency_records
     WHERE tenant = ?1 AND method = ?2 AND route = ?3 AND idem_key = ?4"
);

fn claim(
    conn: &Connection,
    key: &RecordKey,
    fingerprint: Fingerprint,
    now: Timestamp,
    lease: Duration,
    ttl: Duration,
    token: LeaseToken,
) -> StoreResult<ClaimOutcome> {
    let lease_expires_at = now.plus(lease);
    let won: Option<i64> = {
        let mut stmt = conn.prepare_cached(CLAIM_SQL).map_err(unavailable)?;
        let mut rows = stmt
            .query(params![
                key.scope.tenant.as_str(),
                key.scope.method,
                key.scope.route,
                key.key.as_str(),
                &fingerprint.0[..],
                now.0,
                now.plus(ttl).0,
                &codec::token_bytes(token)[..],
                lease_expires_at.0,
            ])
            .map_err(unavailable)?;
        match rows.next().map_err(unavailable)? {
            Some(row) => Some(row.get(0).map_err(unavailable)?),
            None => None,
        }
        // `rows` is dropped here, which resets the statement before the next one runs.
    };
    if let Some(takeovers) = won {
        return Ok(ClaimOutcome::Claimed {
            token,
            lease_expires_at,
            takeover: takeovers > 0,
        });
    }
    // The UPSERT found a live record it may not replace. Reading it in the same transaction
    // reports exactly the record that refused the claim.
    let mut stmt = conn
        .prepare_cached(SELECT_RECORD_SQL)
        .map_err(unavailable)?;
    let mut rows = stmt.query(key_params(key)).map_err(unavailable)?;
    match rows.next().map_err(unavailable)? {
        Some(row) => Ok(ClaimOutcome::Exists(codec::record_from_row(row, key)?)),
        None => Err(StoreError::Unavailable(format!(
            "{key}: the claim conflicted with a row that is not there"
        ))),
    }
}

fn key_params(key: &RecordKey) -> (&str, &str, &str, &str) {
    (
        key.scope.tenant.as_str(),
        &key.scope.method,
        &key.scope.route,
        key.key.as_str(),
    )
}

/// `record::complete`: one conditional UPDATE on the live holder's token.
fn complete(
    conn: &Connection,
    key: &RecordKey,
    token: LeaseToken,
    response: &StoredResponse,
    now: Timestamp,
    ttl: Duration,
) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "UPDATE idempotency_records
             SET state = 1, lease_token = NULL, lease_expires_at = NULL,
                 status = ?5, headers = ?6, body = ?7,
                 expires_at = MAX(expires_at, ?8)
             WHERE tenant = ?1 AND method = ?2 AND route = ?3 AND idem_key = ?4
               AND expires_at > ?9 AND state = 0 AND lease_token = ?10",
        )
        .map_err(unavailable)?;
    let changed = stmt
        .execute(params![
            key.scope.tenant.as_str(),
            key.scope.method,
            key.scope.route,
            key.key.as_str(),
            response.status,
            response.encode_headers(),
            &response.body[..],
            now.plus(ttl).0,
            now.0,
            &codec::token_bytes(token)[..],
        ])
        .map_err(unavailable)?;
    refuse_unless_changed(conn, key, changed, now)
}

/// `record::release`: one conditional DELETE on the live holder's token.
fn release(
    conn: &Connection,
    key: &RecordKey,
    token: LeaseToken,
    now: Timestamp,
) -> StoreResult<()> {
    let mut stmt = conn
        .prepare_cached(
            "DELETE FROM idempotency_records
             WHERE tenant = ?1 AND method = ?2 AND route = ?3 AND idem_key = ?4
               AND expires_at > ?5 AND state = 0 AND lease_token = ?6",
        )
        .map_err(unavailable)?;
    let changed = stmt
        .execute(params![
            key.scope.tenant.as_str(),
            key.scope.method,
            key.scope.route,
            key.key.as_str(),
            now.0,
            &codec::token_bytes(token)[..],
        ])
        .map_err(unavailable)?;
    refuse_unless_changed(conn, key, changed, now)
}

/// `record::renew`: one conditional UPDATE of the lease on the live holder's token.
fn renew(
    conn: &Connection,
    key: &RecordKey,
    token: LeaseToken,
    now: Timestamp,
    lease: Duration,
) -> StoreResult<Timestamp> {
    let until = now.plus(lease);
    let mut stmt = conn
        .prepare_cached(
            "UPDATE idempotency_records
             SET lease_expires_at = ?5, expires_at = MAX(expires_at, ?5)
             WHERE tenant = ?1 AND method = ?2 AND route = ?3 AND idem_key = ?4
               AND expires_at > ?6 AND state = 0 AND lease_token = ?7",
        )
        .map_err(unavailable)?;
    let changed = stmt
        .execute(params![
            key.scope.tenant.as_str(),
            key.scope.method,
            key.scope.route,
            key.key.as_str(),
            until.0,
            now.0,
            &codec::token_bytes(token)[..],
        ])
        .map_err(unavailable)?;
    refuse_unless_changed(conn, key, changed, now)?;
    Ok(until)
}

/// When a token-conditioned statement changed nothing, says why, with the precedence of
/// `record::live` then `record::check_holder`: no row or an expired one is `Missing`, a
/// completed one `AlreadyCompleted`, an in-progress one (necessarily under another token,
/// or the statement would have matched) `StaleToken`.
fn refuse_unless_changed(
    conn: &Connection,
    key: &RecordKey,
    changed: usize,
    now: Timestamp,
) -> StoreResult<()> {
    if changed > 0 {
        return Ok(());
    }
    let mut stmt = conn
        .prepare_cached(
            "SELECT state, expires_at FROM idempotency_records
             WHERE tenant = ?1 AND method = ?2 AND route = ?3 AND idem_key = ?4",
        )
        .map_err(unavailable)?;
    let mut rows = stmt.query(key_params(key)).map_err(unavailable)?;
    let refusal = match rows.next().map_err(unavailable)? {
        None => Refusal::Missing,
        Some(row) => {
            let int = |i: usize, name: &str| match row.get_ref(i) {
                Ok(rusqlite::types::ValueRef::Integer(v)) => Ok(v),
                _ => Err(StoreError::Corrupt(format!(
                    "{key}: column {name} is not an integer"
                ))),
            };
            let state = int(0, "state")?;
            let expires_at = int(1, "expires_at")?;
            if expires_at <= now.0 {
                Refusal::Missing
            } else if state == STATE_COMPLETED {
                Refusal::AlreadyCompleted
            } else if state == STATE_IN_PROGRESS {
                Refusal::StaleToken
            } else {
                return Err(StoreError::Corrupt(format!(
                    "{key}: column state has unknown value {state}"
                )));
            }
        }
    };
    Err(StoreError::Refused(refusal))
}

/// Deletes at most `batch` expired rows in one statement, oldest first, so that a purge
/// holds the write lock for a bounded time however large the backlog is. The inner SELECT
/// walks the `expires_at` index.
pub(crate) const PURGE_SQL: &str = "
DELETE FROM idempotency_records
WHERE id IN (
    SELECT id FROM idempotency_records
    WHERE expires_at <= ?1 ORDER BY expires_at LIMIT ?2)";

/// Deletes the record whatever its state; true if it was live.
fn evict(conn: &Connection, key: &RecordKey, now: Timestamp) -> StoreResult<bool> {
    let mut stmt = conn
        .prepare_cached(
            "DELETE FROM idempotency_records
             WHERE tenant = ?1 AND method = ?2 AND route = ?3 AND idem_key = ?4
             RETURNING expires_at",
        )
        .map_err(unavailable)?;
    let expires: Option<i64> = stmt
        .query_row(
            params![
                key.scope.tenant.as_str(),
                key.scope.method,
                key.scope.route,
                key.key.as_str()
            ],
            |r| r.get(0),
        )
        .map(Some)
        .or_else(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => Ok(None),
            e => Err(e),
        })
        .map_err(unavailable)?;
    Ok(expires.is_some_and(|e| e > now.0))
}

fn purge(conn: &Connection, now: Timestamp, batch: usize) -> StoreResult<u64> {
    let limit = i64::try_from(batch).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare_cached(PURGE_SQL).map_err(unavailable)?;
    let deleted = stmt.execute(params![now.0, limit]).map_err(unavailable)?;
    Ok(u64::try_from(deleted).unwrap_or(u64::MAX))
}
