//! Correlation: every request gets an `X-Request-Id` and a W3C `traceparent` (kept when the
//! client sent valid ones, made up when not), which go on to the wrapped service, back to
//! the client (`X-Request-Id`), into every log line of the request (a tracing span), and
//! into the problem bodies the engine answers (`request_id`, `trace_id` members).
//!
//! A small layer of its own, outside the [`crate::IdempotencyLayer`], so that the engine's
//! answers, replays included, carry the ids of the request that got them.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{header, HeaderName, HeaderValue, Request, Response};
use oncely_core::correlation::{request_id_from, valid_request_id, TraceParent};
use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;

use crate::body::{full, BoxBody};
use crate::problem::ProblemDetail;

/// The request id: the client's when valid (1 to 200 visible ASCII characters), a fresh UUID
/// otherwise. It is forwarded and sent back on every response, replays included.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The W3C Trace Context header: the client's when valid, otherwise a new trace (not
/// sampled). It is forwarded to the wrapped service.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// The W3C vendor trace state: forwarded only when the client's `traceparent` was kept.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// The ids of one request, in its extensions for the services inside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correlation {
    /// The request's `X-Request-Id`: the client's when valid, a fresh UUID otherwise.
    pub request_id: String,
    /// The request's trace context: the client's when valid, a fresh unsampled trace
    /// otherwise.
    pub trace: TraceParent,
    /// Whether `trace` is the client's; when it is a new one, the client's `tracestate`
    /// belongs to no trace we forward and is dropped, as Trace Context requires.
    pub continues_trace: bool,
}

impl Correlation {
    /// The ids of a request with these headers: the client's where valid, fresh ones where
    /// absent or invalid (a malformed `traceparent` starts a new trace, as the spec says).
    pub fn from_headers(headers: &http::HeaderMap) -> Correlation {
        let request_id = match headers.get(&X_REQUEST_ID) {
            Some(v) if valid_request_id(v.as_bytes()) => {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }
            _ => request_id_from(rand::random()),
        };
        // Several `traceparent` headers are as invalid as a malformed one.
        let mut sent = headers.get_all(&TRACEPARENT).iter();
        let kept = match (sent.next(), sent.next()) {
            (Some(v), None) => v.to_str().ok().and_then(TraceParent::parse),
            _ => None,
        };
        let continues_trace = kept.is_some();
        let trace = kept.unwrap_or_else(|| TraceParent::fresh(rand::random(), rand::random()));
        Correlation {
            request_id,
            trace,
            continues_trace,
        }
    }
}

/// The tower layer that gives every request its correlation ids (see the module docs). Put it
/// outside [`IdempotencyLayer`](crate::IdempotencyLayer), so that the engine's answers carry
/// the ids too.
#[derive(Debug, Clone, Copy, Default)]
pub struct CorrelationLayer;

impl<S> Layer<S> for CorrelationLayer {
    type Service = CorrelationService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CorrelationService { inner }
    }
}

/// The service [`CorrelationLayer`] makes: it sets `X-Request-Id` and `traceparent` on the
/// request, adds the [`Correlation`] extension, calls the inner service in the request's
/// tracing span, and puts the ids on the response and into the engine's problem bodies.
#[derive(Debug, Clone)]
pub struct CorrelationService<S> {
    inner: S,
}

impl<S, B> Service<Request<B>> for CorrelationService<S>
where
    S: Service<Request<B>, Response = Response<BoxBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<BoxBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let c = Correlation::from_headers(req.headers());
        // Both values are visible ASCII by construction.
        let rid = HeaderValue::from_str(&c.request_id).ok();
        let tp = HeaderValue::from_str(&c.trace.header_value()).ok();
        if let Some(v) = &rid {
            req.headers_mut().insert(X_REQUEST_ID, v.clone());
        }
        if let Some(v) = tp {
            req.headers_mut().insert(TRACEPARENT, v);
        }
        if !c.continues_trace {
            req.headers_mut().remove(TRACESTATE);
        }
        // At ERROR level so that no level filter drops it: warnings and errors are the lines
        // that most need the ids.
        let span = tracing::error_span!(
            "request",
            request_id = %c.request_id,
            trace_id = %c.trace.trace_id,
            method = %req.method(),
            path = %req.uri().path(),
        );
        req.extensions_mut().insert(c.clone());
        let fut = span.in_scope(|| self.inner.call(req));
        Box::pin(
            async move {
                let resp = fut.await?;
                Ok(finish(resp, &c, rid))
            }
            .instrument(span),
        )
    }
}

/// Tags the response with the request id and, for a problem the engine made, writes the ids
/// into its body.
fn finish(resp: Response<BoxBody>, c: &Correlation, rid: Option<HeaderValue>) -> Response<BoxBody> {
    let (mut parts, body) = resp.into_parts();
    if let Some(v) = rid {
        parts.headers.insert(X_REQUEST_ID, v);
    }
    let body = match parts.extensions.remove::<ProblemDetail>() {
        Some(p) => {
            let bytes = p.kind.body_with(
                parts.status.as_u16(),
                &p.detail,
                &[
                    ("request_id", c.request_id.as_str()),
                    ("trace_id", c.trace.trace_id.as_str()),
                ],
            );
            parts.headers.remove(header::CONTENT_LENGTH);
            full(bytes)
        }
        None => body,
    };
    Response::from_parts(parts, body)
}
