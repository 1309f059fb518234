//! The oncely idempotency engine over HTTP values, and the tower layer that carries it.
//!
//! The gateway (`oncely serve`) is this layer wrapped around a forwarding service; a Rust
//! service can wrap the same layer around its own handlers. Either way one code path decides
//! every answer of the contract (docs/contract.md): the pure decisions come from
//! `oncely_core`, records from an `oncely_store::IdempotencyStore`.

#![warn(missing_docs)]

pub mod body;
mod cache;
pub mod correlation;
mod engine;
pub mod headers;
mod layer;
pub mod metrics;
pub mod policy;
pub mod problem;
mod wait;

pub use body::{BoxBody, BoxError};
pub use correlation::{Correlation, CorrelationLayer, CorrelationService};
pub use engine::{
    Answer, Claimed, Engine, Forward, ForwardFuture, Observers, Outcome, OutcomeObserver,
    RequestFacts, UpstreamError, UpstreamErrorKind, DEFAULT_BODY_TIMEOUT,
    DEFAULT_REPLAY_CACHE_BYTES,
};
pub use layer::{IdempotencyLayer, IdempotencyService};
pub use metrics::EngineMetrics;
pub use policy::{
    InFlightMode, KeyRequirement, PathPattern, PreconditionRequirement, Route, RoutePolicy, Routes,
    StoreFailureMode, TenantSource, UnknownOutcomePolicy,
};

/// The header that names the key, in lower case as `http` stores names.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Marks a response that was replayed from the store rather than produced now.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

#[cfg(test)]
mod test_alloc;
