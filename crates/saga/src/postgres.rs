//! The saga store on PostgreSQL, in a schema of the application's database. Every write is
//! one statement (the state change and its log line together), and claims take due sagas
//! with `FOR UPDATE SKIP LOCKED`, so runners on many machines never wait on each other.
//!
//! Times are the store's injected clock, as on SQLite: a saga's due time is set by the
//! runner that recorded it, and the runners sharing a database must keep their clocks close
//! (NTP), by much less than a lease.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use oncely_core::saga::SagaState;
use oncely_core::{Clock, Timestamp};
use oncely_db::migrate::{Migration, Migrations};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::store::{
    direction_from, phase_columns, phase_from, validate, Claimed, Created, LogEntry, NewSaga,
    Recorded, SagaError, SagaRecord, SagaStats, SagaStore, Transition,
};

const MIGRATIONS: Migrations = Migrations {
    concern: "sagas",
    steps: &[Migration {
        version: 1,
        description: "sagas and their log",
        sql: "
CREATE TABLE IF NOT EXISTS {schema}.sagas (
    id               text PRIMARY KEY,
    kind             text NOT NULL,
    input            jsonb NOT NULL,
    phase            text NOT NULL,
    step             int8,
    attempt          int8 NOT NULL,
    stuck_reason     text,
    failure          text,
    started_at       int8 NOT NULL,
    step_started_at  int8 NOT NULL,
    undoing          boolean NOT NULL DEFAULT false,
    state_cancel     boolean NOT NULL DEFAULT false,
    cancel_requested boolean NOT NULL DEFAULT false,
    outputs          jsonb NOT NULL DEFAULT '{}',
    log_seq          int8 NOT NULL DEFAULT 0,
    due_at           int8 NOT NULL,
    lease_token      int8,
    lease_until      int8,
    created_at       int8 NOT NULL,
    updated_at       int8 NOT NULL
);
CREATE INDEX IF NOT EXISTS sagas_due ON {schema}.sagas (due_at)
    WHERE phase IN ('running', 'compensating');
CREATE INDEX IF NOT EXISTS sagas_created ON {schema}.sagas (created_at);
CREATE TABLE IF NOT EXISTS {schema}.saga_log (
    saga_id   text NOT NULL,
    seq       int8 NOT NULL,
    at        int8 NOT NULL,
    step      text,
    direction text NOT NULL,
    attempt   int8 NOT NULL,
    outcome   text NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
",
    }],
};

const COLUMNS: &str = "s.id, s.kind, s.input::text, s.phase, s.step, s.attempt, s.stuck_reason, \
                       s.failure, s.started_at, s.step_started_at, s.state_cancel, \
                       s.cancel_requested, s.outputs::text, s.due_at, s.created_at, s.updated_at, \
                       s.undoing";

/// How long an ordinary call may take, and `open`'s migrations.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);

struct Statements {
    create: String,
    get: String,
    log: String,
    claim: String,
    record: String,
    list: String,
    reopen: String,
    cancel: String,
    stats: String,
    purge: String,
    cancel_pending: String,
}

impl Statements {
    fn new(schema: &str) -> Statements {
        let (t, l) = (
            format!("\"{schema}\".sagas"),
            format!("\"{schema}\".saga_log"),
        );
        // Appends one log line for the saga `s` the statement's first part returned, numbered
        // by the saga row's own counter: the row lock the first part took orders the lines
        // of concurrent writers, which a max(seq) read from the statement's snapshot would
        // not.
        let log_line = |at: &str, step: &str, direction: &str, attempt: &str, outcome: &str| {
            format!(
                "INSERT INTO {l} (saga_id, seq, at, step, direction, attempt, outcome) \
                 SELECT s.id, s.log_seq, {at}, {step}, {direction}, {attempt}, {outcome} FROM s"
            )
        };
        Statements {
            create: format!(
                "WITH s AS (INSERT INTO {t} (id, kind, input, phase, step, attempt, started_at, \
                 step_started_at, due_at, created_at, updated_at, log_seq) \
                 VALUES ($1, $2, $3::text::jsonb, $4, $5, 1, $6, $6, $6, $6, $6, 1) \
                 ON CONFLICT (id) DO NOTHING RETURNING id, log_seq) {} \
                 RETURNING saga_id",
                log_line("$6", "NULL", "'saga'", "1", "'started'")
            ),
            get: format!("SELECT {COLUMNS} FROM {t} s WHERE s.id = $1"),
            log: format!(
                "SELECT step, direction, attempt, outcome, at FROM {l} WHERE saga_id = $1 \
                 ORDER BY seq"
            ),
            claim: format!(
                "UPDATE {t} s SET lease_token = $3, lease_until = $1 + $4 \
                 WHERE s.id = ANY (ARRAY (SELECT id FROM {t} \
                   WHERE phase IN ('running', 'compensating') AND due_at <= $1 \
                     AND (lease_until IS NULL OR lease_until <= $1) \
                     AND kind = ANY ($5) \
                   ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED)) \
                 RETURNING {COLUMNS}"
            ),
            record: format!(
                "WITH s AS (UPDATE {t} SET phase = $1, step = $2, attempt = $3, \
                   stuck_reason = $4, failure = $5, step_started_at = $6, state_cancel = $7, \
                   outputs = CASE WHEN $8::text IS NULL THEN outputs \
                     ELSE outputs || jsonb_build_object($8::text, $9::text::jsonb) END, \
                   due_at = $10, lease_token = $11, lease_until = $12, updated_at = $13, \
                   log_seq = log_seq + 1, undoing = $21 \
                 WHERE id = $14 AND lease_token = $15 \
                   AND NOT (cancel_requested AND $22 AND NOT $7) \
                 RETURNING id, log_seq, cancel_requested), \
                 written AS ({} RETURNING saga_id) \
                 SELECT s.cancel_requested FROM s, written",
                log_line("$16", "$17", "$18", "$19", "$20")
            ),
            list: format!(
                "SELECT {COLUMNS} FROM {t} s WHERE $1::text IS NULL OR s.phase = $1 \
                 ORDER BY s.created_at DESC, s.id LIMIT $2"
            ),
            reopen: format!(
                "WITH s AS (UPDATE {t} SET phase = CASE WHEN undoing THEN 'compensating' \
                 ELSE 'running' END, attempt = 1, stuck_reason = NULL, undoing = false, \
                 step_started_at = $1, due_at = $1, updated_at = $1, log_seq = log_seq + 1 \
                 WHERE id = $2 AND phase = 'stuck' RETURNING id, log_seq) {} RETURNING saga_id",
                log_line("$1", "NULL", "'saga'", "1", "'reopened'")
            ),
            cancel: format!(
                "WITH s AS (UPDATE {t} SET cancel_requested = true, due_at = least(due_at, $1), \
                 log_seq = log_seq + 1 \
                 WHERE id = $2 AND phase IN ('running', 'compensating') RETURNING id, log_seq) \
                 {} RETURNING saga_id",
                log_line("$1", "NULL", "'saga'", "1", "'cancel requested'")
            ),
            stats: format!("SELECT phase, count(*), min(started_at) FROM {t} GROUP BY phase"),
            cancel_pending: format!(
                "SELECT cancel_requested FROM {t} WHERE id = $1 AND lease_token = $2"
            ),
            // One statement: the log lines and the sagas go together, and a saga an operator
            // or a runner holds a lock on is left for the next purge.
            purge: format!(
                "WITH doomed AS (SELECT id FROM {t} WHERE phase IN ('completed', 'compensated') \
                 AND updated_at < $1 ORDER BY updated_at, id LIMIT $2 FOR UPDATE SKIP LOCKED), \
                 gone AS (DELETE FROM {l} WHERE saga_id IN (SELECT id FROM doomed)) \
                 DELETE FROM {t} WHERE id IN (SELECT id FROM doomed) RETURNING id"
            ),
        }
    }
}

/// The saga store in one schema of the database behind a pool.
pub struct PgSagas {
    pool: Pool,
    clock: Arc<dyn Clock>,
    sql: Statements,
    timeout: Duration,
}

fn unavailable(e: impl std::error::Error) -> SagaError {
    SagaError::Unavailable(oncely_db::describe(&e))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn read_saga(r: &Row) -> Result<SagaRecord, SagaError> {
    let id: String = r.try_get(0).map_err(unavailable)?;
    let corrupt = |reason: String| SagaError::Corrupt {
        id: id.clone(),
        reason,
    };
    let get = |i: usize| -> Result<i64, SagaError> { r.try_get(i).map_err(unavailable) };
    let text = |i: usize| -> Result<String, SagaError> { r.try_get(i).map_err(unavailable) };
    let phase = phase_from(
        &id,
        &text(3)?,
        r.try_get(4).map_err(unavailable)?,
        r.try_get(6).map_err(unavailable)?,
        r.try_get(16).map_err(unavailable)?,
    )?;
    let outputs: serde_json::Value =
        serde_json::from_str(&text(12)?).map_err(|e| corrupt(format!("outputs: {e}")))?;
    let serde_json::Value::Object(outputs) = outputs else {
        return Err(corrupt("outputs are not an object".into()));
    };
    Ok(SagaRecord {
        kind: text(1)?,
        input: serde_json::from_str(&text(2)?).map_err(|e| corrupt(format!("input: {e}")))?,
        state: SagaState {
            phase,
            attempt: u32::try_from(get(5)?).map_err(|e| corrupt(format!("attempt: {e}")))?,
            started_at: Timestamp(get(8)?),
            step_started_at: Timestamp(get(9)?),
            cancel_requested: r.try_get(10).map_err(unavailable)?,
            failure: r.try_get(7).map_err(unavailable)?,
        },
        outputs,
        due_at: Timestamp(get(13)?),
        cancel_requested: r.try_get(11).map_err(unavailable)?,
        created_at: Timestamp(get(14)?),
        updated_at: Timestamp(get(15)?),
        id,
    })
}

impl PgSagas {
    /// The store in `schema`, created or brought up to date through `pool`.
    pub async fn open(pool: Pool, schema: &str, clock: Arc<dyn Clock>) -> Result<Self, SagaError> {
        oncely_db::postgres::validate_schema(schema)
            .map_err(|e| SagaError::Invalid(format!("schema: {e}")))?;
        oncely_db::postgres::migrate_pooled(&pool, schema, &MIGRATIONS, MIGRATION_TIMEOUT)
            .await
            .map_err(SagaError::Unavailable)?;
        Ok(PgSagas {
            pool,
            clock,
            sql: Statements::new(schema),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Bounds each call by `timeout` instead of 5 s.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Runs `sql`, prepared once per connection, within the bound; the rows it returns.
    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, SagaError> {
        oncely_db::postgres::query_prepared(&self.pool, self.timeout, sql, params)
            .await
            .map_err(SagaError::Unavailable)
    }

    async fn saga(&self, id: &str) -> Result<Option<SagaRecord>, SagaError> {
        self.query(&self.sql.get, &[&id])
            .await?
            .first()
            .map(read_saga)
            .transpose()
    }
}

#[async_trait]
impl SagaStore for PgSagas {
    async fn create(&self, saga: &NewSaga) -> Result<Created, SagaError> {
        validate(saga)?;
        let now = self.clock.now();
        let state = SagaState::start(now);
        let (phase, step, _, _) = phase_columns(&state.phase);
        let input = saga.input.to_string();
        let rows = self
            .query(
                &self.sql.create,
                &[&saga.id, &saga.kind, &input, &phase, &step, &now.0],
            )
            .await?;
        if !rows.is_empty() {
            return Ok(Created::New);
        }
        match self.saga(&saga.id).await? {
            Some(existing) if existing.kind == saga.kind && existing.input == saga.input => {
                Ok(Created::Exists(Box::new(existing)))
            }
            _ => Err(SagaError::Conflict(saga.id.clone())),
        }
    }

    async fn claim_due(
        &self,
        kinds: &[String],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, SagaError> {
        let now = self.clock.now();
        let token = rand::random::<i64>();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(
                &self.sql.claim,
                &[&now.0, &limit, &token, &millis(lease), &kinds],
            )
            .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for r in &rows {
            match read_saga(r) {
                Ok(saga) => claimed.push(Claimed { saga, token }),
                Err(SagaError::Corrupt { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        claimed.sort_by_key(|c| c.saga.due_at);
        Ok(claimed)
    }

    async fn record(
        &self,
        id: &str,
        token: i64,
        t: &Transition,
        lease: Duration,
    ) -> Result<Recorded, SagaError> {
        let now = self.clock.now();
        let (phase, step, reason, undoing) = phase_columns(&t.state.phase);
        let (lease_token, lease_until) = if t.keep_lease && !t.state.phase.is_final() {
            (Some(token), Some(now.0.saturating_add(millis(lease))))
        } else {
            (None, None)
        };
        let (output_step, output) = match &t.output {
            Some((step, value)) => (Some(step.as_str()), Some(value.to_string())),
            None => (None, None),
        };
        let attempt = i64::from(t.state.attempt);
        let log_attempt = i64::from(t.log.attempt);
        let starts_attempt = t.keep_lease && !t.state.phase.is_final();
        let rows = self
            .query(
                &self.sql.record,
                &[
                    &phase,
                    &step,
                    &attempt,
                    &reason,
                    &t.state.failure,
                    &t.state.step_started_at.0,
                    &t.state.cancel_requested,
                    &output_step,
                    &output,
                    &t.due_at.0,
                    &lease_token,
                    &lease_until,
                    &now.0,
                    &id,
                    &token,
                    &t.log.at.0,
                    &t.log.step,
                    &t.log.direction.as_str(),
                    &log_attempt,
                    &t.log.outcome,
                    &undoing,
                    &starts_attempt,
                ],
            )
            .await?;
        Ok(match rows.first() {
            // Refused: by the lease, or by a pending cancel the transition did not take.
            None => {
                let held = self.query(&self.sql.cancel_pending, &[&id, &token]).await?;
                match held.first().map(|r| r.try_get::<_, bool>(0)) {
                    Some(Ok(true)) if starts_attempt && !t.state.cancel_requested => {
                        Recorded::CancelRequested
                    }
                    _ => Recorded::LeaseLost,
                }
            }
            Some(r) => Recorded::Recorded {
                cancel_requested: r.try_get(0).map_err(unavailable)?,
            },
        })
    }

    async fn get(&self, id: &str) -> Result<Option<(SagaRecord, Vec<LogEntry>)>, SagaError> {
        let Some(saga) = self.saga(id).await? else {
            return Ok(None);
        };
        let mut log = Vec::new();
        for r in self.query(&self.sql.log, &[&id]).await? {
            let direction: String = r.try_get(1).map_err(unavailable)?;
            let attempt: i64 = r.try_get(2).map_err(unavailable)?;
            log.push(LogEntry {
                step: r.try_get(0).map_err(unavailable)?,
                direction: direction_from(id, &direction)?,
                attempt: u32::try_from(attempt).unwrap_or(u32::MAX),
                outcome: r.try_get(3).map_err(unavailable)?,
                at: Timestamp(r.try_get(4).map_err(unavailable)?),
            });
        }
        Ok(Some((saga, log)))
    }

    async fn list(&self, phase: Option<&str>, limit: usize) -> Result<Vec<SagaRecord>, SagaError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(&self.sql.list, &[&phase, &limit])
            .await?
            .iter()
            .map(read_saga)
            .collect()
    }

    async fn reopen(&self, id: &str) -> Result<bool, SagaError> {
        let now = self.clock.now();
        Ok(!self
            .query(&self.sql.reopen, &[&now.0, &id])
            .await?
            .is_empty())
    }

    async fn request_cancel(&self, id: &str) -> Result<bool, SagaError> {
        let now = self.clock.now();
        Ok(!self
            .query(&self.sql.cancel, &[&now.0, &id])
            .await?
            .is_empty())
    }

    async fn purge(&self, ended_before: Timestamp, limit: usize) -> Result<u64, SagaError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .query(&self.sql.purge, &[&ended_before.0, &limit])
            .await?;
        Ok(rows.len() as u64)
    }

    async fn stats(&self) -> Result<SagaStats, SagaError> {
        let mut stats = SagaStats::default();
        for r in self.query(&self.sql.stats, &[]).await? {
            let phase: String = r.try_get(0).map_err(unavailable)?;
            let n: i64 = r.try_get(1).map_err(unavailable)?;
            let oldest: Option<i64> = r.try_get(2).map_err(unavailable)?;
            crate::store::count_phase(&mut stats, &phase, n, oldest);
        }
        Ok(stats)
    }
}
