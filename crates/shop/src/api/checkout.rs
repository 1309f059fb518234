//! The checkout (the saga across the shop, the inventory and the provider), its progress,
//! and a buyer's cancel. Both writes run once per `Idempotency-Key` (the layer around them
//! replays, refuses a duplicate in flight, and refuses a key reused with another body).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Extension;
use bytes::Bytes;
use oncely_core::conditional::format_rfc3339;
use oncely_core::saga::Phase;
use oncely_example_checkout::checkout::{
    self, Checkout, CheckoutInput, CheckoutRequest, Item, Outcome, STEPS,
};
use oncely_http::Claimed;
use oncely_saga::{Direction, LogEntry, SagaError, SagaRecord};
use serde::Deserialize;
use serde_json::{json, Value};

use super::Caller;
use crate::app::Shop;
use crate::chaos::Fault;
use crate::events::BUYER_CANCEL;
use crate::model::{check_lines, Line, OrderView, ShopOrder};
use crate::problem::{json_answer, parse_body, Problem};
use crate::store::NewOrder;
use crate::trail::Entity;

/// The header a write's answer carries: the outbox position of its event.
pub(crate) const TOKEN_HEADER: &str = "x-consistency-token";

/// `POST /api/checkout`'s body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckoutBody {
    card: String,
    items: Vec<Line>,
}

fn missing_claim() -> Problem {
    // The layer requires a key on these routes, so a request without a claim never gets
    // here; answering rather than panicking keeps the handler safe if the routes change.
    Problem::new(
        StatusCode::BAD_REQUEST,
        "missing-idempotency-key",
        "An Idempotency-Key is required",
        "send Idempotency-Key",
    )
}

/// Sets `X-Consistency-Token` to the position of the newest event of `order`.
async fn with_token(shop: &Shop, order: &str, mut answer: Response<Body>) -> Response<Body> {
    match shop.store.order_position(order).await {
        Ok(Some(position)) => {
            answer
                .headers_mut()
                .insert(TOKEN_HEADER, HeaderValue::from(position));
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "no consistency token for {order}"),
    }
    answer
}

/// The 503 a test's [`Fault::AnswerLost`] puts in place of a keyed write's answer, once its
/// work is done.
fn answer_lost(shop: &Shop) -> Result<(), Problem> {
    if shop.faults.strikes(Fault::AnswerLost) {
        return Err(Problem::unavailable(
            "injected: the answer was lost after the work was done",
        ));
    }
    Ok(())
}

fn with_location(mut answer: Response<Body>, checkout: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(&format!("/api/checkouts/{checkout}")) {
        answer.headers_mut().insert(header::LOCATION, v);
    }
    answer
}

/// `POST /api/checkout`: starts the checkout saga and waits for its outcome: 201 confirmed,
/// 402 declined (the saga compensated), 409 out of stock, 202 still running (the provider
/// is slow) with where to look.
pub(super) async fn start(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    claimed: Option<Extension<Claimed>>,
    body: Bytes,
) -> Result<Response<Body>, Problem> {
    let Some(Extension(claimed)) = claimed else {
        return Err(missing_claim());
    };
    let request: CheckoutBody = parse_body(&body)?;
    check_lines(&request.items, false)
        .map_err(|d| Problem::unprocessable("invalid-checkout", d))?;
    // The checkout's id comes from the key (and the user, the route, and the reset epoch),
    // so a retry finds the checkout it started, and a reset never meets an old one.
    let epoch = shop.store.epoch().await?.to_string();
    let k = &claimed.record_key;
    let id = checkout::saga_id(&[
        &epoch,
        k.scope.tenant.as_str(),
        &k.scope.method,
        &k.scope.route,
        k.key.as_str(),
    ]);
    // A retry whose first attempt started the saga answers from the saga's own input: the
    // e-mail in the profile may have changed since, and rebuilding the input from it would
    // make another checkout of the same key.
    let input = match stored_input(&shop, &id).await? {
        Some(input) => input,
        None => begin(&shop, &caller, &id, &request).await?,
    };
    same_request(&input, &request.card, &request.items)?;
    let order_id = input.order_id.clone();
    let total_cents = input.amount;
    let deadline = tokio::time::Instant::now() + shop.timing.checkout_wait;
    let outcome = loop {
        let outcome = outcome_of(&shop, &id).await?;
        let pending = matches!(outcome, Outcome::Pending { .. } | Outcome::Stuck { .. });
        if !pending || tokio::time::Instant::now() >= deadline {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let answer = match &outcome {
        Outcome::Confirmed(_) => {
            empty_cart(&shop, &caller, &order_id).await;
            json_answer(
                StatusCode::CREATED,
                &json!({
                    "checkout": id, "order": order_id, "status": "confirmed",
                    "total_cents": total_cents,
                }),
            )
        }
        Outcome::Cancelled { reason, .. } => turned_back(&id, &order_id, reason).into_response(),
        Outcome::Pending { .. } | Outcome::Stuck { .. } => json_answer(
            StatusCode::ACCEPTED,
            &json!({ "checkout": id, "order": order_id, "status": "pending" }),
        ),
    };
    shop.wake_relay.notify_one();
    answer_lost(&shop)?;
    Ok(with_token(&shop, &order_id, with_location(answer, &id)).await)
}

/// The input the checkout `id` was started with, if it was.
async fn stored_input(shop: &Shop, id: &str) -> Result<Option<CheckoutInput>, Problem> {
    let Some((saga, _)) = shop.sagas.get(id).await.map_err(Problem::unavailable)? else {
        return Ok(None);
    };
    serde_json::from_value(saga.input)
        .map(Some)
        .map_err(|e| Problem::unavailable(format!("checkout {id} has an unreadable input: {e}")))
}

/// Places the order of a new checkout `id` and starts its saga, with the e-mail the profile
/// has now; the saga's input.
async fn begin(
    shop: &Shop,
    caller: &Caller,
    id: &str,
    request: &CheckoutBody,
) -> Result<CheckoutInput, Problem> {
    let email = match shop.store.profile(caller.user.id).await? {
        Some(p) => p.value.email,
        None => caller.user.email.to_owned(),
    };
    let input = CheckoutInput::new(
        id,
        CheckoutRequest {
            email,
            card: request.card.clone(),
            items: request
                .items
                .iter()
                .map(|l| Item {
                    sku: l.product.clone(),
                    qty: l.qty,
                })
                .collect(),
        },
    )
    .map_err(|d| Problem::unprocessable("invalid-checkout", d))?;
    let order = NewOrder {
        id: input.order_id.clone(),
        user: caller.user.id.to_owned(),
        checkout: id.to_owned(),
        items: request.items.clone(),
        total_cents: input.amount,
    };
    if shop.store.place_order(&order, shop.now()).await? {
        shop.wake_relay.notify_one();
        shop.trail.by_user(
            caller,
            "order.placed",
            Entity {
                kind: "order",
                id: &order.id,
            },
            None,
            Some(json!({ "items": order.items, "total_cents": order.total_cents, "checkout": id })),
        );
    }
    match Checkout::start(&shop.runner, id, &input).await {
        Ok(_) => Ok(input),
        // Started meanwhile by an attempt that outlived its key's lease: its input stands.
        Err(SagaError::Conflict(_)) => stored_input(shop, id)
            .await?
            .ok_or_else(|| Problem::unavailable(format!("checkout {id} vanished"))),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

/// Refuses a request that does not ask for what the checkout of its key was started with
/// (the idempotency layer refuses that first, while it keeps the key's record; the saga
/// outlives the record).
fn same_request(input: &CheckoutInput, card: &str, items: &[Line]) -> Result<(), Problem> {
    let same_items = input.items.len() == items.len()
        && input
            .items
            .iter()
            .zip(items)
            .all(|(i, l)| i.sku == l.product && i.qty == l.qty);
    if input.card == card && same_items {
        return Ok(());
    }
    Err(Problem::unprocessable(
        "checkout-conflict",
        "this Idempotency-Key started a checkout of other items or with another card; use a new key for a new checkout",
    ))
}

/// Why a checkout turned back, as its answer.
fn turned_back(checkout: &str, order: &str, reason: &str) -> Problem {
    // The step's failure is the service's answer as the HTTP step wrote it: `402 {...}`.
    let problem = if reason.starts_with("402 ") {
        Problem::new(
            StatusCode::PAYMENT_REQUIRED,
            "card-declined",
            "The card was declined",
            "the card was declined; the stock is released and the order cancelled",
        )
    } else if reason.contains("out_of_stock") {
        Problem::new(
            StatusCode::CONFLICT,
            "out-of-stock",
            "Out of stock",
            "not enough stock for this order; nothing was charged and the order is cancelled",
        )
    } else {
        Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "checkout-cancelled",
            "The checkout turned back",
            format!("the checkout turned back ({reason}); the stock is released and the order cancelled"),
        )
    };
    problem.with("checkout", checkout).with("order", order)
}

async fn empty_cart(shop: &Shop, caller: &Caller, order: &str) {
    match shop
        .store
        .empty_cart_for(order, caller.user.id, shop.now())
        .await
    {
        Ok(Some(w)) => shop.trail.by_user(
            caller,
            "cart.emptied",
            Entity {
                kind: "cart",
                id: caller.user.id,
            },
            w.old.map(|c| json!(c)),
            Some(json!({ "items": [], "version": w.new.value.version, "order": order })),
        ),
        Ok(None) => {}
        // The order history's consumer empties it when it sees the confirmation.
        Err(e) => tracing::warn!(error = %e, "the cart of {order} stays for its consumer"),
    }
}

async fn outcome_of(shop: &Shop, id: &str) -> Result<Outcome, Problem> {
    match shop.sagas.get(id).await {
        Ok(Some((saga, _))) => shop
            .checkout
            .outcome(&saga)
            .await
            .map_err(Problem::unavailable),
        Ok(None) => Err(Problem::unavailable(format!("checkout {id} vanished"))),
        Err(e) => Err(Problem::unavailable(e)),
    }
}

/// The checkout's status in the contract's words.
fn status_of(saga: &SagaRecord) -> &'static str {
    match &saga.state.phase {
        Phase::Completed => "confirmed",
        Phase::Compensated
            if saga
                .state
                .failure
                .as_deref()
                .is_some_and(|f| f.starts_with("402 ")) =>
        {
            "declined"
        }
        Phase::Compensated => "cancelled",
        Phase::Stuck { .. } => "failed",
        Phase::Forward { .. } | Phase::Compensating { .. } => "running",
    }
}

/// Each step's state and attempts, from the saga's state and log.
fn steps(saga: &SagaRecord, log: &[LogEntry]) -> Vec<Value> {
    STEPS
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let of = |d: Direction| {
                log.iter()
                    .filter(move |e| e.direction == d && e.step.as_deref() == Some(name))
            };
            let done = of(Direction::Do).any(|e| e.outcome == "done");
            let failed = of(Direction::Do).any(|e| e.outcome.starts_with("failed"));
            let undone = of(Direction::Undo).any(|e| e.outcome == "done");
            let mut attempts = of(Direction::Do).count() as u64;
            let state = match &saga.state.phase {
                _ if undone => "compensated",
                Phase::Compensating { step } if *step == i => "compensating",
                Phase::Stuck {
                    step,
                    undoing: true,
                    ..
                } if *step == i => "compensating",
                _ if done => "done",
                _ if failed => "failed",
                Phase::Forward { step } if *step == i => {
                    // The attempt under way is not in the log until it ends.
                    attempts = attempts.max(u64::from(saga.state.attempt));
                    "running"
                }
                Phase::Stuck {
                    step,
                    undoing: false,
                    ..
                } if *step == i => "failed",
                _ => "pending",
            };
            json!({ "name": name, "state": state, "attempts": attempts })
        })
        .collect()
}

/// `GET /api/checkouts/{id}`: the saga's progress, from its own store (strong), with the
/// consistency token of its order's newest event (a client that waited out a 202 reads the
/// history fresh with it).
pub(super) async fn progress(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response<Body>, Problem> {
    let not_found = || Problem::not_found(format!("no checkout {id}"));
    let (saga, log) = shop
        .sagas
        .get(&id)
        .await
        .map_err(Problem::unavailable)?
        .ok_or_else(not_found)?;
    let order = checkout::order_id(&id);
    let owner = shop.store.shop_order(&order).await?;
    if owner.as_ref().is_none_or(|o| o.user != caller.user.id) {
        return Err(not_found());
    }
    let answer = json_answer(
        StatusCode::OK,
        &json!({
            "checkout": id,
            "order": order,
            "status": status_of(&saga),
            "reason": saga.state.failure,
            "steps": steps(&saga, &log),
            "updated_at": format_rfc3339(saga.updated_at),
        }),
    );
    // Read after the saga: a checkout seen settled has its settling event at or below the
    // token, so a history read presenting it sees the order as this answer does.
    Ok(with_token(&shop, &order, answer).await)
}

fn not_cancellable(detail: impl Into<String>) -> Problem {
    Problem::new(
        StatusCode::CONFLICT,
        "not-cancellable",
        "This order cannot be cancelled",
        detail,
    )
}

/// A call to the provider or the inventory under `key`: its JSON answer, or why not.
async fn call(shop: &Shop, url: String, key: String, body: Value) -> Result<Value, Problem> {
    let request = oncely_client::Request::post(url.clone())
        .header(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )
        .key(key)
        .body(body.to_string());
    let answer = shop
        .http
        .send(request)
        .await
        .map_err(|e| Problem::unavailable(format!("{url}: {e}")))?;
    if !answer.status.is_success() {
        return Err(Problem::unavailable(format!(
            "{url} answered {}",
            answer.status
        )));
    }
    Ok(serde_json::from_slice(&answer.body).unwrap_or(Value::Null))
}

fn order_json(order: &ShopOrder, status: &str, payment: &str, updated_at: i64) -> OrderView {
    OrderView {
        id: order.id.clone(),
        status: status.to_owned(),
        payment: payment.to_owned(),
        total_cents: order.total_cents,
        items: order.items.clone(),
        created_at: format_rfc3339(oncely_core::Timestamp(order.created_at)),
        updated_at: format_rfc3339(oncely_core::Timestamp(updated_at)),
    }
}

/// `POST /api/orders/{id}/cancel`: a confirmed order of the caller's is refunded through
/// the provider, its stock released at the inventory, and then cancelled with its payment
/// recorded as refunded, in one transaction (each call keyed by the order, so a retry after a
/// failure repeats nothing). A retry of the cancel that cancelled the order (its answer lost:
/// the same key), or an order an earlier build left cancelled but not refunded, is finished
/// and answered 200 again. 409 when it is cancelled already by anything else, still being
/// checked out, or not the caller's.
pub(super) async fn cancel(
    State(shop): State<Arc<Shop>>,
    Extension(caller): Extension<Caller>,
    claimed: Option<Extension<Claimed>>,
    Path(id): Path<String>,
) -> Result<Response<Body>, Problem> {
    let Some(Extension(claimed)) = claimed else {
        return Err(missing_claim());
    };
    let key = claimed.record_key.key.as_str();
    let order = shop
        .store
        .shop_order(&id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no order {id}")))?;
    if order.user != caller.user.id {
        return Err(not_cancellable(format!("order {id} is not yours")));
    }
    let placed = crate::app::orders(&shop)
        .get(&id)
        .await
        .map_err(Problem::unavailable)?
        .ok_or_else(|| not_cancellable(format!("order {id} is still being checked out")))?;
    let reason = format!("{BUYER_CANCEL}{}", caller.user.id);
    match placed.status.as_str() {
        "confirmed" => {}
        // The buyer's own cancel got this far before: its retry finishes it (the refund and
        // the release replay under their keys, the final transaction writes what is left).
        "cancelled"
            if placed.cancel_reason.as_deref() == Some(reason.as_str())
                && (order.payment != "refunded" || order.cancel_key.as_deref() == Some(key)) => {}
        "cancelled" => return Err(not_cancellable(format!("order {id} is cancelled already"))),
        _ => {
            return Err(not_cancellable(format!(
                "order {id} is still being checked out"
            )))
        }
    }
    let charge = placed
        .charge_id
        .clone()
        .ok_or_else(|| Problem::unavailable(format!("order {id} is confirmed without a charge")))?;
    let refund = call(
        &shop,
        format!("{}/refunds", shop.checkout.payments),
        format!("{id}/cancel/refund"),
        json!({ "charge": charge, "reference": id }),
    )
    .await?;
    call(
        &shop,
        format!("{}/reservations/{id}/release", shop.checkout.inventory),
        format!("{id}/cancel/release"),
        json!({}),
    )
    .await?;
    let refund_id = refund["id"]
        .as_str()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| Problem::unavailable(format!("the provider's refund of {id} has no id")))?
        .to_owned();
    let settled = shop
        .store
        .cancel_refunded(&id, &reason, &refund_id, key, shop.now())
        .await?;
    if settled.cancelled || settled.refunded {
        shop.wake_relay.notify_one();
        shop.trail.by_user(
            &caller,
            "order.cancelled",
            Entity {
                kind: "order",
                id: &id,
            },
            Some(json!({ "status": placed.status, "payment": order.payment })),
            Some(json!({ "status": "cancelled", "payment": "refunded", "refund_id": refund_id })),
        );
    }
    answer_lost(&shop)?;
    let view = order_json(&order, "cancelled", "refunded", shop.now());
    Ok(with_token(&shop, &id, json_answer(StatusCode::OK, &view)).await)
}
