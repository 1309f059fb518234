//! The order history (the read model the outbox feeds) with read-your-writes, and the
//! notifications.
//!
//! A read that sends `X-Consistency-Token: n` (what a write answered) waits up to the
//! consistency bound for the history to have applied every event up to position `n`, then
//! answers with what it has: `X-Consistency: fresh` if it got there, `stale` if not. A read
//! without a token answers at once, `eventual`. Every answer says where the history stands
//! (`X-Read-Model-Position`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Response, StatusCode};
use axum::Extension;
use serde_json::json;

use super::checkout::TOKEN_HEADER;
use super::Caller;
use crate::app::Shop;
use crate::problem::{json_answer, Problem};

/// How a history read relates to the token it presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Consistency {
    /// The history had the token's events.
    Fresh,
    /// The bound passed before it had them.
    Stale,
    /// No token: whatever the history had.
    Eventual,
}

impl Consistency {
    fn as_str(self) -> &'static str {
        match self {
            Consistency::Fresh => "fresh",
            Consistency::Stale => "stale",
            Consistency::Eventual => "eventual",
        }
    }
}

/// The token a read presents, if any.
fn token(headers: &HeaderMap) -> Result<Option<u64>, Problem> {
    let Some(v) = headers.get(TOKEN_HEADER) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Some)
        .ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-consistency-token",
                "The consistency token cannot be read",
                "X-Consistency-Token is the number a write answered with",
            )
        })
}

/// Waits (within the bound) for the history to reach the request's token.
async fn catch_up(shop: &Shop, headers: &HeaderMap) -> Result<(Consistency, u64), Problem> {
    let Some(wanted) = token(headers)? else {
        return Ok((
            Consistency::Eventual,
            shop.store.positions().await?.read_model,
        ));
    };
    let deadline = tokio::time::Instant::now() + shop.timing.consistency_wait;
    loop {
        // Registered before the position is read, so an event applied in between wakes it.
        let moved = shop.history_moved.notified();
        tokio::pin!(moved);
        moved.as_mut().enable();
        let at = shop.store.positions().await?.read_model;
        if at >= wanted {
            return Ok((Consistency::Fresh, at));
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok((Consistency::Stale, at));
        }
        // A notification can be missed by a reader between two looks: look again soon.
        let pause = (deadline - now).min(Duration::from_millis(50));
        tokio::select! {
            () = &mut moved => {}
            () = tokio::time::sleep(pause) => {}
        }
    }
}

fn with_consistency(mut answer: Response<Body>, how: Consistency, at: u64) -> Response<Body> {
    let h = answer.headers_mut();
    h.insert("x-consistency", HeaderValue::from_static(how.as_str()));
    h.insert("x-read-model-position", HeaderValue::from(at));
    answer
}

/// `GET /api/orders`: the caller's orders, newest first.
pub(super) async fn list(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
) -> Result<Response<Body>, Problem> {
    let (how, at) = catch_up(&shop, &headers).await?;
    let orders = shop.store.order_history(caller.user.id).await?;
    Ok(with_consistency(
        json_answer(StatusCode::OK, &orders),
        how,
        at,
    ))
}

/// `GET /api/orders/{id}`: one order of the caller's, with its audit events.
pub(super) async fn one(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response<Body>, Problem> {
    let (how, at) = catch_up(&shop, &headers).await?;
    let found = shop.store.history_order(&id).await?;
    let Some((owner, order)) = found.filter(|(owner, _)| owner == caller.user.id) else {
        let answer = axum::response::IntoResponse::into_response(Problem::not_found(format!(
            "no order {id} in your order history (yet)"
        )));
        return Ok(with_consistency(answer, how, at));
    };
    let history = shop
        .trail
        .about(&format!("order:{id}"), 200)
        .await
        .map_err(Problem::unavailable)?;
    let mut body = json!(order);
    body["user"] = json!(owner);
    body["history"] = json!(history);
    Ok(with_consistency(
        json_answer(StatusCode::OK, &body),
        how,
        at,
    ))
}

/// `GET /api/notifications`: the caller's, newest first.
pub(super) async fn notifications(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response<Body>, Problem> {
    let all = shop.store.notifications(caller.user.id).await?;
    Ok(json_answer(StatusCode::OK, &all))
}
