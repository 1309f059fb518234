//! The reconciliation store's conformance suite on SQLite and PostgreSQL, and the
//! reconciler over in-memory sources on both.

mod postgres;
mod reconciler;
mod sqlite;
