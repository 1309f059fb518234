//! Problem responses (RFC 9457) as HTTP values.

use http::{header, HeaderValue, Response, StatusCode};
use oncely_core::problem::{ProblemKind, PROBLEM_CONTENT_TYPE};

use crate::body::{full, BoxBody};

/// Marks a response as a problem the engine answered, so that an outer layer may render it
/// again with more members (the correlation ids).
#[derive(Debug, Clone)]
pub struct ProblemDetail {
    /// Which problem the response is.
    pub kind: ProblemKind,
    /// The `detail` member, so that the body can be written again with it.
    pub detail: String,
}

/// A problem response with `status` (for a kind whose status is configurable, such as a
/// reused key's 422 or 409), its `application/problem+json` body and the [`ProblemDetail`]
/// marker.
pub fn problem(kind: ProblemKind, status: StatusCode, detail: &str) -> Response<BoxBody> {
    let mut resp = Response::new(full(kind.body(status.as_u16(), detail)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
    );
    resp.extensions_mut().insert(ProblemDetail {
        kind,
        detail: detail.to_owned(),
    });
    resp
}

/// A problem response with the kind's default status.
pub fn problem_default(kind: ProblemKind, detail: &str) -> Response<BoxBody> {
    let status =
        StatusCode::from_u16(kind.default_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    problem(kind, status, detail)
}

/// Adds `Retry-After` in whole seconds, at least 1 so that a client never retries at once.
pub fn with_retry_after(mut resp: Response<BoxBody>, seconds: u64) -> Response<BoxBody> {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    resp
}
