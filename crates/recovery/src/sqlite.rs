//! Recovery points in SQLite: the operations table lives in the application's own database
//! file, and each atomic phase gets a `rusqlite::Transaction` on it.
//!
//! Every transaction is `BEGIN IMMEDIATE`, so it holds the file's write lock from its first
//! statement: two runs of one operation (in one process or several on the same file) never
//! interleave inside a phase, and the second one sees the point the first committed.

use oncely_db::migrate::{Migration, MigrationReport, Migrations};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::journal::{
    committed, judge_locked, response_columns, response_from_columns, settle, Advance, Decide,
    Journal, JournalError, Locked, NewOperation, OperationRow, Work,
};
use crate::operation::{OpState, Operation, PhaseError};
use crate::plan::Flow;
use oncely_core::sync::LockIgnoringPoison;

/// An atomic phase on SQLite: the application's work inside the phase's transaction. It
/// runs on a blocking thread, so plain synchronous `rusqlite` calls are right here.
pub type SqlitePhase<S> = Arc<
    dyn Fn(&rusqlite::Transaction<'_>, &mut S) -> Result<Flow, PhaseError> + Send + Sync + 'static,
>;

/// The journal on one SQLite file (created if absent, WAL mode).
pub struct SqliteJournal {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// The journal's history. Step 1 creates only what is absent, so files created before the
/// shared migration table adopt it.
const MIGRATIONS: Migrations = Migrations {
    concern: "recovery journal",
    steps: &[Migration {
        version: 1,
        description: "the operations table and its indexes",
        sql: SCHEMA_V1,
    }],
};

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS oncely_operations (
    id              TEXT PRIMARY KEY,
    operation       TEXT NOT NULL,
    input_digest    TEXT NOT NULL,
    point           TEXT NOT NULL,
    state           TEXT NOT NULL,
    response_status INTEGER,
    response_headers BLOB,
    response_body   BLOB,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS oncely_operations_unfinished
    ON oncely_operations (updated_at) WHERE point <> 'finished';
CREATE INDEX IF NOT EXISTS oncely_operations_finished
    ON oncely_operations (updated_at) WHERE point = 'finished';
";

const COLUMNS: &str = "id, operation, input_digest, point, state, response_status, \
                       response_headers, response_body, created_at, updated_at";

impl SqliteJournal {
    /// Opens (or creates) the database at `path` and its operations table. `busy_timeout`
    /// bounds how long a phase waits for another writer of the file.
    pub fn open(path: impl AsRef<Path>, busy_timeout: Duration) -> Result<Self, JournalError> {
        let path = path.as_ref().to_path_buf();
        // A phase reported committed survives a crash of the process (WAL + NORMAL); FULL
        // would also survive power loss at an fsync per commit.
        let mut conn =
            oncely_db::sqlite::open(&path, oncely_db::sqlite::OpenOptions::new(busy_timeout))
                .map_err(JournalError::Unavailable)?;
        oncely_db::sqlite::migrate(&mut conn, &MIGRATIONS)
            .map_err(|e| JournalError::Unavailable(e.to_string()))?;
        Ok(SqliteJournal {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The database file the journal was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` on the journal's connection on a blocking thread: for the application's own
    /// reads, or for setting up its tables.
    pub async fn with_connection<T, F>(&self, f: F) -> Result<T, JournalError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let conn = self.conn.clone();
        blocking(move || {
            let mut guard = lock(&conn)?;
            f(&mut guard).map_err(unavailable)
        })
        .await
    }
}

impl<S: OpState> Operation<SqliteJournal, S> {
    /// Adds an atomic phase: `work` runs inside the transaction that also moves the recovery
    /// point, so either both commit or neither does.
    pub fn atomic<F>(self, name: impl Into<String>, work: F) -> Self
    where
        F: Fn(&rusqlite::Transaction<'_>, &mut S) -> Result<Flow, PhaseError>
            + Send
            + Sync
            + 'static,
    {
        let phase: SqlitePhase<S> = Arc::new(work);
        self.atomic_phase(name, phase)
    }
}

fn unavailable(e: impl std::fmt::Display) -> JournalError {
    JournalError::Unavailable(e.to_string())
}

fn lock(conn: &Mutex<Connection>) -> Result<std::sync::MutexGuard<'_, Connection>, JournalError> {
    // A phase that panicked poisoned the mutex; its transaction was rolled back when it
    // unwound, so the connection itself is fine to use.
    Ok(conn.lock_ignoring_poison())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, JournalError> + Send + 'static,
) -> Result<T, JournalError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| JournalError::Unavailable(format!("journal thread: {e}")))?
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<OperationRow, JournalError>> {
    let id: String = r.get(0)?;
    let point: String = r.get(3)?;
    let response = match response_from_columns(&id, &point, r.get(5)?, r.get(6)?, r.get(7)?) {
        Ok(response) => response,
        Err(e) => return Ok(Err(e)),
    };
    Ok(Ok(OperationRow {
        id,
        operation: r.get(1)?,
        input_digest: r.get(2)?,
        point,
        state: r.get(4)?,
        response,
        created_at: Timestamp(r.get(8)?),
        updated_at: Timestamp(r.get(9)?),
    }))
}

fn load(conn: &Connection, id: &str) -> Result<Option<OperationRow>, JournalError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM oncely_operations WHERE id = ?1"),
        params![id],
        read_row,
    )
    .optional()
    .map_err(unavailable)?
    .transpose()
}

#[async_trait]
impl Journal for SqliteJournal {
    type Phase<S: OpState> = SqlitePhase<S>;

    async fn migrate(&self) -> Result<MigrationReport, JournalError> {
        let conn = self.conn.clone();
        blocking(move || {
            oncely_db::sqlite::migrate(&mut *lock(&conn)?, &MIGRATIONS)
                .map_err(|e| JournalError::Unavailable(e.to_string()))
        })
        .await
    }

    async fn begin(&self, new: NewOperation) -> Result<OperationRow, JournalError> {
        let conn = self.conn.clone();
        blocking(move || {
            let conn = lock(&conn)?;
            conn.execute(
                "INSERT INTO oncely_operations (id, operation, input_digest, point, state, \
                 created_at, updated_at) VALUES (?1, ?2, ?3, 'started', ?4, ?5, ?5) \
                 ON CONFLICT (id) DO NOTHING",
                params![
                    new.id,
                    new.operation,
                    new.input_digest,
                    new.state,
                    new.now.0
                ],
            )
            .map_err(unavailable)?;
            load(&conn, &new.id)?
                .ok_or_else(|| JournalError::Corrupt(format!("{}: inserted but not found", new.id)))
        })
        .await
    }

    async fn load(&self, id: &str) -> Result<Option<OperationRow>, JournalError> {
        let conn = self.conn.clone();
        let id = id.to_owned();
        blocking(move || load(&*lock(&conn)?, &id)).await
    }

    async fn advance<S: OpState>(
        &self,
        row: &OperationRow,
        create: bool,
        work: Work<SqlitePhase<S>>,
        state: S,
        decide: Decide,
        now: Timestamp,
    ) -> Result<Advance, JournalError> {
        let conn = self.conn.clone();
        let row = row.clone();
        blocking(move || {
            let mut state = state;
            let mut conn = lock(&conn)?;
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            // Cached statements: a phase costs no statement compilation after the first.
            if create {
                tx.prepare_cached(
                    "INSERT INTO oncely_operations (id, operation, input_digest, point, state, \
                     created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6) \
                     ON CONFLICT (id) DO NOTHING",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        row.id,
                        row.operation,
                        row.input_digest,
                        row.point,
                        row.state,
                        row.created_at.0
                    ])
                })
                .map_err(unavailable)?;
            }
            let locked = tx
                .prepare_cached(
                    "SELECT point, operation, input_digest FROM oncely_operations WHERE id = ?1",
                )
                .and_then(|mut st| {
                    st.query_row(params![row.id], |r| {
                        Ok(Locked {
                            point: r.get(0)?,
                            operation: r.get(1)?,
                            input_digest: r.get(2)?,
                        })
                    })
                    .optional()
                })
                .map_err(unavailable)?;
            if let Some(answer) = judge_locked(&row, locked) {
                return Ok(answer);
            }
            let flow = match work {
                Work::Atomic(phase) => match phase(&tx, &mut state) {
                    Ok(flow) => flow,
                    // Dropping `tx` rolls the phase's work back.
                    Err(e) => return Ok(Advance::Failed(e)),
                },
                Work::Record(flow) => flow,
            };
            let (commit, state) = match settle(&row, decide, flow, &state)? {
                Ok(ready) => ready,
                Err(answer) => return Ok(answer),
            };
            let (status, headers, body) = response_columns(&commit.response);
            let updated = tx
                .prepare_cached(
                    "UPDATE oncely_operations SET point = ?1, state = ?2, response_status = ?3, \
                     response_headers = ?4, response_body = ?5, updated_at = ?6 \
                     WHERE id = ?7 AND point = ?8",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        commit.point,
                        state,
                        status,
                        headers,
                        body,
                        now.0,
                        row.id,
                        row.point
                    ])
                })
                .map_err(unavailable)?;
            if updated != 1 {
                return Ok(Advance::Conflict);
            }
            tx.commit().map_err(unavailable)?;
            Ok(committed(&row, commit, state, now))
        })
        .await
    }

    async fn abandoned(
        &self,
        idle_since: Timestamp,
        limit: usize,
    ) -> Result<Vec<OperationRow>, JournalError> {
        let conn = self.conn.clone();
        blocking(move || {
            let conn = lock(&conn)?;
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM oncely_operations \
                     WHERE point <> 'finished' AND updated_at < ?1 ORDER BY updated_at LIMIT ?2"
                ))
                .map_err(unavailable)?;
            let rows = stmt
                .query_map(
                    params![idle_since.0, i64::try_from(limit).unwrap_or(i64::MAX)],
                    read_row,
                )
                .map_err(unavailable)?;
            let mut out = Vec::new();
            for r in rows {
                out.push(r.map_err(unavailable)??);
            }
            Ok(out)
        })
        .await
    }

    async fn touch(&self, id: &str, point: &str, now: Timestamp) -> Result<(), JournalError> {
        let conn = self.conn.clone();
        let (id, point) = (id.to_owned(), point.to_owned());
        blocking(move || {
            lock(&conn)?
                .execute(
                    "UPDATE oncely_operations SET updated_at = ?1 \
                     WHERE id = ?2 AND point = ?3 AND point <> 'finished'",
                    params![now.0, id, point],
                )
                .map_err(unavailable)?;
            Ok(())
        })
        .await
    }

    async fn reap(&self, before: Timestamp, limit: usize) -> Result<u64, JournalError> {
        let conn = self.conn.clone();
        blocking(move || {
            let conn = lock(&conn)?;
            let n = conn
                .execute(
                    "DELETE FROM oncely_operations WHERE id IN (SELECT id FROM oncely_operations \
                     WHERE point = 'finished' AND updated_at < ?1 LIMIT ?2)",
                    params![before.0, i64::try_from(limit).unwrap_or(i64::MAX)],
                )
                .map_err(unavailable)?;
            Ok(n as u64)
        })
        .await
    }
}
