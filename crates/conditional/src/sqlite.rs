//! Versioned rows in SQLite (rusqlite): each write is one statement whose `WHERE` carries
//! the request's [`WriteGuard`], so a concurrent writer cannot get in between a check and
//! the write. Every function takes a `&Connection`, which a `Transaction` derefs to: call
//! them inside the application's own transaction to write more in the same commit.
//!
//! The table needs `version INTEGER NOT NULL`, `changed_at INTEGER NOT NULL` (milliseconds
//! since the epoch) and `changed_by TEXT` besides its own columns (see [`Table`]).

use rusqlite::{Connection, OptionalExtension as _, Row, ToSql, Transaction, TransactionBehavior};

use crate::{guard_sql, Current, Revision, Table, Timestamp, WriteError, WriteGuard};

/// Who makes a write, and when: what `changed_by` and `changed_at` become.
#[derive(Debug, Clone, Copy)]
pub struct Change<'a> {
    /// The person or service writing, if known.
    pub by: Option<&'a str>,
    /// The write's time (the service's clock, injected so that tests control it).
    pub at: Timestamp,
}

type Result<T> = std::result::Result<Current<T>, WriteError<T, rusqlite::Error>>;

fn placeholder(n: usize) -> String {
    format!("?{n}")
}

/// Reads the row's representation (with `map`, over the table's columns in order) and its
/// revision; `None` when there is no such row.
pub fn read<T>(
    conn: &Connection,
    table: &Table,
    id: &dyn ToSql,
    map: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Option<Current<T>>> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = ?1",
        table.returning(),
        table.name,
        table.key
    );
    conn.prepare_cached(&sql)?
        .query_row([id], |row| current(row, &map))
        .optional()
}

/// Updates the row if `guard` admits it: `set` is the statement's assignments over `params`
/// (`?1`, `?2`, ...), and the version grows by one in the same statement. A row the guard
/// refuses is answered [`WriteError::Stale`] with its current state; a missing row
/// [`WriteError::Gone`].
#[allow(clippy::too_many_arguments)] // each is one part of the statement; a builder would hide which
pub fn update<T>(
    conn: &Connection,
    table: &Table,
    id: &dyn ToSql,
    guard: &WriteGuard,
    set: &str,
    params: &[&dyn ToSql],
    change: Change<'_>,
    map: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<T> {
    let n = params.len();
    let Some((condition, guard_params)) = guard_sql(guard, n + 4, placeholder) else {
        return refused(conn, table, id, &map);
    };
    let sql = format!(
        "UPDATE {name} SET {set}, version = version + 1, changed_at = ?{at}, changed_by = ?{by} \
         WHERE {key} = ?{id} AND ({condition}) RETURNING {returning}",
        name = table.name,
        key = table.key,
        at = n + 1,
        by = n + 2,
        id = n + 3,
        returning = table.returning(),
    );
    let mut all: Vec<&dyn ToSql> = params.to_vec();
    all.push(&change.at.0);
    all.push(&change.by);
    all.push(id);
    all.extend(guard_params.iter().map(|p| p as &dyn ToSql));
    returning(conn, table, id, &sql, &all, &map)
}

/// Inserts the row at version 1 unless one with its key exists (create-if-absent, what
/// `If-None-Match: *` asks for): `values` are the table's columns' values over `params`. An
/// existing row is answered [`WriteError::Stale`] with its state, and left untouched.
pub fn create<T>(
    conn: &Connection,
    table: &Table,
    id: &dyn ToSql,
    values: &str,
    params: &[&dyn ToSql],
    change: Change<'_>,
    map: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<T> {
    let n = params.len();
    let sql = format!(
        "INSERT INTO {name} ({key}, {columns}, version, changed_at, changed_by) \
         VALUES (?{id}, {values}, 1, ?{at}, ?{by}) ON CONFLICT ({key}) DO NOTHING \
         RETURNING {returning}",
        name = table.name,
        key = table.key,
        columns = table.columns,
        at = n + 1,
        by = n + 2,
        id = n + 3,
        returning = table.returning(),
    );
    let mut all: Vec<&dyn ToSql> = params.to_vec();
    all.push(&change.at.0);
    all.push(&change.by);
    all.push(id);
    returning(conn, table, id, &sql, &all, &map)
}

/// Deletes the row if `guard` admits it, answering what it was.
pub fn delete<T>(
    conn: &Connection,
    table: &Table,
    id: &dyn ToSql,
    guard: &WriteGuard,
    map: impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<T> {
    let Some((condition, guard_params)) = guard_sql(guard, 2, placeholder) else {
        return refused(conn, table, id, &map);
    };
    let sql = format!(
        "DELETE FROM {} WHERE {} = ?1 AND ({condition}) RETURNING {}",
        table.name,
        table.key,
        table.returning()
    );
    let mut all: Vec<&dyn ToSql> = vec![id];
    all.extend(guard_params.iter().map(|p| p as &dyn ToSql));
    returning(conn, table, id, &sql, &all, &map)
}

/// Pessimistic concurrency, for the rows where conflicts are the rule rather than the
/// exception (a stock counter every checkout decrements): runs `work` in a
/// `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock at once, so that its reads
/// and writes see no other writer. Waiting for the lock is bounded by the connection's
/// `busy_timeout`; past it the error is `SQLITE_BUSY`, and nothing was written.
pub fn immediate<R, E: From<rusqlite::Error>>(
    conn: &mut Connection,
    work: impl FnOnce(&Transaction<'_>) -> std::result::Result<R, E>,
) -> std::result::Result<R, E> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let r = work(&tx)?;
    tx.commit()?;
    Ok(r)
}

/// Runs a write that returns the row it wrote. One that matched no row is answered with the
/// row as it is now (stale), or gone.
fn returning<T>(
    conn: &Connection,
    table: &Table,
    id: &dyn ToSql,
    sql: &str,
    params: &[&dyn ToSql],
    map: &impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<T> {
    let written = conn
        .prepare_cached(sql)
        .and_then(|mut s| s.query_row(params, |row| current(row, map)).optional())
        .map_err(WriteError::Database)?;
    match written {
        Some(c) => Ok(c),
        None => refused(conn, table, id, map),
    }
}

/// After a write matched no row: the row as it is now (stale), or gone.
fn refused<T>(
    conn: &Connection,
    table: &Table,
    id: &dyn ToSql,
    map: &impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<T> {
    match read(conn, table, id, map).map_err(WriteError::Database)? {
        Some(c) => Err(WriteError::Stale(Box::new(c))),
        None => Err(WriteError::Gone),
    }
}

fn current<T>(
    row: &Row<'_>,
    map: &impl Fn(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<Current<T>> {
    // Every statement here ends its columns with version, changed_at, changed_by: read them
    // by position, which is cheaper than by name.
    let at = row.as_ref().column_count().saturating_sub(3);
    let version: i64 = row.get(at)?;
    Ok(Current {
        value: map(row)?,
        revision: Revision {
            version: u64::try_from(version).unwrap_or(0),
            changed_at: Timestamp(row.get(at + 1)?),
            changed_by: row.get(at + 2)?,
        },
    })
}
