//! The reference shop: one axum service built from oncely's own crates, implementing
//! docs/shop-api.md on SQLite, with its web UI (`web/dist`) embedded.
//!
//! - **Checkout** is the checkout saga of `oncely-example-checkout` (place the order,
//!   reserve stock at the inventory, capture the payment at the provider, confirm), run by
//!   an in-process saga runner; the inventory and the provider are that crate's fakes,
//!   reached over HTTP on an internal loopback listener. `POST /api/checkout` and
//!   `POST /api/orders/{id}/cancel` sit behind the idempotency layer.
//! - **Cart and profile** are versioned documents (`ETag` / `If-Match`, 412 with the
//!   current document, 428 for blind writes) through `oncely-conditional`.
//! - **The order history** is a read model fed by the transactional outbox through an
//!   in-process relay, behind the inbox; writes answer a consistency token and reads that
//!   present it wait (boundedly) for it: read-your-writes.
//! - **Payments** are paid when the provider's signed webhook says so; the payments
//!   reconciliation heals a lost webhook and raises every other drift.
//! - **The audit trail** records who changed what, with redaction per user.
//!
//! [`serve`] runs it until the process is told to stop; [`start`] hands back a
//! [`Running`] shop (tests, and callers with their own shutdown).

#![warn(missing_docs)]

mod api;
mod app;
pub mod catalog;
pub mod chaos;
mod config;
mod error;
mod events;
pub mod model;
mod openapi;
mod problem;
mod reconciliation;
mod services;
mod store;
mod trail;
pub mod web;

pub use api::{Caller, CORRELATION_HEADER};
pub use app::{start, Running, USER_HEADER};
pub use config::{Config, DbUrl};
pub use error::{DbError, ShopError};

/// Every route of the API, as the router has it (method and path pattern).
pub fn api_routes() -> Vec<(http::Method, &'static str)> {
    api::routes()
}

/// The OpenAPI 3.1 document `GET /api/openapi.json` answers.
pub fn openapi_document() -> serde_json::Value {
    openapi::document()
}

/// The (method, path) pairs the OpenAPI document describes.
pub fn openapi_routes() -> Vec<(String, String)> {
    openapi::described()
}

/// Runs the shop until `stop` completes. Prints `listening on http://ADDR` once it takes
/// requests.
pub async fn serve_until(
    config: Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ShopError> {
    let running = start(config).await?;
    println!("listening on {}", running.url());
    stop.await;
    running.stop().await;
    Ok(())
}

/// Runs the shop until Ctrl-C or SIGTERM. Prints `listening on http://ADDR` once it takes
/// requests.
pub async fn serve(config: Config) -> Result<(), ShopError> {
    serve_until(config, shutdown_signal()).await
}

/// Ctrl-C, or SIGTERM where there is one.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
