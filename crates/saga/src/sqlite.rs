//! The saga store on SQLite: one row per saga and a log of its transitions, in the
//! application's own database file. Every write is a `BEGIN IMMEDIATE` transaction, so a
//! claim and a record never interleave.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::saga::SagaState;
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::{Clock, Timestamp};
use oncely_db::migrate::{Migration, Migrations};
use rusqlite::{params, Connection, OptionalExtension as _, TransactionBehavior};

use crate::store::{
    direction_from, phase_columns, phase_from, validate, Claimed, Created, Direction, LogEntry,
    NewSaga, Recorded, SagaError, SagaRecord, SagaStats, SagaStore, Transition,
};

const MIGRATIONS: Migrations = Migrations {
    concern: "sagas",
    steps: &[Migration {
        version: 1,
        description: "sagas and their log",
        sql: "
CREATE TABLE IF NOT EXISTS oncely_sagas (
    id               TEXT PRIMARY KEY,
    kind             TEXT NOT NULL,
    input            TEXT NOT NULL,
    phase            TEXT NOT NULL,
    step             INTEGER,
    attempt          INTEGER NOT NULL,
    stuck_reason     TEXT,
    failure          TEXT,
    started_at       INTEGER NOT NULL,
    step_started_at  INTEGER NOT NULL,
    undoing          INTEGER NOT NULL DEFAULT 0,
    state_cancel     INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    outputs          TEXT NOT NULL DEFAULT '{}',
    due_at           INTEGER NOT NULL,
    lease_token      INTEGER,
    lease_until      INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS oncely_sagas_due ON oncely_sagas (due_at)
    WHERE phase IN ('running', 'compensating');
CREATE INDEX IF NOT EXISTS oncely_sagas_created ON oncely_sagas (created_at);
CREATE TABLE IF NOT EXISTS oncely_saga_log (
    saga_id   TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    at        INTEGER NOT NULL,
    step      TEXT,
    direction TEXT NOT NULL,
    attempt   INTEGER NOT NULL,
    outcome   TEXT NOT NULL,
    PRIMARY KEY (saga_id, seq)
) STRICT;
",
    }],
};

const COLUMNS: &str = "id, kind, input, phase, step, attempt, stuck_reason, failure, started_at, \
                       step_started_at, state_cancel, cancel_requested, outputs, due_at, \
                       created_at, updated_at, undoing";

/// The saga store on one SQLite file.
pub struct SqliteSagas {
    conn: Arc<Mutex<Connection>>,
    clock: Arc<dyn Clock>,
}

fn unavailable(e: rusqlite::Error) -> SagaError {
    SagaError::Unavailable(oncely_db::describe(&e))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// A row read as a saga; a row that does not read is reported, not panicked on.
fn read_saga(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<SagaRecord, SagaError>> {
    let id: String = r.get(0)?;
    let input: String = r.get(2)?;
    let outputs: String = r.get(12)?;
    let phase = phase_from(
        &id,
        &r.get::<_, String>(3)?,
        r.get(4)?,
        r.get(6)?,
        r.get::<_, i64>(16)? != 0,
    );
    let attempt: i64 = r.get(5)?;
    let corrupt = |reason: String| SagaError::Corrupt {
        id: id.clone(),
        reason,
    };
    let record = (|| {
        let input = serde_json::from_str(&input).map_err(|e| corrupt(format!("input: {e}")))?;
        let outputs =
            serde_json::from_str(&outputs).map_err(|e| corrupt(format!("outputs: {e}")))?;
        Ok(SagaRecord {
            id: id.clone(),
            kind: r.get(1).map_err(|e| corrupt(e.to_string()))?,
            input,
            state: SagaState {
                phase: phase?,
                attempt: u32::try_from(attempt).map_err(|e| corrupt(format!("attempt: {e}")))?,
                started_at: Timestamp(r.get(8).map_err(|e| corrupt(e.to_string()))?),
                step_started_at: Timestamp(r.get(9).map_err(|e| corrupt(e.to_string()))?),
                cancel_requested: r.get::<_, i64>(10).map_err(|e| corrupt(e.to_string()))? != 0,
                failure: r.get(7).map_err(|e| corrupt(e.to_string()))?,
            },
            outputs,
            due_at: Timestamp(r.get(13).map_err(|e| corrupt(e.to_string()))?),
            cancel_requested: r.get::<_, i64>(11).map_err(|e| corrupt(e.to_string()))? != 0,
            created_at: Timestamp(r.get(14).map_err(|e| corrupt(e.to_string()))?),
            updated_at: Timestamp(r.get(15).map_err(|e| corrupt(e.to_string()))?),
        })
    })();
    Ok(record)
}

fn append_log(tx: &rusqlite::Transaction<'_>, id: &str, entry: &LogEntry) -> Result<(), SagaError> {
    tx.prepare_cached(
        "INSERT INTO oncely_saga_log (saga_id, seq, at, step, direction, attempt, outcome) \
         SELECT ?1, coalesce(max(seq), 0) + 1, ?2, ?3, ?4, ?5, ?6 FROM oncely_saga_log \
         WHERE saga_id = ?1",
    )
    .and_then(|mut s| {
        s.execute(params![
            id,
            entry.at.0,
            entry.step,
            entry.direction.as_str(),
            i64::from(entry.attempt),
            entry.outcome
        ])
    })
    .map(|_| ())
    .map_err(unavailable)
}

impl SqliteSagas {
    /// Opens (or creates) the saga tables in the database at `path`; `busy_timeout` bounds
    /// how long a write waits for the application's writers.
    pub fn open(
        path: impl AsRef<Path>,
        busy_timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SagaError> {
        let mut conn = oncely_db::sqlite::open(
            path.as_ref(),
            oncely_db::sqlite::OpenOptions::new(busy_timeout),
        )
        .map_err(SagaError::Unavailable)?;
        oncely_db::sqlite::migrate(&mut conn, &MIGRATIONS)
            .map_err(|e| SagaError::Unavailable(e.to_string()))?;
        Ok(SqliteSagas {
            conn: Arc::new(Mutex::new(conn)),
            clock,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, Timestamp) -> Result<T, SagaError> + Send + 'static,
    ) -> Result<T, SagaError> {
        let conn = self.conn.clone();
        let now = self.clock.now();
        tokio::task::spawn_blocking(move || f(&mut conn.lock_ignoring_poison(), now))
            .await
            .map_err(|e| SagaError::Unavailable(format!("the store's thread failed: {e}")))?
    }
}

impl SqliteSagas {
    /// A person's change to one saga (`sql` over `?1` now and `?2` the id) and its log line,
    /// in one transaction; whether the saga was in a state the change applies to.
    async fn operator_update(
        &self,
        id: &str,
        sql: &'static str,
        outcome: &'static str,
    ) -> Result<bool, SagaError> {
        let id = id.to_owned();
        self.run(move |conn, now| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let n = tx
                .prepare_cached(sql)
                .and_then(|mut s| s.execute(params![now.0, id]))
                .map_err(unavailable)?;
            if n == 1 {
                let entry = LogEntry {
                    step: None,
                    direction: Direction::Saga,
                    attempt: 1,
                    outcome: outcome.into(),
                    at: now,
                };
                append_log(&tx, &id, &entry)?;
            }
            tx.commit().map_err(unavailable)?;
            Ok(n == 1)
        })
        .await
    }
}

fn get_saga(conn: &Connection, id: &str) -> Result<Option<SagaRecord>, SagaError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM oncely_sagas WHERE id = ?1"))
        .and_then(|mut s| s.query_row([id], read_saga).optional())
        .map_err(unavailable)?
        .transpose()
}

#[async_trait]
impl SagaStore for SqliteSagas {
    async fn create(&self, saga: &NewSaga) -> Result<Created, SagaError> {
        validate(saga)?;
        let saga = saga.clone();
        self.run(move |conn, now| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            if let Some(existing) = get_saga(&tx, &saga.id)? {
                return if existing.kind == saga.kind && existing.input == saga.input {
                    Ok(Created::Exists(Box::new(existing)))
                } else {
                    Err(SagaError::Conflict(saga.id))
                };
            }
            let state = SagaState::start(now);
            let (phase, step, _, _) = phase_columns(&state.phase);
            tx.prepare_cached(
                "INSERT INTO oncely_sagas (id, kind, input, phase, step, attempt, started_at, \
                 step_started_at, due_at, created_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, 1, ?6, ?6, ?6, ?6, ?6)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    saga.id,
                    saga.kind,
                    saga.input.to_string(),
                    phase,
                    step,
                    now.0
                ])
            })
            .map_err(unavailable)?;
            append_log(
                &tx,
                &saga.id,
                &LogEntry {
                    step: None,
                    direction: Direction::Saga,
                    attempt: 1,
                    outcome: "started".into(),
                    at: now,
                },
            )?;
            tx.commit().map_err(unavailable)?;
            Ok(Created::New)
        })
        .await
    }

    async fn claim_due(
        &self,
        kinds: &[String],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, SagaError> {
        let kinds = serde_json::Value::from(kinds.to_vec()).to_string();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let lease = millis(lease);
        self.run(move |conn, now| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let ids: Vec<String> = tx
                .prepare_cached(
                    "SELECT id FROM oncely_sagas \
                     WHERE phase IN ('running', 'compensating') AND due_at <= ?1 \
                       AND (lease_until IS NULL OR lease_until <= ?1) \
                       AND kind IN (SELECT value FROM json_each(?3)) \
                     ORDER BY due_at LIMIT ?2",
                )
                .and_then(|mut s| {
                    s.query_map(params![now.0, limit, kinds], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()
                })
                .map_err(unavailable)?;
            let mut claimed = Vec::with_capacity(ids.len());
            for id in ids {
                let token = rand::random::<i64>();
                tx.prepare_cached(
                    "UPDATE oncely_sagas SET lease_token = ?1, lease_until = ?2 WHERE id = ?3",
                )
                .and_then(|mut s| s.execute(params![token, now.0.saturating_add(lease), id]))
                .map_err(unavailable)?;
                match get_saga(&tx, &id) {
                    Ok(Some(saga)) => claimed.push(Claimed { saga, token }),
                    Ok(None) | Err(SagaError::Corrupt { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            tx.commit().map_err(unavailable)?;
            Ok(claimed)
        })
        .await
    }

    async fn record(
        &self,
        id: &str,
        token: i64,
        transition: &Transition,
        lease: Duration,
    ) -> Result<Recorded, SagaError> {
        let (id, t) = (id.to_owned(), transition.clone());
        let lease = millis(lease);
        self.run(move |conn, now| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let Some(mut saga) = get_saga(&tx, &id)? else {
                return Ok(Recorded::LeaseLost);
            };
            let cancel_requested = saga.cancel_requested;
            let held: Option<i64> = tx
                .query_row(
                    "SELECT lease_token FROM oncely_sagas WHERE id = ?1",
                    [&id],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            if held != Some(token) {
                return Ok(Recorded::LeaseLost);
            }
            if cancel_requested
                && t.keep_lease
                && !t.state.cancel_requested
                && !t.state.phase.is_final()
            {
                return Ok(Recorded::CancelRequested);
            }
            if let Some((step, output)) = &t.output {
                saga.outputs.insert(step.clone(), output.clone());
            }
            let (phase, step, reason, undoing) = phase_columns(&t.state.phase);
            let (lease_token, lease_until) = if t.keep_lease && !t.state.phase.is_final() {
                (Some(token), Some(now.0.saturating_add(lease)))
            } else {
                (None, None)
            };
            tx.prepare_cached(
                "UPDATE oncely_sagas SET phase = ?1, step = ?2, attempt = ?3, stuck_reason = ?4, \
                 failure = ?5, step_started_at = ?6, state_cancel = ?7, outputs = ?8, \
                 due_at = ?9, lease_token = ?10, lease_until = ?11, updated_at = ?12, \
                 undoing = ?14 WHERE id = ?13",
            )
            .and_then(|mut s| {
                s.execute(params![
                    phase,
                    step,
                    i64::from(t.state.attempt),
                    reason,
                    t.state.failure,
                    t.state.step_started_at.0,
                    i64::from(t.state.cancel_requested),
                    serde_json::Value::Object(saga.outputs.clone()).to_string(),
                    t.due_at.0,
                    lease_token,
                    lease_until,
                    now.0,
                    id,
                    i64::from(undoing)
                ])
            })
            .map_err(unavailable)?;
            append_log(&tx, &id, &t.log)?;
            tx.commit().map_err(unavailable)?;
            Ok(Recorded::Recorded { cancel_requested })
        })
        .await
    }

    async fn get(&self, id: &str) -> Result<Option<(SagaRecord, Vec<LogEntry>)>, SagaError> {
        let id = id.to_owned();
        self.run(move |conn, _| {
            let Some(saga) = get_saga(conn, &id)? else {
                return Ok(None);
            };
            let rows: Vec<(Option<String>, String, i64, String, i64)> = conn
                .prepare_cached(
                    "SELECT step, direction, attempt, outcome, at FROM oncely_saga_log \
                     WHERE saga_id = ?1 ORDER BY seq",
                )
                .and_then(|mut s| {
                    s.query_map([&id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                    })?
                    .collect::<rusqlite::Result<_>>()
                })
                .map_err(unavailable)?;
            let mut log = Vec::with_capacity(rows.len());
            for (step, direction, attempt, outcome, at) in rows {
                log.push(LogEntry {
                    step,
                    direction: direction_from(&id, &direction)?,
                    attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                    outcome,
                    at: Timestamp(at),
                });
            }
            Ok(Some((saga, log)))
        })
        .await
    }

    async fn list(&self, phase: Option<&str>, limit: usize) -> Result<Vec<SagaRecord>, SagaError> {
        let phase = phase.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn, _| {
            conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM oncely_sagas WHERE ?1 IS NULL OR phase = ?1 \
                 ORDER BY created_at DESC, id LIMIT ?2"
            ))
            .and_then(|mut s| {
                s.query_map(params![phase, limit], read_saga)?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(unavailable)?
            .into_iter()
            .collect()
        })
        .await
    }

    async fn reopen(&self, id: &str) -> Result<bool, SagaError> {
        self.operator_update(
            id,
            "UPDATE oncely_sagas SET phase = CASE WHEN undoing = 1 THEN 'compensating' \
             ELSE 'running' END, attempt = 1, stuck_reason = NULL, undoing = 0, \
             step_started_at = ?1, due_at = ?1, updated_at = ?1 \
             WHERE id = ?2 AND phase = 'stuck'",
            "reopened",
        )
        .await
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, SagaError> {
        self.operator_update(
            id,
            "UPDATE oncely_sagas SET cancel_requested = 1, due_at = min(due_at, ?1) \
             WHERE id = ?2 AND phase IN ('running', 'compensating')",
            "cancel requested",
        )
        .await
    }

    async fn purge(&self, ended_before: Timestamp, limit: usize) -> Result<u64, SagaError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn, _| {
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            // One immediate transaction: the two statements see the same ended sagas.
            let doomed = "SELECT id FROM oncely_sagas WHERE phase IN ('completed', 'compensated') \
                          AND updated_at < ?1 ORDER BY updated_at, id LIMIT ?2";
            tx.execute(
                &format!("DELETE FROM oncely_saga_log WHERE saga_id IN ({doomed})"),
                rusqlite::params![ended_before.0, limit],
            )
            .map_err(unavailable)?;
            let n = tx
                .execute(
                    &format!("DELETE FROM oncely_sagas WHERE id IN ({doomed})"),
                    rusqlite::params![ended_before.0, limit],
                )
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(n as u64)
        })
        .await
    }

    async fn stats(&self) -> Result<SagaStats, SagaError> {
        self.run(|conn, _| {
            let mut stats = SagaStats::default();
            let rows: Vec<(String, i64, Option<i64>)> = conn
                .prepare_cached(
                    "SELECT phase, count(*), min(started_at) FROM oncely_sagas GROUP BY phase",
                )
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                        .collect::<rusqlite::Result<_>>()
                })
                .map_err(unavailable)?;
            for (phase, n, oldest) in rows {
                crate::store::count_phase(&mut stats, &phase, n, oldest);
            }
            Ok(stats)
        })
        .await
    }
}
