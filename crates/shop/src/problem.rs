//! RFC 9457 answers: every error the shop gives is `application/problem+json` with a
//! `urn:oncely:shop:<slug>` type (the layer's and the conditional helpers' own keep their
//! `urn:oncely:problem:*` types).

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use oncely_core::problem::PROBLEM_CONTENT_TYPE;
use serde_json::{json, Value};

/// A problem answer of the shop's own.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    status: StatusCode,
    slug: &'static str,
    title: &'static str,
    detail: String,
    extra: serde_json::Map<String, Value>,
    retry_after: Option<u64>,
}

impl Problem {
    /// A problem with this status, type slug, title and detail.
    pub(crate) fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            status,
            slug,
            title,
            detail: detail.into(),
            extra: serde_json::Map::new(),
            retry_after: None,
        }
    }

    /// One more member beside the standard ones.
    pub(crate) fn with(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(name.to_owned(), value.into());
        self
    }

    /// `Retry-After: secs`.
    pub(crate) fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// 400: the request's body or a parameter cannot be read.
    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "invalid-request",
            "The request cannot be read",
            detail,
        )
    }

    /// 404.
    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 422: well-formed but not acceptable.
    pub(crate) fn unprocessable(slug: &'static str, detail: impl Into<String>) -> Self {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            slug,
            "The request is not acceptable",
            detail,
        )
    }

    /// 503 with `Retry-After: 1`: a store or service of the shop failed; nothing is known to
    /// be done, and a retry may succeed (the idempotency layer releases the key of a keyed
    /// request answered so).
    pub(crate) fn unavailable(detail: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %detail, "answering 503");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "The shop cannot answer this now",
            detail.to_string(),
        )
        .retry_after(1)
    }

    /// The body as JSON.
    pub(crate) fn body(&self) -> Value {
        let mut body = json!({
            "type": format!("urn:oncely:shop:{}", self.slug),
            "title": self.title,
            "status": self.status.as_u16(),
            "detail": self.detail,
        });
        if let Some(o) = body.as_object_mut() {
            for (k, v) in &self.extra {
                o.entry(k.clone()).or_insert(v.clone());
            }
        }
        body
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> axum::response::Response {
        let bytes = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut r = Response::new(Body::from(bytes));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(secs) = self.retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        r
    }
}

/// A JSON answer with `status`.
pub(crate) fn json_answer(
    status: StatusCode,
    value: &impl serde::Serialize,
) -> axum::response::Response {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut r = Response::new(Body::from(bytes));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => Problem::unavailable(format!("encode: {e}")).into_response(),
    }
}

/// Reads a JSON body as `T`, or the 400 that says why not.
pub(crate) fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body is not what this route takes: {e}")))
}
