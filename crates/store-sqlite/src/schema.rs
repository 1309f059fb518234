//! The embedded schema, applied through the shared mechanism of [`oncely_db::migrate`].
//!
//! Versions are recorded in the file's `oncely_migrations` table under the concern
//! "idempotency records"; a file migrated by a newer build is refused rather than guessed
//! at. The file is also stamped as an oncely record store (`PRAGMA application_id`), so
//! pointing the gateway at some other application's SQLite file fails loudly instead of
//! adding a table to it.
//!
//! Step 1 creates only what is absent: files written by builds that tracked the version in
//! `PRAGMA user_version` already hold it, and adopt version 1 without a change.

use std::path::Path;

use oncely_db::migrate::{Migration, MigrationReport, Migrations};
use oncely_store::{StoreError, StoreResult};
use rusqlite::Connection;

/// The file marker, "oncl" in ASCII.
pub(crate) const APPLICATION_ID: i64 = 0x6f6e_636c;

/// The records table's history.
pub(crate) const MIGRATIONS: Migrations = Migrations {
    concern: "idempotency records",
    steps: &[Migration {
        version: 1,
        description: "the records table and its expiry index",
        // A rowid table, not WITHOUT ROWID: rows carry response bodies, and new rows appended at
        // the end of the table touch few pages per batch, while the unique index that finds a
        // record by (tenant, method, route, key) stays small. Measured on the group-commit write
        // pattern, this halves the pages written per commit against a table clustered by key.
        // `state` is 0 for in progress (lease columns set, response columns NULL) and 1 for
        // completed (the reverse). `takeovers` counts lease takeovers since the record was
        // freshly claimed: it lets the claim UPSERT report, through RETURNING alone, whether it
        // replaced a stale holder (the new row's other columns cannot tell a takeover from a
        // fresh claim when the clock has been stepped) and it is a useful diagnostic of keys
        // whose holders keep dying.
        sql: "CREATE TABLE IF NOT EXISTS idempotency_records (
        id               INTEGER PRIMARY KEY,
        tenant           TEXT    NOT NULL,
        method           TEXT    NOT NULL,
        route            TEXT    NOT NULL,
        idem_key         TEXT    NOT NULL,
        fingerprint      BLOB    NOT NULL,
        created_at       INTEGER NOT NULL,
        expires_at       INTEGER NOT NULL,
        state            INTEGER NOT NULL,
        lease_token      BLOB,
        lease_expires_at INTEGER,
        status           INTEGER,
        headers          BLOB,
        body             BLOB,
        takeovers        INTEGER NOT NULL DEFAULT 0,
        UNIQUE (tenant, method, route, idem_key)
    );
    CREATE INDEX IF NOT EXISTS idempotency_records_expires_at ON idempotency_records (expires_at);",
    }],
};

/// Brings the file up to date, or explains why it cannot: a file of another application, or
/// one migrated by a newer build. Every message names the file.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> StoreResult<MigrationReport> {
    let fail = |e: rusqlite::Error| {
        StoreError::Unavailable(format!(
            "cannot migrate SQLite store {}: {e}",
            path.display()
        ))
    };
    let app_id: i64 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(fail)?;
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(StoreError::Unavailable(format!(
            "{} is not an oncely record store (application_id {app_id:#x})",
            path.display()
        )));
    }
    let report = oncely_db::sqlite::migrate(conn, &MIGRATIONS)
        .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
    if app_id == 0 {
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .map_err(fail)?;
    }
    Ok(report)
}
