//! The integration tests of this crate, in one binary (one link instead of one per file).

mod audit;
mod browser;
mod check;
mod common;
mod encryption;
mod outage;
mod process;
mod reconcile;
mod relay;
mod saga;
mod shared_store;
