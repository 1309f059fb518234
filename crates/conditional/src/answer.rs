//! The axum face: the [`Conditional`] extractor, the [`Versioned`] answer and the
//! [`Refusal`] problems.

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, ETAG, LAST_MODIFIED};
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode};
use oncely_core::conditional::{format_http_date, format_rfc3339, Decision};
use oncely_core::problem::PROBLEM_CONTENT_TYPE;
use oncely_core::ProblemKind;
use serde::Serialize;
use serde_json::json;

use crate::{Current, InvalidPrecondition, Preconditions, Revision, WriteError, WriteGuard};

/// Which status a write based on a stale version gets. RFC 9110 (and Azure Cosmos DB)
/// answer 412; Kubernetes (a stale `resourceVersion`) and Google's AIP-154 answer 409. The
/// body is the same either way. Install another than the default with
/// `axum::Extension(ConflictStatus::Conflict)` on the router.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConflictStatus {
    /// 412 Precondition Failed (the default).
    #[default]
    PreconditionFailed,
    /// 409 Conflict.
    Conflict,
}

impl ConflictStatus {
    fn status(self) -> StatusCode {
        match self {
            ConflictStatus::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ConflictStatus::Conflict => StatusCode::CONFLICT,
        }
    }
}

/// The preconditions of one request (`If-Match`, `If-None-Match`, `If-Modified-Since`,
/// `If-Unmodified-Since`), extracted in a handler's arguments. A malformed `If-Match` or
/// `If-None-Match` is refused before the handler runs, with 400 `invalid-precondition`.
#[derive(Debug, Clone)]
pub struct Conditional {
    method: Method,
    path: String,
    preconditions: Preconditions,
    conflict: ConflictStatus,
}

impl<S: Send + Sync> FromRequestParts<S> for Conditional {
    type Rejection = Refusal;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let preconditions =
            Preconditions::from_headers(&parts.headers).map_err(Refusal::Invalid)?;
        Ok(Conditional {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            preconditions,
            conflict: parts
                .extensions
                .get::<ConflictStatus>()
                .copied()
                .unwrap_or_default(),
        })
    }
}

impl Conditional {
    /// The preconditions of a request with these parts, outside axum's extraction (for a
    /// tower service or a test).
    pub fn from_parts(parts: &Parts) -> Result<Self, Refusal> {
        Ok(Conditional {
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            preconditions: Preconditions::from_headers(&parts.headers).map_err(Refusal::Invalid)?,
            conflict: parts
                .extensions
                .get::<ConflictStatus>()
                .copied()
                .unwrap_or_default(),
        })
    }

    /// The parsed headers.
    pub fn preconditions(&self) -> &Preconditions {
        &self.preconditions
    }

    /// The guard this request's write goes under; unconditional when no precondition came.
    pub fn guard(&self) -> WriteGuard {
        self.preconditions.write_guard()
    }

    /// The guard, or 428 `precondition-required` when the request names no version: for
    /// routes that refuse blind writes (they are how updates get lost).
    pub fn require(&self) -> Result<WriteGuard, Refusal> {
        let guard = self.guard();
        if guard.is_unconditional() {
            return Err(Refusal::Required {
                method: self.method.clone(),
                path: self.path.clone(),
            });
        }
        Ok(guard)
    }

    /// The answer to a read of `current` (`None`: no such row): 200 with `ETag` and
    /// `Last-Modified`, 304 when the client's copy is current (`If-None-Match`,
    /// `If-Modified-Since`), 412 when an `If-Match` fails, 404 when there is nothing.
    pub fn read<T: Serialize>(&self, current: Option<Current<T>>) -> Result<Versioned<T>, Refusal> {
        let validators = current.as_ref().map(|c| c.revision.validators());
        match (
            self.preconditions
                .evaluate(&self.method, validators.as_ref()),
            current,
        ) {
            (Decision::Proceed, Some(c)) => Ok(Versioned::ok(c)),
            (Decision::Proceed, None) => Err(Refusal::NotFound),
            (Decision::NotModified(_), Some(c)) => Err(Refusal::NotModified(c.revision)),
            (Decision::PreconditionFailed(_), Some(c)) => Err(self.stale(c)),
            (_, None) => Err(Refusal::Gone {
                status: self.conflict.status(),
            }),
        }
    }

    /// The answer to a guarded write: 200 with the new row's `ETag` (use
    /// [`Versioned::created`] for 201), or the refusal its failure calls for (412/409 with
    /// the current row, 404, 500).
    pub fn written<T: Serialize, E: std::fmt::Display>(
        &self,
        result: Result<Current<T>, WriteError<T, E>>,
    ) -> Result<Versioned<T>, Refusal> {
        match result {
            Ok(c) => Ok(Versioned::ok(c)),
            Err(WriteError::Stale(c)) => Err(self.stale(*c)),
            // A request that named a version learns that its precondition failed, as the
            // RFC says; a blind write to nothing learns that there is nothing.
            Err(WriteError::Gone) if self.guard().must_exist => Err(Refusal::Gone {
                status: self.conflict.status(),
            }),
            Err(WriteError::Gone) => Err(Refusal::NotFound),
            Err(WriteError::Database(e)) => {
                tracing::error!(error = %e, "a guarded write failed");
                Err(Refusal::Internal)
            }
        }
    }

    fn stale<T: Serialize>(&self, current: Current<T>) -> Refusal {
        Refusal::Stale(Box::new(StaleRow {
            status: self.conflict.status(),
            // Serialising a representation the service also answers with cannot fail in
            // practice; should it, the client still gets the row's version and ETag.
            current: serde_json::to_value(&current.value).unwrap_or(serde_json::Value::Null),
            revision: current.revision,
        }))
    }
}

/// A row as an answer: its JSON, with `ETag` and `Last-Modified`.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    status: StatusCode,
    current: Current<T>,
}

impl<T> Versioned<T> {
    /// 200 with the row.
    pub fn ok(current: Current<T>) -> Self {
        Versioned {
            status: StatusCode::OK,
            current,
        }
    }

    /// The same answer as 201 Created.
    pub fn created(mut self) -> Self {
        self.status = StatusCode::CREATED;
        self
    }

    /// The row answered.
    pub fn current(&self) -> &Current<T> {
        &self.current
    }
}

impl<T: Serialize> IntoResponse for Versioned<T> {
    fn into_response(self) -> Response {
        let body = match serde_json::to_vec(&self.current.value) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "a representation could not be serialised");
                return Refusal::Internal.into_response();
            }
        };
        let mut resp = (self.status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        set_validators(headers, &self.current.revision);
        resp
    }
}

fn set_validators(headers: &mut http::HeaderMap, revision: &Revision) {
    // Both are visible ASCII by construction.
    if let Ok(v) = HeaderValue::from_str(&revision.etag().to_string()) {
        headers.insert(ETAG, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format_http_date(revision.changed_at)) {
        headers.insert(LAST_MODIFIED, v);
    }
}

/// The current row a stale write is answered with.
#[derive(Debug, Clone)]
pub struct StaleRow {
    status: StatusCode,
    current: serde_json::Value,
    revision: Revision,
}

/// Why a request was not performed, answered as RFC 9457 problem+json (304 has no body).
#[derive(Debug)]
pub enum Refusal {
    /// 400 `invalid-precondition`.
    Invalid(InvalidPrecondition),
    /// 428 `precondition-required`.
    Required {
        /// The request's method.
        method: Method,
        /// The request's path.
        path: String,
    },
    /// 412 (or 409) `precondition-failed`, with the current row.
    Stale(Box<StaleRow>),
    /// 412 (or 409) `precondition-failed`: the request named a version of a row that does
    /// not exist (any more).
    Gone {
        /// 412 or 409, as the service's [`ConflictStatus`] says.
        status: StatusCode,
    },
    /// 404: there is no such row.
    NotFound,
    /// 304: the client's copy is current.
    NotModified(Revision),
    /// 500: the database failed (logged; the body says nothing more).
    Internal,
}

impl Refusal {
    /// The status this refusal is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Invalid(_) => StatusCode::BAD_REQUEST,
            Refusal::Required { .. } => StatusCode::PRECONDITION_REQUIRED,
            Refusal::Stale(s) => s.status,
            Refusal::Gone { status } => *status,
            Refusal::NotFound => StatusCode::NOT_FOUND,
            Refusal::NotModified(_) => StatusCode::NOT_MODIFIED,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

fn problem(kind: ProblemKind, status: StatusCode, detail: &str) -> serde_json::Value {
    json!({
        "type": kind.type_uri(),
        "title": kind.title(),
        "status": status.as_u16(),
        "detail": detail,
    })
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = self.status();
        let (body, revision) = match self {
            Refusal::NotModified(revision) => {
                let mut resp = status.into_response();
                set_validators(resp.headers_mut(), &revision);
                return resp;
            }
            Refusal::Invalid(e) => (
                problem(ProblemKind::InvalidPrecondition, status, &e.to_string()),
                None,
            ),
            Refusal::Required { method, path } => (
                problem(
                    ProblemKind::PreconditionRequired,
                    status,
                    &format!(
                        "{method} {path} changes the resource only with If-Match naming the \
                         version it was based on (the ETag of a read)"
                    ),
                ),
                None,
            ),
            Refusal::Stale(row) => {
                let StaleRow {
                    current, revision, ..
                } = *row;
                let mut body = problem(
                    ProblemKind::PreconditionFailed,
                    status,
                    &format!(
                        "the resource is at version {} now; the request was based on another",
                        revision.version
                    ),
                );
                if let Some(o) = body.as_object_mut() {
                    o.insert("current".into(), current);
                    o.insert("etag".into(), json!(revision.etag().to_string()));
                    o.insert("version".into(), json!(revision.version));
                    o.insert(
                        "changed_at".into(),
                        json!(format_rfc3339(revision.changed_at)),
                    );
                    o.insert("changed_by".into(), json!(revision.changed_by));
                }
                (body, Some(revision))
            }
            Refusal::Gone { .. } => (
                problem(
                    ProblemKind::PreconditionFailed,
                    status,
                    "the request named a version of a resource that does not exist",
                ),
                None,
            ),
            Refusal::NotFound => (
                json!({"type": "about:blank", "title": "Not Found", "status": 404}),
                None,
            ),
            Refusal::Internal => (
                json!({"type": "about:blank", "title": "Internal Server Error", "status": 500}),
                None,
            ),
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (status, bytes).into_response();
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        if let Some(r) = revision {
            set_validators(resp.headers_mut(), &r);
        }
        resp
    }
}
