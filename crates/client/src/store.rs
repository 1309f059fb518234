//! Pending keys in a small SQLite file, so a restarted process resumes a logical request with
//! the key it was using.
//!
//! A row lives from the first attempt of a logical request until the request reaches a final
//! answer (any answer the client does not retry). When the client gives up (deadline, budget,
//! attempts) or the process dies, the row stays: the outcome is unknown or not yet achieved, and
//! the next run must use the same key so that the server can deduplicate.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

/// A failure of the state file.
#[derive(Debug, thiserror::Error)]
#[error("state file: {0}")]
pub struct StoreError(String);

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// A key claimed for an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKey {
    /// The key to send.
    pub key: String,
    /// True when the key was already there: this run resumes an earlier one.
    pub resumed: bool,
    /// Attempts recorded by earlier runs.
    pub attempts: u32,
}

/// One row of the state file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEntry {
    /// The logical request's name.
    pub operation: String,
    /// Its key.
    pub key: String,
    /// Attempts made so far, over all runs.
    pub attempts: u32,
    /// When the key was first claimed, Unix milliseconds.
    pub created_at_ms: i64,
}

/// The state file.
#[derive(Debug)]
pub struct KeyStore {
    // rusqlite's Connection is Send but not Sync; the mutex makes the store shareable. Every
    // statement is a few microseconds on a tiny table, so contention does not matter.
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS oncely_pending_keys (
    operation       TEXT PRIMARY KEY NOT NULL,
    idempotency_key TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at_ms   INTEGER NOT NULL
);";

impl KeyStore {
    /// Opens (creating if needed) the state file at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref();
        let conn = Connection::open(path)
            .map_err(|e| StoreError(format!("cannot open {}: {e}", path.display())))?;
        Self::init(conn)
    }

    /// An in-memory store (nothing survives the process; for tests).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, StoreError> {
        // Two processes may share a state file; wait for the other's write instead of failing.
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent (it has its own
        // transactions), so a poisoned lock is safe to reuse.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns the key of `operation`, claiming `fresh_key` for it if it has none yet. Atomic:
    /// two processes racing on one operation get the same key.
    pub fn claim(
        &self,
        operation: &str,
        fresh_key: &str,
        now_ms: i64,
    ) -> Result<PendingKey, StoreError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO oncely_pending_keys (operation, idempotency_key, attempts, created_at_ms)
             VALUES (?1, ?2, 0, ?3) ON CONFLICT (operation) DO NOTHING",
            params![operation, fresh_key, now_ms],
        )?;
        let (key, attempts): (String, u32) = conn.query_row(
            "SELECT idempotency_key, attempts FROM oncely_pending_keys WHERE operation = ?1",
            params![operation],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(PendingKey {
            resumed: key != fresh_key,
            key,
            attempts,
        })
    }

    /// Counts one more attempt for `operation`.
    pub fn record_attempt(&self, operation: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE oncely_pending_keys SET attempts = attempts + 1 WHERE operation = ?1",
            params![operation],
        )?;
        Ok(())
    }

    /// Forgets `operation`: it reached a final answer.
    pub fn complete(&self, operation: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM oncely_pending_keys WHERE operation = ?1",
            params![operation],
        )?;
        Ok(())
    }

    /// The key of `operation`, if pending.
    pub fn get(&self, operation: &str) -> Result<Option<PendingEntry>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT operation, idempotency_key, attempts, created_at_ms
                 FROM oncely_pending_keys WHERE operation = ?1",
                params![operation],
                row_to_entry,
            )
            .optional()?)
    }

    /// Every pending operation, oldest first.
    pub fn pending(&self) -> Result<Vec<PendingEntry>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT operation, idempotency_key, attempts, created_at_ms
             FROM oncely_pending_keys ORDER BY created_at_ms, operation",
        )?;
        let rows = stmt.query_map([], row_to_entry)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }
}

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<PendingEntry> {
    Ok(PendingEntry {
        operation: r.get(0)?,
        key: r.get(1)?,
        attempts: r.get(2)?,
        created_at_ms: r.get(3)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claim_resume_complete() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let s = KeyStore::open(&path).unwrap();
            let k = s.claim("op-1", "key-a", 1).unwrap();
            assert_eq!(
                k,
                PendingKey {
                    key: "key-a".into(),
                    resumed: false,
                    attempts: 0
                }
            );
            s.record_attempt("op-1").unwrap();
            s.record_attempt("op-1").unwrap();
        }
        // A new process: same key, attempts remembered.
        let s = KeyStore::open(&path).unwrap();
        let k = s.claim("op-1", "key-b", 2).unwrap();
        assert_eq!(
            k,
            PendingKey {
                key: "key-a".into(),
                resumed: true,
                attempts: 2
            }
        );
        assert_eq!(s.pending().unwrap().len(), 1);
        s.complete("op-1").unwrap();
        assert!(s.get("op-1").unwrap().is_none());
        // After completion a new logical request of the same name gets a new key.
        assert_eq!(s.claim("op-1", "key-c", 3).unwrap().key, "key-c");
    }

    #[test]
    fn unopenable_path_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let e = KeyStore::open(dir.path().join("no/such/dir/state.db")).unwrap_err();
        assert!(e.to_string().starts_with("state file: cannot open"));
    }
}
