//! Sagas with compensation, persisted. The decisions are `oncely_core::saga`'s pure state
//! machine; this crate keeps what a runner needs to carry them out across crashes and
//! processes: the saga store (state, step outputs, a log of every transition, leases with
//! fencing tokens, due times as durable timers).
//!
//! Status: the store on SQLite and PostgreSQL (features `sqlite`, `postgres`) with its
//! conformance suite, and the [`Runner`] that carries out the state machine's actions
//! (tested in process, with runners dropped at every boundary). `oncely saga`, the metrics,
//! the checkout saga over HTTP and the process-kill tests are still to come (docs/sagas.md).

#![warn(missing_docs)]

pub mod metrics;
pub mod runner;
mod store;

#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use runner::{Runner, RunnerConfig, SagaDefinition, Step, StepContext, StepError};
pub use store::{
    phase_name, Claimed, Created, Direction, LogEntry, NewSaga, Recorded, SagaError, SagaRecord,
    SagaStats, SagaStore, Transition,
};
