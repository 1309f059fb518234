//! The integration tests of this crate, in one binary: the conformance suite on SQLite and
//! PostgreSQL, and what only PostgreSQL can show (transactions that overlap).

mod inbox;
mod nats;
mod postgres;
mod relay;
mod sqlite;
