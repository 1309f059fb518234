//! SQLite: the one way every oncely concern opens its file.
//!
//! Write-ahead logging, so readers never block the writer nor the writer the readers, and a
//! busy timeout set before anything else, since switching to WAL (and migrating) may have to
//! wait for another process opening the same file. `synchronous=NORMAL` by default: a commit
//! survives a crash of the process; `FULL` also survives power loss, at an fsync per commit.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use crate::migrate::{MigrationError, MigrationReport, Migrations};

/// How a file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// How long a write waits for another process holding the file's write lock.
    pub busy_timeout: Duration,
    /// `synchronous=FULL` instead of `NORMAL`.
    pub synchronous_full: bool,
}

impl OpenOptions {
    /// `synchronous=NORMAL` with this busy timeout.
    pub fn new(busy_timeout: Duration) -> OpenOptions {
        OpenOptions {
            busy_timeout,
            synchronous_full: false,
        }
    }
}

/// Opens (or creates) the file at `path` for reading and writing, in WAL mode. The error is
/// one line naming the file.
pub fn open(path: &Path, opts: OpenOptions) -> Result<Connection, String> {
    let fail = |e: rusqlite::Error| format!("cannot open SQLite file {}: {e}", path.display());
    let conn = Connection::open(path).map_err(fail)?;
    conn.busy_timeout(opts.busy_timeout).map_err(fail)?;
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(fail)?;
    if !mode.eq_ignore_ascii_case("wal") {
        // Without WAL the readers would block the writer and vice versa; an in-memory path
        // or a filesystem without shared memory ends up here.
        return Err(format!(
            "cannot open SQLite file {}: WAL journal mode is required, got {mode}",
            path.display()
        ));
    }
    let sync = if opts.synchronous_full {
        "FULL"
    } else {
        "NORMAL"
    };
    conn.pragma_update(None, "synchronous", sync)
        .map_err(fail)?;
    Ok(conn)
}

/// Brings `migrations` up to date in the file behind `conn` and reports what it did.
///
/// A file already current is only read. Otherwise one `BEGIN IMMEDIATE` transaction creates
/// the bookkeeping table `oncely_migrations` if needed, re-reads the version, applies the
/// pending steps and records them: two processes opening a new file at once serialize on the
/// write lock (the busy timeout), and the second finds nothing to do.
pub fn migrate(
    conn: &mut Connection,
    migrations: &Migrations,
) -> Result<MigrationReport, MigrationError> {
    let concern = migrations.concern;
    let db = |e: rusqlite::Error| MigrationError::database(concern, &e);
    let exists: bool = conn
        .query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'oncely_migrations')",
            [],
            |r| r.get(0),
        )
        .map_err(db)?;
    if exists {
        let from = applied_version(conn, concern)?;
        if migrations.pending(from)?.is_empty() {
            return Ok(migrations.report(from, &[]));
        }
    }
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(db)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS oncely_migrations (
             concern     TEXT    NOT NULL,
             version     INTEGER NOT NULL,
             description TEXT    NOT NULL,
             applied_at  INTEGER NOT NULL,
             PRIMARY KEY (concern, version)
         )",
    )
    .map_err(db)?;
    let from = applied_version(&tx, concern)?;
    let pending = migrations.pending(from)?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    for step in pending {
        tx.execute_batch(step.sql)
            .map_err(|e| MigrationError::failed(step, concern, &e))?;
        tx.execute(
            "INSERT INTO oncely_migrations (concern, version, description, applied_at) \
             VALUES (?1, ?2, ?3, ?4)",
            rusqlite::params![concern, step.version, step.description, now_ms],
        )
        .map_err(db)?;
    }
    tx.commit().map_err(db)?;
    Ok(migrations.report(from, pending))
}

fn applied_version(conn: &Connection, concern: &'static str) -> Result<u32, MigrationError> {
    let version: i64 = conn
        .query_row(
            "SELECT COALESCE(max(version), 0) FROM oncely_migrations WHERE concern = ?1",
            [concern],
            |r| r.get(0),
        )
        .map_err(|e| MigrationError::database(concern, &e))?;
    MigrationError::checked_version(concern, version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_in_wal_with_the_asked_durability() {
        let dir = tempfile::tempdir().unwrap();
        for (full, expected) in [(false, 1), (true, 2)] {
            let path = dir.path().join(format!("f{full}.db"));
            let conn = open(
                &path,
                OpenOptions {
                    busy_timeout: Duration::from_millis(1500),
                    synchronous_full: full,
                },
            )
            .unwrap();
            let mode: String = conn
                .pragma_query_value(None, "journal_mode", |r| r.get(0))
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = conn
                .pragma_query_value(None, "synchronous", |r| r.get(0))
                .unwrap();
            assert_eq!(sync, expected);
            let busy: i64 = conn
                .pragma_query_value(None, "busy_timeout", |r| r.get(0))
                .unwrap();
            assert_eq!(busy, 1500);
        }
        let err = open(
            Path::new("/nonexistent/dir/x.db"),
            OpenOptions::new(Duration::ZERO),
        )
        .unwrap_err();
        assert!(
            err.starts_with("cannot open SQLite file /nonexistent/dir/x.db: "),
            "{err}"
        );
    }
}
