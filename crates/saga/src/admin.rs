//! An operator's HTTP surface over a saga store, the same verbs as `oncely saga`, as an axum
//! router to mount on an admin listener (never on the public one: it has no authentication
//! of its own; put it behind the process's admin token or bind it to loopback):
//!
//! | request | answer |
//! |---|---|
//! | `GET /sagas?phase=P&limit=N` | the newest sagas (default 50, at most 1000), optionally of one phase |
//! | `GET /sagas/stats` | counts per phase and the oldest active saga's start |
//! | `GET /sagas/{id}` | one saga with its log |
//! | `POST /sagas/{id}/cancel` | 202: its runner turns it back (unless past the pivot); 404 when none is running |
//! | `POST /sagas/{id}/retry` | 202: a stuck saga is reopened where it stopped; 409 when it is not stuck |
//!
//! Errors are RFC 9457 problem details (`urn:oncely:problem:...`). With an audit writer,
//! each accepted cancel and retry is written to the trail (`saga.cancel_requested`,
//! `saga.reopened`, actor type `operator`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use oncely_core::saga::Phase;
use serde_json::{json, Value};

use oncely_audit::{AuditWriter, Draft};

use crate::{phase_name, LogEntry, SagaError, SagaRecord, SagaStore};

const PHASES: [&str; 5] = [
    "running",
    "compensating",
    "completed",
    "compensated",
    "stuck",
];

/// What the handlers share.
#[derive(Clone)]
struct Admin {
    store: Arc<dyn SagaStore>,
    audit: Option<Arc<AuditWriter>>,
}

impl Admin {
    fn audit(&self, action: &str, id: &str) {
        let Some(writer) = &self.audit else { return };
        let recorded = writer.record(Draft {
            event_id: oncely_audit::writer::new_event_id(),
            timestamp_ms: writer.now_ms(),
            actor: Some("admin-api".into()),
            actor_type: "operator".into(),
            action: action.into(),
            resource_type: "saga".into(),
            resource_id: id.to_owned(),
            correlation_id: Some(id.to_owned()),
            ..Draft::default()
        });
        if !recorded {
            tracing::warn!(
                saga = id,
                action,
                "audit queue full: an operator action was not audited"
            );
        }
    }
}

/// The router; its paths start with `/sagas`. Operator actions go to `audit` when given.
pub fn router(store: Arc<dyn SagaStore>, audit: Option<Arc<AuditWriter>>) -> Router {
    Router::new()
        .route("/sagas", get(list))
        .route("/sagas/stats", get(stats))
        .route("/sagas/{id}", get(show))
        .route("/sagas/{id}/cancel", post(cancel))
        .route("/sagas/{id}/retry", post(retry))
        .with_state(Admin { store, audit })
}

/// A saga as JSON, as the admin API and the checkout's status page answer it.
pub fn saga_json(s: &SagaRecord) -> Value {
    let mut v = json!({
        "id": s.id,
        "kind": s.kind,
        "phase": phase_name(&s.state.phase),
        "attempt": s.state.attempt,
        "input": s.input,
        "outputs": s.outputs,
        "cancel_requested": s.cancel_requested,
        "failure": s.state.failure,
        "due_at": oncely_core::conditional::format_rfc3339(s.due_at),
        "created_at": oncely_core::conditional::format_rfc3339(s.created_at),
        "updated_at": oncely_core::conditional::format_rfc3339(s.updated_at),
    });
    match &s.state.phase {
        Phase::Forward { step } | Phase::Compensating { step } => v["step"] = json!(step),
        Phase::Stuck {
            reason,
            step,
            undoing,
        } => {
            v["step"] = json!(step);
            v["stuck"] = json!({"reason": reason, "undoing": undoing});
        }
        Phase::Completed | Phase::Compensated => {}
    }
    v
}

/// A log line as JSON.
pub fn log_json(l: &LogEntry) -> Value {
    json!({
        "at": oncely_core::conditional::format_rfc3339(l.at),
        "step": l.step,
        "direction": l.direction.as_str(),
        "attempt": l.attempt,
        "outcome": l.outcome,
    })
}

#[derive(serde::Deserialize)]
struct ListQuery {
    phase: Option<String>,
    limit: Option<usize>,
}

async fn list(State(admin): State<Admin>, Query(q): Query<ListQuery>) -> Response {
    if let Some(p) = &q.phase {
        if !PHASES.contains(&p.as_str()) {
            return problem(
                StatusCode::BAD_REQUEST,
                "invalid-query",
                &format!("phase {p}: expected one of {}", PHASES.join(", ")),
            );
        }
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    match admin.store.list(q.phase.as_deref(), limit).await {
        Ok(sagas) => Json(sagas.iter().map(saga_json).collect::<Vec<_>>()).into_response(),
        Err(e) => store_failed(&e),
    }
}

async fn stats(State(admin): State<Admin>) -> Response {
    match admin.store.stats().await {
        Ok(s) => Json(json!({
            "running": s.running,
            "compensating": s.compensating,
            "completed": s.completed,
            "compensated": s.compensated,
            "stuck": s.stuck,
            "oldest_active_started_at": s.oldest_active.map(oncely_core::conditional::format_rfc3339),
        }))
        .into_response(),
        Err(e) => store_failed(&e),
    }
}

async fn show(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    match admin.store.get(&id).await {
        Ok(Some((s, log))) => {
            let mut v = saga_json(&s);
            v["log"] = Value::Array(log.iter().map(log_json).collect());
            Json(v).into_response()
        }
        Ok(None) => problem(StatusCode::NOT_FOUND, "not-found", &format!("no saga {id}")),
        Err(e) => store_failed(&e),
    }
}

async fn cancel(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    match admin.store.request_cancel(&id).await {
        Ok(true) => {
            admin.audit("saga.cancel_requested", &id);
            (
                StatusCode::ACCEPTED,
                Json(json!({"id": id, "cancel_requested": true})),
            )
                .into_response()
        }
        Ok(false) => problem(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("no running saga {id}"),
        ),
        Err(e) => store_failed(&e),
    }
}

async fn retry(State(admin): State<Admin>, Path(id): Path<String>) -> Response {
    match admin.store.reopen(&id).await {
        Ok(true) => {
            admin.audit("saga.reopened", &id);
            (
                StatusCode::ACCEPTED,
                Json(json!({"id": id, "reopened": true})),
            )
                .into_response()
        }
        Ok(false) => problem(
            StatusCode::CONFLICT,
            "saga-not-stuck",
            &format!("{id}: no stuck saga with this id"),
        ),
        Err(e) => store_failed(&e),
    }
}

fn store_failed(e: &SagaError) -> Response {
    match e {
        SagaError::Invalid(d) => problem(StatusCode::BAD_REQUEST, "invalid-query", d),
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
