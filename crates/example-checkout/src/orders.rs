//! The orders service's table, in the shop's own database (the file or schema the sagas are
//! kept in). The checkout saga's first and last steps are local transactions on it; each is
//! idempotent by the order id, so a step repeated after a crash changes nothing twice.
//!
//! An order goes `pending` (placed) to `confirmed` (paid), or to `cancelled` (the saga
//! turned back). A cancelled order is never confirmed and a confirmed one never cancelled:
//! each update names the status it leaves.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deadpool_postgres::Pool;
use oncely_core::sync::LockIgnoringPoison;
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

/// The orders table on SQLite or PostgreSQL.
#[derive(Clone)]
pub enum OrdersDb {
    /// One connection to the shop's file, used from blocking threads.
    Sqlite(Arc<Mutex<Connection>>),
    /// A pool, and the schema of the `orders` table.
    Postgres(Pool, String),
}

const SQLITE_SCHEMA: &str = "CREATE TABLE IF NOT EXISTS orders (
    id TEXT PRIMARY KEY, saga_id TEXT NOT NULL, email TEXT NOT NULL, items TEXT NOT NULL,
    amount INTEGER NOT NULL, status TEXT NOT NULL, charge_id TEXT, cancel_reason TEXT,
    created_at INTEGER NOT NULL)";

impl OrdersDb {
    /// The table in the SQLite file at `path` (created if missing).
    pub fn sqlite(path: &Path) -> Result<OrdersDb, String> {
        let conn = oncely_db::sqlite::open(
            path,
            oncely_db::sqlite::OpenOptions::new(Duration::from_secs(10)),
        )?;
        conn.execute_batch(SQLITE_SCHEMA)
            .map_err(|e| format!("{}: {e}", path.display()))?;
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
                   charge_id TEXT, cancel_reason TEXT,
                   created_at TIMESTAMPTZ NOT NULL DEFAULT now())"
            ))
            .await
            .map_err(|e| pg_error(&e))?;
        Ok(OrdersDb::Postgres(pool, schema.to_owned()))
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
            OrdersDb::Postgres(pool, s) => {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                client
                    .execute(
                        &format!(
                            "INSERT INTO \"{s}\".orders (id, saga_id, email, items, amount, status)
                             VALUES ($1, $2, $3, $4::text::jsonb, $5, 'pending') ON CONFLICT (id) DO NOTHING"
                        ),
                        &[&o.id, &o.saga_id, &o.email, &items, &amount],
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

    /// Moves a pending order to `to` (with a charge id or a reason). The status it has after
    /// the call, or `None` when there is no such order; a repeated call finds `to` already.
    pub async fn settle(&self, id: &str, to: Settle) -> Result<Option<String>, String> {
        let id = id.to_owned();
        let (status, charge, reason) = match to {
            Settle::Confirm { charge_id } => ("confirmed", Some(charge_id), None),
            Settle::Cancel { reason } => ("cancelled", None, Some(reason)),
        };
        match self {
            OrdersDb::Sqlite(conn) => {
                Self::sqlite_run(conn, move |c| {
                    c.execute(
                        "UPDATE orders SET status = ?2, charge_id = ?3, cancel_reason = ?4
                         WHERE id = ?1 AND status = 'pending'",
                        params![id, status, charge, reason],
                    )?;
                    c.query_row("SELECT status FROM orders WHERE id = ?1", [&id], |r| {
                        r.get(0)
                    })
                    .optional()
                })
                .await
            }
            OrdersDb::Postgres(pool, s) => {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                client
                    .execute(
                        &format!(
                            "UPDATE \"{s}\".orders SET status = $2, charge_id = $3, cancel_reason = $4
                             WHERE id = $1 AND status = 'pending'"
                        ),
                        &[&id, &status, &charge, &reason],
                    )
                    .await
                    .map_err(|e| pg_error(&e))?;
                Ok(client
                    .query_opt(
                        &format!("SELECT status FROM \"{s}\".orders WHERE id = $1"),
                        &[&id],
                    )
                    .await
                    .map_err(|e| pg_error(&e))?
                    .map(|r| r.get(0)))
            }
        }
    }

    /// Cancels `order` for `reason`: a pending one becomes `cancelled`; a missing one is
    /// written as `cancelled`, so that an insert still on its way changes nothing. A
    /// confirmed order stays confirmed.
    pub async fn cancel(&self, order: &Order, reason: &str) -> Result<(), String> {
        let (o, reason) = (order.clone(), reason.to_owned());
        let items = o.items.to_string();
        let amount = i64::try_from(o.amount).map_err(|e| e.to_string())?;
        match self {
            OrdersDb::Sqlite(conn) => {
                Self::sqlite_run(conn, move |c| {
                    c.execute(
                        "INSERT INTO orders (id, saga_id, email, items, amount, status, cancel_reason, created_at)
                         VALUES (?1, ?2, ?3, ?4, ?5, 'cancelled', ?6, ?7)
                         ON CONFLICT (id) DO UPDATE SET status = 'cancelled', cancel_reason = ?6
                         WHERE orders.status = 'pending'",
                        params![o.id, o.saga_id, o.email, items, amount, reason, now_ms()],
                    )
                    .map(|_| ())
                })
                .await
            }
            OrdersDb::Postgres(pool, s) => {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                client
                    .execute(
                        &format!(
                            "INSERT INTO \"{s}\".orders AS o (id, saga_id, email, items, amount, status, cancel_reason)
                             VALUES ($1, $2, $3, $4::text::jsonb, $5, 'cancelled', $6)
                             ON CONFLICT (id) DO UPDATE SET status = 'cancelled', cancel_reason = $6
                             WHERE o.status = 'pending'"
                        ),
                        &[&o.id, &o.saga_id, &o.email, &items, &amount, &reason],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| pg_error(&e))
            }
        }
    }

    /// One order.
    pub async fn get(&self, id: &str) -> Result<Option<Order>, String> {
        Ok(self.query(Some(id.to_owned())).await?.into_iter().next())
    }

    /// Every order, the oldest first.
    pub async fn list(&self) -> Result<Vec<Order>, String> {
        self.query(None).await
    }

    async fn query(&self, id: Option<String>) -> Result<Vec<Order>, String> {
        match self {
            OrdersDb::Sqlite(conn) => {
                Self::sqlite_run(conn, move |c| {
                    let mut st = c.prepare(
                        "SELECT id, saga_id, email, items, amount, status, charge_id, cancel_reason
                         FROM orders WHERE ?1 IS NULL OR id = ?1 ORDER BY created_at, id",
                    )?;
                    let rows = st.query_map([id], |r| {
                        let items: String = r.get(3)?;
                        Ok(Order {
                            id: r.get(0)?,
                            saga_id: r.get(1)?,
                            email: r.get(2)?,
                            items: serde_json::from_str(&items).unwrap_or(serde_json::Value::Null),
                            amount: u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0),
                            status: r.get(5)?,
                            charge_id: r.get(6)?,
                            cancel_reason: r.get(7)?,
                        })
                    })?;
                    rows.collect()
                })
                .await
            }
            OrdersDb::Postgres(pool, s) => {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                let rows = client
                    .query(
                        &format!(
                            "SELECT id, saga_id, email, items::text, amount, status, charge_id, cancel_reason
                             FROM \"{s}\".orders WHERE $1::text IS NULL OR id = $1 ORDER BY created_at, id"
                        ),
                        &[&id],
                    )
                    .await
                    .map_err(|e| pg_error(&e))?;
                Ok(rows
                    .iter()
                    .map(|r| Order {
                        id: r.get(0),
                        saga_id: r.get(1),
                        email: r.get(2),
                        items: serde_json::from_str(r.get::<_, &str>(3))
                            .unwrap_or(serde_json::Value::Null),
                        amount: u64::try_from(r.get::<_, i64>(4)).unwrap_or(0),
                        status: r.get(5),
                        charge_id: r.get(6),
                        cancel_reason: r.get(7),
                    })
                    .collect())
            }
        }
    }
}

/// Where a pending order goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// Paid: `confirmed`, with the provider's charge.
    Confirm {
        /// The provider's charge id.
        charge_id: String,
    },
    /// Turned back: `cancelled`, with why.
    Cancel {
        /// Why.
        reason: String,
    },
}

/// Milliseconds since the epoch, for `created_at` on SQLite (PostgreSQL uses `now()`).
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
