//! Loopback HTTP helpers shared by oncely's tests, demo and benchmark.
//!
//! [`CountingUpstream`] is a real HTTP server that counts executions per `Idempotency-Key`
//! and notices overlapping executions of one key. Each request can steer it with headers:
//! `x-test-delay-ms` (work time), `x-test-status` (answer status), `x-test-fail-first: N`
//! (answer 503 to the first N executions of the key), `x-test-body-delay-ms` (send the body
//! that long after the headers), `x-test-drop: 1` (read the request, then drop the connection
//! without answering).

#![warn(missing_docs)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use oncely_core::sync::LockIgnoringPoison;
use tokio::net::TcpListener;

pub mod fault;
pub mod services;

#[derive(Default)]
struct KeyStats {
    executions: u64,
    running: u64,
    max_running: u64,
}

#[derive(Default)]
struct Shared {
    total: AtomicU64,
    per_key: Mutex<HashMap<String, KeyStats>>,
}

/// A test upstream on 127.0.0.1 with an ephemeral port.
#[derive(Clone)]
pub struct CountingUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl CountingUpstream {
    /// Binds an ephemeral port on 127.0.0.1 and serves on a spawned task until the runtime
    /// ends; it accepts connections as soon as this returns, with every count at zero. Panics
    /// if it cannot bind.
    pub async fn start() -> CountingUpstream {
        Self::start_on("127.0.0.1:0".parse().expect("literal address")).await
    }

    /// Like [`start`](Self::start), on a given address: for a test that first needs the port
    /// to be down (an upstream outage) and then brings the upstream up on it.
    pub async fn start_on(addr: SocketAddr) -> CountingUpstream {
        let listener = TcpListener::bind(addr).await.expect("bind test upstream");
        let addr = listener.local_addr().expect("local addr");
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| handle(s.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        CountingUpstream { addr, shared }
    }

    /// The address it listens on, with the port actually bound.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, without a trailing slash: the base to append request paths to, or the
    /// upstream to point a gateway at.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requests that reached the handler (keyed or not).
    pub fn total(&self) -> u64 {
        self.shared.total.load(Ordering::SeqCst)
    }

    /// Executions of requests carrying `key` (the raw header value).
    pub fn executions(&self, key: &str) -> u64 {
        self.shared
            .per_key
            .lock()
            .map(|m| m.get(key).map_or(0, |k| k.executions))
            .unwrap_or(0)
    }

    /// The largest number of executions of `key` that ever ran at the same time.
    pub fn max_overlap(&self, key: &str) -> u64 {
        self.shared
            .per_key
            .lock()
            .map(|m| m.get(key).map_or(0, |k| k.max_running))
            .unwrap_or(0)
    }
}

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}
impl std::error::Error for Dropped {}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<DelayedBody>, Dropped> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let key = header("idempotency-key");
    let delay = header("x-test-delay-ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let fail_first = header("x-test-fail-first")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let status = header("x-test-status")
        .and_then(|v| v.parse::<u16>().ok())
        .unwrap_or(201);
    let drop_conn = header("x-test-drop").is_some();
    let body_delay = header("x-test-body-delay-ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let forwarded_for = header("x-forwarded-for").unwrap_or_default();
    let request_id = header("x-request-id");
    let traceparent = header("traceparent");
    let tracestate = header("tracestate");
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();

    let n = shared.total.fetch_add(1, Ordering::SeqCst) + 1;
    let execution = match &key {
        Some(k) => {
            let mut m = shared.per_key.lock_ignoring_poison();
            let s = m.entry(k.clone()).or_default();
            s.executions += 1;
            s.running += 1;
            s.max_running = s.max_running.max(s.running);
            s.executions
        }
        None => 0,
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if let Some(k) = &key {
        let mut m = shared.per_key.lock_ignoring_poison();
        if let Some(s) = m.get_mut(k) {
            s.running -= 1;
        }
    }
    if drop_conn {
        return Err(Dropped);
    }
    let json = serde_json::json!({
        "request": n,
        "execution": execution,
        "key": key,
        "method": method,
        "path": path,
        "body_bytes": body.len(),
        "forwarded_for": forwarded_for,
        "request_id": request_id,
        "traceparent": traceparent,
        "tracestate": tracestate,
    });
    let mut resp = Response::new(DelayedBody::new(
        Bytes::from(json.to_string()),
        Duration::from_millis(body_delay),
    ));
    let status = if execution > 0 && execution <= fail_first {
        503
    } else {
        status
    };
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
    let h = resp.headers_mut();
    h.insert("content-type", "application/json".parse().expect("literal"));
    h.insert("location", format!("/things/{n}").parse().expect("digits"));
    h.insert(
        "set-cookie",
        format!("session=s{n}; HttpOnly").parse().expect("ascii"),
    );
    Ok(resp)
}

/// A response body sent `delay` after the headers (`x-test-body-delay-ms`), as a slow or
/// stalled upstream would. Chunked, so the client cannot know its length in advance.
pub struct DelayedBody {
    data: Option<Bytes>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl DelayedBody {
    fn new(data: Bytes, delay: Duration) -> Self {
        let sleep = (!delay.is_zero()).then(|| Box::pin(tokio::time::sleep(delay)));
        DelayedBody {
            data: Some(data),
            sleep,
        }
    }
}

impl http_body::Body for DelayedBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(sleep) = self.sleep.as_mut() {
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.sleep = None;
        }
        Poll::Ready(self.data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match (&self.data, &self.sleep) {
            // Known length when sent at once, like an ordinary upstream.
            (Some(d), None) => http_body::SizeHint::with_exact(d.len() as u64),
            (None, _) => http_body::SizeHint::with_exact(0),
            (Some(_), Some(_)) => http_body::SizeHint::default(),
        }
    }
}

/// A small HTTP/1 client for tests: pooled, no redirects, whole bodies.
#[derive(Clone)]
pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response with its body read.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status code.
    pub status: u16,
    /// Every response header, repeated ones included.
    pub headers: http::HeaderMap,
    /// The whole body, read to its end.
    pub body: Bytes,
}

impl Answer {
    /// The first value of header `name`; `None` if it is absent or not visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// The body parsed as JSON, or `Null` if it is not JSON, so that a test asserts on the
    /// value instead of unwrapping a parse.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// Whether the answer carries `Idempotent-Replayed: true`, that is, it came from a stored
    /// record and not from an execution upstream.
    pub fn replayed(&self) -> bool {
        self.header("idempotent-replayed") == Some("true")
    }
    /// The problem `type`, if this is a problem response.
    pub fn problem_type(&self) -> Option<String> {
        self.json()
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
    }
}

impl Default for TestClient {
    fn default() -> Self {
        Self::new()
    }
}

impl TestClient {
    /// A client with `TCP_NODELAY` and up to 1024 idle connections per host, so that a test's
    /// concurrent requests reuse connections rather than open new ones each time.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build(connector);
        TestClient { client }
    }

    /// Sends one request; `Err` only for transport failures.
    pub async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Answer, String> {
        let mut b = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(Full::new(body.into())).map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }

    /// A JSON POST with an `Idempotency-Key`, plus `extra` headers.
    pub async fn post_keyed(
        &self,
        url: &str,
        key: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> Result<Answer, String> {
        let mut headers = vec![
            ("content-type", "application/json"),
            ("idempotency-key", key),
        ];
        headers.extend_from_slice(extra);
        self.send("POST", url, &headers, body.to_owned()).await
    }

    /// [`post_keyed`](Self::post_keyed) in the background: the first request of a race, or a
    /// slow holder that later requests collide with.
    pub fn spawn_post(
        &self,
        url: &str,
        key: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> tokio::task::JoinHandle<Result<Answer, String>> {
        let (client, url, key, body) = (
            self.clone(),
            url.to_owned(),
            key.to_owned(),
            body.to_owned(),
        );
        let extra: Vec<(String, String)> = extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        tokio::spawn(async move {
            let extra: Vec<(&str, &str)> = extra
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            client.post_keyed(&url, &key, &body, &extra).await
        })
    }

    /// Like [`send`](Self::send) but with raw header bytes, for invalid values.
    pub async fn send_raw_header(
        &self,
        url: &str,
        name: &str,
        value: &[u8],
        body: &'static [u8],
    ) -> Result<Answer, String> {
        let value = http::HeaderValue::from_bytes(value).map_err(|e| e.to_string())?;
        let req = Request::builder()
            .method("POST")
            .uri(url)
            .header(name, value)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))
            .map_err(|e| e.to_string())?;
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
        })
    }
}
