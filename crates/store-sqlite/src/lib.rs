//! The embedded default record store: one SQLite file in WAL mode.
//!
//! # Shape
//!
//! - **Writes** (claim, complete, release, renew, purge) are sent to one dedicated writer
//!   thread that owns the only read-write connection and group-commits them: it takes
//!   everything queued (up to [`SqliteOptions::max_batch`]), applies it inside one
//!   `BEGIN IMMEDIATE` ... `COMMIT`, and answers each caller only once the COMMIT has
//!   succeeded. See `writer.rs` for the failure rules of a batch.
//! - **Reads** (`get`, `stats`) run on a small pool of read-only connections through
//!   `spawn_blocking`; WAL lets them read a committed snapshot beside the writer.
//! - Every transition is a single SQL statement conditioned on the record's state (the
//!   claim is one UPSERT, never a read followed by a write), and the outcome is the one the
//!   pure transitions of `oncely_core::record` would give at the same instant. That is what
//!   makes several processes sharing one file safe: `BEGIN IMMEDIATE` serializes their
//!   batches (a process waits up to [`SqliteOptions::busy_timeout`] for another's), and each
//!   statement re-checks the state it acts on.
//!
//! # Durability
//!
//! With the default `synchronous=NORMAL`, a COMMIT appends to the write-ahead log without
//! waiting for the disk; the log is synced at checkpoints. A process crash or SIGKILL loses
//! nothing committed (the log is in the OS page cache and is replayed on the next open),
//! but a power loss or kernel crash may lose the last transactions before the latest
//! checkpoint: a claim or completion a client already heard about can vanish, so a retry
//! may execute again. The file itself never becomes corrupt either way.
//! `synchronous_full: true` syncs the log at every COMMIT, which closes that window at the
//! cost of one fsync per batch; group commit spreads that fsync over every request of the
//! batch.
//!
//! # Schema
//!
//! Migrations are embedded and applied at [`SqliteStore::open`] through the mechanism every
//! oncely concern shares (`oncely_db::migrate`), tracked in the file's `oncely_migrations`
//! table; a file migrated by a newer build is refused with an error that says so (see
//! `schema.rs`).

#![warn(missing_docs)]

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::{
    ClaimOutcome, Clock, Fingerprint, IdempotencyKey, LeaseToken, Record, RecordKey,
    StoredResponse, Tenant, Timestamp,
};
use oncely_store::{IdempotencyStore, StoreAdmin, StoreError, StoreResult, StoreStats};
use rusqlite::{params, Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot, Semaphore};

mod codec;
mod schema;
mod writer;

use codec::unavailable;
use oncely_core::sync::LockIgnoringPoison;
pub use oncely_db::migrate::MigrationReport;
use writer::{Answer, Command, Op, Writer};

/// More readers than this only multiply file handles: SQLite reads are CPU-bound here.
const MAX_READERS: usize = 64;
/// Bounds one transaction (and the command queue, a few batches long) so that an absurd
/// setting cannot allocate without limit or hold the write lock for long.
const MAX_BATCH: usize = 1 << 16;
/// After a checkpoint the WAL is truncated back to this size, so a burst of writes does not
/// leave a huge log file behind.
const WAL_SIZE_LIMIT: i64 = 64 << 20;

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    /// The database file; created if absent. Its `-wal` and `-shm` companions live beside it.
    pub path: PathBuf,
    /// `synchronous=FULL` instead of `NORMAL`: survive power loss too, at one fsync per
    /// committed batch (see the crate documentation).
    pub synchronous_full: bool,
    /// How long a statement waits for a lock held by another connection (another process
    /// on the same file, or a checkpoint) before the operation fails as unavailable.
    pub busy_timeout: Duration,
    /// Read-only connections serving `get` and `stats` concurrently (clamped to 1..=64).
    pub readers: usize,
    /// The most writes committed in one transaction (clamped to 1..=65536).
    pub max_batch: usize,
}

impl SqliteOptions {
    /// Defaults: `synchronous=NORMAL`, 5 s busy timeout, 4 readers, batches of up to 512.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SqliteOptions {
            path: path.into(),
            synchronous_full: false,
            busy_timeout: Duration::from_secs(5),
            readers: 4,
            max_batch: 512,
        }
    }
}

/// The SQLite record store. Dropping it stops the writer thread after it has committed
/// everything already submitted, and closes the file.
pub struct SqliteStore {
    path: PathBuf,
    clock: Arc<dyn Clock>,
    /// `None` only during drop, so the writer sees the channel close before it is joined.
    commands: Option<mpsc::Sender<Command>>,
    writer: Option<JoinHandle<()>>,
    committed_batches: Arc<AtomicU64>,
    readers: ReaderPool,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("committed_batches", &self.committed_batches())
            .finish_non_exhaustive()
    }
}

/// Applies the embedded migrations to the file `opts` names (creating it if needed) and
/// reports what it did, without starting a store.
pub fn migrate(opts: &SqliteOptions) -> StoreResult<MigrationReport> {
    let mut conn = open_writer(opts)?;
    schema::migrate(&mut conn, &opts.path)
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the file, opens the reader connections and
    /// starts the writer thread. Blocking: call it at startup, not on a hot async path.
    pub fn open(opts: SqliteOptions, clock: Arc<dyn Clock>) -> Result<SqliteStore, StoreError> {
        let mut conn = open_writer(&opts)?;
        schema::migrate(&mut conn, &opts.path)?;

        let readers = opts.readers.clamp(1, MAX_READERS);
        let mut idle = Vec::with_capacity(readers);
        for _ in 0..readers {
            idle.push(open_reader(&opts.path, opts.busy_timeout)?);
        }

        let max_batch = opts.max_batch.clamp(1, MAX_BATCH);
        // Bounded so that a writer that cannot keep up pushes back on callers (they wait in
        // `send`) instead of letting the queue grow without limit; a few batches' worth of
        // slack keeps the next batch filling while one commits.
        let (commands, queue) = mpsc::channel(max_batch.saturating_mul(4));
        let committed_batches = Arc::new(AtomicU64::new(0));
        let writer = Writer {
            conn,
            commands: queue,
            clock: clock.clone(),
            max_batch,
            committed_batches: committed_batches.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("oncely-sqlite-writer".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the SQLite writer thread: {e}"))
            })?;

        Ok(SqliteStore {
            path: opts.path.clone(),
            clock,
            commands: Some(commands),
            writer: Some(handle),
            committed_batches,
            readers: ReaderPool {
                idle: Mutex::new(idle),
                permits: Semaphore::new(readers),
                path: opts.path,
                busy_timeout: opts.busy_timeout,
            },
        })
    }

    /// How many write transactions have committed since open. With group commit this grows
    /// more slowly than the number of writes under concurrency; it is exposed for tests and
    /// metrics.
    pub fn committed_batches(&self) -> u64 {
        self.committed_batches.load(Ordering::Relaxed)
    }

    async fn submit(&self, op: Op) -> StoreResult<Answer> {
        let stopped = || StoreError::Unavailable("the SQLite writer has stopped".to_owned());
        let commands = self.commands.as_ref().ok_or_else(stopped)?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command { op, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        // Closing the channel lets the writer drain and commit what is queued, then exit;
        // joining it means that when drop returns the file is closed, so a restart in the
        // same process (or a test reopening the file) finds every write on disk.
        self.commands = None;
        if let Some(handle) = self.writer.take() {
            if handle.join().is_err() {
                tracing::error!(path = %self.path.display(), "the SQLite writer thread panicked");
            }
        }
    }
}

fn open_error(path: &std::path::Path, e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("cannot open SQLite store {}: {e}", path.display()))
}

fn open_writer(opts: &SqliteOptions) -> StoreResult<Connection> {
    let path = &opts.path;
    let fail = |e| open_error(path, e);
    let conn = oncely_db::sqlite::open(
        path,
        oncely_db::sqlite::OpenOptions {
            busy_timeout: opts.busy_timeout,
            synchronous_full: opts.synchronous_full,
        },
    )
    .map_err(StoreError::Unavailable)?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
        .map_err(fail)?;
    // Room for every distinct statement the writer prepares, so none is ever re-parsed.
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

fn open_reader(path: &std::path::Path, busy_timeout: Duration) -> StoreResult<Connection> {
    let fail = |e| open_error(path, e);
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags).map_err(fail)?;
    // WAL readers rarely wait, but they can while a checkpoint or recovery holds the index.
    conn.busy_timeout(busy_timeout).map_err(fail)?;
    Ok(conn)
}

/// Read-only connections lent to blocking tasks. The semaphore bounds concurrent reads to
/// the pool size; a connection lost to a cancelled or panicked task is reopened lazily.
struct ReaderPool {
    idle: Mutex<Vec<Connection>>,
    permits: Semaphore,
    path: PathBuf,
    busy_timeout: Duration,
}

impl ReaderPool {
    fn idle(&self) -> MutexGuard<'_, Vec<Connection>> {
        // The list is only pushed to and popped from; a panic elsewhere cannot leave it
        // half-updated, so a poisoned lock is still usable.
        self.idle.lock_ignoring_poison()
    }

    async fn run<T, F>(&self, f: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> StoreResult<T> + Send + 'static,
    {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("the SQLite reader pool is closed".into()))?;
        let lent = self.idle().pop();
        let (path, busy_timeout) = (self.path.clone(), self.busy_timeout);
        let joined = tokio::task::spawn_blocking(move || {
            let conn = match lent {
                Some(conn) => conn,
                None => open_reader(&path, busy_timeout)?,
            };
            let result = f(&conn);
            Ok::<_, StoreError>((conn, result))
        })
        .await;
        match joined {
            Ok(Ok((conn, result))) => {
                self.idle().push(conn);
                result
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(StoreError::Unavailable(format!(
                "an SQLite read task failed: {e}"
            ))),
        }
    }
}

#[async_trait]
impl IdempotencyStore for SqliteStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
        ttl: Duration,
    ) -> StoreResult<ClaimOutcome> {
        let op = Op::Claim {
            key: key.clone(),
            fingerprint,
            lease,
            ttl,
            token: LeaseToken::random(),
        };
        match self.submit(op).await? {
            Answer::Claimed(outcome) => Ok(outcome),
            other => Err(mismatch("claim", &other)),
        }
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> StoreResult<()> {
        let op = Op::Complete {
            key: key.clone(),
            token,
            response,
            ttl,
        };
        match self.submit(op).await? {
            Answer::Done => Ok(()),
            other => Err(mismatch("complete", &other)),
        }
    }

    async fn release(&self, key: &RecordKey, token: LeaseToken) -> StoreResult<()> {
        let op = Op::Release {
            key: key.clone(),
            token,
        };
        match self.submit(op).await? {
            Answer::Done => Ok(()),
            other => Err(mismatch("release", &other)),
        }
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        lease: Duration,
    ) -> StoreResult<Timestamp> {
        let op = Op::Renew {
            key: key.clone(),
            token,
            lease,
        };
        match self.submit(op).await? {
            Answer::Renewed(until) => Ok(until),
            other => Err(mismatch("renew", &other)),
        }
    }

    async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
        let now = self.clock.now();
        let key = key.clone();
        self.readers
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(GET_SQL).map_err(unavailable)?;
                let mut rows = stmt
                    .query(params![
                        key.scope.tenant.as_str(),
                        key.scope.method,
                        key.scope.route,
                        key.key.as_str(),
                        now.0,
                    ])
                    .map_err(unavailable)?;
                match rows.next().map_err(unavailable)? {
                    Some(row) => codec::record_from_row(row, &key).map(Some),
                    None => Ok(None),
                }
            })
            .await
    }
}

#[async_trait]
impl StoreAdmin for SqliteStore {
    async fn purge_expired(&self, batch: usize) -> StoreResult<u64> {
        match self.submit(Op::Purge { batch }).await? {
            Answer::Purged(n) => Ok(n),
            other => Err(mismatch("purge", &other)),
        }
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let now = self.clock.now();
        self.readers
            .run(move |conn| {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT COALESCE(SUM(state = 0), 0), COALESCE(SUM(state = 1), 0)
                         FROM idempotency_records WHERE expires_at > ?1",
                    )
                    .map_err(unavailable)?;
                let (in_progress, completed): (i64, i64) = stmt
                    .query_row(params![now.0], |r| Ok((r.get(0)?, r.get(1)?)))
                    .map_err(unavailable)?;
                Ok(StoreStats {
                    in_progress: u64::try_from(in_progress).unwrap_or(0),
                    completed: u64::try_from(completed).unwrap_or(0),
                })
            })
            .await
    }

    async fn evict(&self, key: &RecordKey) -> StoreResult<bool> {
        match self.submit(Op::Evict { key: key.clone() }).await? {
            Answer::Evicted(live) => Ok(live),
            other => Err(mismatch("evict", &other)),
        }
    }

    async fn list_in_progress(&self, limit: usize) -> StoreResult<Vec<(RecordKey, Record)>> {
        let now = self.clock.now();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.readers
            .run(move |conn| {
                let mut stmt = conn.prepare_cached(LIST_SQL).map_err(unavailable)?;
                let mut rows = stmt.query(params![now.0, limit]).map_err(unavailable)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(unavailable)? {
                    let text = |i: usize| -> StoreResult<String> {
                        row.get(i)
                            .map_err(|_| StoreError::Corrupt(format!("key column {i} is not text")))
                    };
                    let key = IdempotencyKey::new(&text(12)?)
                        .map_err(|e| StoreError::Corrupt(format!("stored key: {e}")))?;
                    let key =
                        RecordKey::new(Tenant::from_stored(text(9)?), &text(10)?, &text(11)?, key);
                    let record = codec::record_from_row(row, &key)?;
                    out.push((key, record));
                }
                Ok(out)
            })
            .await
    }
}

/// Live in-progress records with their keys, oldest claim first (a scan: admin use only).
const LIST_SQL: &str = concat!(
    "SELECT ",
    codec::record_columns!(),
    ", tenant, method, route, idem_key FROM idempotency_records
     WHERE state = 0 AND expires_at > ?1 ORDER BY created_at, id LIMIT ?2"
);

/// The live record of a key; an expired one is absent even before purge removes it.
const GET_SQL: &str = concat!(
    "SELECT ",
    codec::record_columns!(),
    " FROM idempotency_records
     WHERE tenant = ?1 AND method = ?2 AND route = ?3 AND idem_key = ?4 AND expires_at > ?5"
);

/// The writer answered an op with another op's kind of answer: a bug, reported rather than
/// panicked on.
fn mismatch(op: &str, answer: &Answer) -> StoreError {
    StoreError::Unavailable(format!(
        "internal error: the SQLite writer answered {op} with {answer:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let o = SqliteOptions::new("/tmp/x.db");
        assert_eq!(o.path, PathBuf::from("/tmp/x.db"));
        assert!(!o.synchronous_full);
        assert_eq!(o.busy_timeout, Duration::from_secs(5));
        assert_eq!((o.readers, o.max_batch), (4, 512));
    }

    #[test]
    fn the_writer_connection_is_wal_with_the_chosen_sync_level() {
        let dir = tempfile::tempdir().unwrap();
        for (full, want) in [(false, 1), (true, 2)] {
            let mut o = SqliteOptions::new(dir.path().join(format!("s{want}.db")));
            o.synchronous_full = full;
            let conn = open_writer(&o).unwrap();
            let mode: String = conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            let sync: i64 = conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            assert_eq!((mode.as_str(), sync), ("wal", want));
        }
    }

    #[test]
    fn an_in_memory_path_is_refused_rather_than_run_without_wal() {
        let err = SqliteStore::open(
            SqliteOptions::new(":memory:"),
            Arc::new(oncely_core::SystemClock),
        )
        .unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m.contains("WAL")),
            "{err:?}"
        );
    }

    #[test]
    fn migrations_are_idempotent_and_stamp_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.db");
        for _ in 0..2 {
            let mut conn = open_writer(&SqliteOptions::new(&path)).unwrap();
            schema::migrate(&mut conn, &path).unwrap();
            let v: u32 = conn
                .query_row(
                    "SELECT max(version) FROM oncely_migrations WHERE concern = ?1",
                    [schema::MIGRATIONS.concern],
                    |r| r.get(0),
                )
                .unwrap();
            let app: i64 = conn
                .pragma_query_value(None, "application_id", |r| r.get(0))
                .unwrap();
            assert_eq!(
                (v, app),
                (schema::MIGRATIONS.latest(), schema::APPLICATION_ID)
            );
        }
    }

    #[test]
    fn purge_walks_the_expiry_index_and_lookups_the_primary_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let mut conn = open_writer(&SqliteOptions::new(&path)).unwrap();
        schema::migrate(&mut conn, &path).unwrap();
        let plan = |sql: &str| -> String {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            // The plan does not depend on the values; NULLs satisfy the parameter count.
            let nulls = vec![rusqlite::types::Null; stmt.parameter_count()];
            let rows = stmt
                .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            rows.join("\n")
        };
        let purge = plan(writer::PURGE_SQL);
        assert!(purge.contains("idempotency_records_expires_at"), "{purge}");
        let get = plan(GET_SQL);
        assert!(
            get.contains("sqlite_autoindex_idempotency_records_1"),
            "{get}"
        );
        assert!(!get.contains("SCAN"), "{get}");
    }
}
