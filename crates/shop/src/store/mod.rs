//! Every query of the shop's own tables, behind one trait: the handlers, the consumers and
//! the reconciliation job speak [`ShopStore`]'s plain types and never SQL. SQLite
//! ([`sqlite::SqliteShop`]) is the backend today; a PostgreSQL one implements the same
//! trait (the checkout's orders, sagas, outbox, inbox, findings and audit trail each have
//! PostgreSQL backends already), and `crate::open` picks it by the database URL.
//!
//! Writes that other parts must hear about enqueue their event in the outbox in the same
//! transaction; each event gets a *position*, a number that grows with every event
//! committed, which is what the consistency token of a write carries and what the order
//! history's progress is measured in.

use async_trait::async_trait;
use oncely_conditional::{Current, WriteError, WriteGuard};
use oncely_outbox::OutboxEvent;

use crate::model::{
    Cart, Line, Notes, Notification, OrderView, PaymentRow, Positions, Profile, ProfileDoc,
    ShopOrder,
};
use crate::DbError;

pub(crate) mod sqlite;

/// A guarded write that happened: the document before (for the audit trail) and after.
#[derive(Debug, Clone)]
pub(crate) struct Written<T> {
    /// The document before the write, if there was one.
    pub old: Option<T>,
    /// The document as written, with its new revision.
    pub new: Current<T>,
}

/// What a guarded write answers.
pub(crate) type Guarded<T> = Result<Written<T>, WriteError<T, DbError>>;

/// What saving autosaved notes did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotesSaved {
    /// Saved: the notes as stored now.
    Saved(Notes),
    /// A save with this or a higher sequence number is stored already: nothing written.
    Stale {
        /// The highest sequence number stored.
        current_seq: u64,
    },
}

/// What recording a payment as paid did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MarkedPaid {
    /// Marked paid now, and `order.paid` enqueued at this position.
    Now(u64),
    /// It was paid (or refunded) already: nothing changed.
    Already,
    /// Not applied: no such order, or the amount differs (reconciliation raises it).
    Refused(String),
}

/// Who applies an event: one consumer behind the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Consumer {
    /// The order history (the read model of `GET /api/orders`).
    OrderHistory,
    /// The notifications of `GET /api/notifications`.
    Notifications,
}

impl Consumer {
    /// The consumer's name in the inbox.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Consumer::OrderHistory => "order-history",
            Consumer::Notifications => "notifications",
        }
    }
}

/// Whether an event had its effect now or before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Applied {
    /// Now: its effect committed with its id in the inbox.
    Now,
    /// Before: the inbox had its id, nothing ran.
    Before,
}

/// What a buyer's cancel changed in its final transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CancelSettled {
    /// The order moved from confirmed to cancelled now.
    pub cancelled: bool,
    /// The payment was recorded as refunded now.
    pub refunded: bool,
}

/// What following up an order's settlement did, the first time.
#[derive(Debug, Clone)]
pub(crate) struct FollowedUp {
    /// The buyer and their cart, if it was emptied now.
    pub emptied: Option<(String, Written<Cart>)>,
}

/// An order to record as placed (with its `order.placed` event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewOrder {
    /// `ord_…`.
    pub id: String,
    /// The buyer.
    pub user: String,
    /// The checkout (saga) placing it.
    pub checkout: String,
    /// What is ordered.
    pub items: Vec<Line>,
    /// The total in cents.
    pub total_cents: u64,
}

/// The shop's tables.
#[async_trait]
pub(crate) trait ShopStore: Send + Sync + 'static {
    /// The seed (carts, profiles, notes), unless the database holds it already; whether it
    /// was written now.
    async fn seed(&self, at: i64) -> Result<bool, DbError>;
    /// Back to the seed: the shop's rows, the checkout's orders and sagas, the outbox and
    /// inbox, the reconciliation runs and findings go (the audit trail stays: it is
    /// append-only). The new epoch, which makes every checkout id after it a new one.
    async fn reset(&self, at: i64) -> Result<u64, DbError>;
    /// The current epoch (0 until the first reset).
    async fn epoch(&self) -> Result<u64, DbError>;

    /// A user's cart.
    async fn cart(&self, user: &str) -> Result<Option<Current<Cart>>, DbError>;
    /// Replaces a user's cart's items, if `guard` admits its version.
    async fn put_cart(
        &self,
        user: &str,
        guard: &WriteGuard,
        items: &[Line],
        at: i64,
    ) -> Guarded<Cart>;
    /// Empties the cart of `user` for the confirmed order `order`, once per order; `None`
    /// when that was done before.
    async fn empty_cart_for(
        &self,
        order: &str,
        user: &str,
        at: i64,
    ) -> Result<Option<Written<Cart>>, DbError>;

    /// A user's profile (with the notes).
    async fn profile(&self, user: &str) -> Result<Option<Current<Profile>>, DbError>;
    /// Replaces a user's profile, if `guard` admits its version.
    async fn put_profile(
        &self,
        user: &str,
        guard: &WriteGuard,
        doc: &ProfileDoc,
        at: i64,
    ) -> Guarded<Profile>;
    /// Removes one address of a user's profile, if `guard` admits its version; `Ok(None)`
    /// when the profile has no such address.
    async fn remove_address(
        &self,
        user: &str,
        guard: &WriteGuard,
        address: &str,
        at: i64,
    ) -> Result<Option<Written<Profile>>, WriteError<Profile, DbError>>;
    /// Saves autosaved notes unless a save with this or a higher `seq` is stored.
    async fn save_notes(
        &self,
        user: &str,
        notes: &str,
        seq: u64,
        at: i64,
    ) -> Result<NotesSaved, DbError>;

    /// A user's favourite products, in the order added.
    async fn favourites(&self, user: &str) -> Result<Vec<String>, DbError>;
    /// Adds (`on`) or removes a favourite; whether anything changed.
    async fn set_favourite(
        &self,
        user: &str,
        product: &str,
        on: bool,
        at: i64,
    ) -> Result<bool, DbError>;

    /// Records an order as placed and enqueues `order.placed`, once; whether it is new.
    async fn place_order(&self, order: &NewOrder, at: i64) -> Result<bool, DbError>;
    /// The shop's record of an order.
    async fn shop_order(&self, id: &str) -> Result<Option<ShopOrder>, DbError>;
    /// Records the payment of `order` as paid by `charge` of `amount` cents (the provider's
    /// webhook, or a reconciliation heal: `by` says which) and enqueues `order.paid`, once.
    async fn mark_paid(
        &self,
        order: &str,
        charge: &str,
        amount: u64,
        by: &str,
        at: i64,
    ) -> Result<MarkedPaid, DbError>;
    /// A buyer's cancel, once the refund and the release are done: cancels the confirmed
    /// order `order` for `reason` in the checkout's orders table (enqueuing
    /// `order.cancelled`) and records its payment as refunded by `refund` under the cancel's
    /// idempotency key `key` (enqueuing `order.refunded`), in one transaction, so that no
    /// crash leaves the order cancelled with its payment still paid. Each part changes only
    /// what has not changed yet, so a retry finishes what an earlier attempt left; an order
    /// neither confirmed nor cancelled is refused and nothing is written.
    async fn cancel_refunded(
        &self,
        order: &str,
        reason: &str,
        refund: &str,
        key: &str,
        at: i64,
    ) -> Result<CancelSettled, DbError>;
    /// Orders placed in `[from, to)` after `after` (their time and id), oldest first, at
    /// most `limit`: reconciliation's side of ours.
    async fn payments_between(
        &self,
        from: i64,
        to: i64,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<PaymentRow>, DbError>;

    /// The position of the newest event about `order`.
    async fn order_position(&self, order: &str) -> Result<Option<u64>, DbError>;
    /// Where the outbox and the order history stand.
    async fn positions(&self) -> Result<Positions, DbError>;
    /// Applies `event` for `consumer`, once however often it comes.
    async fn apply(&self, consumer: Consumer, event: &OutboxEvent) -> Result<Applied, DbError>;
    /// The follow-up of an order's settlement by its checkout (`order.confirmed`, or
    /// `order.cancelled` by the saga), once per event however often it comes, under an
    /// inbox consumer of its own: with `empty_cart`, the buyer's cart emptied for the order
    /// (once per order, whoever did it first). `None` when the event was followed up before.
    async fn follow_up(
        &self,
        event: &OutboxEvent,
        empty_cart: bool,
    ) -> Result<Option<FollowedUp>, DbError>;
    /// Up to `limit` events the relay delivered already, oldest first (to hand them to the
    /// consumers again: a redelivery the inbox must absorb).
    async fn delivered_events(&self, limit: usize) -> Result<Vec<OutboxEvent>, DbError>;

    /// A user's orders in the order history, newest first.
    async fn order_history(&self, user: &str) -> Result<Vec<OrderView>, DbError>;
    /// One order of the history, with its buyer.
    async fn history_order(&self, id: &str) -> Result<Option<(String, OrderView)>, DbError>;
    /// A user's notifications, newest first.
    async fn notifications(&self, user: &str) -> Result<Vec<Notification>, DbError>;
}
