//! The shop's tables and its checkout operation on each database. The SQL is the only part
//! that differs: SQLite phases are synchronous `rusqlite` calls, PostgreSQL phases are async
//! `tokio-postgres` calls; both run inside the transaction that moves the recovery point.

use std::sync::Arc;

use async_trait::async_trait;
use oncely_recovery::postgres::PgJournal;
use oncely_recovery::sqlite::SqliteJournal;
use oncely_recovery::{Flow, Journal, Operation};
use serde::Serialize;

use crate::shop::{self, CheckoutState, Provider};

/// One order as `GET /orders` shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OrderView {
    /// `ord_` and the start of the operation id: derived, never a sequence, so every run of
    /// the checkout inserts and answers the same id.
    pub id: String,
    /// The receipt's recipient.
    pub email: String,
    /// The total in cents.
    pub amount: i64,
    /// `pending` until the last phase commits, then `paid` or `declined`.
    pub status: String,
    /// The provider's charge, set by the last phase; `None` while pending and if declined.
    pub charge_id: Option<String>,
}

/// What the shop needs of a database besides the journal.
#[async_trait]
pub trait ShopDb: Journal + Sized {
    /// Creates the shop's tables (and the journal's) if absent.
    async fn setup(&self) -> Result<(), String>;
    /// The checkout operation with this database's phases.
    fn checkout(&self, provider: Arc<Provider>) -> Operation<Self, CheckoutState>;
    /// Every order, by id: what `GET /orders` shows and the crash tests count.
    async fn orders(&self) -> Result<Vec<OrderView>, String>;
    /// Receipt emails waiting in the outbox: (order id, recipient).
    async fn outbox(&self) -> Result<Vec<(String, String)>, String>;
}

const SQLITE_TABLES: &str = "
CREATE TABLE IF NOT EXISTS orders (
    id           TEXT PRIMARY KEY,
    operation_id TEXT NOT NULL UNIQUE,
    email        TEXT NOT NULL,
    amount       INTEGER NOT NULL,
    status       TEXT NOT NULL,
    charge_id    TEXT
);
CREATE TABLE IF NOT EXISTS outbox_emails (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    order_id  TEXT NOT NULL UNIQUE REFERENCES orders (id),
    recipient TEXT NOT NULL,
    subject   TEXT NOT NULL,
    body      TEXT NOT NULL
);";

#[async_trait]
impl ShopDb for SqliteJournal {
    async fn setup(&self) -> Result<(), String> {
        self.migrate().await.map_err(|e| e.to_string())?;
        self.with_connection(|c| c.execute_batch(SQLITE_TABLES))
            .await
            .map_err(|e| e.to_string())
    }

    fn checkout(&self, provider: Arc<Provider>) -> Operation<Self, CheckoutState> {
        sqlite_checkout(provider)
    }

    async fn orders(&self) -> Result<Vec<OrderView>, String> {
        self.with_connection(|c| {
            let mut s =
                c.prepare("SELECT id, email, amount, status, charge_id FROM orders ORDER BY id")?;
            let rows = s.query_map([], |r| {
                Ok(OrderView {
                    id: r.get(0)?,
                    email: r.get(1)?,
                    amount: r.get(2)?,
                    status: r.get(3)?,
                    charge_id: r.get(4)?,
                })
            })?;
            rows.collect()
        })
        .await
        .map_err(|e| e.to_string())
    }

    async fn outbox(&self) -> Result<Vec<(String, String)>, String> {
        self.with_connection(|c| {
            let mut s = c.prepare("SELECT order_id, recipient FROM outbox_emails ORDER BY id")?;
            let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
        .map_err(|e| e.to_string())
    }
}

/// The checkout on SQLite (its phases need no journal instance: the tables have fixed names).
pub fn sqlite_checkout(provider: Arc<Provider>) -> Operation<SqliteJournal, CheckoutState> {
    Operation::<SqliteJournal, CheckoutState>::new("checkout")
        .atomic("create_order", |tx, st: &mut CheckoutState| {
            let inserted = tx.execute(
                "INSERT INTO orders (id, operation_id, email, amount, status) \
                 VALUES (?1, ?2, ?3, ?4, 'pending') ON CONFLICT DO NOTHING",
                (&st.order_id, &st.operation_id, &st.email, st.amount as i64),
            )?;
            Ok(shop::after_order_insert(inserted, st))
        })
        .foreign("charge", move |call| shop::charge(provider.clone(), call))
        .atomic("send_receipt", |tx, st: &mut CheckoutState| {
            let status = if st.declined { "declined" } else { "paid" };
            tx.execute(
                "UPDATE orders SET status = ?1, charge_id = ?2 WHERE id = ?3",
                (status, &st.charge_id, &st.order_id),
            )?;
            if !st.declined {
                tx.execute(
                    "INSERT INTO outbox_emails (order_id, recipient, subject, body) \
                         VALUES (?1, ?2, ?3, ?4)",
                    (
                        &st.order_id,
                        &st.email,
                        st.receipt_subject(),
                        st.receipt_body(),
                    ),
                )?;
            }
            Ok(Flow::Respond(shop::final_response(st)))
        })
}

#[async_trait]
impl ShopDb for PgJournal {
    async fn setup(&self) -> Result<(), String> {
        self.migrate().await.map_err(|e| e.to_string())?;
        let s = self.schema();
        let client = self.pool().get().await.map_err(|e| e.to_string())?;
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS \"{s}\".orders (
                    id           text PRIMARY KEY,
                    operation_id text NOT NULL UNIQUE,
                    email        text NOT NULL,
                    amount       int8 NOT NULL,
                    status       text NOT NULL,
                    charge_id    text
                 );
                 CREATE TABLE IF NOT EXISTS \"{s}\".outbox_emails (
                    id        bigserial PRIMARY KEY,
                    order_id  text NOT NULL UNIQUE REFERENCES \"{s}\".orders (id),
                    recipient text NOT NULL,
                    subject   text NOT NULL,
                    body      text NOT NULL
                 );"
            ))
            .await
            .map_err(|e| e.to_string())
    }

    fn checkout(&self, provider: Arc<Provider>) -> Operation<Self, CheckoutState> {
        let s = self.schema().to_owned();
        let insert_order: Arc<str> = format!(
            "INSERT INTO \"{s}\".orders (id, operation_id, email, amount, status) \
             VALUES ($1, $2, $3, $4, 'pending') ON CONFLICT DO NOTHING"
        )
        .into();
        let update_order: Arc<str> =
            format!("UPDATE \"{s}\".orders SET status = $1, charge_id = $2 WHERE id = $3").into();
        let insert_email: Arc<str> = format!(
            "INSERT INTO \"{s}\".outbox_emails (order_id, recipient, subject, body) \
             VALUES ($1, $2, $3, $4)"
        )
        .into();
        Operation::<PgJournal, CheckoutState>::new("checkout")
            .atomic("create_order", move |tx, st: &mut CheckoutState| {
                let sql = insert_order.clone();
                Box::pin(async move {
                    let amount = st.amount as i64;
                    let inserted = tx
                        .execute(&*sql, &[&st.order_id, &st.operation_id, &st.email, &amount])
                        .await?;
                    Ok(shop::after_order_insert(inserted as usize, st))
                })
            })
            .foreign("charge", move |call| shop::charge(provider.clone(), call))
            .atomic("send_receipt", move |tx, st: &mut CheckoutState| {
                let (update, insert) = (update_order.clone(), insert_email.clone());
                Box::pin(async move {
                    let status = if st.declined { "declined" } else { "paid" };
                    tx.execute(&*update, &[&status, &st.charge_id, &st.order_id])
                        .await?;
                    if !st.declined {
                        tx.execute(
                            &*insert,
                            &[
                                &st.order_id,
                                &st.email,
                                &st.receipt_subject(),
                                &st.receipt_body(),
                            ],
                        )
                        .await?;
                    }
                    Ok(Flow::Respond(shop::final_response(st)))
                })
            })
    }

    async fn orders(&self) -> Result<Vec<OrderView>, String> {
        let client = self.pool().get().await.map_err(|e| e.to_string())?;
        let rows = client
            .query(
                &format!(
                    "SELECT id, email, amount, status, charge_id FROM \"{}\".orders ORDER BY id",
                    self.schema()
                ),
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        rows.iter()
            .map(|r| {
                Ok(OrderView {
                    id: r.try_get(0)?,
                    email: r.try_get(1)?,
                    amount: r.try_get(2)?,
                    status: r.try_get(3)?,
                    charge_id: r.try_get(4)?,
                })
            })
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| e.to_string())
    }

    async fn outbox(&self) -> Result<Vec<(String, String)>, String> {
        let client = self.pool().get().await.map_err(|e| e.to_string())?;
        let rows = client
            .query(
                &format!(
                    "SELECT order_id, recipient FROM \"{}\".outbox_emails ORDER BY id",
                    self.schema()
                ),
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()
            .map_err(|e| e.to_string())
    }
}
