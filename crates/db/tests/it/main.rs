//! The shared migration mechanism on real databases: a SQLite file and PostgreSQL.

mod migrate;
