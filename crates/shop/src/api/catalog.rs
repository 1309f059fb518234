//! Users, products (with the inventory's live stock) and favourites.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{Response, StatusCode};
use axum::response::IntoResponse;
use axum::Extension;
use serde_json::json;

use super::Caller;
use crate::app::Shop;
use crate::catalog::{products as catalog, USERS};
use crate::problem::{json_answer, Problem};
use crate::trail::Entity;

/// `GET /api/users`.
pub(super) async fn users() -> Response<Body> {
    let users: Vec<_> = USERS
        .iter()
        .map(|u| json!({ "id": u.id, "name": u.name }))
        .collect();
    json_answer(StatusCode::OK, &users)
}

/// `GET /api/products`: the stock is the inventory's count as it stands.
pub(super) async fn products(State(shop): State<Arc<Shop>>) -> Response<Body> {
    let stock = shop.inventory.stock_levels();
    let products: Vec<_> = catalog()
        .iter()
        .map(|p| {
            json!({
                "id": p.id,
                "name": p.name,
                "price_cents": p.price_cents,
                "stock": stock.get(p.id).copied().unwrap_or(0),
                "description": p.description,
            })
        })
        .collect();
    json_answer(StatusCode::OK, &products)
}

/// `GET /api/favourites`.
pub(super) async fn favourites(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
) -> Result<Response<Body>, Problem> {
    let products = shop.store.favourites(caller.user.id).await?;
    Ok(json_answer(
        StatusCode::OK,
        &json!({ "products": products }),
    ))
}

/// `PUT /api/favourites/{product}`.
pub(super) async fn add_favourite(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    Path(product): Path<String>,
) -> Result<Response<Body>, Problem> {
    set(&shop, &caller, &product, true).await
}

/// `DELETE /api/favourites/{product}`.
pub(super) async fn remove_favourite(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    Path(product): Path<String>,
) -> Result<Response<Body>, Problem> {
    set(&shop, &caller, &product, false).await
}

async fn set(
    shop: &Shop,
    caller: &Caller,
    product: &str,
    on: bool,
) -> Result<Response<Body>, Problem> {
    if crate::catalog::product(product).is_none() {
        return Err(Problem::not_found(format!("no product `{product}`")));
    }
    // The switch fails the write before it reaches the database, so nothing is stored.
    if shop.chaos.favourites_fail() {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "injected-failure",
            "Favourites are failing on purpose",
            "the chaos switch favourites_fail is on: nothing was stored",
        )
        .retry_after(1));
    }
    let changed = shop
        .store
        .set_favourite(caller.user.id, product, on, shop.now())
        .await?;
    if changed {
        shop.trail.by_user(
            caller,
            if on {
                "favourite.added"
            } else {
                "favourite.removed"
            },
            Entity {
                kind: "favourites",
                id: caller.user.id,
            },
            None,
            Some(json!({ "product": product, "favourite": on })),
        );
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
