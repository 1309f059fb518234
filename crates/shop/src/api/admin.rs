//! The shop's operator pages: the audit trail and its redaction, the reconciliation
//! dashboard, the outbox's standing, the chaos switches, the reset, and the OpenAPI
//! document.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{Response, StatusCode};
use axum::Extension;
use bytes::Bytes;
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::{Clock, SystemClock};
use oncely_reconcile::RunError;
use serde::Deserialize;
use serde_json::json;

use super::Caller;
use crate::app::Shop;
use crate::chaos::SwitchesChange;
use crate::problem::{json_answer, parse_body, Problem};
use crate::trail::Entity;

/// `GET /api/audit?entity=order:ord_…`: the events about one entity of the caller's own
/// (404 for anyone else's), newest first; without `entity`, the events the caller caused.
pub(super) async fn audit(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response<Body>, Problem> {
    let events = match q.get("entity") {
        Some(entity) if entity.is_empty() || entity.len() > 300 => {
            return Err(Problem::bad_request(
                "`entity` is `kind:id`, such as `order:ord_…`",
            ))
        }
        Some(entity) => {
            if !owns(&shop, &caller, entity).await? {
                // The same answer whether it exists or not: another user's entity is not
                // confirmed to exist.
                return Err(Problem::not_found(format!(
                    "no audit events about {entity} of yours"
                )));
            }
            shop.trail.about(entity, 500).await
        }
        None => shop.trail.by(caller.user.id, 500).await,
    }
    .map_err(Problem::unavailable)?;
    Ok(json_answer(StatusCode::OK, &events))
}

/// Whether `entity` (`kind:id`) is the caller's own: one of their orders, or their cart,
/// profile or favourites. The events about anything else carry other people's client
/// addresses and user agents.
async fn owns(shop: &Shop, caller: &Caller, entity: &str) -> Result<bool, Problem> {
    let Some((kind, id)) = entity.split_once(':') else {
        return Ok(false);
    };
    Ok(match kind {
        "order" => shop
            .store
            .shop_order(id)
            .await?
            .is_some_and(|o| o.user == caller.user.id),
        "cart" | "profile" | "favourites" => id == caller.user.id,
        _ => false,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RedactBody {
    user: String,
}

/// `POST /api/audit/redact {"user":"ada"}`: empties the personal fields (actor, client
/// address, user agent) of every event the user caused; the chains still verify.
pub(super) async fn redact(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response<Body>, Problem> {
    let RedactBody { user } = parse_body(&body)?;
    if crate::catalog::user(&user).is_none() {
        return Err(Problem::unprocessable(
            "unknown-user",
            format!("`{user}` is not one of the shop's users"),
        ));
    }
    let redacted = shop
        .trail
        .redact(&user)
        .await
        .map_err(Problem::unavailable)?;
    // Recorded after the redaction, by whoever asked for it: the request that removed the
    // personal data is itself on record.
    shop.trail.by_user(
        &caller,
        "audit.redacted",
        Entity {
            kind: "user",
            id: &user,
        },
        None,
        Some(json!({ "events": redacted })),
    );
    Ok(json_answer(
        StatusCode::OK,
        &json!({ "user": user, "redacted": redacted, "fields": crate::trail::PERSONAL }),
    ))
}

/// `GET /api/admin/reconciliation`.
pub(super) async fn reconciliation(
    State(shop): State<Arc<Shop>>,
) -> Result<Response<Body>, Problem> {
    let board = crate::reconciliation::dashboard(shop.reconcile_store.as_ref(), &shop.job.name)
        .await
        .map_err(Problem::unavailable)?;
    Ok(json_answer(StatusCode::OK, &board))
}

/// `POST /api/admin/reconciliation/run`: runs the payments job now; 200 the run, 409 when
/// a run is under way already.
pub(super) async fn run_reconciliation(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response<Body>, Problem> {
    match shop.reconciler.run(&shop.job).await {
        Ok(summary) => {
            shop.trail.by_user(
                &caller,
                "reconciliation.run",
                Entity {
                    kind: "reconciliation",
                    id: &shop.job.name,
                },
                None,
                Some(json!({ "run": summary.run, "outcome": summary.outcome.as_str() })),
            );
            let board =
                crate::reconciliation::dashboard(shop.reconcile_store.as_ref(), &shop.job.name)
                    .await
                    .map_err(Problem::unavailable)?;
            Ok(json_answer(StatusCode::OK, &board["last_run"]))
        }
        Err(RunError::Busy(_)) => Err(Problem::new(
            StatusCode::CONFLICT,
            "reconciliation-busy",
            "A reconciliation is running",
            "another run of the payments job is under way; try again when it ends",
        )
        .retry_after(1)),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

/// `GET /api/admin/outbox`.
pub(super) async fn outbox(State(shop): State<Arc<Shop>>) -> Result<Response<Body>, Problem> {
    let stats = shop.outbox.stats().await.map_err(Problem::unavailable)?;
    let positions = shop.store.positions().await?;
    let now = SystemClock.now();
    Ok(json_answer(
        StatusCode::OK,
        &json!({
            "pending": stats.pending,
            "oldest_pending_age_ms": stats.oldest_pending.map_or(0, |t| (now.0 - t.0).max(0)),
            "published": stats.delivered,
            "dead": stats.dead,
            "read_model_position": positions.read_model,
            "outbox_position": positions.outbox,
        }),
    ))
}

/// `GET /api/admin/provider`: what the fake provider really did, so a test (or a curious
/// user) can count the charges behind the orders.
pub(super) async fn provider(State(shop): State<Arc<Shop>>) -> Response<Body> {
    json_answer(
        StatusCode::OK,
        &json!({ "charges": shop.provider.charges(), "refunds": shop.provider.refunds() }),
    )
}

/// `GET /api/chaos`.
pub(super) async fn chaos(State(shop): State<Arc<Shop>>) -> Response<Body> {
    json_answer(StatusCode::OK, &shop.chaos.get())
}

/// `PUT /api/chaos`: sets the switches the body names (the others stay); 200 all of them.
pub(super) async fn set_chaos(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response<Body>, Problem> {
    let change: SwitchesChange = parse_body(&body)?;
    let old = shop.chaos.get();
    shop.chaos.apply(&change);
    let new = shop.chaos.get();
    shop.trail.by_user(
        &caller,
        "chaos.changed",
        Entity {
            kind: "chaos",
            id: "switches",
        },
        Some(json!(old)),
        Some(json!(new)),
    );
    Ok(json_answer(StatusCode::OK, &new))
}

/// `POST /api/reset`: back to the seed data (the audit trail stays).
pub(super) async fn reset(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response<Body>, Problem> {
    let epoch = shop.store.reset(shop.now()).await?;
    shop.inventory.reset(crate::catalog::seed_stock());
    shop.provider.reset();
    shop.chaos.clear();
    shop.held_webhook.lock_ignoring_poison().take();
    shop.trail.by_user(
        &caller,
        "shop.reset",
        Entity {
            kind: "shop",
            id: "seed",
        },
        None,
        Some(json!({ "epoch": epoch })),
    );
    Ok(json_answer(
        StatusCode::OK,
        &json!({ "reset": true, "epoch": epoch }),
    ))
}

/// `GET /api/openapi.json`.
pub(super) async fn openapi() -> Response<Body> {
    json_answer(StatusCode::OK, &crate::openapi::document())
}
