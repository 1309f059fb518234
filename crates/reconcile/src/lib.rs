//! Reconciliation jobs: compare our records with an external system's, by time window, heal
//! the safe differences and raise the rest as findings for a person. The decisions are
//! `oncely_core::reconcile`'s pure functions; this crate keeps what runs need across crashes
//! and processes: a lease and a checkpoint per job, each run's report, and the findings
//! with their life cycle (the review queue).
//!
//! The store on SQLite (feature `sqlite`) and PostgreSQL (feature `postgres`) with its
//! conformance suite; the [`Reconciler`] that runs a [`Job`] over two [`Source`]s; metrics;
//! the alert hook (feature `alert`) and the JSON API (feature `api`). The seed's `payments`
//! job is `oncely_example_checkout::reconcile`; the command is `oncely reconcile`
//! (docs/reconciliation.md).

#![warn(missing_docs)]

#[cfg(feature = "alert")]
pub mod alert;
#[cfg(feature = "api")]
pub mod api;
pub mod metrics;
pub mod reconciler;
mod store;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

pub use reconciler::{
    Healer, Invariant, Job, Malformed, Page, Reconciler, RunError, RunSummary, Source, SourceError,
};
pub use store::{
    review_allowed, validate_job, Finding, FindingFilter, FindingState, JobClaim, JobStatus,
    NewFinding, ReconcileError, ReconcileStats, ReconcileStore, Recorded, RunEnd, RunOutcome,
    RunRecord, RunReport,
};
