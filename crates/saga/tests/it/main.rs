//! The saga store's integration tests, in one binary: the conformance suite on SQLite files and
//! on PostgreSQL.

mod postgres;
mod runner;
mod sqlite;
