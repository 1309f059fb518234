//! The engine as a tower layer: wrap any HTTP service (a forwarding client in the gateway,
//! a router in an application) to give its keyed routes the contract.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use crate::body::{boxed, BoxBody, BoxError};
use crate::engine::{Forward, ForwardFuture};
use crate::{Engine, UpstreamError, UpstreamErrorKind};

/// The engine as a tower [`Layer`]: wraps any `Service<Request<BoxBody>>` so that its keyed
/// routes follow the contract. Clones share the engine.
#[derive(Clone)]
pub struct IdempotencyLayer {
    engine: Arc<Engine>,
}

impl IdempotencyLayer {
    /// A layer answering through `engine`. Layers sharing one engine share its replay cache
    /// and the executions it drains at shutdown.
    pub fn new(engine: Arc<Engine>) -> Self {
        IdempotencyLayer { engine }
    }
}

impl<S> Layer<S> for IdempotencyLayer {
    type Service = IdempotencyService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        IdempotencyService {
            engine: self.engine.clone(),
            inner,
            not_ready: None,
        }
    }
}

/// The service [`IdempotencyLayer`] makes. It never fails ([`Infallible`]): every failure,
/// the inner service's included, becomes a response. An error the inner service reports
/// from `poll_ready` counts as nothing sent: 502 `upstream-unavailable`, key released.
pub struct IdempotencyService<S> {
    engine: Arc<Engine>,
    inner: S,
    /// An error the inner service reported from `poll_ready`, answered on the next call.
    not_ready: Option<String>,
}

impl<S: Clone> Clone for IdempotencyService<S> {
    fn clone(&self) -> Self {
        IdempotencyService {
            engine: self.engine.clone(),
            inner: self.inner.clone(),
            not_ready: None,
        }
    }
}

impl<S, B, RB> Service<Request<B>> for IdempotencyService<S>
where
    S: Service<Request<BoxBody>, Response = Response<RB>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Response = Response<BoxBody>;
    /// Every failure becomes a problem response, so the layer itself never errs.
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<BoxBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => {
                self.not_ready = Some(e.into().to_string());
                Poll::Ready(Ok(()))
            }
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let engine = self.engine.clone();
        // The ready service is the one this call uses; keep a fresh clone for the next call
        // (the usual tower pattern, since readiness belongs to the instance polled).
        let fresh = self.inner.clone();
        let mut ready = std::mem::replace(&mut self.inner, fresh);
        let not_ready = self.not_ready.take();
        let forward: Forward = Box::new(move |req: Request<BoxBody>| -> ForwardFuture {
            match not_ready {
                Some(e) => {
                    // The service refused before anything was sent: the key can be released.
                    let err = UpstreamError::new(UpstreamErrorKind::NotSent, e);
                    Box::pin(std::future::ready(Err(err.into())))
                }
                None => Box::pin(Boxed(Box::pin(ready.call(req)))),
            }
        });
        Box::pin(async move { Ok(engine.handle(forward, req.map(boxed)).await) })
    }
}

/// Boxes a service future's response body and error, so that any body type (axum's, hyper's,
/// ours) reaches the engine as a [`BoxBody`]. A named future rather than an async block, whose
/// auto-trait inference cannot see through the service's projection types.
struct Boxed<F>(Pin<Box<F>>);

impl<F, RB, E> Future for Boxed<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
    E: Into<BoxError>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    type Output = Result<Response<BoxBody>, BoxError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0
            .as_mut()
            .poll(cx)
            .map(|r| r.map(|resp| resp.map(boxed)).map_err(Into::into))
    }
}
