//! A fake payment provider: a separate HTTP service with idempotency of its own (the same
//! layer, in front of its charge handler), as a real provider has. It keeps a ledger of the
//! charges it actually executed, which is what tests count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::SystemClock;
use oncely_http::{Engine, IdempotencyLayer, KeyRequirement, RoutePolicy};
use oncely_store::MemoryStore;
use serde::{Deserialize, Serialize};

/// The card number the provider always declines.
pub const DECLINED_CARD: &str = "tok_declined";

/// One charge the provider executed, as `POST /charges` answers it and `GET /charges` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Charge {
    /// `ch_N`, numbered in the order of execution: a charge made twice shows as two ids.
    pub id: String,
    /// The amount in cents.
    pub amount: u64,
    /// The order id the checkout sent, which ties the charge to its order.
    pub reference: String,
}

/// What the provider executed (replays are not executions).
#[derive(Default)]
pub struct Ledger {
    charges: Mutex<Vec<Charge>>,
    requests: AtomicU64,
    received: AtomicU64,
    fail_next: AtomicU64,
    slow_next: AtomicU64,
}

impl Ledger {
    /// The charges made, in order; declined and failed requests leave none.
    pub fn charges(&self) -> Vec<Charge> {
        self.charges.lock_ignoring_poison().clone()
    }
    /// Charge requests that reached the handler (replays by the layer do not).
    pub fn executions(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    /// Charge requests received, replays by the layer included.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
    /// The next `n` charge requests fail with 503 before doing anything.
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::SeqCst);
    }
    /// The next charge executes, then answers only after `ms` milliseconds (a provider
    /// timeout: the charge happened, its answer is late).
    pub fn slow_next(&self, ms: u64) {
        self.slow_next.store(ms, Ordering::SeqCst);
    }
}

#[derive(Deserialize)]
struct ChargeRequest {
    amount: u64,
    card: String,
    reference: String,
}

async fn charge(
    State(ledger): State<Arc<Ledger>>,
    Json(req): Json<ChargeRequest>,
) -> (StatusCode, Json<serde_json::Value>) {
    ledger.requests.fetch_add(1, Ordering::SeqCst);
    if ledger
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "try_again"})),
        );
    }
    if req.card == DECLINED_CARD {
        return (
            StatusCode::PAYMENT_REQUIRED,
            Json(serde_json::json!({"error": "card_declined"})),
        );
    }
    let c = {
        let mut charges = ledger.charges.lock_ignoring_poison();
        let c = Charge {
            id: format!("ch_{}", charges.len() + 1),
            amount: req.amount,
            reference: req.reference,
        };
        charges.push(c.clone());
        c
    };
    let slow = ledger.slow_next.swap(0, Ordering::SeqCst);
    if slow > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
    }
    (StatusCode::CREATED, Json(serde_json::json!(c)))
}

/// Counts every charge request before the idempotency layer sees it.
async fn count(
    State(ledger): State<Arc<Ledger>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if req.method() == http::Method::POST && req.uri().path() == "/charges" {
        ledger.received.fetch_add(1, Ordering::SeqCst);
    }
    next.run(req).await
}

#[derive(Deserialize)]
struct FailNext {
    n: u64,
}

#[derive(Deserialize)]
struct SlowNext {
    ms: u64,
}

/// The provider's router: `POST /charges` (an `Idempotency-Key` is required), `GET /charges`
/// (the ledger), `POST /control/fail-next?n=N` and `POST /control/slow-next?ms=N` (fault
/// injection).
pub fn router() -> Result<(Router, Arc<Ledger>), String> {
    let ledger = Arc::new(Ledger::default());
    let engine = Arc::new(Engine::new(
        Arc::new(MemoryStore::new(Arc::new(SystemClock))),
        Arc::new(SystemClock),
        crate::keyed_routes(
            &["/charges"],
            RoutePolicy {
                key: KeyRequirement::Required,
                ..RoutePolicy::default()
            },
        )?,
    ));
    let app = Router::new()
        .route(
            "/charges",
            post(charge).get(|State(l): State<Arc<Ledger>>| async move { Json(l.charges()) }),
        )
        .route(
            "/control/fail-next",
            post(
                |State(l): State<Arc<Ledger>>, Query(q): Query<FailNext>| async move {
                    l.fail_next(q.n);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/control/slow-next",
            post(
                |State(l): State<Arc<Ledger>>, Query(q): Query<SlowNext>| async move {
                    l.slow_next(q.ms);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(ledger.clone())
        .layer(IdempotencyLayer::new(engine))
        .layer(axum::middleware::from_fn_with_state(ledger.clone(), count));
    Ok((app, ledger))
}

/// Serves the provider on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) -> Result<(), String> {
    let (app, _) = router()?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}
