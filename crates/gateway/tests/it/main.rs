//! The integration tests of this crate, in one binary (one link instead of one per file).

mod admin;
mod audit;
mod conditional;
mod contract;
mod correlation;
