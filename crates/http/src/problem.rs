//! Problem responses (RFC 9457) as HTTP values.

use http::{header, HeaderValue, Response, StatusCode};
use oncely_core::problem::{ProblemKind, PROBLEM_CONTENT_TYPE};

use crate::body::{full, BoxBody};

/// Marks a response as a problem the engine answered, so that an outer layer may render it
/// again with more members (the correlation ids).
#[derive(Debug, Clone)]
pub struct ProblemDetail {
    pub kind: ProblemKind,
    pub detail: String,
}

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

pub fn problem_default(kind: ProblemKind, detail: &str) -> Response<BoxBody> {
    let status =
        StatusCode::from_u16(kind.default_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    problem(kind, status, detail)
}

pub fn with_retry_after(mut resp: Response<BoxBody>, seconds: u64) -> Response<BoxBody> {
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    resp
}
