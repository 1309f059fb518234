//! Multi-step operations with recovery points.
//!
//! A handler whose work has several steps (create an order, charge a card, send a receipt)
//! must survive a crash between any two of them. Here the work is an [`Operation`]: a
//! sequence of named phases, each either
//!
//! - **atomic**: it runs inside the application's own SQL transaction (SQLite or
//!   PostgreSQL), and the same transaction moves the operation's *recovery point* to the
//!   phase's name; or
//! - **foreign**: it calls something outside the database (a payment provider) with a
//!   derived idempotency key, `{operation id}/{phase}`, and its result is then committed
//!   with the new recovery point.
//!
//! A retry (or the [`Completer`], for clients that never came back) resumes from the last
//! recovery point with the state stored there; the phase that responds stores the response
//! in its transaction, and every later run answers it. The recovery point doubles as an
//! optimistic lock: a phase commits only from the point its run read, so racing runs of one
//! operation commit each phase once, and the one that loses a race carries on from where the
//! winner left it.
//!
//! In an HTTP service, put [`oncely_http::IdempotencyLayer`] in front (it decides replays,
//! 409s and 422s, and holds the key while a run is alive) and derive the operation id from the
//! claimed key with [`operation_id`]. See `docs/recovery.md`.
//!
//! [`oncely_http::IdempotencyLayer`]: https://docs.rs/oncely-http

#![warn(missing_docs)]

mod journal;
mod operation;
pub mod plan;
mod recovery;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use journal::{
    Advance, Commit, Decide, Decision, Journal, JournalError, NewOperation, OperationRow, Work,
};
pub use operation::{BoxFuture, ForeignCall, ForeignFn, OpState, Operation, PhaseError};
pub use plan::{derived_key, operation_id, Boundary, Flow, FINISHED, STARTED};
pub use recovery::{
    Completer, CompleterReport, Hooks, Reaper, Recovery, RecoveryError, DEFAULT_IDLE,
    DEFAULT_RETENTION,
};
