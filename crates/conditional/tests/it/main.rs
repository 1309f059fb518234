//! The integration tests of this crate, in one binary: a small versioned-documents service
//! over real loopback HTTP and a real SQLite file or PostgreSQL database, and clients that
//! try to lose its updates.

mod answers;
mod app;
mod layer;
mod pessimistic;
mod races;
