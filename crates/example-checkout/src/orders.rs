//! The orders service's table, in the shop's own database (the file or schema the sagas are
//! kept in). The checkout saga's first and last steps are local transactions on it; each is
//! idempotent by the order id, so a step repeated after a crash changes nothing twice.
//!
//! An order goes `pending` (placed) to `confirmed` (paid), or to `cancelled` (the saga
//! turned back). A cancelled order is never confirmed and a confirmed one never cancelled:
//! each update names the status it leaves. The update that settles an order enqueues its
//! event (`order.confirmed`, `order.cancelled`) in the transactional outbox in the same
//! transaction, only when it changed the order: a step repeated after a crash neither
//! settles nor announces twice (`oncely relay` publishes the events from this database).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::{Clock, SystemClock};
use oncely_outbox::postgres::PgOutbox;
use oncely_outbox::sqlite::SqliteOutbox;
use oncely_outbox::NewEvent;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};

/// An order as the shop shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Order {
    /// `ord_…`, derived from the checkout's saga id.
    pub id: String,
    /// The saga that placed it.
    pub saga_id: String,
    /// The buyer's e-mail address.
    pub email: String,
    /// The items as JSON (`[{"sku":"tea","qty":2}]`).
    pub items: serde_json::Value,
    /// The total in cents.
    pub amount: u64,
    /// `pending`, `confirmed` or `cancelled`.
    pub status: String,
    /// The provider's charge, once confirmed.
    pub charge_id: Option<String>,
    /// Why it was cancelled.
    pub cancel_reason: Option<String>,
}

/// The orders table on SQLite or PostgreSQL, and the outbox beside it.
#[derive(Clone)]
pub enum OrdersDb {
    /// One connection to the shop's file, used from blocking threads.
    Sqlite(Arc<Mutex<Connection>>),
    /// A pool, the schema of the `orders` table, and the outbox in that schema.
    Postgres(Pool, String, Arc<PgOutbox>),
}

/// The event announcing that an order was settled.
/// The moves of an order that settle it, each from one status: the SQL is fixed text, never
/// built from input.
#[derive(Debug, Clone, Copy)]
enum Settle {
    /// pending -> confirmed, with its charge.
    Confirm,
    /// confirmed -> cancelled, with the reason (a buyer's cancel after the checkout).
    CancelConfirmed,
}

impl Settle {
    /// The status it moves to, the column it sets, the status it moves from.
    fn transition(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Settle::Confirm => ("confirmed", "charge_id", "pending"),
            Settle::CancelConfirmed => ("cancelled", "cancel_reason", "confirmed"),
        }
    }
}

fn settled_event(id: &str, status: &str, detail: serde_json::Value) -> NewEvent {
    NewEvent {
        aggregate_type: "order".into(),
        aggregate_id: id.to_owned(),
        event_type: format!("order.{status}"),
        payload: serde_json::json!({ "order_id": id, "status": status, "detail": detail }),
        headers: std::collections::BTreeMap::new(),
    }
}

/// Enqueues `event` in `tx` if the statement before it changed the order (`changed` rows).
fn announce_sqlite(
    tx: &rusqlite::Transaction<'_>,
    changed: usize,
    event: &NewEvent,
) -> rusqlite::Result<()> {
    if changed == 1 {
        // An outbox error as a rusqlite one, to leave the transaction by `?`.
        SqliteOutbox::enqueue(tx, event, SystemClock.now())
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    }
    Ok(())
}

/// [`announce_sqlite`] on PostgreSQL.
async fn announce_pg(
    outbox: &PgOutbox,
    tx: &deadpool_postgres::Transaction<'_>,
    changed: u64,
    event: &NewEvent,
) -> Result<(), String> {
    if changed == 1 {
        outbox
            .enqueue_cached(tx, event)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// [`OrdersDb::settle`] on SQLite, in `tx`: whether the order moved, and its status after.
fn settle_sqlite(
    tx: &rusqlite::Transaction<'_>,
    how: Settle,
    id: &str,
    value: &str,
    event: &NewEvent,
) -> rusqlite::Result<(bool, Option<String>)> {
    let (to, column, from) = how.transition();
    let update = format!(
        "UPDATE orders SET status = '{to}', {column} = ?2 WHERE id = ?1 AND status = '{from}'"
    );
    let changed = tx.execute(&update, params![id, value])?;
    announce_sqlite(tx, changed, event)?;
    let status = tx
        .query_row("SELECT status FROM orders WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    Ok((changed == 1, status))
}

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY, saga_id TEXT NOT NULL, email TEXT NOT NULL, items TEXT NOT NULL,
    amount INTEGER NOT NULL, status TEXT NOT NULL, charge_id TEXT, cancel_reason TEXT,
    created_at INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS orders_created ON orders (created_at, id)";

impl OrdersDb {
    /// The table in the SQLite file at `path` (created if missing).
    pub fn sqlite(path: &Path) -> Result<OrdersDb, String> {
        let conn = oncely_db::sqlite::open(
            path,
            oncely_db::sqlite::OpenOptions::new(Duration::from_secs(10)),
        )?;
        conn.execute_batch(SQLITE_SCHEMA)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // Creates (or brings up to date) the outbox's tables in the same file.
        SqliteOutbox::open(path, Duration::from_secs(10), Arc::new(SystemClock))
            .map_err(|e| format!("{}: the outbox: {e}", path.display()))?;
        Ok(OrdersDb::Sqlite(Arc::new(Mutex::new(conn))))
    }

    /// The table in `schema` on PostgreSQL (created if missing).
    pub async fn postgres(pool: Pool, schema: &str) -> Result<OrdersDb, String> {
        oncely_db::postgres::validate_schema(schema)?;
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\";
                 CREATE TABLE IF NOT EXISTS \"{schema}\".orders (
                   id TEXT PRIMARY KEY, saga_id TEXT NOT NULL, email TEXT NOT NULL,
                   items JSONB NOT NULL, amount BIGINT NOT NULL, status TEXT NOT NULL,
                   charge_id TEXT, cancel_reason TEXT, created_at BIGINT NOT NULL);
                 CREATE INDEX IF NOT EXISTS orders_created
                   ON \"{schema}\".orders (created_at, id)"
            ))
            .await
            .map_err(|e| pg_error(&e))?;
        // The pool may hold one connection: this one goes back before the outbox's.
        drop(client);
        let outbox = PgOutbox::open(pool.clone(), schema, Arc::new(SystemClock))
            .await
            .map_err(|e| format!("the outbox: {e}"))?;
        Ok(OrdersDb::Postgres(
            pool,
            schema.to_owned(),
            Arc::new(outbox),
        ))
    }

    async fn sqlite_run<T: Send + 'static>(
        conn: &Arc<Mutex<Connection>>,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, String> {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || f(&conn.lock_ignoring_poison()))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    /// Places `order` as `pending`; placing it again is a no-op. `false` when an order with
    /// its id exists for another saga (a bug worth failing loudly for).
    pub async fn place(&self, order: &Order) -> Result<bool, String> {
        let o = order.clone();
        let items = o.items.to_string();
        let amount = i64::try_from(o.amount).map_err(|e| e.to_string())?;
        let owner: Option<String> = match self {
            OrdersDb::Sqlite(conn) => {
                Self::sqlite_run(conn, move |c| {
                    c.execute(
                        "INSERT INTO orders (id, saga_id, email, items, amount, status, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6) ON CONFLICT (id) DO NOTHING",
                        params![o.id, o.saga_id, o.email, items, amount, now_ms()],
                    )?;
                    c.query_row("SELECT saga_id FROM orders WHERE id = ?1", [&o.id], |r| {
                        r.get(0)
                    })
                    .optional()
                })
                .await?
            }
            OrdersDb::Postgres(pool, s, _) => {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                client
                    .execute(
                        &format!(
                            "INSERT INTO \"{s}\".orders (id, saga_id, email, items, amount, status, created_at)
                             VALUES ($1, $2, $3, $4::text::jsonb, $5, 'pending', $6) ON CONFLICT (id) DO NOTHING"
                        ),
                        &[&o.id, &o.saga_id, &o.email, &items, &amount, &now_ms()],
                    )
                    .await
                    .map_err(|e| pg_error(&e))?;
                client
                    .query_opt(
                        &format!("SELECT saga_id FROM \"{s}\".orders WHERE id = $1"),
                        &[&o.id],
                    )
                    .await
                    .map_err(|e| pg_error(&e))?
                    .map(|r| r.get(0))
            }
        };
        Ok(owner.as_deref() == Some(order.saga_id.as_str()))
    }

    /// Confirms a pending order with its charge and enqueues `order.confirmed`, in one
    /// transaction. The status it has after the call, or `None` when there is no such
    /// order; a repeated call finds `confirmed` already and enqueues nothing.
    pub async fn confirm(&self, id: &str, charge_id: &str) -> Result<Option<String>, String> {
        let event = settled_event(
            id,
            "confirmed",
            serde_json::json!({ "charge_id": charge_id }),
        );
        self.settle(id, Settle::Confirm, charge_id, event).await
    }

    /// Cancels `order` for `reason` and enqueues `order.cancelled`, in one transaction: a
    /// pending order becomes `cancelled`; a missing one is written as `cancelled`, so that
    /// an insert still on its way changes nothing. A confirmed or cancelled order stays as
    /// it is, and nothing is enqueued for it.
    pub async fn cancel(&self, order: &Order, reason: &str) -> Result<(), String> {
        let (o, reason) = (order.clone(), reason.to_owned());
        let items = o.items.to_string();
        let amount = i64::try_from(o.amount).map_err(|e| e.to_string())?;
        let event = settled_event(&o.id, "cancelled", serde_json::json!({ "reason": reason }));
        match self {
            OrdersDb::Sqlite(conn) => {
                Self::sqlite_run(conn, move |c| {
                    let tx = c.unchecked_transaction()?;
                    let changed = tx.execute(
                        "INSERT INTO orders (id, saga_id, email, items, amount, status, cancel_reason, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'cancelled', ?6, ?7)
                         ON CONFLICT (id) DO UPDATE SET status = 'cancelled', cancel_reason = ?6
                         WHERE orders.status = 'pending'",
                        params![o.id, o.saga_id, o.email, items, amount, reason, now_ms()],
                    )?;
                    announce_sqlite(&tx, changed, &event)?;
                    tx.commit()
                })
                .await
            }
            OrdersDb::Postgres(pool, s, outbox) => {
                let mut client = pool.get().await.map_err(|e| e.to_string())?;
                let tx = client.transaction().await.map_err(|e| pg_error(&e))?;
                let changed = tx
                    .execute(
                        &format!(
                            "INSERT INTO \"{s}\".orders AS o (id, saga_id, email, items, amount, status, cancel_reason, created_at)
                             VALUES ($1, $2, $3, $4::text::jsonb, $5, 'cancelled', $6, $7)
                             ON CONFLICT (id) DO UPDATE SET status = 'cancelled', cancel_reason = $6
                             WHERE o.status = 'pending'"
                        ),
                        &[&o.id, &o.saga_id, &o.email, &items, &amount, &reason, &now_ms()],
                    )
                    .await
                    .map_err(|e| pg_error(&e))?;
                announce_pg(outbox, &tx, changed, &event).await?;
                tx.commit().await.map_err(|e| pg_error(&e))
            }
        }
    }

    /// Cancels a confirmed order for `reason` (a buyer's cancel after the checkout, once
    /// its refund and the release of its stock are done) and enqueues `order.cancelled`, in
    /// one transaction. The status it has after the call, or `None` when there is no such
    /// order; a pending order stays pending (its saga decides it), and a repeated call finds
    /// `cancelled` already and enqueues nothing.
    pub async fn cancel_confirmed(&self, id: &str, reason: &str) -> Result<Option<String>, String> {
        let event = settled_event(id, "cancelled", serde_json::json!({ "reason": reason }));
        self.settle(id, Settle::CancelConfirmed, reason, event)
            .await
    }

    /// Moves order `id` along `how` (setting its column to `value`) and enqueues `event` only
    /// if it moved, in one transaction; the status it has after, `None` if there is no such
    /// order.
    async fn settle(
        &self,
        id: &str,
        how: Settle,
        value: &str,
        event: NewEvent,
    ) -> Result<Option<String>, String> {
        let (id, value) = (id.to_owned(), value.to_owned());
        let (to, column, from) = how.transition();
        match self {
            OrdersDb::Sqlite(conn) => {
                Self::sqlite_run(conn, move |c| {
                    let tx = c.unchecked_transaction()?;
                    let (_, status) = settle_sqlite(&tx, how, &id, &value, &event)?;
                    tx.commit()?;
                    Ok(status)
                })
                .await
            }
            OrdersDb::Postgres(pool, s, outbox) => {
                let mut client = pool.get().await.map_err(|e| e.to_string())?;
                let tx = client.transaction().await.map_err(|e| pg_error(&e))?;
                let changed = tx
                    .execute(
                        &format!(
                            "UPDATE \"{s}\".orders SET status = '{to}', {column} = $2
                             WHERE id = $1 AND status = '{from}'"
                        ),
                        &[&id, &value],
                    )
                    .await
                    .map_err(|e| pg_error(&e))?;
                announce_pg(outbox, &tx, changed, &event).await?;
                let status = tx
                    .query_opt(
                        &format!("SELECT status FROM \"{s}\".orders WHERE id = $1"),
                        &[&id],
                    )
                    .await
                    .map_err(|e| pg_error(&e))?
                    .map(|r| r.get(0));
                tx.commit().await.map_err(|e| pg_error(&e))?;
                Ok(status)
            }
        }
    }

    /// [`OrdersDb::cancel_confirmed`] inside a transaction the caller holds on the SQLite
    /// file of the orders table, so that the caller commits it together with writes of its
    /// own (the shop records the refund with it). Whether it moved the order now, and the
    /// status it has in the transaction (`None` when there is no such order).
    pub fn cancel_confirmed_in(
        tx: &rusqlite::Transaction<'_>,
        id: &str,
        reason: &str,
    ) -> rusqlite::Result<(bool, Option<String>)> {
        let event = settled_event(id, "cancelled", serde_json::json!({ "reason": reason }));
        settle_sqlite(tx, Settle::CancelConfirmed, id, reason, &event)
    }

    /// One order.
    pub async fn get(&self, id: &str) -> Result<Option<Order>, String> {
        Ok(self.query(Some(id.to_owned())).await?.into_iter().next())
    }

    /// Every order, the oldest first.
    pub async fn list(&self) -> Result<Vec<Order>, String> {
        self.query(None).await
    }

    /// The orders placed in `[from, to)` (milliseconds since the epoch), oldest first, after
    /// the position `after` (the `created_at` and id of the last one read), at most
    /// `limit`: what reconciliation reads, page by page. Each with its `created_at`.
    pub async fn placed_between(
        &self,
        from: i64,
        to: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<(i64, Order)>, String> {
        self.select(None, from, to, after, Some(limit)).await
    }

    async fn query(&self, id: Option<String>) -> Result<Vec<Order>, String> {
        Ok(self
            .select(id, i64::MIN, i64::MAX, None, None)
            .await?
            .into_iter()
            .map(|(_, o)| o)
            .collect())
    }

    async fn select(
        &self,
        id: Option<String>,
        from: i64,
        to: i64,
        after: Option<(i64, String)>,
        limit: Option<usize>,
    ) -> Result<Vec<(i64, Order)>, String> {
        let (after_at, after_id) = after.unwrap_or((i64::MIN, String::new()));
        let limit = limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        match self {
            OrdersDb::Sqlite(conn) => {
                Self::sqlite_run(conn, move |c| {
                    let mut st = c.prepare_cached(
                        "SELECT id, saga_id, email, items, amount, status, charge_id, cancel_reason, created_at
                         FROM orders WHERE (?1 IS NULL OR id = ?1) AND created_at >= ?2 AND created_at < ?3
                         AND (created_at, id) > (?4, ?5) ORDER BY created_at, id LIMIT coalesce(?6, -1)",
                    )?;
                    let rows = st.query_map(params![id, from, to, after_at, after_id, limit], |r| {
                        let items: String = r.get(3)?;
                        Ok((
                            r.get(8)?,
                            Order {
                                id: r.get(0)?,
                                saga_id: r.get(1)?,
                                email: r.get(2)?,
                                items: serde_json::from_str(&items)
                                    .unwrap_or(serde_json::Value::Null),
                                amount: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                                status: r.get(5)?,
                                charge_id: r.get(6)?,
                                cancel_reason: r.get(7)?,
                            },
                        ))
                    })?;
                    rows.collect()
                })
                .await
            }
            OrdersDb::Postgres(pool, s, _) => {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                let rows = client
                    .query(
                        &format!(
                            "SELECT id, saga_id, email, items::text, amount, status, charge_id, cancel_reason, created_at
                             FROM \"{s}\".orders WHERE ($1::text IS NULL OR id = $1)
                             AND created_at >= $2 AND created_at < $3 AND (created_at, id) > ($4, $5)
                             ORDER BY created_at, id LIMIT $6"
                        ),
                        &[&id, &from, &to, &after_at, &after_id, &limit],
                    )
                    .await
                    .map_err(|e| pg_error(&e))?;
                Ok(rows
                    .iter()
                    .map(|r| {
                        (
                            r.get(8),
                            Order {
                                id: r.get(0),
                                saga_id: r.get(1),
                                email: r.get(2),
                                items: serde_json::from_str(r.get::<_, &str>(3))
                                    .unwrap_or(serde_json::Value::Null),
                                amount: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                                status: r.get(5),
                                charge_id: r.get(6),
                                cancel_reason: r.get(7),
                            },
                        )
                    })
                    .collect())
            }
        }
    }
}

/// Milliseconds since the epoch, for `created_at`.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A PostgreSQL error with the server's message, which `Display` leaves out.
fn pg_error(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}
