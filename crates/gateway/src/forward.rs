//! The forwarding service: one upstream, reached with a pooled hyper client.
//!
//! It rewrites the target, drops hop-by-hop headers (RFC 9110 §7.6.1) both ways, adds the
//! `X-Forwarded-*` headers, and tells the engine how a failure happened: nothing sent
//! (connect failed) versus outcome unknown (reset or timeout after sending).

use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
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
use tokio::sync::watch;
use tokio::time::Instant;
use tower_service::Service;

/// The address of the client a request came from, set by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Why a [`Forwarder`] cannot be built for an upstream URL.
#[derive(Debug, thiserror::Error)]
pub enum ForwarderError {
    /// The URL names no host to connect to.
    #[error("the upstream URL has no host")]
    NoHost,
    /// The URL's host and port cannot be sent as a `Host` header.
    #[error(transparent)]
    Host(#[from] http::header::InvalidHeaderValue),
}

/// The innermost service of the gateway: sends each request on to the one upstream and
/// classifies failures for the engine. Cheap to clone; clones share the connection pool.
#[derive(Clone)]
pub struct Forwarder {
    // One reference count per request instead of one per field (the client alone holds
    // several).
    shared: Arc<Shared>,
}

struct Shared {
    client: Client<HttpConnector, BoxBody>,
    upstream: Uri,
    /// The upstream URL's path without its trailing `/`; empty when it has none, the common
    /// case, in which a request's path goes on unchanged.
    prefix: String,
    upstream_host: HeaderValue,
    response_timeout: Duration,
}

impl Forwarder {
    /// A forwarder to `upstream` (`http://host:port`, optionally with a path prefix that is
    /// put in front of every request's path). `connect_timeout` bounds each new connection;
    /// failing it means nothing was sent. `response_timeout` bounds the wait for the
    /// response head once the request body is sent, each silence of an upstream that stops
    /// taking the body, and each silence inside the response body; failing it leaves the
    /// outcome unknown.
    pub fn new(
        upstream: Uri,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Result<Self, ForwarderError> {
        let authority = upstream.authority().ok_or(ForwarderError::NoHost)?;
        let upstream_host = HeaderValue::from_str(authority.as_str())?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(256)
            .build(connector);
        let prefix = upstream.path().trim_end_matches('/').to_owned();
        Ok(Forwarder {
            shared: Arc::new(Shared {
                client,
                upstream,
                prefix,
                upstream_host,
                response_timeout,
            }),
        })
    }
}

impl Shared {
    fn target(&self, original: &Uri) -> Result<Uri, UpstreamError> {
        let path_and_query = match original.path_and_query() {
            // No prefix: the parsed path is shared as it is, not formatted and parsed again.
            Some(pq) if self.prefix.is_empty() => pq.clone(),
            pq => {
                let pq = pq.map_or("/", |p| p.as_str());
                format!("{}{pq}", self.prefix).parse().map_err(|e| {
                    UpstreamError::new(UpstreamErrorKind::NotSent, format!("bad target path: {e}"))
                })?
            }
        };
        let mut parts = self.upstream.clone().into_parts();
        parts.path_and_query = Some(path_and_query);
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
        let this = Arc::clone(&self.shared);
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
                let mut value = String::with_capacity(64);
                // Earlier proxies' entries, from every X-Forwarded-For line, then this client.
                for hop in headers
                    .get_all("x-forwarded-for")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                {
                    value.push_str(hop);
                    value.push_str(", ");
                }
                let _ = write!(value, "{}", addr.ip());
                if let Ok(v) = HeaderValue::from_str(&value) {
                    headers.insert("x-forwarded-for", v);
                }
            }
            headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));

            let (progress, upload) = watch::channel(Upload::Sending(0));
            let req = req.map(|body| boxed(Tracked::new(body, progress)));
            let request = this.client.request(req);
            let resp = match answer_within(request, upload, this.response_timeout).await {
                Err(stalled) => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::Timeout,
                        stalled.describe(this.response_timeout),
                    ))
                }
                Ok(Err(e)) if e.is_connect() => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::NotSent,
                        format!(
                            "cannot connect to the upstream: {}",
                            oncely_db::describe(&e)
                        ),
                    ))
                }
                Ok(Err(e)) if BodyTimedOut::find(&e).is_some() => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::ClientBodyTimedOut,
                        format!(
                            "the request body stalled while it was sent on: {}",
                            oncely_db::describe(&e)
                        ),
                    ))
                }
                Ok(Err(e)) => {
                    return Err(UpstreamError::new(
                        UpstreamErrorKind::Unknown,
                        format!(
                            "the upstream connection failed: {}",
                            oncely_db::describe(&e)
                        ),
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

/// How far the request body has gone to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upload {
    /// `n` frames taken by the upstream connection so far, and it wants more.
    Sending(u64),
    /// The client has not sent the next part yet: its stall, which the body's own idle
    /// timeout bounds, not the upstream's.
    WaitingForClient(u64),
    Sent,
}

/// Where the upstream went silent for the whole response timeout.
enum Stalled {
    TakingTheBody,
    Answering,
}

impl Stalled {
    fn describe(&self, timeout: Duration) -> String {
        match self {
            Stalled::TakingTheBody => {
                format!("the upstream took none of the request body for {timeout:?}")
            }
            Stalled::Answering => format!("the upstream did not answer within {timeout:?}"),
        }
    }
}

/// Waits for the upstream's response head. The response timeout runs from the end of the
/// upload, so a long upload that keeps moving is never cut by it; while the body is still
/// going out, it bounds each silence of an upstream that stops taking it. A client that
/// stops sending is left to the body's idle timeout.
async fn answer_within<F: Future>(
    request: F,
    mut upload: watch::Receiver<Upload>,
    timeout: Duration,
) -> Result<F::Output, Stalled> {
    tokio::pin!(request);
    // One timer for the whole exchange, moved forward on each sign of progress, rather than
    // a new one per step.
    let silence = tokio::time::sleep(timeout);
    tokio::pin!(silence);
    loop {
        let state = *upload.borrow_and_update();
        if state == Upload::Sent {
            break;
        }
        let waiting_on_upstream = !matches!(state, Upload::WaitingForClient(_));
        tokio::select! {
            answer = request.as_mut() => return Ok(answer),
            changed = upload.changed() => {
                if changed.is_err() {
                    // The body is gone (sent, or dropped with the request).
                    break;
                }
                silence.as_mut().reset(Instant::now() + timeout);
            },
            () = silence.as_mut(), if waiting_on_upstream => {
                return Err(Stalled::TakingTheBody);
            }
        }
    }
    silence.as_mut().reset(Instant::now() + timeout);
    tokio::select! {
        answer = request => Ok(answer),
        () = silence => Err(Stalled::Answering),
    }
}

/// Passes a request body on and reports its progress to [`answer_within`].
struct Tracked<B> {
    inner: B,
    progress: watch::Sender<Upload>,
    frames: u64,
}

impl<B: http_body::Body> Tracked<B> {
    fn new(inner: B, progress: watch::Sender<Upload>) -> Self {
        if inner.is_end_stream() {
            progress.send_replace(Upload::Sent);
        }
        Tracked {
            inner,
            progress,
            frames: 0,
        }
    }

    fn report(&self, now: Upload) {
        // Only real changes wake the waiter: a body polled while still pending says nothing new.
        self.progress.send_if_modified(|was| {
            let changed = *was != now;
            *was = now;
            changed
        });
    }
}

impl<B> http_body::Body for Tracked<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
{
    type Data = bytes::Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Pending => self.report(Upload::WaitingForClient(self.frames)),
            Poll::Ready(Some(Ok(_))) if !self.inner.is_end_stream() => {
                self.frames += 1;
                self.report(Upload::Sending(self.frames));
            }
            Poll::Ready(_) => self.report(Upload::Sent),
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
