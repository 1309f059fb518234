//! An example of the three parts working together: a checkout service whose `POST /checkout`
//! is a multi-step operation with recovery points (create the order, charge the card at a
//! payment provider, queue the receipt email), behind the same idempotency layer the gateway
//! runs; and the fake payment provider it charges, with idempotency of its own.
//!
//! `tests/crash.rs` kills the service at every boundary of the operation, restarts it,
//! retries, and checks one order, one charge, one email and the response of a run without
//! crashes, on SQLite and on PostgreSQL.

#![warn(missing_docs)]

pub mod app;
pub mod db;
pub mod payments;
pub mod shop;

/// The README's Rust snippets, compiled as doctests so that they cannot drift from the API
/// (this crate depends on everything they use: the layer, `oncely-open`, recovery points).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeSnippets;

use std::sync::Arc;

use oncely_http::{PathPattern, Route, RoutePolicy, Routes};

/// Routes in which only `POST path` is keyed, with `policy`.
pub fn keyed_route(path: &str, policy: RoutePolicy) -> Result<Routes, String> {
    Ok(Routes {
        routes: vec![Route {
            methods: vec![http::Method::POST],
            path: PathPattern::parse(path)?,
            policy: Arc::new(policy),
        }],
        fallback: None,
        fallback_methods: Vec::new(),
    })
}

/// The checkout's crash boundaries, in the order a run passes them (the phases have the same
/// names and kinds on both databases; the PostgreSQL crash test checks that).
pub fn boundaries() -> Vec<String> {
    match shop::Provider::new("http://127.0.0.1:9", std::time::Duration::from_secs(1)) {
        Ok(p) => db::sqlite_checkout(Arc::new(p)).boundaries(),
        Err(_) => Vec::new(),
    }
}
