//! The checkout saga across three services, as real HTTP services: the shop (its orders,
//! the saga runner, `POST /checkout` behind the idempotency layer), a fake inventory service
//! and a fake payment provider, each with idempotency of its own.
//!
//! [`checkout`] is the library call (the saga's definition, starting one, reading its
//! outcome); [`app`] the shop's process; [`inventory`] and [`payments`] the two services,
//! whose ledgers the tests count. `tests/crash.rs` kills the shop at every step and
//! compensation boundary, restarts it, and checks that each checkout ends confirmed or
//! cancelled with each effect once, on SQLite and on PostgreSQL.

#![warn(missing_docs)]

pub mod app;
pub mod checkout;
pub mod inventory;
pub mod orders;
pub mod payments;
pub mod reconcile;

/// The README's Rust snippets, compiled as doctests so that they cannot drift from the API
/// (this crate depends on everything they use: the layer, `oncely-open`, recovery points).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeSnippets;

use std::sync::Arc;

use oncely_http::{PathPattern, Route, RoutePolicy, Routes};

/// Routes in which only `POST` to each of `paths` is keyed, with `policy`.
pub fn keyed_routes(paths: &[&str], policy: RoutePolicy) -> Result<Routes, String> {
    let policy = Arc::new(policy);
    let routes = paths
        .iter()
        .map(|p| {
            Ok(Route {
                methods: vec![http::Method::POST],
                path: PathPattern::parse(p)?,
                policy: policy.clone(),
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(Routes {
        routes,
        fallback: None,
        fallback_methods: Vec::new(),
    })
}
