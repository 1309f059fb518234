//! The admin listener, on an address of its own so that it is never exposed where the
//! proxied API is:
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | Prometheus text |
//! | `GET /healthz` | `ok` |
//! | `GET /stats` | live record counts of the store |
//! | `GET /keys?limit=N` | in-progress keys, oldest first |
//! | `GET /keys/one?tenant=&method=&route=&key=` | one key's record |
//! | `DELETE /keys/one?tenant=&method=&route=&key=` | evicts it |
//! | `GET /takeovers` | the last lease takeovers of this gateway |
//! With a token, every request must carry
//! `Authorization: Bearer <token>`; without one, it only binds loopback addresses (checked by
//! `Config::validate`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{RawQuery, State};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use oncely_core::{IdempotencyKey, KeyError, Record, RecordKey, RecordState, Tenant};
use oncely_http::{Engine, EngineMetrics};
use oncely_metrics::Text;
use oncely_store::{StoreAdmin, StoreError, StoreMetrics};
use sha2::Digest as _;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_service::Service as _;

/// What `/metrics` renders.
#[derive(Clone)]
pub struct Metrics {
    /// Requests by outcome, lease takeovers (also the source of `/takeovers`), and the
    /// upstream's latency.
    pub engine: Arc<EngineMetrics>,
    /// Latency and failures of each store operation, and the records purged.
    pub store: Arc<StoreMetrics>,
    /// The engine: executions in flight, and the replay cache an eviction clears.
    pub executions: Arc<Engine>,
    /// The store's operator surface (metered), for the stats and key endpoints.
    pub records: Arc<dyn StoreAdmin>,
    /// The audit trail's writer, if the gateway keeps one.
    pub audit: Option<Arc<oncely_audit::AuditWriter>>,
}

impl Metrics {
    /// The `/metrics` page, in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut t = Text::new();
        self.engine.render(&mut t);
        self.store.render(&mut t);
        t.family(
            "oncely_executions_in_flight",
            "gauge",
            "Keyed requests being executed now (claimed, not yet completed or released).",
        );
        t.sample(
            "oncely_executions_in_flight",
            &[],
            self.executions.executions_in_flight() as f64,
        );
        if let Some(w) = &self.audit {
            render_audit(&mut t, w.stats());
        }
        t.finish()
    }
}

fn render_audit(t: &mut Text, stats: &oncely_audit::WriterStats) {
    use std::sync::atomic::Ordering::Relaxed;
    for (name, help, value) in [
        (
            "oncely_audit_events_total",
            "Audit events appended to this gateway's chain.",
            &stats.appended,
        ),
        (
            "oncely_audit_events_dropped_total",
            "Audit events dropped because the queue was full (the trail records each loss).",
            &stats.dropped,
        ),
        (
            "oncely_audit_append_failures_total",
            "Failed attempts to append a batch of audit events (retried).",
            &stats.append_failures,
        ),
        (
            "oncely_audit_chain_conflicts_total",
            "Batches sealed again because another process appended to the same chain.",
            &stats.conflicts,
        ),
    ] {
        t.family(name, "counter", help);
        t.sample(name, &[], value.load(Relaxed) as f64);
    }
}

struct Admin {
    metrics: Metrics,
    token: Option<String>,
}

/// Why the admin listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A non-loopback address without a token: anyone who can reach it could evict keys.
    #[error("admin listener on {0}: reachable from other hosts, so it needs a token")]
    NeedsToken(SocketAddr),
    /// The address could not be bound.
    #[error("cannot listen on {addr} (admin): {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the system refused it; see [`BindError::is_address_taken`].
        source: std::io::Error,
    },
}

impl BindError {
    /// Something else listens there already (another gateway on this host, say).
    pub fn is_address_taken(&self) -> bool {
        matches!(self, BindError::Listen { source, .. } if source.kind() == std::io::ErrorKind::AddrInUse)
    }
}

/// Binds the admin listener; serves until `stop` changes.
pub async fn bind(
    listen: SocketAddr,
    token: Option<String>,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), BindError> {
    // Also checked by `Config::validate`; here too, for embedders who bind without it.
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(BindError::NeedsToken(listen));
    }
    let failed = |source| BindError::Listen {
        addr: listen,
        source,
    };
    let listener = TcpListener::bind(listen).await.map_err(failed)?;
    let addr = listener.local_addr().map_err(failed)?;
    let admin = Arc::new(Admin { metrics, token });
    Ok((addr, tokio::spawn(serve(listener, admin, stop))))
}

async fn serve(listener: TcpListener, admin: Arc<Admin>, mut stop: watch::Receiver<bool>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let router = router(admin.clone());
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            // A router is always ready: calling it without `poll_ready` is allowed.
            let mut router = router.clone();
            async move { router.call(req).await }
        });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

/// The admin API's routes, behind the token check. Every answer, errors included, is the
/// same as ever: JSON or problem documents, 405 naming the methods a path takes.
fn router(admin: Arc<Admin>) -> Router {
    let use_get = || async {
        problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "admin-method-not-allowed",
            "use GET",
        )
    };
    Router::new()
        .route("/metrics", get(metrics_page).fallback(use_get))
        // `get` answers HEAD too, without the body.
        .route("/healthz", get(healthz).fallback(use_get))
        .route("/stats", get(stats).fallback(use_get))
        .route("/keys", get(keys).fallback(use_get))
        .route(
            "/keys/one",
            get(key_one).delete(evict_one).fallback(|| async {
                problem(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "admin-method-not-allowed",
                    "use GET or DELETE",
                )
            }),
        )
        .route("/takeovers", get(takeovers).fallback(use_get))
        .fallback(|| async {
            problem(
                StatusCode::NOT_FOUND,
                "admin-not-found",
                "the admin listener serves /metrics, /healthz, /stats, /keys, /keys/one and /takeovers",
            )
        })
        .layer(middleware::from_fn_with_state(admin.clone(), authorize))
        .with_state(admin)
}

type AdminState = State<Arc<Admin>>;

async fn authorize(
    State(admin): AdminState,
    req: axum::extract::Request,
    next: Next,
) -> axum::response::Response {
    if !admin.authorized(&req) {
        let mut r = problem(
            StatusCode::UNAUTHORIZED,
            "admin-unauthorized",
            "this admin listener needs `Authorization: Bearer <token>`",
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r.into_response();
    }
    next.run(req).await
}

async fn metrics_page(State(admin): AdminState) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(admin.metrics.render())));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(oncely_metrics::CONTENT_TYPE),
    );
    r
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn stats(State(admin): AdminState) -> Response<Full<Bytes>> {
    match admin.store().stats().await {
        Ok(s) => json(
            StatusCode::OK,
            serde_json::json!({"in_progress": s.in_progress, "completed": s.completed}),
        ),
        Err(e) => store_problem(&e),
    }
}

async fn keys(State(admin): AdminState, RawQuery(query): RawQuery) -> Response<Full<Bytes>> {
    let limit = match param(query.as_deref().unwrap_or(""), "limit") {
        None => 100,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=10_000).contains(&n) => n,
            _ => return bad_request("`limit` must be a number from 1 to 10000"),
        },
    };
    match admin.store().list_in_progress(limit).await {
        Ok(held) => json(
            StatusCode::OK,
            serde_json::json!({
                "in_progress": held.iter().map(|(k, r)| record_json(k, r)).collect::<Vec<_>>()
            }),
        ),
        Err(e) => store_problem(&e),
    }
}

async fn key_one(State(admin): AdminState, RawQuery(query): RawQuery) -> Response<Full<Bytes>> {
    let key = match key_from_query(query.as_deref().unwrap_or("")) {
        Ok(k) => k,
        Err(e) => return bad_request(&e.to_string()),
    };
    match admin.store().get(&key).await {
        Ok(Some(r)) => json(StatusCode::OK, record_json(&key, &r)),
        Ok(None) => not_found(&key),
        Err(e) => store_problem(&e),
    }
}

async fn evict_one(State(admin): AdminState, RawQuery(query): RawQuery) -> Response<Full<Bytes>> {
    let key = match key_from_query(query.as_deref().unwrap_or("")) {
        Ok(k) => k,
        Err(e) => return bad_request(&e.to_string()),
    };
    // The store first, then this gateway's replay cache: a request between the two still
    // replays, as it would have just before the eviction, and none after it can.
    let evicted = admin.store().evict(&key).await;
    admin.metrics.executions.forget(&key);
    match evicted {
        Ok(true) => {
            tracing::warn!(key = %key, "evicted by an operator through the admin API");
            json(StatusCode::OK, serde_json::json!({"evicted": true}))
        }
        Ok(false) => not_found(&key),
        Err(e) => store_problem(&e),
    }
}

async fn takeovers(State(admin): AdminState) -> Response<Full<Bytes>> {
    json(
        StatusCode::OK,
        serde_json::json!({
            "takeovers": admin.metrics.engine.recent_takeovers().iter().map(|t| {
                let mut v = key_json(&t.key);
                v["at_ms"] = serde_json::json!(t.at_ms);
                v
            }).collect::<Vec<_>>()
        }),
    )
}

impl Admin {
    fn store(&self) -> &Arc<dyn StoreAdmin> {
        &self.metrics.records
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        // The scheme is case-insensitive (RFC 9110 §11.1).
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|v| &v[7..])
            .unwrap_or(b"");
        // Digests of equal length: the comparison's time says nothing of the token's length.
        let digest = |b: &[u8]| sha2::Sha256::digest(b);
        constant_time_eq(&digest(presented), &digest(token.as_bytes()))
    }
}

/// Compares without an early exit, so the time taken says nothing about how much of a
/// guessed token was right. (The length may leak; tokens are long and random.)
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn problem(status: StatusCode, slug: &str, detail: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({
        "type": format!("urn:oncely:problem:{slug}"),
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut r = json(status, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

fn json(status: StatusCode, v: serde_json::Value) -> Response<Full<Bytes>> {
    let mut body = serde_json::to_vec_pretty(&v).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn bad_request(detail: &str) -> Response<Full<Bytes>> {
    problem(StatusCode::BAD_REQUEST, "admin-bad-request", detail)
}

fn not_found(key: &RecordKey) -> Response<Full<Bytes>> {
    problem(
        StatusCode::NOT_FOUND,
        "key-not-found",
        &format!("no live record for {key}"),
    )
}

fn store_problem(e: &StoreError) -> Response<Full<Bytes>> {
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "idempotency-store-unavailable",
        &e.to_string(),
    )
}

fn key_json(k: &RecordKey) -> serde_json::Value {
    serde_json::json!({
        "tenant": k.scope.tenant.as_str(),
        "method": k.scope.method,
        "route": k.scope.route,
        "key": k.key.as_str(),
    })
}

fn record_json(k: &RecordKey, r: &Record) -> serde_json::Value {
    let mut v = key_json(k);
    v["fingerprint"] = serde_json::json!(r.fingerprint.to_hex());
    v["created_at_ms"] = serde_json::json!(r.created_at.as_millis());
    v["expires_at_ms"] = serde_json::json!(r.expires_at.as_millis());
    match &r.state {
        RecordState::InProgress {
            lease_expires_at, ..
        } => {
            v["state"] = serde_json::json!("in_progress");
            v["lease_expires_at_ms"] = serde_json::json!(lease_expires_at.as_millis());
        }
        RecordState::Completed { response } => {
            v["state"] = serde_json::json!("completed");
            v["status"] = serde_json::json!(response.status);
            v["body_bytes"] = serde_json::json!(response.body.len());
        }
    }
    v
}

/// Why a query does not name a record key. Its message is the `detail` of the 400 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyQueryError {
    /// A parameter that is needed is absent, or not valid UTF-8 once percent-decoded.
    #[error("`{name}` is missing (tenant, route and key are needed)")]
    Missing {
        /// The parameter: `tenant`, `route` or `key`.
        name: &'static str,
    },
    /// `route` is not a request path.
    #[error("`route` must be a path starting with `/`, not `{0}`")]
    Route(String),
    /// `method` is not upper case, as methods are stored.
    #[error("`method` must be an upper-case method such as POST, not `{0}`")]
    Method(String),
    /// `key` is not a valid Idempotency-Key.
    #[error("`key`: {0}")]
    Key(#[source] KeyError),
}

/// The record key named by a query: `tenant` (as stored: `anon`, `hdr:VALUE`, `auth:HASH`),
/// `method` (default POST), `route` (the request path) and `key`, percent-encoded.
pub fn key_from_query(query: &str) -> Result<RecordKey, KeyQueryError> {
    let need = |name: &'static str| param(query, name).ok_or(KeyQueryError::Missing { name });
    let tenant = need("tenant")?;
    let route = need("route")?;
    if !route.starts_with('/') {
        return Err(KeyQueryError::Route(route));
    }
    let method = param(query, "method").unwrap_or_else(|| "POST".to_owned());
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(KeyQueryError::Method(method));
    }
    let key = IdempotencyKey::new(&need("key")?).map_err(KeyQueryError::Key)?;
    Ok(RecordKey::new(
        Tenant::from_stored(tenant),
        &method,
        &route,
        key,
    ))
}

/// The first value of `name` in a query string, percent-decoded (`+` stays `+`). `None`
/// when absent or not valid UTF-8 once decoded.
fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v)).flatten()
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::{constant_time_eq, key_from_query, percent_decode, KeyQueryError};

    #[test]
    fn keys_come_from_percent_encoded_queries() {
        let k = key_from_query("tenant=hdr%3Aacme&route=%2Forders%2F7&key=a%26b%3Dc&method=PATCH")
            .unwrap();
        assert_eq!(k.scope.tenant.as_str(), "hdr:acme");
        assert_eq!(k.scope.route, "/orders/7");
        assert_eq!(k.scope.method, "PATCH");
        assert_eq!(k.key.as_str(), "a&b=c");
        assert_eq!(
            key_from_query("tenant=anon&route=/x&key=k")
                .unwrap()
                .scope
                .method,
            "POST"
        );
        for bad in [
            "route=/x&key=k",
            "tenant=anon&key=k",
            "tenant=anon&route=x&key=k",
            "tenant=anon&route=/x&key=",
            "tenant=anon&route=/x&key=a%20b",
            "tenant=anon&route=/x&key=k&method=post",
            "tenant=anon&route=/x&key=%zz",
        ] {
            assert!(key_from_query(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            key_from_query("route=/x&key=k"),
            Err(KeyQueryError::Missing { name: "tenant" })
        ));
        let e = key_from_query("tenant=anon&route=x&key=k").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`route` must be a path starting with `/`, not `x`"
        );
        assert!(matches!(
            key_from_query("tenant=anon&route=/x&key="),
            Err(KeyQueryError::Key(_))
        ));
        assert_eq!(percent_decode("%e2%82%ac").as_deref(), Some("€"));
        assert_eq!(percent_decode("%ff"), None, "not UTF-8");
        assert_eq!(percent_decode("%4"), None);
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abcdefgh", b"abcdefgh"));
        assert!(!constant_time_eq(b"abcdefgh", b"abcdefgX"));
        assert!(!constant_time_eq(b"abcdefgh", b"abcdefg"));
        assert!(!constant_time_eq(b"", b"abcdefgh"));
    }
}
