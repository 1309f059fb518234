//! Versioned rows in PostgreSQL (tokio-postgres, or a deadpool-postgres client, which
//! derefs to one): each write is one statement whose `WHERE` carries the request's
//! [`WriteGuard`]. Every function takes any [`GenericClient`], a client or a transaction:
//! call them inside the application's own transaction to write more in the same commit.
//!
//! The table needs `version BIGINT NOT NULL`, `changed_at BIGINT NOT NULL` (milliseconds
//! since the epoch) and `changed_by TEXT` besides its own columns (see [`Table`]).

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Transaction};

use crate::{guard_sql, Current, Revision, Table, Timestamp, WriteError, WriteGuard};

pub use crate::sqlite::Change;

type Param<'a> = &'a (dyn ToSql + Sync);
type Result<T> = std::result::Result<Current<T>, WriteError<T, tokio_postgres::Error>>;

fn placeholder(n: usize) -> String {
    format!("${n}")
}

/// Reads the row's representation (with `map`, over the table's columns in order) and its
/// revision; `None` when there is no such row.
pub async fn read<T>(
    client: &impl GenericClient,
    table: &Table,
    id: Param<'_>,
    map: impl Fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> std::result::Result<Option<Current<T>>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = $1",
        table.returning(),
        table.name,
        table.key
    );
    match client.query_opt(&sql, &[id]).await? {
        Some(row) => Ok(Some(current(&row, &map)?)),
        None => Ok(None),
    }
}

/// Updates the row if `guard` admits it: `set` is the statement's assignments over `params`
/// (`$1`, `$2`, ...), and the version grows by one in the same statement. A row the guard
/// refuses is answered [`WriteError::Stale`] with its current state; a missing row
/// [`WriteError::Gone`].
#[allow(clippy::too_many_arguments)] // each is one part of the statement; a builder would hide which
pub async fn update<T>(
    client: &impl GenericClient,
    table: &Table,
    id: Param<'_>,
    guard: &WriteGuard,
    set: &str,
    params: &[Param<'_>],
    change: Change<'_>,
    map: impl Fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> Result<T> {
    let n = params.len();
    let Some((condition, guard_params)) = guard_sql(guard, n + 4, placeholder) else {
        return refused(client, table, id, &map).await;
    };
    let sql = format!(
        "UPDATE {name} SET {set}, version = version + 1, changed_at = ${at}, changed_by = ${by} \
         WHERE {key} = ${id} AND ({condition}) RETURNING {returning}",
        name = table.name,
        key = table.key,
        at = n + 1,
        by = n + 2,
        id = n + 3,
        returning = table.returning(),
    );
    let mut all: Vec<Param<'_>> = params.to_vec();
    all.push(&change.at.0);
    all.push(&change.by);
    all.push(id);
    all.extend(guard_params.iter().map(|p| p as Param<'_>));
    returning(client, table, id, &sql, &all, &map).await
}

/// Inserts the row at version 1 unless one with its key exists (create-if-absent, what
/// `If-None-Match: *` asks for): `values` are the table's columns' values over `params`. An
/// existing row is answered [`WriteError::Stale`] with its state, and left untouched.
pub async fn create<T>(
    client: &impl GenericClient,
    table: &Table,
    id: Param<'_>,
    values: &str,
    params: &[Param<'_>],
    change: Change<'_>,
    map: impl Fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> Result<T> {
    let n = params.len();
    let sql = format!(
        "INSERT INTO {name} ({key}, {columns}, version, changed_at, changed_by) \
         VALUES (${id}, {values}, 1, ${at}, ${by}) ON CONFLICT ({key}) DO NOTHING \
         RETURNING {returning}",
        name = table.name,
        key = table.key,
        columns = table.columns,
        at = n + 1,
        by = n + 2,
        id = n + 3,
        returning = table.returning(),
    );
    let mut all: Vec<Param<'_>> = params.to_vec();
    all.push(&change.at.0);
    all.push(&change.by);
    all.push(id);
    returning(client, table, id, &sql, &all, &map).await
}

/// Deletes the row if `guard` admits it, answering what it was.
pub async fn delete<T>(
    client: &impl GenericClient,
    table: &Table,
    id: Param<'_>,
    guard: &WriteGuard,
    map: impl Fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> Result<T> {
    let Some((condition, guard_params)) = guard_sql(guard, 2, placeholder) else {
        return refused(client, table, id, &map).await;
    };
    let sql = format!(
        "DELETE FROM {} WHERE {} = $1 AND ({condition}) RETURNING {}",
        table.name,
        table.key,
        table.returning()
    );
    let mut all: Vec<Param<'_>> = vec![id];
    all.extend(guard_params.iter().map(|p| p as Param<'_>));
    returning(client, table, id, &sql, &all, &map).await
}

/// Pessimistic concurrency, for the rows where conflicts are the rule rather than the
/// exception (a stock counter every checkout decrements): locks the row with
/// `SELECT ... FOR UPDATE` inside `tx`, waiting at most `lock_timeout` (past it the error is
/// a lock timeout, see [`is_lock_timeout`], and the transaction must roll back). The lock is
/// held until `tx` ends.
pub async fn lock<T>(
    tx: &Transaction<'_>,
    table: &Table,
    id: Param<'_>,
    lock_timeout: Duration,
    map: impl Fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> std::result::Result<Option<Current<T>>, tokio_postgres::Error> {
    // SET takes no parameters; the value is a number this code formats.
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_timeout.as_millis().max(1)
    ))
    .await?;
    let sql = format!(
        "SELECT {} FROM {} WHERE {} = $1 FOR UPDATE",
        table.returning(),
        table.name,
        table.key
    );
    match tx.query_opt(&sql, &[id]).await? {
        Some(row) => Ok(Some(current(&row, &map)?)),
        None => Ok(None),
    }
}

/// Whether `e` is PostgreSQL giving up on a lock after `lock_timeout`.
pub fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}

/// Runs a write that returns the row it wrote. One that matched no row is answered with the
/// row as it is now (stale), or gone.
async fn returning<T>(
    client: &impl GenericClient,
    table: &Table,
    id: Param<'_>,
    sql: &str,
    params: &[Param<'_>],
    map: &impl Fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> Result<T> {
    match client
        .query_opt(sql, params)
        .await
        .map_err(WriteError::Database)?
    {
        Some(row) => current(&row, map).map_err(WriteError::Database),
        None => refused(client, table, id, map).await,
    }
}

async fn refused<T>(
    client: &impl GenericClient,
    table: &Table,
    id: Param<'_>,
    map: &impl Fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> Result<T> {
    match read(client, table, id, map)
        .await
        .map_err(WriteError::Database)?
    {
        Some(c) => Err(WriteError::Stale(Box::new(c))),
        None => Err(WriteError::Gone),
    }
}

fn current<T>(
    row: &Row,
    map: &impl Fn(&Row) -> std::result::Result<T, tokio_postgres::Error>,
) -> std::result::Result<Current<T>, tokio_postgres::Error> {
    // Every statement here ends its columns with version, changed_at, changed_by.
    let at = row.len().saturating_sub(3);
    let version: i64 = row.try_get(at)?;
    Ok(Current {
        value: map(row)?,
        revision: Revision {
            version: u64::try_from(version).unwrap_or(0),
            changed_at: Timestamp(row.try_get(at + 1)?),
            changed_by: row.try_get(at + 2)?,
        },
    })
}
