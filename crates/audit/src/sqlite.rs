//! The audit log in a SQLite file: `audit_events`, append-only by trigger.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oncely_db::migrate::{MigrationReport, Migrations};
use rusqlite::{params_from_iter, Connection, ErrorCode, OptionalExtension};

use crate::chain::{Event, Head};
use crate::log::{
    check_redaction, migrations, redaction_sql, step_1, stored_hash, stored_seq, stored_value,
    AuditError, AuditLog, Filter, Row, COLUMNS,
};
use oncely_core::sync::LockIgnoringPoison;

/// The trail's history: the table and its guards. The update trigger lets through only a
/// redaction: every column but the three personal values unchanged, and those either
/// unchanged or emptied.
const MIGRATIONS: Migrations = migrations(&step_1(SCHEMA_V1));

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS audit_events (
    event_id TEXT NOT NULL UNIQUE,
    timestamp INTEGER NOT NULL,
    actor TEXT,
    actor_type TEXT NOT NULL,
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    correlation_id TEXT,
    ip_address TEXT,
    user_agent TEXT,
    chain TEXT NOT NULL,
    seq INTEGER NOT NULL,
    actor_commitment BLOB,
    ip_address_commitment BLOB,
    user_agent_commitment BLOB,
    prev_hash BLOB NOT NULL,
    hash BLOB NOT NULL,
    mac BLOB NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX IF NOT EXISTS audit_events_by_time ON audit_events (timestamp);
CREATE INDEX IF NOT EXISTS audit_events_by_correlation ON audit_events (correlation_id);
-- `INSERT OR REPLACE` deletes the row it replaces without firing delete triggers: refuse an
-- insert at a taken place (or with a taken id) before SQLite gets to resolve it.
CREATE TRIGGER IF NOT EXISTS audit_events_no_replace BEFORE INSERT ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: (chain, seq) taken')
    WHERE EXISTS (SELECT 1 FROM audit_events WHERE chain = NEW.chain AND seq = NEW.seq);
    SELECT RAISE(ABORT, 'audit_events is append-only: event_id taken')
    WHERE EXISTS (SELECT 1 FROM audit_events WHERE event_id = NEW.event_id);
END;
CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: events are never deleted');
END;
CREATE TRIGGER IF NOT EXISTS audit_events_only_redaction BEFORE UPDATE ON audit_events
WHEN NEW.event_id IS NOT OLD.event_id OR NEW.timestamp IS NOT OLD.timestamp
    OR NEW.actor_type IS NOT OLD.actor_type OR NEW.action IS NOT OLD.action
    OR NEW.resource_type IS NOT OLD.resource_type OR NEW.resource_id IS NOT OLD.resource_id
    OR NEW.old_value IS NOT OLD.old_value OR NEW.new_value IS NOT OLD.new_value
    OR NEW.correlation_id IS NOT OLD.correlation_id OR NEW.chain IS NOT OLD.chain
    OR NEW.seq IS NOT OLD.seq OR NEW.actor_commitment IS NOT OLD.actor_commitment
    OR NEW.ip_address_commitment IS NOT OLD.ip_address_commitment
    OR NEW.user_agent_commitment IS NOT OLD.user_agent_commitment
    OR NEW.prev_hash IS NOT OLD.prev_hash OR NEW.hash IS NOT OLD.hash OR NEW.mac IS NOT OLD.mac
    OR (NEW.actor IS NOT NULL AND NEW.actor IS NOT OLD.actor)
    OR (NEW.ip_address IS NOT NULL AND NEW.ip_address IS NOT OLD.ip_address)
    OR (NEW.user_agent IS NOT NULL AND NEW.user_agent IS NOT OLD.user_agent)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only: an update may only redact personal fields');
END;
";

/// An audit log in one SQLite file (which may also hold other tables).
#[derive(Clone)]
pub struct SqliteAuditLog {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
}

impl SqliteAuditLog {
    /// Opens (or creates) the file at `path`; `busy_timeout` bounds how long a write waits
    /// for another process holding the file's write lock. Does not create the table: see
    /// [`AuditLog::migrate`].
    pub fn open(path: impl AsRef<Path>, busy_timeout: Duration) -> Result<Self, AuditError> {
        let path = path.as_ref().to_path_buf();
        let conn =
            oncely_db::sqlite::open(&path, oncely_db::sqlite::OpenOptions::new(busy_timeout))
                .map_err(AuditError::Unavailable)?;
        Ok(SqliteAuditLog {
            conn: Arc::new(Mutex::new(conn)),
            path,
        })
    }

    /// The file the log was opened on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, AuditError> + Send + 'static,
    ) -> Result<T, AuditError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock rolled its transaction back on unwind; the
            // connection is fine to use.
            let mut guard = conn.lock_ignoring_poison();
            f(&mut guard)
        })
        .await
        .map_err(|e| AuditError::Unavailable(format!("audit log thread: {e}")))?
    }
}

fn unavailable(e: impl std::fmt::Display) -> AuditError {
    AuditError::Unavailable(format!("sqlite: {e}"))
}

fn read_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Event> {
    Ok(Row {
        chain: r.get(0)?,
        seq: r.get(1)?,
        event_id: r.get(2)?,
        timestamp: r.get(3)?,
        actor: (r.get(4)?, r.get(5)?),
        actor_type: r.get(6)?,
        action: r.get(7)?,
        resource_type: r.get(8)?,
        resource_id: r.get(9)?,
        old_value: r.get(10)?,
        new_value: r.get(11)?,
        correlation_id: r.get(12)?,
        ip_address: (r.get(13)?, r.get(14)?),
        user_agent: (r.get(15)?, r.get(16)?),
        prev_hash: r.get(17)?,
        hash: r.get(18)?,
        mac: r.get(19)?,
    }
    .into_event())
}

fn head_of(chain: String, seq: i64, hash: Vec<u8>) -> Head {
    Head {
        chain,
        next_seq: u64::try_from(seq).map_or(0, |s| s + 1),
        last_hash: stored_hash(&hash),
    }
}

fn query_events(
    conn: &Connection,
    sql: &str,
    params: Vec<rusqlite::types::Value>,
) -> Result<Vec<Event>, AuditError> {
    let mut stmt = conn.prepare_cached(sql).map_err(unavailable)?;
    let rows = stmt
        .query_map(params_from_iter(params), read_row)
        .map_err(unavailable)?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(unavailable)
}

#[async_trait]
impl AuditLog for SqliteAuditLog {
    async fn migrate(&self) -> Result<MigrationReport, AuditError> {
        self.run(|c| {
            let report = oncely_db::sqlite::migrate(c, &MIGRATIONS)
                .map_err(|e| AuditError::Unavailable(e.to_string()))?;
            // The guards are put back whenever they are found missing, not only when step 1
            // first runs: whoever dropped one to edit the trail does not get to keep it
            // dropped past the next start (`verify` still names what was edited meanwhile).
            let guards: i64 = c
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name IN \
                     ('audit_events_no_replace', 'audit_events_no_delete', \
                      'audit_events_only_redaction')",
                    [],
                    |r| r.get(0),
                )
                .map_err(unavailable)?;
            if guards < 3 {
                c.execute_batch(SCHEMA_V1).map_err(unavailable)?;
            }
            Ok(report)
        })
        .await
    }

    async fn append(&self, events: &[Event]) -> Result<(), AuditError> {
        let events = events.to_vec();
        self.run(move |c| {
            let tx = c
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            {
                let mut stmt = tx
                    .prepare_cached(&format!(
                        "INSERT INTO audit_events ({COLUMNS}) VALUES \
                         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
                    ))
                    .map_err(unavailable)?;
                for e in &events {
                    let seq = stored_seq(e)?;
                    let [ac, ic, uc] = e.commitments.map(|c| c.map(|c| c.to_vec()));
                    let inserted = stmt.execute(rusqlite::params![
                        e.chain,
                        seq,
                        e.event_id,
                        e.timestamp_ms,
                        stored_value(&e.actor),
                        ac,
                        e.actor_type,
                        e.action,
                        e.resource_type,
                        e.resource_id,
                        e.old_value,
                        e.new_value,
                        e.correlation_id,
                        stored_value(&e.ip_address),
                        ic,
                        stored_value(&e.user_agent),
                        uc,
                        e.prev_hash.to_vec(),
                        e.hash.to_vec(),
                        e.mac.to_vec(),
                    ]);
                    match inserted {
                        Ok(_) => {}
                        Err(rusqlite::Error::SqliteFailure(f, msg))
                            if f.code == ErrorCode::ConstraintViolation =>
                        {
                            // The (chain, seq) key: another writer's event. Anything else
                            // (a repeated event id) is this batch's own fault.
                            let msg = msg.unwrap_or_default();
                            return Err(if msg.contains("(chain, seq) taken") {
                                AuditError::Conflict {
                                    chain: e.chain.clone(),
                                    seq: e.seq,
                                }
                            } else {
                                AuditError::Invalid(format!("event {}: {msg}", e.event_id))
                            });
                        }
                        Err(err) => return Err(unavailable(err)),
                    }
                }
            }
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn head(&self, chain: &str) -> Result<Option<Head>, AuditError> {
        let chain = chain.to_owned();
        self.run(move |c| {
            c.prepare_cached(
                "SELECT seq, hash FROM audit_events WHERE chain = ?1 ORDER BY seq DESC LIMIT 1",
            )
            .map_err(unavailable)?
            .query_row([&chain], |r| {
                Ok(head_of(chain.clone(), r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(unavailable)
        })
        .await
    }

    async fn heads(&self) -> Result<Vec<Head>, AuditError> {
        self.run(|c| {
            // One row per chain: its largest seq (SQLite takes the bare columns from it).
            let mut stmt = c
                .prepare_cached(
                    "SELECT chain, MAX(seq), hash FROM audit_events GROUP BY chain ORDER BY chain",
                )
                .map_err(unavailable)?;
            let rows = stmt
                .query_map([], |r| Ok(head_of(r.get(0)?, r.get(1)?, r.get(2)?)))
                .map_err(unavailable)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
                .map_err(unavailable)
        })
        .await
    }

    async fn scan(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<Event>, AuditError> {
        let (chain, seq) = after.map_or((String::new(), -1), |(c, s)| {
            (c.to_owned(), i64::try_from(s).unwrap_or(i64::MAX))
        });
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            query_events(
                c,
                &format!(
                    "SELECT {COLUMNS} FROM audit_events WHERE (chain, seq) > (?1, ?2) \
                     ORDER BY chain, seq LIMIT ?3"
                ),
                vec![chain.into(), seq.into(), limit.into()],
            )
        })
        .await
    }

    async fn find(&self, filter: &Filter, limit: usize) -> Result<Vec<Event>, AuditError> {
        let (clause, values) = filter.where_clause(|n| format!("?{n}"));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            let sql = format!(
                "SELECT {COLUMNS} FROM audit_events WHERE {clause} \
                 ORDER BY timestamp DESC, chain, seq DESC LIMIT {limit}"
            );
            query_events(c, &sql, values.into_iter().map(Into::into).collect())
        })
        .await
    }

    async fn redact(&self, filter: &Filter, fields: &[&str]) -> Result<u64, AuditError> {
        check_redaction(filter, fields)?;
        let (clause, values) = filter.where_clause(|n| format!("?{n}"));
        let (set, any) = redaction_sql(fields);
        self.run(move |c| {
            let sql = format!("UPDATE audit_events SET {set} WHERE {clause} AND {any}");
            c.execute(&sql, params_from_iter(values))
                .map(|n| n as u64)
                .map_err(unavailable)
        })
        .await
    }
}
