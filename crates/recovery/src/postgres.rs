//! Recovery points in PostgreSQL: the operations table lives in a schema of the
//! application's own database, and each atomic phase gets a `tokio_postgres::Transaction`
//! from the application's own pool.
//!
//! A phase's transaction first locks the operation's row (`SELECT ... FOR UPDATE`) and checks
//! its point: a concurrent run of the same operation waits there until the first commits,
//! then sees the new point and backs off, so phases never interleave and commit once.

use oncely_db::migrate::{Migration, MigrationReport, Migrations};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use oncely_core::Timestamp;

use crate::journal::{
    committed, judge_locked, response_columns, response_from_columns, settle, Advance, Decide,
    Journal, JournalError, Locked, NewOperation, OperationRow, Work,
};
use crate::operation::{BoxFuture, OpState, Operation, PhaseError};
use crate::plan::Flow;

/// The transaction an atomic phase gets: a `tokio_postgres::Transaction` (by `Deref`) that
/// also offers `prepare_cached`, the pool connection's statement cache.
pub type PgTransaction<'t> = deadpool_postgres::Transaction<'t>;

/// An atomic phase on PostgreSQL: the application's work inside the phase's transaction.
pub type PgPhase<S> = Arc<
    dyn for<'t> Fn(&'t PgTransaction<'t>, &'t mut S) -> BoxFuture<'t, Result<Flow, PhaseError>>
        + Send
        + Sync
        + 'static,
>;

/// The journal's history, `{schema}` the quoted schema. Step 1 creates only what is absent,
/// so journals created before the shared migration table adopt it.
const MIGRATIONS: Migrations = Migrations {
    concern: "recovery journal",
    steps: &[Migration {
        version: 1,
        description: "the operations table and its indexes",
        sql: "CREATE TABLE IF NOT EXISTS {schema}.operations (
                id               text PRIMARY KEY,
                operation        text NOT NULL,
                input_digest     text NOT NULL,
                point            text NOT NULL,
                state            text NOT NULL,
                response_status  int4,
                response_headers bytea,
                response_body    bytea,
                created_at       int8 NOT NULL,
                updated_at       int8 NOT NULL
             );
             CREATE INDEX IF NOT EXISTS operations_unfinished ON {schema}.operations (updated_at)
                WHERE point <> 'finished';
             CREATE INDEX IF NOT EXISTS operations_finished ON {schema}.operations (updated_at)
                WHERE point = 'finished';",
    }],
};

/// The journal in schema `schema` of the database behind `pool`.
pub struct PgJournal {
    pool: Pool,
    table: String,
    schema: String,
    timeout: Duration,
    sql: Statements,
}

/// The statements of every phase, built once (the table name is in them) and prepared once
/// per pooled connection (`prepare_cached`): a phase then costs no parse round trips.
struct Statements {
    create_and_lock: String,
    lock: String,
    update: String,
}

impl Statements {
    fn new(t: &str) -> Self {
        Statements {
            // Inserts the row or, if a run got there first, locks the existing one (`DO
            // UPDATE` takes the row lock, `DO NOTHING` would not).
            create_and_lock: format!(
                "INSERT INTO {t} (id, operation, input_digest, point, state, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6) \
                 ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id \
                 RETURNING point, operation, input_digest"
            ),
            lock: format!(
                "SELECT point, operation, input_digest FROM {t} WHERE id = $1 FOR UPDATE"
            ),
            update: format!(
                "UPDATE {t} SET point = $1, state = $2, response_status = $3, \
                 response_headers = $4, response_body = $5, updated_at = $6 \
                 WHERE id = $7 AND point = $8"
            ),
        }
    }
}

impl PgJournal {
    /// Uses the application's pool; the table is `"{schema}".operations`. `timeout` bounds
    /// every journal statement and phase transaction (an absent database is an error, never
    /// a hang).
    pub fn new(pool: Pool, schema: &str, timeout: Duration) -> Result<Self, JournalError> {
        oncely_db::postgres::validate_schema(schema)
            .map_err(|e| JournalError::Invalid(format!("schema: {e}")))?;
        let table = format!("\"{schema}\".operations");
        Ok(PgJournal {
            pool,
            sql: Statements::new(&table),
            table,
            schema: schema.to_owned(),
            timeout,
        })
    }

    /// The pool the journal's statements and phase transactions take connections from (the
    /// application's own, given to [`PgJournal::new`]).
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The schema holding the operations table (applications may keep their tables there).
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, JournalError> {
        self.bounded(async { self.pool.get().await.map_err(unavailable) })
            .await
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, JournalError>>,
    ) -> Result<T, JournalError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r,
            Err(_) => Err(JournalError::Unavailable(format!(
                "no answer from PostgreSQL within {:?}",
                self.timeout
            ))),
        }
    }
}

impl<S: OpState> Operation<PgJournal, S> {
    /// Adds an atomic phase: `work` runs inside the transaction that also moves the recovery
    /// point, so either both commit or neither does. Write it as
    /// `|tx, state| Box::pin(async move { ... })`.
    pub fn atomic<F>(self, name: impl Into<String>, work: F) -> Self
    where
        F: for<'t> Fn(&'t PgTransaction<'t>, &'t mut S) -> BoxFuture<'t, Result<Flow, PhaseError>>
            + Send
            + Sync
            + 'static,
    {
        let phase: PgPhase<S> = Arc::new(work);
        self.atomic_phase(name, phase)
    }
}

fn unavailable(e: impl std::fmt::Display) -> JournalError {
    JournalError::Unavailable(e.to_string())
}

fn columns() -> &'static str {
    "id, operation, input_digest, point, state, response_status, response_headers, \
     response_body, created_at, updated_at"
}

fn read_row(r: &tokio_postgres::Row) -> Result<OperationRow, JournalError> {
    let get = |e: tokio_postgres::Error| JournalError::Corrupt(e.to_string());
    let id: String = r.try_get(0).map_err(get)?;
    let point: String = r.try_get(3).map_err(get)?;
    let status: Option<i32> = r.try_get(5).map_err(get)?;
    let response = response_from_columns(
        &id,
        &point,
        status.map(i64::from),
        r.try_get(6).map_err(get)?,
        r.try_get(7).map_err(get)?,
    )?;
    Ok(OperationRow {
        id,
        operation: r.try_get(1).map_err(get)?,
        input_digest: r.try_get(2).map_err(get)?,
        point,
        state: r.try_get(4).map_err(get)?,
        response,
        created_at: Timestamp(r.try_get(8).map_err(get)?),
        updated_at: Timestamp(r.try_get(9).map_err(get)?),
    })
}

#[async_trait]
impl Journal for PgJournal {
    type Phase<S: OpState> = PgPhase<S>;

    async fn migrate(&self) -> Result<MigrationReport, JournalError> {
        let mut client = self.client().await?;
        self.bounded(async {
            oncely_db::postgres::migrate(&mut client, &self.schema, &MIGRATIONS)
                .await
                .map_err(|e| JournalError::Unavailable(e.to_string()))
        })
        .await
    }

    async fn begin(&self, new: NewOperation) -> Result<OperationRow, JournalError> {
        let client = self.client().await?;
        let t = &self.table;
        self.bounded(async {
            // Inserted, or the row that was there; one statement either way.
            let sql = format!(
                "WITH ins AS (
                    INSERT INTO {t} (id, operation, input_digest, point, state, created_at, updated_at)
                    VALUES ($1, $2, $3, 'started', $4, $5, $5)
                    ON CONFLICT (id) DO NOTHING RETURNING {c})
                 SELECT {c} FROM ins UNION ALL SELECT {c} FROM {t} WHERE id = $1
                 LIMIT 1",
                c = columns()
            );
            let rows = client
                .query(
                    &sql,
                    &[&new.id, &new.operation, &new.input_digest, &new.state, &new.now.0],
                )
                .await
                .map_err(unavailable)?;
            match rows.first() {
                Some(r) => read_row(r),
                // The conflicting row was inserted by a transaction this statement's snapshot
                // does not see yet; a plain read after it does.
                None => {
                    let sql = format!("SELECT {} FROM {t} WHERE id = $1", columns());
                    let row = client.query_opt(&sql, &[&new.id]).await.map_err(unavailable)?;
                    row.as_ref().map(read_row).transpose()?.ok_or_else(|| {
                        JournalError::Unavailable(format!("{}: row not visible yet", new.id))
                    })
                }
            }
        })
        .await
    }

    async fn load(&self, id: &str) -> Result<Option<OperationRow>, JournalError> {
        let client = self.client().await?;
        let sql = format!("SELECT {} FROM {} WHERE id = $1", columns(), self.table);
        self.bounded(async {
            let row = client.query_opt(&sql, &[&id]).await.map_err(unavailable)?;
            row.as_ref().map(read_row).transpose()
        })
        .await
    }

    async fn advance<S: OpState>(
        &self,
        row: &OperationRow,
        create: bool,
        work: Work<PgPhase<S>>,
        state: S,
        decide: Decide,
        now: Timestamp,
    ) -> Result<Advance, JournalError> {
        let mut client = self.client().await?;
        self.bounded(async {
            let mut state = state;
            let tx = client.transaction().await.map_err(unavailable)?;
            let found = if create {
                let stmt = tx
                    .prepare_cached(&self.sql.create_and_lock)
                    .await
                    .map_err(unavailable)?;
                tx.query_opt(
                    &stmt,
                    &[
                        &row.id,
                        &row.operation,
                        &row.input_digest,
                        &row.point,
                        &row.state,
                        &row.created_at.0,
                    ],
                )
                .await
            } else {
                let stmt = tx
                    .prepare_cached(&self.sql.lock)
                    .await
                    .map_err(unavailable)?;
                tx.query_opt(&stmt, &[&row.id]).await
            }
            .map_err(unavailable)?;
            let locked = found
                .map(|r| {
                    Ok::<_, tokio_postgres::Error>(Locked {
                        point: r.try_get(0)?,
                        operation: r.try_get(1)?,
                        input_digest: r.try_get(2)?,
                    })
                })
                .transpose()
                .map_err(|e| JournalError::Corrupt(e.to_string()))?;
            if let Some(answer) = judge_locked(row, locked) {
                return Ok(answer);
            }
            let flow = match work {
                Work::Atomic(phase) => match phase(&tx, &mut state).await {
                    Ok(flow) => flow,
                    // Dropping `tx` rolls the phase's work back.
                    Err(e) => return Ok(Advance::Failed(e)),
                },
                Work::Record(flow) => flow,
            };
            let (commit, encoded) = match settle(row, decide, flow, &state)? {
                Ok(ready) => ready,
                Err(answer) => return Ok(answer),
            };
            let (status, headers, body) = response_columns(&commit.response);
            let status = status.map(i32::from);
            let update = tx
                .prepare_cached(&self.sql.update)
                .await
                .map_err(unavailable)?;
            let updated = tx
                .execute(
                    &update,
                    &[
                        &commit.point,
                        &encoded,
                        &status,
                        &headers,
                        &body,
                        &now.0,
                        &row.id,
                        &row.point,
                    ],
                )
                .await
                .map_err(unavailable)?;
            if updated != 1 {
                return Ok(Advance::Conflict);
            }
            tx.commit().await.map_err(unavailable)?;
            Ok(committed(row, commit, encoded, now))
        })
        .await
    }

    async fn abandoned(
        &self,
        idle_since: Timestamp,
        limit: usize,
    ) -> Result<Vec<OperationRow>, JournalError> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {} FROM {} WHERE point <> 'finished' AND updated_at < $1 \
             ORDER BY updated_at LIMIT $2",
            columns(),
            self.table
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async {
            let rows = client
                .query(&sql, &[&idle_since.0, &limit])
                .await
                .map_err(unavailable)?;
            rows.iter().map(read_row).collect()
        })
        .await
    }

    async fn touch(&self, id: &str, point: &str, now: Timestamp) -> Result<(), JournalError> {
        let client = self.client().await?;
        let sql = format!(
            "UPDATE {} SET updated_at = $1 WHERE id = $2 AND point = $3 AND point <> 'finished'",
            self.table
        );
        self.bounded(async {
            client
                .execute(&sql, &[&now.0, &id, &point])
                .await
                .map(|_| ())
                .map_err(unavailable)
        })
        .await
    }

    async fn reap(&self, before: Timestamp, limit: usize) -> Result<u64, JournalError> {
        let client = self.client().await?;
        let t = &self.table;
        let sql = format!(
            "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE point = 'finished' \
             AND updated_at < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
        );
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.bounded(async {
            client
                .execute(&sql, &[&before.0, &limit])
                .await
                .map_err(unavailable)
        })
        .await
    }
}

/// A pool for `url` (a plain `postgres://` URL), sized `size`, every wait bounded by
/// `timeout`: a convenience for applications that have none yet.
pub fn pool(url: &str, size: usize, timeout: Duration) -> Result<Pool, JournalError> {
    let opts = oncely_db::postgres::PgOptions {
        pool_size: size.max(1),
        timeout,
        ..oncely_db::postgres::PgOptions::new(url)
    };
    oncely_db::postgres::pool(&opts).map_err(JournalError::Unavailable)
}
