//! The checkout service: `POST /checkout` behind the idempotency layer starts the checkout
//! saga and answers with its outcome (or 202 and where to look, when it takes longer than
//! `wait`); a saga runner in the same process drives the sagas; an optional admin listener
//! serves `/metrics` and the saga admin API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use bytes::Bytes;
use oncely_core::{Clock, SystemClock};
use oncely_http::{Claimed, Engine, IdempotencyLayer, KeyRequirement, RoutePolicy};
use oncely_open::StoreUrl;
use oncely_saga::{Runner, RunnerConfig, SagaError, SagaStore};

use crate::checkout::{self, Checkout, CheckoutConfig, CheckoutInput, CheckoutRequest, Outcome};
use crate::orders::OrdersDb;

/// Where the shop keeps its orders and its sagas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// `sqlite://PATH`
    Sqlite(PathBuf),
    /// `postgres://...?schema=NAME` (default schema `shop`)
    Postgres {
        /// The connection URL, without the `?schema=` query.
        url: String,
        /// The schema of the shop's tables and its sagas; the layer's records go to
        /// `{schema}_keys`.
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

    /// The saga store and the orders table in this database.
    pub async fn open(
        &self,
        clock: Arc<dyn Clock>,
    ) -> Result<(Arc<dyn SagaStore>, OrdersDb), String> {
        match self {
            DbUrl::Sqlite(path) => {
                let sagas =
                    oncely_saga::sqlite::SqliteSagas::open(path, Duration::from_secs(10), clock)
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok((Arc::new(sagas), OrdersDb::sqlite(path)?))
            }
            DbUrl::Postgres { url, schema } => {
                let mut opts = oncely_db::postgres::PgOptions::new(url.clone());
                opts.schema = schema.clone();
                let pool = oncely_db::postgres::pool(&opts)?;
                let sagas = oncely_saga::postgres::PgSagas::open(pool.clone(), schema, clock)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok((Arc::new(sagas), OrdersDb::postgres(pool, schema).await?))
            }
        }
    }
}

/// The checkout service's settings, one per flag of `oncely-example-checkout checkout`.
#[derive(Debug, Clone)]
pub struct Config {
    /// The shop's database: its orders and its sagas.
    pub db: DbUrl,
    /// The idempotency layer's store (by default [`DbUrl::default_keys`]).
    pub keys: StoreUrl,
    /// The inventory service's base URL.
    pub inventory: String,
    /// The payment provider's base URL.
    pub provider: String,
    /// The address to listen on; port 0 takes a free one, shown on the `listening on` line.
    pub listen: SocketAddr,
    /// The admin listener (`/metrics`, `/sagas...`), loopback unless `admin_token` is set.
    pub admin: Option<SocketAddr>,
    /// The bearer token the admin listener requires.
    pub admin_token: Option<String>,
    /// How long a crashed request blocks its key, and a crashed runner its sagas.
    pub lease: Duration,
    /// The bound on one HTTP attempt of a step; a timeout is retried with the same key.
    pub provider_timeout: Duration,
    /// How long `POST /checkout` waits for the outcome before answering 202.
    pub wait: Duration,
    /// How often an idle runner looks for due sagas.
    pub poll: Duration,
    /// Step and saga deadlines, backoff and compensation attempts.
    pub checkout: CheckoutConfig,
    /// Kill the process (SIGKILL) when a checkout reaches this boundary (crash tests).
    pub crash_at: Option<String>,
    /// Run no saga runner (a process that only takes checkouts; another process runs them).
    pub no_runner: bool,
    /// How long the layer keeps a finished key.
    pub retention: Duration,
    /// The secret the provider signs its webhooks with; without it `POST /webhooks/provider`
    /// refuses every webhook.
    pub webhook_secret: Option<oncely_outbox::webhook::WebhookSecret>,
    /// The audit trail every saga transition and operator action is written to, if any.
    pub audit: Option<oncely_open::AuditUrl>,
    /// The key sealing the trail's events (16 bytes or more); a random one for this run
    /// when `None`.
    pub audit_key: Option<Vec<u8>>,
}

impl Config {
    /// Refuses settings that cannot work together.
    pub fn validate(&self) -> Result<(), String> {
        if self.lease < Duration::from_millis(200) {
            return Err("--lease must be at least 200ms".into());
        }
        if self.provider_timeout * 2 >= self.lease {
            return Err(format!(
                "--provider-timeout ({:?}) must be under half of --lease ({:?}): a step's attempt is given half the lease",
                self.provider_timeout, self.lease
            ));
        }
        if let Some(b) = &self.crash_at {
            let all = checkout::boundaries();
            if !all.contains(b) {
                return Err(format!(
                    "--crash-at `{b}` is not a boundary (one of: {})",
                    all.join(", ")
                ));
            }
        }
        if self.admin_token.as_deref().is_some_and(str::is_empty) {
            return Err("--admin-token must not be empty".into());
        }
        if self.audit_key.as_ref().is_some_and(|k| k.len() < 16) {
            return Err("the audit key must be at least 16 bytes".into());
        }
        if let (Some(addr), None) = (self.admin, &self.admin_token) {
            if !addr.ip().is_loopback() {
                return Err(format!(
                    "--admin {addr}: without --admin-token the admin listener binds loopback only"
                ));
            }
        }
        Ok(())
    }
}

/// What the handlers share.
pub struct Shop {
    /// The checkout's services.
    pub checkout: Arc<Checkout>,
    /// The runner that starts and drives checkouts.
    pub runner: Arc<Runner>,
    /// The sagas.
    pub sagas: Arc<dyn SagaStore>,
    /// How long `POST /checkout` waits for an outcome.
    pub wait: Duration,
    /// The provider's webhook secret.
    pub webhook_secret: Option<oncely_outbox::webhook::WebhookSecret>,
}

/// Kills the process at one boundary, as a power cut or an OOM kill would: no destructor,
/// no flush, no rollback other than the database's own.
fn crash_at(boundary: String) -> checkout::Boundary {
    Arc::new(move |reached: &str| {
        if reached == boundary {
            eprintln!("crash point reached: {reached}");
            // SAFETY: kill(2) on our own pid has no memory-safety preconditions.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    })
}

/// Runs the service until the process ends. Prints `listening on http://ADDR` once ready
/// (and `admin on http://ADDR` when an admin listener is asked for).
pub async fn run(cfg: Config) -> Result<(), String> {
    cfg.validate()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (sagas, orders) = cfg.db.open(clock.clone()).await?;
    let step_bound = cfg.lease / 2 - Duration::from_millis(50).min(cfg.lease / 4);
    let client = oncely_client::Client::builder()
        .attempt_timeout(Some(cfg.provider_timeout))
        .deadline(Some(step_bound))
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
        .build()
        .map_err(|e| e.to_string())?;
    let checkout = Arc::new(Checkout {
        orders,
        inventory: cfg.inventory.trim_end_matches('/').to_owned(),
        payments: cfg.provider.trim_end_matches('/').to_owned(),
        http: oncely_saga::http::HttpSteps::new(Arc::new(client)),
        config: cfg.checkout.clone(),
    });
    let definition = checkout.definition(cfg.crash_at.clone().map(crash_at));
    let audit = match &cfg.audit {
        Some(url) => Some(open_audit(url, cfg.audit_key.clone(), clock.clone()).await?),
        None => None,
    };
    let mut runner = Runner::new(
        sagas.clone(),
        vec![definition],
        clock.clone(),
        RunnerConfig {
            lease: cfg.lease,
            batch: 16,
            poll: cfg.poll,
        },
    )
    .map_err(|e| e.to_string())?;
    if let Some(writer) = &audit {
        runner = runner.with_audit(writer.clone());
    }
    let runner = Arc::new(runner);
    if !cfg.no_runner {
        let r = runner.clone();
        tokio::spawn(async move { r.run(std::future::pending()).await });
    }
    let shop = Arc::new(Shop {
        checkout,
        runner: runner.clone(),
        sagas: sagas.clone(),
        wait: cfg.wait,
        webhook_secret: cfg.webhook_secret.clone(),
    });

    let store = cfg
        .keys
        .open(clock.clone())
        .await
        .map_err(|e| format!("idempotency store: {e}"))?;
    let engine = Arc::new(Engine::new(
        store,
        clock.clone(),
        crate::keyed_routes(
            &["/checkout"],
            RoutePolicy {
                key: KeyRequirement::Required,
                lease: cfg.lease,
                ttl: cfg.retention,
                ..RoutePolicy::default()
            },
        )?,
    ));
    if let Some(addr) = cfg.admin {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("admin listen on {addr}: {e}"))?;
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        println!("admin on http://{local}");
        let app = admin_router(sagas, runner, audit, clock, cfg.admin_token.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    let app = router(shop, engine);
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("listen on {}: {e}", cfg.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{addr}");
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}

/// The trail's table (created if missing) and the chain `checkout`.
async fn open_audit(
    url: &oncely_open::AuditUrl,
    key: Option<Vec<u8>>,
    clock: Arc<dyn Clock>,
) -> Result<Arc<oncely_audit::AuditWriter>, String> {
    url.migrate().await?;
    let key = key.unwrap_or_else(|| {
        tracing::warn!("no audit key (--audit-key-file): using one for this run only; the chain verifies, the personal fields' commitments do not");
        format!("{:032x}", rand::random::<u128>()).into_bytes()
    });
    let writer = oncely_audit::AuditWriter::open(url.open()?, "checkout", key, clock, 10_000)
        .await
        .map_err(|e| format!("audit trail {url}: {e}"))?;
    Ok(Arc::new(writer))
}

/// `/metrics` (the runner's counts and the store's per-phase gauges), `/healthz`, and the
/// saga admin API, behind a bearer token when one is set.
pub fn admin_router(
    sagas: Arc<dyn SagaStore>,
    runner: Arc<Runner>,
    audit: Option<Arc<oncely_audit::AuditWriter>>,
    clock: Arc<dyn Clock>,
    token: Option<String>,
) -> Router {
    let metrics = runner.metrics();
    let store = sagas.clone();
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let (metrics, store, clock) = (metrics.clone(), store.clone(), clock.clone());
                async move {
                    let stats = store.stats().await.ok();
                    let mut text = oncely_metrics::Text::new();
                    metrics.render(stats.as_ref(), clock.now(), &mut text);
                    (
                        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        text.finish(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .merge(oncely_saga::admin::router(sagas, audit));
    match token {
        None => app,
        Some(token) => app.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let ok = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.split_once(' '))
                    .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
                    .map(|(_, t)| t.trim())
                    .is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes()));
                async move {
                    if ok {
                        next.run(req).await
                    } else {
                        problem(
                            401,
                            "unauthorized",
                            "a valid admin bearer token is required",
                        )
                        .into_response()
                    }
                }
            },
        )),
    }
}

/// Compares without an early exit, so the time taken says nothing about a guessed token.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `POST /checkout`, `GET /checkouts/{id}` and `GET /orders`, behind the idempotency layer,
/// which decides replays, 409s and 422s before the handler runs.
pub fn router(shop: Arc<Shop>, engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/checkout", post(start_checkout))
        .route("/checkouts/{id}", get(show_checkout))
        .route("/orders", get(orders))
        .route("/webhooks/provider", post(provider_webhook))
        .with_state(shop)
        .layer(IdempotencyLayer::new(engine))
}

async fn start_checkout(
    State(shop): State<Arc<Shop>>,
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
    let k = &claimed.record_key;
    let id = checkout::saga_id(&[
        k.scope.tenant.as_str(),
        &k.scope.method,
        &k.scope.route,
        k.key.as_str(),
    ]);
    let request: CheckoutRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return problem(400, "invalid-checkout", &e.to_string()),
    };
    let input = match CheckoutInput::new(&id, request) {
        Ok(i) => i,
        Err(detail) => return problem(400, "invalid-checkout", &detail),
    };
    match Checkout::start(&shop.runner, &id, &input).await {
        Ok(_) => {}
        // Only reachable when the layer's record expired before the saga: 409, which the
        // layer does not store, so this request never takes the key over.
        Err(e @ SagaError::Conflict(_)) => {
            return problem(409, "checkout-input-mismatch", &e.to_string())
        }
        Err(e) => {
            // 5xx: the layer releases the key, and the client's retry starts it again (a
            // no-op if it was stored after all).
            let mut r = problem(503, "checkout-unavailable", &e.to_string());
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
    }
    let deadline = tokio::time::Instant::now() + shop.wait;
    loop {
        let outcome = match shop.sagas.get(&id).await {
            Ok(Some((saga, _))) => shop.checkout.outcome(&saga).await,
            Ok(None) => Err(format!("saga {id} vanished")),
            Err(e) => Err(e.to_string()),
        };
        match outcome {
            Ok(Outcome::Pending { .. } | Outcome::Stuck { .. })
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(outcome) => return answer(&id, outcome),
            Err(e) => {
                let mut r = problem(503, "checkout-unavailable", &e);
                r.headers_mut()
                    .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
                return r;
            }
        }
    }
}

/// The answer for an outcome: 201 confirmed; 402 declined; 422 turned back otherwise; 202
/// still on its way (with where to look).
fn answer(id: &str, outcome: Outcome) -> Response<Body> {
    let location = format!("/checkouts/{id}");
    let mut r = match &outcome {
        Outcome::Confirmed(_) => {
            (StatusCode::CREATED, Json(status_json(id, &outcome))).into_response()
        }
        // The provider's answer, as the HTTP step wrote it: `402 {...}`.
        Outcome::Cancelled { reason, .. } if reason.starts_with("402 ") => problem_with(
            402,
            "payment-declined",
            "the card was declined; the stock is released and the order cancelled",
            status_json(id, &outcome),
        ),
        Outcome::Cancelled { .. } => problem_with(
            422,
            "checkout-cancelled",
            "the checkout turned back; the stock is released and the order cancelled",
            status_json(id, &outcome),
        ),
        Outcome::Pending { .. } | Outcome::Stuck { .. } => {
            (StatusCode::ACCEPTED, Json(status_json(id, &outcome))).into_response()
        }
    };
    if let Ok(v) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(http::header::LOCATION, v);
    }
    r
}

fn status_json(id: &str, outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Confirmed(order) => serde_json::json!({
            "checkout": id, "state": "confirmed", "order_id": order.id,
            "amount": order.amount, "charge_id": order.charge_id,
        }),
        Outcome::Cancelled {
            order_id, reason, ..
        } => serde_json::json!({
            "checkout": id, "state": "cancelled", "order_id": order_id, "reason": reason,
        }),
        Outcome::Pending { order_id } => serde_json::json!({
            "checkout": id, "state": "pending", "order_id": order_id,
        }),
        Outcome::Stuck { order_id, reason } => serde_json::json!({
            "checkout": id, "state": "stuck", "order_id": order_id, "reason": reason,
        }),
    }
}

async fn show_checkout(State(shop): State<Arc<Shop>>, Path(id): Path<String>) -> Response<Body> {
    match shop.sagas.get(&id).await {
        Ok(Some((saga, log))) => match shop.checkout.outcome(&saga).await {
            Ok(outcome) => {
                let mut v = status_json(&id, &outcome);
                let mut s = oncely_saga::admin::saga_json(&saga);
                s["log"] = log.iter().map(oncely_saga::admin::log_json).collect();
                v["saga"] = s;
                Json(v).into_response()
            }
            Err(e) => problem(503, "checkout-unavailable", &e),
        },
        Ok(None) => problem(404, "not-found", &format!("no checkout {id}")),
        Err(e) => problem(503, "checkout-unavailable", &e.to_string()),
    }
}

/// `POST /webhooks/provider`: the provider announcing a charge. A known order of the same
/// amount is confirmed (idempotently: a duplicate or a late webhook changes nothing); any
/// other charge is acknowledged and left to reconciliation, which raises it.
async fn provider_webhook(
    State(shop): State<Arc<Shop>>,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response<Body> {
    // Anyone can reach this route: only a webhook signed with the provider's secret (and
    // recent: five minutes either way) may confirm an order.
    let Some(secret) = &shop.webhook_secret else {
        return problem(
            503,
            "webhooks-not-configured",
            "the shop has no --webhook-secret: provider webhooks are refused",
        );
    };
    let now = SystemClock.now().0 / 1000;
    if let Err(e) =
        oncely_outbox::webhook::verify(secret, &headers, &body, now, Duration::from_secs(300))
    {
        return problem(401, "webhook-refused", &e.to_string());
    }
    let event: crate::payments::Event = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => return problem(400, "invalid-webhook", &e.to_string()),
    };
    match crate::reconcile::apply_webhook(&shop.checkout.orders, &event).await {
        Ok(applied) => {
            Json(serde_json::json!({ "event": event.id, "applied": applied })).into_response()
        }
        Err(e) => {
            // 5xx: the provider delivers it again later.
            problem(503, "database-unavailable", &e)
        }
    }
}

async fn orders(State(shop): State<Arc<Shop>>) -> Response<Body> {
    match shop.checkout.orders.list().await {
        Ok(orders) => Json(orders).into_response(),
        Err(e) => problem(503, "database-unavailable", &e),
    }
}

fn problem(status: u16, slug: &str, detail: &str) -> Response<Body> {
    problem_with(status, slug, detail, serde_json::json!({}))
}

/// A problem document with `extra`'s fields beside the standard ones.
fn problem_with(status: u16, slug: &str, detail: &str, extra: serde_json::Value) -> Response<Body> {
    let mut body = serde_json::json!({
        "type": format!("urn:oncely:example:{slug}"),
        "title": slug.replace('-', " "),
        "status": status,
        "detail": detail,
    });
    if let (Some(b), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        for (k, v) in extra {
            b.entry(k).or_insert(v);
        }
    }
    let mut r = Response::new(Body::from(serde_json::to_vec(&body).unwrap_or_default()));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}
