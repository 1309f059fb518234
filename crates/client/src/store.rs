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

use oncely_core::sync::LockIgnoringPoison;
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
        // SQLite opens lazily: a file that is not a database fails here, on the first statement.
        Self::init(conn).map_err(|e| StoreError(format!("{}: {}", path.display(), e.0)))
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
        self.conn.lock_ignoring_poison()
    }

    /// Returns the key of `operation`, claiming `fresh_key` for it if it has none yet.
    ///
    /// One statement, so one transaction: two processes racing on one operation get the same
    /// key, and another process completing the operation cannot slip between the claim and the
    /// read of the key (the no-op update makes `RETURNING` yield the row in either case).
    pub fn claim(
        &self,
        operation: &str,
        fresh_key: &str,
        now_ms: i64,
    ) -> Result<PendingKey, StoreError> {
        let (key, attempts): (String, u32) = self.conn().query_row(
            "INSERT INTO oncely_pending_keys (operation, idempotency_key, attempts, created_at_ms)
             VALUES (?1, ?2, 0, ?3)
             ON CONFLICT (operation) DO UPDATE SET operation = excluded.operation
             RETURNING idempotency_key, attempts",
            params![operation, fresh_key, now_ms],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        Ok(PendingKey {
            resumed: key != fresh_key,
            key,
            attempts,
        })
    }

    /// Counts one more attempt for `operation`, if its pending key is still `key`.
    pub fn record_attempt(&self, operation: &str, key: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE oncely_pending_keys SET attempts = attempts + 1
             WHERE operation = ?1 AND idempotency_key = ?2",
            params![operation, key],
        )?;
        Ok(())
    }

    /// Forgets `operation` with `key`: it reached a final answer. Only that key's row is
    /// removed: if another process has since finished the same operation and started a new
    /// logical request of that name, its newer key stays.
    pub fn complete(&self, operation: &str, key: &str) -> Result<(), StoreError> {
        self.conn().execute(
            "DELETE FROM oncely_pending_keys WHERE operation = ?1 AND idempotency_key = ?2",
            params![operation, key],
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
            s.record_attempt("op-1", "key-a").unwrap();
            s.record_attempt("op-1", "key-a").unwrap();
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
        s.complete("op-1", "key-a").unwrap();
        assert!(s.get("op-1").unwrap().is_none());
        // After completion a new logical request of the same name gets a new key.
        assert_eq!(s.claim("op-1", "key-c", 3).unwrap().key, "key-c");
    }

    /// A process that finishes late must not forget the newer key of another run of the same
    /// operation, nor count its attempts.
    #[test]
    fn a_late_completion_keeps_a_newer_key() {
        let s = KeyStore::in_memory().unwrap();
        s.claim("op", "old", 1).unwrap();
        s.complete("op", "old").unwrap();
        assert_eq!(s.claim("op", "new", 2).unwrap().key, "new");
        // The first process, finishing late, replays its bookkeeping with its own key.
        s.record_attempt("op", "old").unwrap();
        s.complete("op", "old").unwrap();
        let e = s.get("op").unwrap().unwrap();
        assert_eq!((e.key.as_str(), e.attempts), ("new", 0));
        s.record_attempt("op", "new").unwrap();
        assert_eq!(s.get("op").unwrap().unwrap().attempts, 1);
        s.complete("op", "new").unwrap();
        assert!(s.get("op").unwrap().is_none());
    }

    /// Two processes sharing a state file claim one operation at the same instant, over and
    /// over, each completing the key it got. Every claim must find a key: with a claim in two
    /// statements (insert, then read), the other's completion between them made the read find
    /// nothing, a few times in a few thousand rounds.
    #[test]
    fn a_claim_racing_a_completion_always_finds_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let a = KeyStore::open(&path).unwrap();
        let b = KeyStore::open(&path).unwrap();
        for s in [&a, &b] {
            s.conn().pragma_update(None, "synchronous", "OFF").unwrap();
            s.conn().pragma_update(None, "journal_mode", "WAL").unwrap();
        }
        let barrier = std::sync::Barrier::new(2);
        let errors = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for (store, tag) in [(&a, "a"), (&b, "b")] {
                let (barrier, errors) = (&barrier, &errors);
                scope.spawn(move || {
                    for i in 0..3000 {
                        // No unwrap here: a panicking thread would leave the other one waiting.
                        barrier.wait();
                        let done = store
                            .claim("op", &format!("{tag}-{i}"), i)
                            .and_then(|k| store.complete("op", &k.key));
                        if let Err(e) = done {
                            errors.lock().unwrap().push(format!("{tag} round {i}: {e}"));
                        }
                    }
                });
            }
        });
        assert_eq!(errors.into_inner().unwrap(), Vec::<String>::new());
        assert!(a.get("op").unwrap().is_none());
    }

    #[test]
    fn a_corrupt_state_file_is_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.db");
        std::fs::write(&path, vec![b'x'; 4096]).unwrap();
        let e = KeyStore::open(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.starts_with("state file: "), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn unopenable_path_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let e = KeyStore::open(dir.path().join("no/such/dir/state.db")).unwrap_err();
        assert!(e.to_string().starts_with("state file: cannot open"));
    }
}
