//! The forwarding service: one upstream, reached with a pooled hyper client.
//!
//! It rewrites the target, drops hop-by-hop headers (RFC 9110 §7.6.1) both ways, adds the
//! `X-Forwarded-*` headers, and tells the engine how a failure happened: nothing sent
//! (connect failed) versus outcome unknown (reset or timeout after sending).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::{HeaderValue, HOST};
use http::{Request, Response, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oncely_http::body::{boxed, BodyTimedOut, IdleTimeout};
use oncely_http::headers::strip_hop_by_hop;
use oncely_http::{BoxBody, UpstreamError, UpstreamErrorKind};
use tower_service::Service;

/// The address of the client a request came from, set by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

#[derive(Clone)]
pub struct Forwarder {
    client: Client<HttpConnector, BoxBody>,
    upstream: Uri,
    upstream_host: HeaderValue,
    response_timeout: Duration,
}

impl Forwarder {
    pub fn new(
        upstream: Uri,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, String> {
        let authority = upstream.authority().ok_or("the upstream URL has no host")?;
        let upstream_host = HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        Ok(Forwarder {
            client,
            upstream,
            upstream_host,
            response_timeout,
        })
    }

    fn target(&self, original: &Uri) -> Result<Uri, UpstreamError> {
        let base = self.upstream.path().trim_end_matches('/');
        let pq = original.path_and_query().map_or("/", |p| p.as_str());
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(format!("{base}{pq}").parse().map_err(|e| {
            UpstreamError::new(UpstreamErrorKind::NotSent, format!("bad target path: {e}"))
        })?);
        Uri::from_parts(parts)
            .map_err(|e| UpstreamError::new(UpstreamErrorKind::NotSent, format!("bad target: {e}")))
    }
}

impl Service<Request<BoxBody>> for Forwarder {
    type Response = Response<BoxBody>;
    type Error = UpstreamError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, UpstreamError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), UpstreamError>> {
        // The pooled client queues internally; it is always ready to take a request.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<BoxBody>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            *req.uri_mut() = this.target(req.uri())?;
            let client_addr = req.extensions().get::<ClientAddr>().copied();
            let headers = req.headers_mut();
            strip_hop_by_hop(headers);
            // X-Forwarded-Host names the host the client asked for, never a value it forged.
            headers.remove("x-forwarded-host");
            if let Some(host) = headers.get(HOST).cloned() {
                headers.insert("x-forwarded-host", host);
            }
            headers.insert(HOST, this.upstream_host.clone());
            if let Some(ClientAddr(addr)) = client_addr {
                let ip = addr.ip().to_string();
                // Earlier proxies' entries, from every X-Forwarded-For line, then this client.
                let mut hops: Vec<&str> = headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect();
                hops.push(&ip);
                let value = hops.join(", ");
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert("x-forwarded-for", v);
                }
            }
            headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));

            let sent = tokio::time::timeout(this.response_timeout, this.client.request(req)).await;
            let resp = match sent {
                Err(_) => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::Timeout,
                        format!(
                            "the upstream did not answer within {:?}",
                            this.response_timeout
                        ),
                    ))
                }
                Ok(Err(e)) if e.is_connect() => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::NotSent,
                        format!("cannot connect to the upstream: {}", source_chain(&e)),
                    ))
                }
                Ok(Err(e)) if BodyTimedOut::find(&e).is_some() => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::ClientBodyTimedOut,
                        format!(
                            "the request body stalled while it was sent on: {}",
                            source_chain(&e)
                        ),
                    ))
                }
                Ok(Err(e)) => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::Unknown,
                        format!("the upstream connection failed: {}", source_chain(&e)),
                    ))
                }
                Ok(Ok(resp)) => resp,
            };
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            // An upstream that stalls after its headers must not hold a request (and its key)
            // forever.
            let body = IdleTimeout::new(body, this.response_timeout);
            Ok(Response::from_parts(parts, boxed(body)))
        })
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}
