//! The JSON API over the store, for a dashboard and operators (an axum router to mount on
//! an admin listener; it has no authentication of its own):
//!
//! | request | answer |
//! |---|---|
//! | `GET /reconcile/status` | each job's checkpoint, last run and last success; findings by job, class and state |
//! | `GET /reconcile/runs?job=J&limit=N` | the newest runs with their reports |
//! | `GET /reconcile/findings?job=J&state=S&class=C&limit=N` | findings, the most recently seen first |
//! | `POST /reconcile/findings/{id}/ack?by=NAME` | 202, or 409 when it is not open |
//! | `POST /reconcile/findings/{id}/resolve?by=NAME` | 202, or 409 when it is not open or acknowledged |

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use oncely_core::conditional::format_rfc3339;
use serde_json::{json, Value};

use crate::{Finding, FindingFilter, FindingState, ReconcileError, ReconcileStore, RunRecord};

/// The router; its paths start with `/reconcile`.
pub fn router(store: Arc<dyn ReconcileStore>) -> Router {
    Router::new()
        .route("/reconcile/status", get(status))
        .route("/reconcile/runs", get(runs))
        .route("/reconcile/findings", get(findings))
        .route("/reconcile/findings/{id}/ack", post(ack))
        .route("/reconcile/findings/{id}/resolve", post(resolve))
        .with_state(store)
}

/// A finding as JSON.
pub fn finding_json(f: &Finding) -> Value {
    json!({
        "id": f.id, "job": f.job, "key": f.key, "class": f.class, "kind": f.kind,
        "state": f.state.as_str(), "ours": f.ours, "theirs": f.theirs, "detail": f.detail,
        "seen": f.seen, "first_seen": format_rfc3339(f.first_seen),
        "last_seen": format_rfc3339(f.last_seen), "by": f.by,
    })
}

/// A run as JSON.
pub fn run_json(r: &RunRecord) -> Value {
    json!({
        "id": r.id, "job": r.job, "outcome": r.outcome.as_str(),
        "started_at": format_rfc3339(r.started_at),
        "finished_at": r.finished_at.map(format_rfc3339),
        "checkpoint_before": r.checkpoint_before.map(format_rfc3339),
        "checkpoint_after": r.checkpoint_after.map(format_rfc3339),
        "counts": r.report.counts, "samples": r.report.samples,
        "covered": r.report.covered.map(|(a, b)| [format_rfc3339(a), format_rfc3339(b)]),
        "error": r.error,
    })
}

async fn status(State(store): State<Arc<dyn ReconcileStore>>) -> Response {
    match store.stats().await {
        Ok(s) => {
            let jobs: serde_json::Map<String, Value> = s
                .jobs
                .iter()
                .map(|(job, j)| {
                    (
                        job.clone(),
                        json!({
                            "checkpoint": j.checkpoint.map(format_rfc3339),
                            "last_run": j.last_run.map(|(at, o)| json!({ "at": format_rfc3339(at), "outcome": o.as_str() })),
                            "last_success": j.last_success.map(format_rfc3339),
                        }),
                    )
                })
                .collect();
            let findings: Vec<Value> = s
                .findings
                .iter()
                .map(|((job, class, state), n)| json!({ "job": job, "class": class, "state": state, "count": n }))
                .collect();
            Json(json!({ "jobs": jobs, "findings": findings })).into_response()
        }
        Err(e) => store_failed(&e),
    }
}

#[derive(serde::Deserialize)]
struct RunsQuery {
    job: Option<String>,
    limit: Option<usize>,
}

async fn runs(
    State(store): State<Arc<dyn ReconcileStore>>,
    Query(q): Query<RunsQuery>,
) -> Response {
    match store
        .runs(q.job.as_deref(), q.limit.unwrap_or(20).clamp(1, 1000))
        .await
    {
        Ok(runs) => Json(runs.iter().map(run_json).collect::<Vec<_>>()).into_response(),
        Err(e) => store_failed(&e),
    }
}

#[derive(serde::Deserialize)]
struct FindingsQuery {
    job: Option<String>,
    state: Option<String>,
    class: Option<String>,
    limit: Option<usize>,
}

async fn findings(
    State(store): State<Arc<dyn ReconcileStore>>,
    Query(q): Query<FindingsQuery>,
) -> Response {
    let state = match q.state.as_deref().map(|s| (s, FindingState::parse(s))) {
        None => None,
        Some((_, Some(s))) => Some(s),
        Some((s, None)) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                &format!("state {s}: expected open, acknowledged, resolved or healed"),
            )
        }
    };
    let filter = FindingFilter {
        job: q.job,
        state,
        class: q.class,
    };
    match store
        .findings(&filter, q.limit.unwrap_or(100).clamp(1, 1000))
        .await
    {
        Ok(f) => Json(f.iter().map(finding_json).collect::<Vec<_>>()).into_response(),
        Err(e) => store_failed(&e),
    }
}

#[derive(serde::Deserialize)]
struct By {
    by: Option<String>,
}

async fn ack(
    State(store): State<Arc<dyn ReconcileStore>>,
    Path(id): Path<i64>,
    Query(by): Query<By>,
) -> Response {
    review(store, id, FindingState::Acknowledged, by).await
}

async fn resolve(
    State(store): State<Arc<dyn ReconcileStore>>,
    Path(id): Path<i64>,
    Query(by): Query<By>,
) -> Response {
    review(store, id, FindingState::Resolved, by).await
}

async fn review(store: Arc<dyn ReconcileStore>, id: i64, to: FindingState, by: By) -> Response {
    let by = by.by.unwrap_or_else(|| "admin-api".into());
    match store.review(id, to, &by).await {
        Ok(true) => (
            StatusCode::ACCEPTED,
            Json(json!({ "id": id, "state": to.as_str(), "by": by })),
        )
            .into_response(),
        Ok(false) => problem(
            StatusCode::CONFLICT,
            "finding-not-reviewable",
            &format!(
                "finding {id} does not exist or cannot be made {}",
                to.as_str()
            ),
        ),
        Err(e) => store_failed(&e),
    }
}

fn store_failed(e: &ReconcileError) -> Response {
    match e {
        ReconcileError::Invalid(d) => problem(StatusCode::BAD_REQUEST, "invalid-query", d),
        other => problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            &other.to_string(),
        ),
    }
}

fn problem(status: StatusCode, slug: &str, detail: &str) -> Response {
    let body = json!({
        "type": format!("urn:oncely:problem:{slug}"),
        "title": status.canonical_reason().unwrap_or(""),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    r
}
