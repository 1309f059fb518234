//! The admin listener: `/metrics` for Prometheus and `/healthz`, on an address of its own so
//! that it is never exposed where the proxied API is. With a token, every request must carry
//! `Authorization: Bearer <token>`; without one, it only binds loopback addresses (checked by
//! `Config::validate`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use oncely_http::{Engine, EngineMetrics};
use oncely_metrics::Text;
use oncely_store::StoreMetrics;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What `/metrics` renders.
pub struct Metrics {
    pub engine: Arc<EngineMetrics>,
    pub store: Arc<StoreMetrics>,
    pub executions: Arc<Engine>,
}

impl Metrics {
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
        t.finish()
    }
}

struct Admin {
    metrics: Metrics,
    token: Option<String>,
}

/// Binds the admin listener; serves until `stop` changes.
pub async fn bind(
    listen: SocketAddr,
    token: Option<String>,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), String> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen} (admin): {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
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
        let admin = admin.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.answer(&req)) }
        });
        let conn = http.serve_connection(TokioIo::new(stream), svc);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

impl Admin {
    fn answer<B>(&self, req: &Request<B>) -> Response<Full<Bytes>> {
        if !self.authorized(req) {
            let mut r = problem(
                StatusCode::UNAUTHORIZED,
                "admin-unauthorized",
                "this admin listener needs `Authorization: Bearer <token>`",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => {
                let mut r = Response::new(Full::new(Bytes::from(self.metrics.render())));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(oncely_metrics::CONTENT_TYPE),
                );
                r
            }
            (&Method::GET, "/healthz") => Response::new(Full::new(Bytes::from_static(b"ok\n"))),
            (_, "/metrics" | "/healthz") => problem(
                StatusCode::METHOD_NOT_ALLOWED,
                "admin-method-not-allowed",
                "use GET",
            ),
            _ => problem(
                StatusCode::NOT_FOUND,
                "admin-not-found",
                "the admin listener serves /metrics and /healthz",
            ),
        }
    }

    fn authorized<B>(&self, req: &Request<B>) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or(b"");
        constant_time_eq(presented, token.as_bytes())
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
    let body = format!(
        "{{\"type\":\"urn:oncely:problem:{slug}\",\"title\":\"{}\",\"status\":{},\"detail\":\"{detail}\"}}",
        status.canonical_reason().unwrap_or(""),
        status.as_u16()
    );
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"abcdefgh", b"abcdefgh"));
        assert!(!constant_time_eq(b"abcdefgh", b"abcdefgX"));
        assert!(!constant_time_eq(b"abcdefgh", b"abcdefg"));
        assert!(!constant_time_eq(b"", b"abcdefgh"));
    }
}
