//! The checkout service: the idempotency layer in front of an axum router whose
//! `POST /checkout` runs the checkout operation, plus the completer and the reaper.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use oncely_core::{Clock, StoredResponse, SystemClock};
use oncely_http::{Claimed, Engine, IdempotencyLayer, KeyRequirement, RoutePolicy};
use oncely_open::StoreUrl;
use oncely_recovery::postgres::PgJournal;
use oncely_recovery::sqlite::SqliteJournal;
use oncely_recovery::{operation_id, Completer, Hooks, Operation, Reaper, Recovery, RecoveryError};

use crate::db::ShopDb;
use crate::shop::{CheckoutRequest, CheckoutState, Provider};

/// Where the shop keeps its orders and recovery points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// `sqlite://PATH`
    Sqlite(PathBuf),
    /// `postgres://...?schema=NAME` (default schema `shop`)
    Postgres {
        /// The connection URL, without the `?schema=` query.
        url: String,
        /// The schema of the shop's tables and the journal's `operations` table; the
        /// layer's records go to `{schema}_keys`.
        schema: String,
    },
}

impl DbUrl {
    /// Reads `sqlite://PATH`, or `postgres://` (also `postgresql://`) whose only option is
    /// `schema=NAME`; the error is a message for the command line.
    pub fn parse(s: &str) -> Result<DbUrl, String> {
        if let Some(path) = s.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(format!("`{s}`: sqlite:// needs a file path"));
            }
            return Ok(DbUrl::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            let (base, query) = s.split_once('?').unwrap_or((s, ""));
            let mut schema = "shop".to_owned();
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("schema", v)) => schema = v.to_owned(),
                    _ => return Err(format!("`{s}`: the only option is schema=NAME")),
                }
            }
            return Ok(DbUrl::Postgres {
                url: base.to_owned(),
                schema,
            });
        }
        Err(format!(
            "`{s}` is not a database URL (use sqlite://PATH or postgres://...?schema=NAME)"
        ))
    }

    /// The layer's store when none is given: beside the shop's data, never in its tables.
    pub fn default_keys(&self) -> Result<StoreUrl, String> {
        match self {
            DbUrl::Sqlite(p) => {
                let mut keys = p.clone().into_os_string();
                keys.push(".keys");
                Ok(StoreUrl::sqlite(PathBuf::from(keys)))
            }
            DbUrl::Postgres { url, schema } => {
                StoreUrl::parse(&format!("{url}?schema={schema}_keys"))
            }
        }
    }
}

/// The checkout service's settings, one per flag of `oncely-example-checkout checkout`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The shop's database: its orders, its outbox and the recovery points, all in one place
    /// so that each atomic phase commits its writes and its point together.
    pub db: DbUrl,
    /// The idempotency layer's store (by default [`DbUrl::default_keys`]): the layer's
    /// records stay apart from the shop's tables.
    pub keys: StoreUrl,
    /// The payment provider's base URL; the charge phase posts to `{provider}/charges`.
    pub provider: String,
    /// The address to listen on; port 0 takes a free one, shown on the `listening on` line.
    pub listen: SocketAddr,
    /// The layer's lease: how long a crashed request blocks its key.
    pub lease: Duration,
    /// The bound on one charge request. A timeout interrupts the charge phase (503), and the
    /// retry calls again with the same derived key, which the provider deduplicates.
    pub provider_timeout: Duration,
    /// Kill the process (SIGKILL) when a run reaches this boundary (crash tests).
    pub crash_at: Option<String>,
    /// How long a checkout stays untouched before the completer finishes it for a client
    /// that never came back. Keep it above `provider_timeout`, or the completer repeats a
    /// charge that is merely slow.
    pub complete_after: Duration,
    /// How often the completer looks for abandoned checkouts.
    pub complete_every: Duration,
    /// How long the layer keeps a finished key (its TTL) and the reaper keeps a finished
    /// operation: one value, so an operation never goes before the key that leads to it.
    /// Once both are gone, the key starts a new operation.
    pub retention: Duration,
}

/// Kills the process at one boundary, as a power cut or an OOM kill would: no destructor,
/// no flush, no rollback other than the database's own.
struct CrashAt(String);

impl Hooks for CrashAt {
    fn reached(&self, operation: &str, boundary: &str) -> bool {
        if boundary == self.0 {
            eprintln!("crash point reached: {operation} {boundary}");
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
        true
    }
}

/// What the handlers share, built once at start-up for one database.
pub struct Shop<J: ShopDb> {
    /// The database: the journal of recovery points, and through it the shop's own tables.
    pub journal: Arc<J>,
    /// Runs the checkout from its recovery point (with the crash hook under `crash_at`).
    pub recovery: Arc<Recovery<J>>,
    /// The checkout operation, validated at start-up and registered with the completer.
    pub checkout: Arc<Operation<J, CheckoutState>>,
}

/// Runs the service until the process ends. Prints `listening on http://ADDR` once ready.
pub async fn run(cfg: Config) -> Result<(), String> {
    match &cfg.db {
        DbUrl::Sqlite(path) => {
            let journal = SqliteJournal::open(path, Duration::from_secs(5))
                .map_err(|e| format!("{}: {e}", path.display()))?;
            serve(Arc::new(journal), cfg).await
        }
        DbUrl::Postgres { url, schema } => {
            let pool = oncely_recovery::postgres::pool(url, 16, Duration::from_secs(5))
                .map_err(|e| e.to_string())?;
            let journal =
                PgJournal::new(pool, schema, Duration::from_secs(10)).map_err(|e| e.to_string())?;
            serve(Arc::new(journal), cfg).await
        }
    }
}

async fn serve<J: ShopDb>(journal: Arc<J>, cfg: Config) -> Result<(), String> {
    journal.setup().await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let provider = Arc::new(Provider::new(&cfg.provider, cfg.provider_timeout)?);
    let mut recovery = Recovery::new(journal.clone(), clock.clone());
    if let Some(b) = &cfg.crash_at {
        recovery = recovery.with_hooks(Arc::new(CrashAt(b.clone())));
    }
    let recovery = Arc::new(recovery);
    let checkout = Arc::new(journal.checkout(provider));
    checkout.validate().map_err(|e| e.to_string())?;
    let shop = Arc::new(Shop {
        journal,
        recovery: recovery.clone(),
        checkout: checkout.clone(),
    });

    Completer::new(recovery.clone())
        .register(checkout)
        .idle_after(cfg.complete_after)
        .spawn(cfg.complete_every);
    Reaper::new(recovery, cfg.retention).spawn(Duration::from_secs(600));

    let store = cfg
        .keys
        .open(clock.clone())
        .await
        .map_err(|e| format!("idempotency store: {e}"))?;
    let engine = Arc::new(Engine::new(
        store,
        clock,
        crate::keyed_route(
            "/checkout",
            RoutePolicy {
                key: KeyRequirement::Required,
                lease: cfg.lease,
                ttl: cfg.retention,
                ..RoutePolicy::default()
            },
        )?,
    ));
    let app = router(shop, engine);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{addr}");
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

/// `POST /checkout` and `GET /orders` behind the idempotency layer, which decides replays,
/// 409s and 422s before the handler runs. The checkout answers bad input with 400, an
/// operation that exists with another input with 409 (a status the layer does not store), a
/// transient failure with 503 and `Retry-After: 1` (the layer releases the key on a 5xx, so
/// the retry resumes from the recovery point), and any other failure with 500.
pub fn router<J: ShopDb>(shop: Arc<Shop<J>>, engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/checkout", post(checkout::<J>))
        .route("/orders", get(orders::<J>))
        .with_state(shop)
        .layer(IdempotencyLayer::new(engine))
}

async fn checkout<J: ShopDb>(
    State(shop): State<Arc<Shop<J>>>,
    claimed: Option<Extension<Claimed>>,
    body: Bytes,
) -> Response<Body> {
    // The layer requires a key on this route, so a request without a claim never gets here;
    // answering rather than panicking keeps the handler safe if the routes are changed.
    let Some(Extension(claimed)) = claimed else {
        return problem(
            400,
            "missing-idempotency-key",
            "an Idempotency-Key is required",
        );
    };
    let id = operation_id(&claimed.record_key);
    let request: CheckoutRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return problem(400, "invalid-checkout", &e.to_string()),
    };
    let state = match CheckoutState::from_request(id.clone(), request) {
        Ok(s) => s,
        Err(detail) => return problem(400, "invalid-checkout", &detail),
    };
    match shop.recovery.run(&shop.checkout, &id, state).await {
        Ok(response) => to_http(response),
        // Only reachable when the layer's record expired before the operation's: answered
        // with 409, which the layer does not store, so this request's fingerprint never
        // takes the key over from the original one.
        Err(e @ RecoveryError::InputMismatch { .. }) => {
            problem(409, "checkout-input-mismatch", &e.to_string())
        }
        Err(e) if e.is_transient() => {
            // 5xx: the layer releases the key, and the client's retry resumes the operation
            // from its recovery point.
            tracing::warn!(operation = %id, error = %e, "checkout interrupted");
            let mut r = problem(503, "checkout-interrupted", &e.to_string());
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        Err(e) => {
            tracing::error!(operation = %id, error = %e, "checkout cannot go on");
            problem(500, "checkout-failed", &e.to_string())
        }
    }
}

async fn orders<J: ShopDb>(State(shop): State<Arc<Shop<J>>>) -> Response<Body> {
    match shop.journal.orders().await {
        Ok(orders) => Json(orders).into_response(),
        Err(e) => problem(503, "database-unavailable", &e),
    }
}

fn to_http(stored: StoredResponse) -> Response<Body> {
    let mut r = Response::new(Body::from(stored.body));
    *r.status_mut() =
        StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in stored.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            r.headers_mut().append(n, v);
        }
    }
    r
}

fn problem(status: u16, slug: &str, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": format!("urn:oncely:example:{slug}"),
        "title": slug.replace('-', " "),
        "status": status,
        "detail": detail,
    });
    let mut r = Response::new(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}
