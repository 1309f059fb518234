//! The reconciliation store's conformance suite on SQLite and PostgreSQL.

mod postgres;
mod sqlite;
