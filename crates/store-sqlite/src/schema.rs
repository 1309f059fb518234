//! The embedded schema and its migrations.
//!
//! The schema version lives in the file header (`PRAGMA user_version`): version `n` means
//! the first `n` steps of [`MIGRATIONS`] have been applied. Steps are only ever appended,
//! never edited, so a file written by any older build upgrades in place at open. A file
//! whose version is higher than this build knows was written by a newer build whose
//! records this one might misread, so it is refused rather than guessed at.

use std::path::Path;

use oncely_store::{StoreError, StoreResult};
use rusqlite::{Connection, TransactionBehavior};

/// Marks a file as an oncely record store (`PRAGMA application_id`), so that pointing the
/// gateway at some other application's SQLite file fails loudly instead of adding a table
/// to it. The value is "oncl" in ASCII.
pub(crate) const APPLICATION_ID: i64 = 0x6f6e_636c;

/// One entry per schema version; entry `i` upgrades version `i` to `i + 1`.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 1: the records table, its unique scope-and-key index, and the index purge walks.
    //
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
    "CREATE TABLE idempotency_records (
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
    CREATE INDEX idempotency_records_expires_at ON idempotency_records (expires_at);",
];

/// The version this build writes.
pub(crate) fn latest() -> i64 {
    // The list is a handful of entries; the conversion cannot fail in practice, and if it
    // did, saturating keeps every real file "older" and therefore migratable.
    i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX)
}

/// Brings the file up to [`latest`], or explains why it cannot.
///
/// Runs in one `BEGIN IMMEDIATE` transaction so that two processes opening a fresh file at
/// the same moment serialize: the second one waits (busy timeout), then re-reads the
/// version inside its transaction and finds nothing to do.
pub(crate) fn migrate(conn: &mut Connection, path: &Path) -> StoreResult<()> {
    let fail = |e: rusqlite::Error| {
        StoreError::Unavailable(format!(
            "cannot migrate SQLite store {}: {e}",
            path.display()
        ))
    };
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(fail)?;
    let app_id: i64 = tx
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(fail)?;
    let version: i64 = tx
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(fail)?;
    if app_id != 0 && app_id != APPLICATION_ID {
        return Err(StoreError::Unavailable(format!(
            "{} is not an oncely record store (application_id {app_id:#x})",
            path.display()
        )));
    }
    let latest = latest();
    if version > latest {
        return Err(StoreError::Unavailable(format!(
            "{} has schema version {version}, newer than the version {latest} this build \
             supports; it was written by a newer oncely: upgrade, or point this one at \
             another file",
            path.display()
        )));
    }
    if version < 0 {
        return Err(StoreError::Corrupt(format!(
            "{} has an invalid schema version {version}",
            path.display()
        )));
    }
    if version == latest && app_id == APPLICATION_ID {
        // Nothing to write: end the transaction without touching the file.
        return tx.commit().map_err(fail);
    }
    let done = usize::try_from(version).unwrap_or(usize::MAX);
    for step in MIGRATIONS.iter().skip(done) {
        tx.execute_batch(step).map_err(fail)?;
    }
    tx.pragma_update(None, "user_version", latest)
        .map_err(fail)?;
    tx.pragma_update(None, "application_id", APPLICATION_ID)
        .map_err(fail)?;
    tx.commit().map_err(fail)
}
