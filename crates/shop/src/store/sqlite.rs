//! [`ShopStore`] on SQLite: the shop's tables in the same file as the checkout's orders and
//! sagas, the outbox and inbox, the reconciliation store and the audit trail, so that a
//! write and its event commit together.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oncely_conditional::sqlite::{self as versioned, Change};
use oncely_conditional::{Current, Table, Timestamp, WriteError, WriteGuard};
use oncely_core::conditional::format_rfc3339;
use oncely_core::sync::LockIgnoringPoison;
use oncely_db::migrate::{Migration, Migrations};
use oncely_example_checkout::orders::OrdersDb;
use oncely_outbox::inbox::sqlite::apply_once;
use oncely_outbox::inbox::Applied as InboxApplied;
use oncely_outbox::sqlite::SqliteOutbox;
use oncely_outbox::{EventId, NewEvent, OutboxEvent};
use rusqlite::{params, Connection, OptionalExtension as _, Row, TransactionBehavior};

use super::{
    Applied, CancelSettled, Consumer, FollowedUp, Guarded, MarkedPaid, NewOrder, NotesSaved,
    ShopStore, Written,
};
use crate::catalog::USERS;
use crate::model::{
    Address, Cart, Line, Notes, Notification, OrderView, PaymentRow, Positions, Profile,
    ProfileDoc, ShopOrder,
};
use crate::DbError;

/// The shop's tables. The outbox's tables must exist before (the checkout's orders create
/// them), because every event committed gets its position from a trigger on them.
const MIGRATIONS: Migrations = Migrations {
    concern: "shop",
    steps: &[Migration {
        version: 1,
        description: "carts, profiles, notes, favourites, orders, order history, notifications, event positions",
        sql: "
CREATE TABLE IF NOT EXISTS shop_meta (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS shop_carts (
    user_id    TEXT PRIMARY KEY,
    items      TEXT NOT NULL,
    version    INTEGER NOT NULL,
    changed_at INTEGER NOT NULL,
    changed_by TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS shop_profiles (
    user_id    TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    email      TEXT NOT NULL,
    addresses  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    changed_at INTEGER NOT NULL,
    changed_by TEXT
) STRICT;
CREATE TABLE IF NOT EXISTS shop_notes (
    user_id  TEXT PRIMARY KEY,
    notes    TEXT NOT NULL,
    seq      INTEGER NOT NULL,
    saved_at INTEGER NOT NULL
) STRICT;
CREATE TABLE IF NOT EXISTS shop_favourites (
    user_id  TEXT NOT NULL,
    product  TEXT NOT NULL,
    added_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, product)
) STRICT;
CREATE TABLE IF NOT EXISTS shop_orders (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    checkout_id  TEXT NOT NULL,
    items        TEXT NOT NULL,
    total_cents  INTEGER NOT NULL,
    payment      TEXT NOT NULL,
    charge_id    TEXT,
    refund_id    TEXT,
    cart_emptied INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS shop_orders_created ON shop_orders (created_at, id);
CREATE TABLE IF NOT EXISTS shop_order_history (
    id          TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    status      TEXT NOT NULL,
    payment     TEXT NOT NULL,
    total_cents INTEGER NOT NULL,
    items       TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS shop_order_history_user ON shop_order_history (user_id, created_at);
CREATE TABLE IF NOT EXISTS shop_notifications (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id  TEXT NOT NULL,
    order_id TEXT,
    text     TEXT NOT NULL,
    at       INTEGER NOT NULL,
    event_id TEXT NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS shop_notifications_user ON shop_notifications (user_id, id);
-- An event's position: AUTOINCREMENT never hands a number out twice (not even after the
-- rows are deleted by a reset), and SQLite's single writer commits positions in order, so
-- the committed positions are always 1..n without holes in the middle.
CREATE TABLE IF NOT EXISTS shop_outbox_positions (
    position      INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT NOT NULL UNIQUE,
    aggregate_id  TEXT NOT NULL,
    in_history    INTEGER NOT NULL DEFAULT 0
) STRICT;
CREATE INDEX IF NOT EXISTS shop_outbox_positions_behind ON shop_outbox_positions (position)
    WHERE in_history = 0;
CREATE INDEX IF NOT EXISTS shop_outbox_positions_aggregate
    ON shop_outbox_positions (aggregate_id, position);
-- Events are enqueued by the checkout's own code too (an order confirmed or cancelled by
-- its saga), inside transactions the shop does not see: a trigger is the one place that
-- numbers every event in the transaction that commits it.
CREATE TRIGGER IF NOT EXISTS shop_outbox_position AFTER INSERT ON oncely_outbox
BEGIN
    INSERT INTO shop_outbox_positions (event_id, aggregate_id) VALUES (NEW.id, NEW.aggregate_id);
END;
",
    }, Migration {
        version: 2,
        description: "the idempotency key of the buyer's cancel that refunded an order",
        // A retry of that cancel (its answer lost) is told apart from another cancel of an
        // order cancelled already.
        sql: "ALTER TABLE shop_orders ADD COLUMN cancel_key TEXT;",
    }],
};

/// The inbox consumer of the follow-up of an order's settlement (the cart emptied): apart
/// from the order history's, so that a follow-up that failed is done on the next delivery
/// even though the history applied the event already.
const FOLLOW_UP: &str = "order-follow-up";

const CARTS: Table = Table::new("shop_carts", "user_id", "items");
const PROFILES: Table = Table::new("shop_profiles", "user_id", "name, email, addresses");

/// The shop's tables in one SQLite file.
pub(crate) struct SqliteShop {
    conn: Arc<Mutex<Connection>>,
}

fn corrupt(table: &'static str, e: impl std::fmt::Display) -> DbError {
    DbError::Corrupt {
        table,
        reason: e.to_string(),
    }
}

/// A JSON column that does not read, as the error rusqlite's row mappers return.
fn json_column<T: serde::de::DeserializeOwned>(row: &Row<'_>, i: usize) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, Box::new(e))
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, DbError> {
    serde_json::to_string(value).map_err(|e| DbError::Unavailable(format!("encode: {e}")))
}

fn rfc3339(ms: i64) -> String {
    format_rfc3339(Timestamp(ms))
}

fn cents(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn cart_row(row: &Row<'_>) -> rusqlite::Result<Cart> {
    Ok(Cart {
        items: json_column(row, 0)?,
        version: cents(row.get(1)?),
    })
}

/// A profile row; its notes are filled in by [`with_notes`].
fn profile_row(row: &Row<'_>) -> rusqlite::Result<Profile> {
    Ok(Profile {
        name: row.get(0)?,
        email: row.get(1)?,
        addresses: json_column(row, 2)?,
        notes: String::new(),
        notes_seq: 0,
        version: cents(row.get(3)?),
        updated_at: rfc3339(row.get(4)?),
        updated_by: row.get(5)?,
    })
}

fn notes_of(conn: &Connection, user: &str) -> rusqlite::Result<(String, u64)> {
    Ok(conn
        .prepare_cached("SELECT notes, seq FROM shop_notes WHERE user_id = ?1")?
        .query_row([user], |r| Ok((r.get(0)?, cents(r.get(1)?))))
        .optional()?
        .unwrap_or_default())
}

fn with_notes(
    conn: &Connection,
    user: &str,
    mut c: Current<Profile>,
) -> rusqlite::Result<Current<Profile>> {
    let (notes, seq) = notes_of(conn, user)?;
    c.value.notes = notes;
    c.value.notes_seq = seq;
    Ok(c)
}

/// The notes filled into whatever a guarded profile write answered.
fn profile_answer(
    conn: &Connection,
    user: &str,
    answer: Result<Current<Profile>, WriteError<Profile, rusqlite::Error>>,
) -> Result<Current<Profile>, WriteError<Profile, DbError>> {
    match answer {
        Ok(c) => with_notes(conn, user, c).map_err(|e| WriteError::Database(e.into())),
        Err(WriteError::Stale(c)) => match with_notes(conn, user, *c) {
            Ok(c) => Err(WriteError::Stale(Box::new(c))),
            Err(e) => Err(WriteError::Database(e.into())),
        },
        Err(WriteError::Gone) => Err(WriteError::Gone),
        Err(WriteError::Database(e)) => Err(WriteError::Database(e.into())),
    }
}

fn db_error<T>(e: WriteError<T, rusqlite::Error>) -> WriteError<T, DbError> {
    match e {
        WriteError::Stale(c) => WriteError::Stale(c),
        WriteError::Gone => WriteError::Gone,
        WriteError::Database(e) => WriteError::Database(e.into()),
    }
}

/// Enqueues `event` about the order `order` in `tx`; its position.
fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    order: &str,
    event_type: &str,
    payload: serde_json::Value,
    at: i64,
) -> Result<u64, DbError> {
    let id = SqliteOutbox::enqueue(
        tx,
        &NewEvent::new("order", order, event_type, payload),
        Timestamp(at),
    )?;
    let position: i64 = tx
        .prepare_cached("SELECT position FROM shop_outbox_positions WHERE event_id = ?1")?
        .query_row([id.to_string()], |r| r.get(0))?;
    Ok(cents(position))
}

/// Empties the cart of `user` for the confirmed order `order` in `tx`, once per order (the
/// order's `cart_emptied` flag); `None` when that was done before or there is no cart.
fn empty_cart_in(
    tx: &rusqlite::Transaction<'_>,
    order: &str,
    user: &str,
    at: i64,
) -> Result<Option<Written<Cart>>, DbError> {
    let first = tx.execute(
        "UPDATE shop_orders SET cart_emptied = 1 WHERE id = ?1 AND cart_emptied = 0",
        [order],
    )?;
    if first == 0 {
        return Ok(None);
    }
    let old = versioned::read(tx, &CARTS, &user, cart_row)?.map(|c| c.value);
    // The checkout itself empties the cart: no precondition, it is not an edit based on a
    // version the buyer saw.
    let new = versioned::update(
        tx,
        &CARTS,
        &user,
        &WriteGuard::default(),
        "items = '[]'",
        &[],
        Change {
            by: Some("checkout"),
            at: Timestamp(at),
        },
        cart_row,
    );
    match new {
        Ok(new) => Ok(Some(Written { old, new })),
        // No cart row (a user outside the seed): nothing to empty.
        Err(WriteError::Gone | WriteError::Stale(_)) => Ok(None),
        Err(WriteError::Database(e)) => Err(e.into()),
    }
}

/// Records the payment of `order` as refunded by `refund` under the cancel's key `key` in
/// `tx`, and enqueues `order.refunded`, once; whether it changed.
fn refund_in(
    tx: &rusqlite::Transaction<'_>,
    order: &str,
    refund: &str,
    key: &str,
    at: i64,
) -> Result<bool, DbError> {
    let changed = tx.execute(
        "UPDATE shop_orders SET payment = 'refunded', refund_id = ?2, cancel_key = ?3,
             updated_at = ?4
         WHERE id = ?1 AND payment <> 'refunded'",
        params![order, refund, key, at],
    )?;
    if changed == 1 {
        enqueue(
            tx,
            order,
            "order.refunded",
            serde_json::json!({ "order_id": order, "refund_id": refund }),
            at,
        )?;
    }
    Ok(changed == 1)
}

fn history_row(row: &Row<'_>) -> rusqlite::Result<(String, OrderView)> {
    Ok((
        row.get(0)?,
        OrderView {
            id: row.get(1)?,
            status: row.get(2)?,
            payment: row.get(3)?,
            total_cents: cents(row.get(4)?),
            items: json_column(row, 5)?,
            created_at: rfc3339(row.get(6)?),
            updated_at: rfc3339(row.get(7)?),
        },
    ))
}

const HISTORY_COLUMNS: &str =
    "user_id, id, status, payment, total_cents, items, created_at, updated_at";

impl SqliteShop {
    /// Opens the shop's tables in the file at `path` (migrating them); the outbox's tables
    /// must be there already.
    pub(crate) fn open(path: &Path, busy_timeout: Duration) -> Result<SqliteShop, DbError> {
        let mut conn =
            oncely_db::sqlite::open(path, oncely_db::sqlite::OpenOptions::new(busy_timeout))
                .map_err(DbError::Unavailable)?;
        oncely_db::sqlite::migrate(&mut conn, &MIGRATIONS)
            .map_err(|e| DbError::Unavailable(e.to_string()))?;
        oncely_outbox::inbox::sqlite::migrate(&mut conn)?;
        Ok(SqliteShop {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, DbError> {
        self.run_guarded(f, |e| e).await
    }

    /// [`SqliteShop::run`] for a guarded write, whose error also tells a stale version.
    async fn run_guarded<T: Send + 'static, E: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, E> + Send + 'static,
        database: fn(DbError) -> E,
    ) -> Result<T, E> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock_ignoring_poison()))
            .await
            .map_err(|e| database(DbError::Unavailable(format!("database thread: {e}"))))?
    }
}

/// Writes the seed rows of every user (carts, profiles, notes), replacing what is there.
fn write_seed(tx: &rusqlite::Transaction<'_>, at: i64) -> Result<(), DbError> {
    for u in USERS {
        tx.execute(
            "INSERT OR REPLACE INTO shop_carts (user_id, items, version, changed_at, changed_by)
             VALUES (?1, '[]', 1, ?2, NULL)",
            params![u.id, at],
        )?;
        let addresses = to_json(&vec![Address {
            id: "addr_1".into(),
            line: u.address.into(),
        }])?;
        tx.execute(
            "INSERT OR REPLACE INTO shop_profiles
             (user_id, name, email, addresses, version, changed_at, changed_by)
             VALUES (?1, ?2, ?3, ?4, 1, ?5, NULL)",
            params![u.id, u.name, u.email, addresses, at],
        )?;
        tx.execute(
            "INSERT OR REPLACE INTO shop_notes (user_id, notes, seq, saved_at) VALUES (?1, '', 0, ?2)",
            params![u.id, at],
        )?;
    }
    tx.execute(
        "INSERT INTO shop_meta (key, value) VALUES ('seeded', 1)
         ON CONFLICT (key) DO UPDATE SET value = 1",
        [],
    )?;
    Ok(())
}

/// What a reset empties: the shop's rows, and those of the concerns it is built from
/// (orders, sagas, outbox, inbox, reconciliation). The audit trail is not among them: its
/// table refuses deletes, as an audit trail should.
const RESET_TABLES: &[&str] = &[
    "shop_carts",
    "shop_profiles",
    "shop_notes",
    "shop_favourites",
    "shop_orders",
    "shop_order_history",
    "shop_notifications",
    "shop_outbox_positions",
    "orders",
    "oncely_saga_log",
    "oncely_sagas",
    "oncely_outbox",
    "oncely_outbox_sequences",
    "oncely_inbox",
    "oncely_reconcile_findings",
    "oncely_reconcile_runs",
    "oncely_reconcile_jobs",
];

#[async_trait]
impl ShopStore for SqliteShop {
    async fn seed(&self, at: i64) -> Result<bool, DbError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let seeded: Option<i64> = tx
                .query_row(
                    "SELECT value FROM shop_meta WHERE key = 'seeded'",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            if seeded.is_some() {
                return Ok(false);
            }
            write_seed(&tx, at)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn reset(&self, at: i64) -> Result<u64, DbError> {
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            for table in RESET_TABLES {
                // A table another concern has not created yet has nothing to empty.
                let exists: bool = tx.query_row(
                    "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
                    [table],
                    |r| r.get(0),
                )?;
                if exists {
                    tx.execute(&format!("DELETE FROM {table}"), [])?;
                }
            }
            let epoch: i64 = tx.query_row(
                "INSERT INTO shop_meta (key, value) VALUES ('epoch', 1)
                 ON CONFLICT (key) DO UPDATE SET value = value + 1 RETURNING value",
                [],
                |r| r.get(0),
            )?;
            write_seed(&tx, at)?;
            tx.commit()?;
            Ok(cents(epoch))
        })
        .await
    }

    async fn epoch(&self) -> Result<u64, DbError> {
        self.run(|conn| {
            let epoch: Option<i64> = conn
                .query_row("SELECT value FROM shop_meta WHERE key = 'epoch'", [], |r| {
                    r.get(0)
                })
                .optional()?;
            Ok(cents(epoch.unwrap_or(0)))
        })
        .await
    }

    async fn cart(&self, user: &str) -> Result<Option<Current<Cart>>, DbError> {
        let user = user.to_owned();
        self.run(move |conn| Ok(versioned::read(conn, &CARTS, &user, cart_row)?))
            .await
    }

    async fn put_cart(
        &self,
        user: &str,
        guard: &WriteGuard,
        items: &[Line],
        at: i64,
    ) -> Guarded<Cart> {
        let (user, guard) = (user.to_owned(), guard.clone());
        let items = to_json(&items).map_err(WriteError::Database)?;
        self.run_guarded(
            move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| WriteError::Database(e.into()))?;
                let old = versioned::read(&tx, &CARTS, &user, cart_row)
                    .map_err(|e| WriteError::Database(e.into()))?
                    .map(|c| c.value);
                let new = versioned::update(
                    &tx,
                    &CARTS,
                    &user,
                    &guard,
                    "items = ?1",
                    &[&items],
                    Change {
                        by: Some(&user),
                        at: Timestamp(at),
                    },
                    cart_row,
                )
                .map_err(db_error)?;
                tx.commit().map_err(|e| WriteError::Database(e.into()))?;
                Ok(Written { old, new })
            },
            WriteError::Database,
        )
        .await
    }

    async fn empty_cart_for(
        &self,
        order: &str,
        user: &str,
        at: i64,
    ) -> Result<Option<Written<Cart>>, DbError> {
        let (order, user) = (order.to_owned(), user.to_owned());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let emptied = empty_cart_in(&tx, &order, &user, at)?;
            tx.commit()?;
            Ok(emptied)
        })
        .await
    }

    async fn profile(&self, user: &str) -> Result<Option<Current<Profile>>, DbError> {
        let user = user.to_owned();
        self.run(move |conn| {
            let Some(c) = versioned::read(conn, &PROFILES, &user, profile_row)? else {
                return Ok(None);
            };
            Ok(Some(with_notes(conn, &user, c)?))
        })
        .await
    }

    async fn put_profile(
        &self,
        user: &str,
        guard: &WriteGuard,
        doc: &ProfileDoc,
        at: i64,
    ) -> Guarded<Profile> {
        let (user, guard, doc) = (user.to_owned(), guard.clone(), doc.clone());
        let addresses = to_json(&doc.addresses).map_err(WriteError::Database)?;
        self.run_guarded(
            move |conn| {
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(|e| WriteError::Database(e.into()))?;
                let old = versioned::read(&tx, &PROFILES, &user, profile_row)
                    .map_err(|e| WriteError::Database(e.into()))?
                    .map(|c| c.value);
                let written = versioned::update(
                    &tx,
                    &PROFILES,
                    &user,
                    &guard,
                    "name = ?1, email = ?2, addresses = ?3",
                    &[&doc.name, &doc.email, &addresses],
                    Change {
                        by: Some(&user),
                        at: Timestamp(at),
                    },
                    profile_row,
                );
                let new = profile_answer(&tx, &user, written)?;
                tx.commit().map_err(|e| WriteError::Database(e.into()))?;
                Ok(Written { old, new })
            },
            WriteError::Database,
        )
        .await
    }

    async fn remove_address(
        &self,
        user: &str,
        guard: &WriteGuard,
        address: &str,
        at: i64,
    ) -> Result<Option<Written<Profile>>, WriteError<Profile, DbError>> {
        let (user, guard, address) = (user.to_owned(), guard.clone(), address.to_owned());
        self.run_guarded(
            move |conn| {
                let database = |e: rusqlite::Error| WriteError::Database(DbError::from(e));
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(database)?;
                let Some(current) =
                    versioned::read(&tx, &PROFILES, &user, profile_row).map_err(database)?
                else {
                    return Err(WriteError::Gone);
                };
                // The precondition first: a stale edit learns that it is stale, whatever it
                // asked to remove.
                let revision = current.revision.clone();
                if !guard.admits(Some((revision.version, revision.changed_at))) {
                    let current = with_notes(&tx, &user, current).map_err(database)?;
                    return Err(WriteError::Stale(Box::new(current)));
                }
                let mut addresses = current.value.addresses.clone();
                let before = addresses.len();
                addresses.retain(|a| a.id != address);
                if addresses.len() == before {
                    return Ok(None);
                }
                let json = to_json(&addresses).map_err(WriteError::Database)?;
                let written = versioned::update(
                    &tx,
                    &PROFILES,
                    &user,
                    &guard,
                    "addresses = ?1",
                    &[&json],
                    Change {
                        by: Some(&user),
                        at: Timestamp(at),
                    },
                    profile_row,
                );
                let new = profile_answer(&tx, &user, written)?;
                tx.commit().map_err(database)?;
                Ok(Some(Written {
                    old: Some(current.value),
                    new,
                }))
            },
            WriteError::Database,
        )
        .await
    }

    async fn save_notes(
        &self,
        user: &str,
        notes: &str,
        seq: u64,
        at: i64,
    ) -> Result<NotesSaved, DbError> {
        let (user, notes) = (user.to_owned(), notes.to_owned());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // The sequence check is in the statement: an older save arriving late finds a
            // higher number stored and writes nothing.
            let saved = tx.execute(
                "INSERT INTO shop_notes (user_id, notes, seq, saved_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (user_id) DO UPDATE SET notes = excluded.notes,
                     seq = excluded.seq, saved_at = excluded.saved_at
                 WHERE excluded.seq > shop_notes.seq",
                params![user, notes, signed(seq), at],
            )?;
            let answer = if saved == 1 {
                NotesSaved::Saved(Notes {
                    notes,
                    seq,
                    saved_at: rfc3339(at),
                })
            } else {
                NotesSaved::Stale {
                    current_seq: notes_of(&tx, &user)?.1,
                }
            };
            tx.commit()?;
            Ok(answer)
        })
        .await
    }

    async fn favourites(&self, user: &str) -> Result<Vec<String>, DbError> {
        let user = user.to_owned();
        self.run(move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT product FROM shop_favourites WHERE user_id = ?1 ORDER BY added_at, rowid",
            )?;
            let rows = st.query_map([user], |r| r.get(0))?;
            Ok(rows.collect::<Result<Vec<String>, _>>()?)
        })
        .await
    }

    async fn set_favourite(
        &self,
        user: &str,
        product: &str,
        on: bool,
        at: i64,
    ) -> Result<bool, DbError> {
        let (user, product) = (user.to_owned(), product.to_owned());
        self.run(move |conn| {
            let changed = if on {
                conn.execute(
                    "INSERT INTO shop_favourites (user_id, product, added_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                    params![user, product, at],
                )?
            } else {
                conn.execute(
                    "DELETE FROM shop_favourites WHERE user_id = ?1 AND product = ?2",
                    params![user, product],
                )?
            };
            Ok(changed == 1)
        })
        .await
    }

    async fn place_order(&self, order: &NewOrder, at: i64) -> Result<bool, DbError> {
        let order = order.clone();
        let items = to_json(&order.items)?;
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let new = tx.execute(
                "INSERT INTO shop_orders (id, user_id, checkout_id, items, total_cents, payment,
                     created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6) ON CONFLICT (id) DO NOTHING",
                params![
                    order.id,
                    order.user,
                    order.checkout,
                    items,
                    signed(order.total_cents),
                    at
                ],
            )?;
            if new == 1 {
                enqueue(
                    &tx,
                    &order.id,
                    "order.placed",
                    serde_json::json!({
                        "order_id": order.id,
                        "user": order.user,
                        "checkout": order.checkout,
                        "items": order.items,
                        "total_cents": order.total_cents,
                    }),
                    at,
                )?;
            }
            tx.commit()?;
            Ok(new == 1)
        })
        .await
    }

    async fn shop_order(&self, id: &str) -> Result<Option<ShopOrder>, DbError> {
        let id = id.to_owned();
        self.run(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id, user_id, checkout_id, items, total_cents, payment, charge_id,
                         created_at, cancel_key
                     FROM shop_orders WHERE id = ?1",
                )?
                .query_row([id], |r| {
                    Ok(ShopOrder {
                        id: r.get(0)?,
                        user: r.get(1)?,
                        checkout: r.get(2)?,
                        items: json_column(r, 3)?,
                        total_cents: cents(r.get(4)?),
                        payment: r.get(5)?,
                        charge_id: r.get(6)?,
                        created_at: r.get(7)?,
                        cancel_key: r.get(8)?,
                    })
                })
                .optional()?)
        })
        .await
    }

    async fn mark_paid(
        &self,
        order: &str,
        charge: &str,
        amount: u64,
        by: &str,
        at: i64,
    ) -> Result<MarkedPaid, DbError> {
        let (order, charge, by) = (order.to_owned(), charge.to_owned(), by.to_owned());
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            // One statement decides: only a pending payment of the charge's own amount
            // becomes paid, so a duplicate webhook, a late one racing a heal, or a charge of
            // another amount changes nothing.
            let changed = tx.execute(
                "UPDATE shop_orders SET payment = 'paid', charge_id = ?2, updated_at = ?4
                 WHERE id = ?1 AND payment = 'pending' AND total_cents = ?3",
                params![order, charge, signed(amount), at],
            )?;
            let answer = if changed == 1 {
                let position = enqueue(
                    &tx,
                    &order,
                    "order.paid",
                    serde_json::json!({ "order_id": order, "charge_id": charge, "by": by }),
                    at,
                )?;
                MarkedPaid::Now(position)
            } else {
                let found: Option<(String, i64)> = tx
                    .query_row(
                        "SELECT payment, total_cents FROM shop_orders WHERE id = ?1",
                        [&order],
                        |r| Ok((r.get(0)?, r.get(1)?)),
                    )
                    .optional()?;
                match found {
                    None => MarkedPaid::Refused(format!("no order {order}")),
                    Some((payment, _)) if payment != "pending" => MarkedPaid::Already,
                    Some((_, total)) => MarkedPaid::Refused(format!(
                        "order {order} is for {total} cents, the charge for {amount}"
                    )),
                }
            };
            tx.commit()?;
            Ok(answer)
        })
        .await
    }

    async fn cancel_refunded(
        &self,
        order: &str,
        reason: &str,
        refund: &str,
        key: &str,
        at: i64,
    ) -> Result<CancelSettled, DbError> {
        let (order, reason, refund, key) = (
            order.to_owned(),
            reason.to_owned(),
            refund.to_owned(),
            key.to_owned(),
        );
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let (cancelled, status) = OrdersDb::cancel_confirmed_in(&tx, &order, &reason)?;
            // Confirmed (and cancelled now) or cancelled before: anything else is an order
            // this cancel must not touch; the transaction rolls back.
            if status.as_deref() != Some("cancelled") {
                return Err(DbError::Unavailable(format!(
                    "order {order} is {} in the checkout's table, not cancellable",
                    status.as_deref().unwrap_or("missing")
                )));
            }
            let refunded = refund_in(&tx, &order, &refund, &key, at)?;
            tx.commit()?;
            Ok(CancelSettled {
                cancelled,
                refunded,
            })
        })
        .await
    }

    async fn payments_between(
        &self,
        from: i64,
        to: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<PaymentRow>, DbError> {
        let (after_at, after_id) = after.unwrap_or((i64::MIN, String::new()));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            // A payment that was made counts as paid for the job even once refunded: the
            // charge exists at the provider either way. An order the checkout cancelled
            // before any payment is `cancelled`, which the job accepts without a charge.
            let mut st = conn.prepare_cached(
                "SELECT s.id, s.total_cents,
                     CASE WHEN s.payment IN ('paid', 'refunded') THEN 'paid'
                          WHEN o.status = 'cancelled' THEN 'cancelled'
                          ELSE 'pending' END,
                     s.created_at
                 FROM shop_orders s LEFT JOIN orders o ON o.id = s.id
                 WHERE s.created_at >= ?1 AND s.created_at < ?2 AND (s.created_at, s.id) > (?3, ?4)
                 ORDER BY s.created_at, s.id LIMIT ?5",
            )?;
            let rows = st.query_map(params![from, to, after_at, after_id, limit], |r| {
                Ok(PaymentRow {
                    order: r.get(0)?,
                    amount: cents(r.get(1)?),
                    status: r.get(2)?,
                    at: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn order_position(&self, order: &str) -> Result<Option<u64>, DbError> {
        let order = order.to_owned();
        self.run(move |conn| {
            let p: Option<i64> = conn.query_row(
                "SELECT max(position) FROM shop_outbox_positions WHERE aggregate_id = ?1",
                [order],
                |r| r.get(0),
            )?;
            Ok(p.map(cents))
        })
        .await
    }

    async fn positions(&self) -> Result<Positions, DbError> {
        self.run(|conn| {
            let (outbox, behind): (Option<i64>, Option<i64>) = conn.query_row(
                "SELECT (SELECT seq FROM sqlite_sequence WHERE name = 'shop_outbox_positions'),
                        (SELECT min(position) FROM shop_outbox_positions WHERE in_history = 0)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let outbox = cents(outbox.unwrap_or(0));
            // Every event before the first one the history has not applied is in it.
            let read_model = behind.map_or(outbox, |first| cents(first - 1));
            Ok(Positions { outbox, read_model })
        })
        .await
    }

    async fn apply(&self, consumer: Consumer, event: &OutboxEvent) -> Result<Applied, DbError> {
        let event = event.clone();
        self.run(move |conn| {
            let id = event.id.to_string();
            let now = event.created_at;
            let applied = apply_once(conn, consumer.name(), &id, now, |tx| match consumer {
                Consumer::OrderHistory => project(tx, &event),
                Consumer::Notifications => notify(tx, &event),
            })?;
            Ok(match applied {
                InboxApplied::Now(()) => Applied::Now,
                InboxApplied::Before => Applied::Before,
            })
        })
        .await
    }

    async fn delivered_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, DbError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT id, aggregate_type, aggregate_id, sequence, event_type, payload, headers,
                     created_at, attempts, last_error
                 FROM oncely_outbox WHERE status = 'delivered' ORDER BY created_at, id LIMIT ?1",
            )?;
            let rows = st.query_map([limit], |r| {
                let id: String = r.get(0)?;
                let payload: String = r.get(5)?;
                let headers: String = r.get(6)?;
                Ok((
                    id,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    payload,
                    headers,
                    r.get::<_, i64>(7)?,
                    r.get::<_, i64>(8)?,
                    r.get::<_, Option<String>>(9)?,
                ))
            })?;
            let mut events = Vec::new();
            for row in rows {
                let (
                    id,
                    aggregate_type,
                    aggregate_id,
                    sequence,
                    event_type,
                    payload,
                    headers,
                    at,
                    attempts,
                    last_error,
                ) = row?;
                events.push(OutboxEvent {
                    id: EventId::parse(&id)
                        .ok_or_else(|| corrupt("oncely_outbox", format!("id {id}")))?,
                    aggregate_type,
                    aggregate_id,
                    sequence,
                    event_type,
                    payload: serde_json::from_str(&payload)
                        .map_err(|e| corrupt("oncely_outbox", e))?,
                    headers: serde_json::from_str(&headers)
                        .map_err(|e| corrupt("oncely_outbox", e))?,
                    created_at: Timestamp(at),
                    attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    last_error,
                });
            }
            Ok(events)
        })
        .await
    }

    async fn follow_up(
        &self,
        event: &OutboxEvent,
        empty_cart: bool,
    ) -> Result<Option<FollowedUp>, DbError> {
        let event = event.clone();
        self.run(move |conn| {
            let id = event.id.to_string();
            let order = event.aggregate_id.clone();
            let at = event.created_at.0;
            let applied = apply_once(conn, FOLLOW_UP, &id, event.created_at, |tx| {
                if !empty_cart {
                    return Ok::<_, DbError>(FollowedUp { emptied: None });
                }
                let user: Option<String> = tx
                    .query_row(
                        "SELECT user_id FROM shop_orders WHERE id = ?1",
                        [&order],
                        |r| r.get(0),
                    )
                    .optional()?;
                // An order the shop has no record of (placed before a reset): no cart.
                let Some(user) = user else {
                    return Ok(FollowedUp { emptied: None });
                };
                let emptied = empty_cart_in(tx, &order, &user, at)?.map(|w| (user, w));
                Ok(FollowedUp { emptied })
            })?;
            Ok(match applied {
                InboxApplied::Now(done) => Some(done),
                InboxApplied::Before => None,
            })
        })
        .await
    }

    async fn order_history(&self, user: &str) -> Result<Vec<OrderView>, DbError> {
        let user = user.to_owned();
        self.run(move |conn| {
            let mut st = conn.prepare_cached(&format!(
                "SELECT {HISTORY_COLUMNS} FROM shop_order_history WHERE user_id = ?1
                 ORDER BY created_at DESC, id DESC"
            ))?;
            let rows = st.query_map([user], history_row)?;
            Ok(rows
                .map(|r| r.map(|(_, o)| o))
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn history_order(&self, id: &str) -> Result<Option<(String, OrderView)>, DbError> {
        let id = id.to_owned();
        self.run(move |conn| {
            Ok(conn
                .prepare_cached(&format!(
                    "SELECT {HISTORY_COLUMNS} FROM shop_order_history WHERE id = ?1"
                ))?
                .query_row([id], history_row)
                .optional()?)
        })
        .await
    }

    async fn notifications(&self, user: &str) -> Result<Vec<Notification>, DbError> {
        let user = user.to_owned();
        self.run(move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT id, text, order_id, at FROM shop_notifications WHERE user_id = ?1
                 ORDER BY id DESC LIMIT 200",
            )?;
            let rows = st.query_map([user], |r| {
                Ok(Notification {
                    id: format!("ntf_{}", r.get::<_, i64>(0)?),
                    text: r.get(1)?,
                    order: r.get(2)?,
                    at: rfc3339(r.get(3)?),
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}

/// The order history's effect of one event, in the inbox's transaction. Each event of an
/// order arrives after the ones committed before it (the outbox's per-aggregate order), so
/// `order.placed` always comes first; status and payment are kept apart, so the provider's
/// webhook (`order.paid`) may come before or after the saga's confirmation.
fn project(tx: &rusqlite::Transaction<'_>, event: &OutboxEvent) -> Result<(), DbError> {
    let order = event.aggregate_id.as_str();
    let at = event.created_at.0;
    let p = &event.payload;
    match event.event_type.as_str() {
        "order.placed" => {
            let items = to_json(&p["items"])?;
            tx.execute(
                "INSERT INTO shop_order_history
                 (id, user_id, status, payment, total_cents, items, created_at, updated_at)
                 VALUES (?1, ?2, 'pending', 'pending', ?3, ?4, ?5, ?5) ON CONFLICT (id) DO NOTHING",
                params![
                    order,
                    p["user"].as_str().unwrap_or_default(),
                    p["total_cents"].as_i64().unwrap_or(0),
                    items,
                    at
                ],
            )?;
        }
        "order.confirmed" => {
            tx.execute(
                "UPDATE shop_order_history SET status = 'confirmed', updated_at = ?2
                 WHERE id = ?1 AND status = 'pending'",
                params![order, at],
            )?;
        }
        "order.cancelled" => {
            // No money moved for an order cancelled while its payment was pending.
            tx.execute(
                "UPDATE shop_order_history SET status = 'cancelled', updated_at = ?2,
                     payment = CASE payment WHEN 'pending' THEN 'failed' ELSE payment END
                 WHERE id = ?1",
                params![order, at],
            )?;
        }
        "order.paid" => {
            tx.execute(
                "UPDATE shop_order_history SET payment = 'paid', updated_at = ?2
                 WHERE id = ?1 AND payment IN ('pending', 'failed')",
                params![order, at],
            )?;
        }
        "order.refunded" => {
            tx.execute(
                "UPDATE shop_order_history SET payment = 'refunded', updated_at = ?2 WHERE id = ?1",
                params![order, at],
            )?;
        }
        // An event type the history does not show still counts as applied.
        _ => {}
    }
    tx.execute(
        "UPDATE shop_outbox_positions SET in_history = 1 WHERE event_id = ?1",
        [event.id.to_string()],
    )?;
    Ok(())
}

/// The notification of one event, in the inbox's transaction.
fn notify(tx: &rusqlite::Transaction<'_>, event: &OutboxEvent) -> Result<(), DbError> {
    let order = event.aggregate_id.as_str();
    let text = match event.event_type.as_str() {
        "order.placed" => format!(
            "Order {order} placed: {}",
            euros(event.payload["total_cents"].as_i64().unwrap_or(0))
        ),
        "order.confirmed" => format!("Order {order} confirmed"),
        "order.cancelled" => format!("Order {order} cancelled"),
        "order.paid" => format!("Payment received for order {order}"),
        "order.refunded" => format!("Refund issued for order {order}"),
        _ => return Ok(()),
    };
    let user: Option<String> = tx
        .query_row(
            "SELECT user_id FROM shop_orders WHERE id = ?1",
            [order],
            |r| r.get(0),
        )
        .optional()?;
    // An order the shop has no record of (placed before a reset) has nobody to tell.
    let Some(user) = user else { return Ok(()) };
    tx.execute(
        "INSERT INTO shop_notifications (user_id, order_id, text, at, event_id)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![user, order, text, event.created_at.0, event.id.to_string()],
    )?;
    Ok(())
}

/// Cents as `€12.50`.
fn euros(cents: i64) -> String {
    format!("€{}.{:02}", cents / 100, (cents % 100).abs())
}
