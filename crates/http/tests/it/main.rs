//! The integration tests of this crate, in one binary (one link instead of one per file).

mod answers;
mod axum_layer;
mod clock_skew;
mod simulation;
