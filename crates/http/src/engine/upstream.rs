//! The one call to the wrapped service, and how its failures are classified for the
//! contract: nothing sent (release the key) or outcome unknown (hold it).

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::{Request, Response};

use crate::body::{BoxBody, BoxError};

/// The one call to the wrapped service, boxed so the engine is not generic over it.
pub type Forward = Box<dyn FnOnce(Request<BoxBody>) -> ForwardFuture + Send>;
/// What a [`Forward`] call returns: the inner service's response, or an error (an
/// [`UpstreamError`] tells the engine what the failure means for the key).
pub type ForwardFuture =
    Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send + 'static>>;

/// How an upstream call failed, as far as idempotency cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Nothing reached the upstream (connect refused, DNS...): safe to release the key.
    NotSent,
    /// The request may have been received: the outcome is unknown.
    Unknown,
    /// No answer within the response timeout: the outcome is unknown.
    Timeout,
    /// The client's request body stalled while it was being streamed on; the upstream saw
    /// the request aborted. Only a request passed through can meet it: a keyed body is
    /// buffered before anything is forwarded.
    ClientBodyTimedOut,
}

/// The error a forwarding service returns so the engine can tell the cases apart. Any other
/// error type from an inner service is treated as [`UpstreamErrorKind::Unknown`].
#[derive(Debug)]
pub struct UpstreamError {
    /// What the failure means for the key.
    pub kind: UpstreamErrorKind,
    /// What went wrong, for the problem's `detail` and the logs.
    pub message: String,
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UpstreamError {}

impl UpstreamError {
    /// An error of `kind`. A forwarding service returns it (boxed) so that the engine
    /// releases or holds the key correctly.
    pub fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            message: message.into(),
        }
    }

    pub(super) fn classify(err: BoxError) -> UpstreamError {
        match err.downcast::<UpstreamError>() {
            Ok(e) => *e,
            Err(other) => UpstreamError::new(UpstreamErrorKind::Unknown, other.to_string()),
        }
    }
}

/// What the upstream produced, once the engine has read what it needs of it.
pub(super) enum Upstream {
    /// A status that is not stored: passed on (streamed), and the key released.
    NotStored(Response<BoxBody>),
    /// A stored status with its whole body.
    Whole(http::response::Parts, Bytes),
    /// A stored status whose body is larger than `max_response`: passed on unstored.
    TooLarge(http::response::Parts, BoxBody),
}
