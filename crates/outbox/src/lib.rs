//! The transactional outbox: an event row commits in the same transaction as the business
//! write that caused it, and relays publish it afterwards, at least once.
//!
//! - **Enqueue** inside the application's own transaction: `sqlite::SqliteOutbox::enqueue`
//!   on a `rusqlite::Transaction`, `postgres::PgOutbox::enqueue` on a tokio-postgres one
//!   (features `sqlite` and `postgres`). A rolled-back write leaves no event; a committed one
//!   always has its event.
//! - **Order per aggregate is commit order.** Enqueue takes the next number of the event's
//!   aggregate from a counter row that stays locked until the transaction ends. A second
//!   transaction on the same aggregate waits for the first to commit before it gets its
//!   number, so numbers follow commits.
//! - **Claim** ([`OutboxStore::claim`]) takes, for each aggregate, only its oldest
//!   undelivered event, and only when no relay holds it. So one aggregate's events are
//!   published one at a time and in order, while different aggregates go in parallel.
//! - **Nothing committed late is skipped.** A relay keeps no offset: it asks for pending
//!   rows, whatever their ids. A row that a long transaction commits late is just pending
//!   from then on. A growing id is not a commit order.
//! - **Several relays** share a database through leases with fencing tokens: a relay that
//!   crashed loses its claim when the lease ends, and its late confirmation is refused.
//! - **Failures** are retried at a time the relay chooses (full jitter); after `dead_after`
//!   attempts an event becomes a dead letter: kept, visible, and retryable
//!   ([`OutboxStore::retry`]). A dead letter holds back the later events of its aggregate,
//!   since publishing them would break the order.
//! - **Delivered rows** are removed in small batches ([`OutboxStore::purge_delivered`]).
//!
//! [`Relay`] runs the claims against a [`Publisher`]. The broker publishers (NATS
//! JetStream, RabbitMQ, webhooks), the `oncely relay` process and the inbox build on it.

#![warn(missing_docs)]

pub mod consume;
mod event;
pub mod inbox;
pub mod metrics;
pub mod relay;
mod store;
#[cfg(feature = "webhook")]
pub mod webhook;

#[cfg(feature = "amqp")]
pub mod amqp;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "nats")]
pub mod nats;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use consume::{handler_fn, HandleError, Handler, Message, Outcome};
pub use event::{EventId, NewEvent, OutboxEvent};
pub use relay::{PublishError, Publisher, Relay, RelayConfig};
pub use store::{Claim, Failure, OutboxError, OutboxStats, OutboxStore, Settled};
