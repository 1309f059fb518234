//! The internal loopback listener: the fake inventory (`/inventory`), the fake payment
//! provider (`/provider`, behind the chaos switches that make it slow, failing or late),
//! and the shop's receiver of the provider's webhooks (`/webhooks/provider`, behind the
//! switches that drop, duplicate and reorder them). The checkout saga reaches the fakes over
//! real HTTP, with its step keys, as it would reach real services.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{Response, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::HeaderMap;
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::{Clock, SystemClock};
use serde_json::json;

use crate::app::{HeldWebhook, Shop};
use crate::problem::{json_answer, Problem};
use crate::store::MarkedPaid;
use crate::trail::Entity;

/// The internal router over the two fakes' own routers.
pub(crate) fn internal_router(shop: Arc<Shop>, inventory: Router, provider: Router) -> Router {
    let provider = provider.layer(middleware::from_fn_with_state(shop.clone(), provider_chaos));
    Router::new()
        .nest_service("/inventory", inventory)
        .nest_service("/provider", provider)
        .route("/webhooks/provider", post(webhook_gate))
        .with_state(shop)
}

/// The provider's faults, in front of its own idempotency layer: a failure is answered
/// before the provider sees the charge; a timeout lets the charge happen and holds its
/// answer past the checkout's attempt timeout.
async fn provider_chaos(State(shop): State<Arc<Shop>>, req: Request, next: Next) -> Response<Body> {
    if req.method() != http::Method::POST || req.uri().path() != "/charges" {
        return next.run(req).await;
    }
    if shop.chaos.provider_fails() {
        return json_answer(
            StatusCode::SERVICE_UNAVAILABLE,
            &json!({ "error": "injected_failure" }),
        );
    }
    let slow = shop.chaos.provider_delay_ms();
    if slow > 0 {
        tokio::time::sleep(Duration::from_millis(slow)).await;
    }
    if shop.chaos.provider_times_out() {
        let answer = next.run(req).await;
        tokio::time::sleep(shop.timing.provider_timeout + Duration::from_millis(500)).await;
        return answer;
    }
    next.run(req).await
}

/// Numbers held webhooks, so a timer releases only the one it was set for.
static HELD: AtomicU64 = AtomicU64::new(0);

/// How long the reorder switch holds a webhook that no later one overtakes.
const HOLD: Duration = Duration::from_secs(1);

/// Where the provider's webhooks arrive: the network between the provider and the shop,
/// as unreliable as the switches say, then the shop's receiver. The provider is told 2xx
/// for a webhook lost or held here (it believes it delivered).
async fn webhook_gate(
    State(shop): State<Arc<Shop>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response<Body> {
    if shop.chaos.webhook_dropped() {
        tracing::info!("chaos: a provider webhook was dropped");
        return StatusCode::NO_CONTENT.into_response();
    }
    let copies = if shop.chaos.webhook_duplicated() {
        2
    } else {
        1
    };
    if shop.chaos.webhooks_reordered() {
        let earlier = shop.held_webhook.lock_ignoring_poison().take();
        match earlier {
            // This one overtakes the one held: it arrives first.
            Some(held) => {
                let answer = deliver(&shop, &headers, &body, copies).await;
                receive(&shop, &held.headers, &held.body).await;
                return answer;
            }
            None => {
                let serial = HELD.fetch_add(1, Ordering::SeqCst);
                shop.webhooks_held.fetch_add(1, Ordering::SeqCst);
                *shop.held_webhook.lock_ignoring_poison() = Some(HeldWebhook {
                    headers,
                    body,
                    serial,
                });
                let shop = shop.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(HOLD).await;
                    let mine = {
                        let mut held = shop.held_webhook.lock_ignoring_poison();
                        match held.as_ref() {
                            Some(h) if h.serial == serial => held.take(),
                            _ => None,
                        }
                    };
                    if let Some(h) = mine {
                        for _ in 0..copies {
                            receive(&shop, &h.headers, &h.body).await;
                        }
                    }
                });
                return StatusCode::ACCEPTED.into_response();
            }
        }
    }
    deliver(&shop, &headers, &body, copies).await
}

async fn deliver(shop: &Shop, headers: &HeaderMap, body: &Bytes, copies: usize) -> Response<Body> {
    let mut first = None;
    for _ in 0..copies {
        let answer = receive(shop, headers, body).await;
        first.get_or_insert(answer);
    }
    first.unwrap_or_else(|| StatusCode::NO_CONTENT.into_response())
}

/// The shop's receiver of provider webhooks: a signed, recent `charge.succeeded` records
/// its order's payment as paid, once (a duplicate or a late one changes nothing). A charge
/// of another amount, or for no order of ours, is acknowledged and left to reconciliation.
pub(crate) async fn receive(shop: &Shop, headers: &HeaderMap, body: &Bytes) -> Response<Body> {
    let now = SystemClock.now().0 / 1000;
    if let Err(e) = oncely_outbox::webhook::verify(
        &shop.webhook_secret,
        headers,
        body,
        now,
        Duration::from_secs(300),
    ) {
        let (status, body) = e.problem();
        let mut r = Response::new(Body::from(body));
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(oncely_core::problem::PROBLEM_CONTENT_TYPE),
        );
        return r;
    }
    let event: oncely_example_checkout::payments::Event = match serde_json::from_slice(body) {
        Ok(e) => e,
        Err(e) => {
            return Problem::bad_request(format!("not a provider event: {e}")).into_response()
        }
    };
    if event.kind != "charge.succeeded" || event.data.status != "paid" {
        return json_answer(
            StatusCode::OK,
            &json!({ "event": event.id, "applied": false }),
        );
    }
    let charge = &event.data;
    match shop
        .store
        .mark_paid(
            &charge.reference,
            &charge.id,
            charge.amount,
            "payment-provider",
            shop.now(),
        )
        .await
    {
        Ok(MarkedPaid::Now(_)) => {
            shop.wake_relay.notify_one();
            shop.trail.by_system(
                "payment-provider",
                "order.paid",
                Entity {
                    kind: "order",
                    id: &charge.reference,
                },
                Some(&event.id),
                Some(json!({ "payment": "pending" })),
                Some(json!({ "payment": "paid", "charge_id": charge.id })),
            );
            json_answer(
                StatusCode::OK,
                &json!({ "event": event.id, "applied": true }),
            )
        }
        Ok(MarkedPaid::Already | MarkedPaid::Refused(_)) => json_answer(
            StatusCode::OK,
            &json!({ "event": event.id, "applied": false }),
        ),
        // 5xx: the provider sends it again later.
        Err(e) => Problem::unavailable(e).into_response(),
    }
}
