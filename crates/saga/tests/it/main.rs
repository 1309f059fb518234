//! The saga store's integration tests, in one binary: the conformance suite on SQLite files.

mod sqlite;
