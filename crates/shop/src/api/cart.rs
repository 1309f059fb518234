//! The cart: a versioned document (`ETag: "v{n}"`), written only with `If-Match`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::Response;
use axum::response::IntoResponse;
use axum::Extension;
use bytes::Bytes;
use oncely_conditional::{Conditional, WriteError};
use serde::Deserialize;
use serde_json::json;

use super::Caller;
use crate::app::Shop;
use crate::model::{check_lines, Line};
use crate::problem::{parse_body, Problem};
use crate::trail::Entity;

/// `PUT /api/cart`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CartBody {
    items: Vec<Line>,
}

/// `GET /api/cart`: 200 with `ETag` (304 for a current `If-None-Match`).
pub(super) async fn get_cart(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    cond: Conditional,
) -> Result<Response<Body>, Problem> {
    let cart = shop.store.cart(caller.user.id).await?;
    Ok(cond.read(cart).into_response())
}

/// `PUT /api/cart`: `If-Match` required (428 without); 412 with the current cart, who
/// changed it and when, if the version moved.
pub(super) async fn put_cart(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    cond: Conditional,
    body: Bytes,
) -> Result<Response<Body>, Problem> {
    let guard = match cond.require() {
        Ok(g) => g,
        Err(refusal) => return Ok(refusal.into_response()),
    };
    let cart: CartBody = parse_body(&body)?;
    check_lines(&cart.items, true).map_err(|d| Problem::unprocessable("invalid-cart", d))?;
    let written = shop
        .store
        .put_cart(caller.user.id, &guard, &cart.items, shop.now())
        .await;
    let written = match written {
        Ok(w) => w,
        Err(WriteError::Database(e)) => return Err(Problem::unavailable(e)),
        Err(other) => {
            return Ok(cond
                .written::<_, crate::DbError>(Err(other))
                .into_response())
        }
    };
    shop.trail.by_user(
        &caller,
        "cart.updated",
        Entity {
            kind: "cart",
            id: caller.user.id,
        },
        written.old.as_ref().map(|c| json!(c)),
        Some(json!(written.new.value)),
    );
    Ok(cond
        .written::<_, crate::DbError>(Ok(written.new))
        .into_response())
}
