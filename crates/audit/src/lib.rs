//! oncely's audit trail: who did what to which key, when, in events nobody can edit,
//! delete or reorder unnoticed.
//!
//! - [`chain`]: the pure part. Events form one hash chain per writer; personal fields enter
//!   the hash only through keyed commitments, so they can be redacted; [`Verifier`] names the
//!   first event that does not fit.
//! - [`log`]: the storage trait, [`AuditLog`]: append sealed events, read them back in chain
//!   order, redact. No method updates or deletes an event otherwise, and each backend's table
//!   refuses it too (triggers).
//! - [`writer`]: [`AuditWriter`], the one writer of a chain: a bounded queue in front of a
//!   task that seals and appends in batches, never blocking the caller.
//! - `sqlite`, `postgres` (features): the backends; `conformance` (feature): the suite each
//!   backend passes.

#![warn(missing_docs)]

pub mod chain;
pub mod log;
pub mod writer;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use chain::*;
pub use log::{AuditError, AuditLog, Filter};
pub use writer::{AuditWriter, WriterStats};
