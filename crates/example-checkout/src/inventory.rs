//! A fake inventory service: stock per sku, reservations made and released under an
//! `Idempotency-Key` (the same layer in front, with a store of its own), and a ledger of
//! what it actually executed, which is what tests count.
//!
//! A release is final for its reference: a reservation that arrives after its release (a
//! request that was slow on the network while the saga turned back) is refused with 410, so
//! that a late reserve can never take stock nobody will give back.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::SystemClock;
use oncely_http::{Engine, IdempotencyLayer, KeyRequirement, RoutePolicy};
use oncely_store::MemoryStore;
use serde::{Deserialize, Serialize};

use crate::checkout::Item;

/// Units of each sku a fresh service has.
pub const INITIAL_STOCK: u32 = 100;

/// One reservation the service executed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reservation {
    /// `rs_N`, numbered in the order of execution: a reservation made twice shows as two.
    pub id: String,
    /// The order it holds stock for.
    pub reference: String,
    /// What it holds.
    pub items: Vec<Item>,
    /// Whether it was released (its stock given back).
    pub released: bool,
}

#[derive(Default)]
struct Books {
    stock: BTreeMap<String, u32>,
    reservations: Vec<Reservation>,
    /// References whose release came (with or without a reservation to release).
    released: HashMap<String, ()>,
    releases: u64,
}

/// What the service executed (replays by its layer are not executions).
pub struct Ledger {
    books: Mutex<Books>,
    fail_next_releases: AtomicU64,
    fail_next: AtomicU64,
}

impl Default for Ledger {
    fn default() -> Self {
        Ledger::with_stock(INITIAL_STOCK)
    }
}

impl Ledger {
    /// A ledger with `units` of each sku.
    pub fn with_stock(units: u32) -> Self {
        let stock = crate::checkout::PRICES
            .iter()
            .map(|(sku, _)| ((*sku).to_owned(), units))
            .collect();
        Ledger {
            books: Mutex::new(Books {
                stock,
                ..Books::default()
            }),
            fail_next_releases: AtomicU64::new(0),
            fail_next: AtomicU64::new(0),
        }
    }
}

impl Ledger {
    /// Every reservation made, in order.
    pub fn reservations(&self) -> Vec<Reservation> {
        self.books.lock_ignoring_poison().reservations.clone()
    }
    /// Units of `sku` in stock.
    pub fn stock(&self, sku: &str) -> u32 {
        self.books
            .lock_ignoring_poison()
            .stock
            .get(sku)
            .copied()
            .unwrap_or(0)
    }
    /// Releases that gave stock back.
    pub fn releases(&self) -> u64 {
        self.books.lock_ignoring_poison().releases
    }
    /// The next `n` requests of any kind fail with 503 before doing anything.
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::SeqCst);
    }
    /// The next `n` releases fail with 409 (a stock count in progress) before doing anything.
    pub fn fail_next_releases(&self, n: u64) {
        self.fail_next_releases.store(n, Ordering::SeqCst);
    }
    /// Units in stock of every sku the service knows.
    pub fn stock_levels(&self) -> BTreeMap<String, u32> {
        self.books.lock_ignoring_poison().stock.clone()
    }
    /// Starts the books over with `stock` (a shop's "start over"): no reservation, no
    /// release, no fault pending. Keys its layer stored stay stored, so a caller that starts
    /// over must use new references (and so new keys) from then on.
    pub fn reset(&self, stock: BTreeMap<String, u32>) {
        *self.books.lock_ignoring_poison() = Books {
            stock,
            ..Books::default()
        };
        self.fail_next.store(0, Ordering::SeqCst);
        self.fail_next_releases.store(0, Ordering::SeqCst);
    }
}

fn take_one(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

type Answer = (StatusCode, Json<serde_json::Value>);

fn error(status: StatusCode, code: &str) -> Answer {
    (status, Json(serde_json::json!({ "error": code })))
}

#[derive(Deserialize)]
struct ReserveRequest {
    reference: String,
    items: Vec<Item>,
}

async fn reserve(State(ledger): State<Arc<Ledger>>, Json(req): Json<ReserveRequest>) -> Answer {
    if take_one(&ledger.fail_next) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "try_again");
    }
    let mut books = ledger.books.lock_ignoring_poison();
    if books.released.contains_key(&req.reference) {
        return error(StatusCode::GONE, "released");
    }
    // One reservation per order, whatever the key: a second key for one order gets the
    // first reservation back.
    if let Some(r) = books
        .reservations
        .iter()
        .find(|r| r.reference == req.reference)
    {
        return (StatusCode::OK, Json(serde_json::json!(r)));
    }
    // A sku listed twice counts twice: the check is on the sum.
    let mut wanted: BTreeMap<&str, u64> = BTreeMap::new();
    for item in &req.items {
        *wanted.entry(item.sku.as_str()).or_default() += u64::from(item.qty);
    }
    if wanted
        .iter()
        .any(|(sku, qty)| u64::from(books.stock.get(*sku).copied().unwrap_or(0)) < *qty)
    {
        return error(StatusCode::UNPROCESSABLE_ENTITY, "out_of_stock");
    }
    for item in &req.items {
        if let Some(n) = books.stock.get_mut(&item.sku) {
            *n = n.saturating_sub(item.qty);
        }
    }
    let r = Reservation {
        id: format!("rs_{}", books.reservations.len() + 1),
        reference: req.reference,
        items: req.items,
        released: false,
    };
    books.reservations.push(r.clone());
    (StatusCode::CREATED, Json(serde_json::json!(r)))
}

async fn release(State(ledger): State<Arc<Ledger>>, Path(reference): Path<String>) -> Answer {
    if take_one(&ledger.fail_next) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "try_again");
    }
    // A conflict with other work (a stock count): not stored by the layer and not retried by
    // the HTTP client, so the saga itself retries the compensation, under the same key.
    if take_one(&ledger.fail_next_releases) {
        return error(StatusCode::CONFLICT, "stock_count_in_progress");
    }
    let mut books = ledger.books.lock_ignoring_poison();
    books.released.insert(reference.clone(), ());
    let Books {
        stock,
        reservations,
        releases,
        ..
    } = &mut *books;
    let mut gave_back = false;
    if let Some(r) = reservations
        .iter_mut()
        .find(|r| r.reference == reference && !r.released)
    {
        r.released = true;
        for item in &r.items {
            let n = stock.entry(item.sku.clone()).or_default();
            *n = n.saturating_add(item.qty);
        }
        *releases += 1;
        gave_back = true;
    }
    (
        StatusCode::OK,
        Json(serde_json::json!({ "reference": reference, "released": gave_back })),
    )
}

#[derive(Deserialize)]
struct FailNext {
    n: u64,
    /// Only releases.
    #[serde(default)]
    releases: bool,
}

/// The service's router: `POST /reservations` and `POST /reservations/{reference}/release`
/// (an `Idempotency-Key` is required on both), `GET /reservations`, `GET /stock`, and
/// `POST /control/fail-next?n=N[&releases=true]` (fault injection).
pub fn router() -> Result<(Router, Arc<Ledger>), String> {
    router_with(Ledger::default())
}

/// [`router`] over `ledger` (a stock of another size).
pub fn router_with(ledger: Ledger) -> Result<(Router, Arc<Ledger>), String> {
    let ledger = Arc::new(ledger);
    let engine = Arc::new(Engine::new(
        Arc::new(MemoryStore::new(Arc::new(SystemClock))),
        Arc::new(SystemClock),
        crate::keyed_routes(
            &["/reservations", "/reservations/{reference}/release"],
            RoutePolicy {
                key: KeyRequirement::Required,
                ..RoutePolicy::default()
            },
        )?,
    ));
    let app = Router::new()
        .route(
            "/reservations",
            post(reserve).get(|State(l): State<Arc<Ledger>>| async move { Json(l.reservations()) }),
        )
        .route("/reservations/{reference}/release", post(release))
        .route(
            "/stock",
            get(|State(l): State<Arc<Ledger>>| async move {
                Json(l.books.lock_ignoring_poison().stock.clone())
            }),
        )
        .route(
            "/control/fail-next",
            post(
                |State(l): State<Arc<Ledger>>, Query(q): Query<FailNext>| async move {
                    if q.releases {
                        l.fail_next_releases(q.n);
                    } else {
                        l.fail_next(q.n);
                    }
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(ledger.clone())
        .layer(IdempotencyLayer::new(engine));
    Ok((app, ledger))
}

/// Serves the service on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) -> Result<(), String> {
    let (app, _) = router()?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}
