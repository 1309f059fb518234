//! The checkout saga, across three services: the shop's orders (local transactions in its
//! own database), the inventory service and the payment provider (over HTTP, each call sent
//! with the step's derived `Idempotency-Key`).
//!
//! ```text
//!   place_order      local   INSERT order (pending)            undo: order -> cancelled
//!   reserve_stock    HTTP    POST inventory/reservations        undo: POST .../{order}/release
//!   capture_payment  HTTP    POST provider/charges     (pivot: from here on, only forward)
//!   confirm_order    local   order -> confirmed, with its charge
//! ```
//!
//! A declined card (402) turns the saga back: the stock is released and the order
//! cancelled, in that order. A provider that times out is asked again with the same key, so
//! it charges once. The library call is [`Checkout::start`]; [`Checkout::outcome`] reads
//! where a checkout stands, for an answer or a status page.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::saga::{SagaPlan, StepPlan};
use oncely_saga::http::HttpSteps;
use oncely_saga::{
    Created, NewSaga, Runner, SagaDefinition, SagaError, SagaRecord, Step, StepContext, StepError,
};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use crate::orders::{Order, OrdersDb};

/// The saga kind the checkout runs as.
pub const KIND: &str = "checkout";

/// Prices in cents; a checkout names items by sku.
pub const PRICES: &[(&str, u64)] = &[("tea", 450), ("coffee", 380), ("cake", 520)];

/// The steps, in order; the pivot is `capture_payment`.
pub const STEPS: [&str; 4] = [
    "place_order",
    "reserve_stock",
    "capture_payment",
    "confirm_order",
];
const PIVOT: usize = 2;

/// One line of a checkout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Item {
    /// One of the skus in [`PRICES`].
    pub sku: String,
    /// How many, 1-99.
    pub qty: u32,
}

/// The JSON body of `POST /checkout`. Unknown fields are a 400, so a misspelt one is never
/// silently dropped.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// The buyer's e-mail address.
    pub email: String,
    /// The card token passed to the provider;
    /// [`DECLINED_CARD`](crate::payments::DECLINED_CARD) is declined.
    pub card: String,
    /// 1-50 items.
    pub items: Vec<Item>,
}

/// The saga's input: the checked, priced request. Every step reads it; none prices again.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckoutInput {
    /// `ord_…`, derived from the saga id.
    pub order_id: String,
    /// From the request.
    pub email: String,
    /// From the request.
    pub card: String,
    /// From the request.
    pub items: Vec<Item>,
    /// The total in cents.
    pub amount: u64,
}

impl CheckoutInput {
    /// Checks a request and prices it for the saga `saga_id`; the error is a 400's detail.
    pub fn new(saga_id: &str, req: CheckoutRequest) -> Result<Self, String> {
        if req.email.is_empty() || req.email.len() > 254 || !req.email.contains('@') {
            return Err("`email` must be an e-mail address".into());
        }
        if req.card.is_empty() || req.card.len() > 64 {
            return Err("`card` must be a card token of 1-64 characters".into());
        }
        if req.items.is_empty() || req.items.len() > 50 {
            return Err("`items` must hold 1-50 items".into());
        }
        let mut amount = 0;
        for (i, item) in req.items.iter().enumerate() {
            if req.items[..i].iter().any(|earlier| earlier.sku == item.sku) {
                return Err(format!(
                    "`{}` is listed twice: name each sku once",
                    item.sku
                ));
            }
            let Some((_, price)) = PRICES.iter().find(|(sku, _)| *sku == item.sku) else {
                return Err(format!("unknown sku `{}`", item.sku));
            };
            if !(1..=99).contains(&item.qty) {
                return Err(format!("`qty` of `{}` must be 1-99", item.sku));
            }
            amount += price * u64::from(item.qty);
        }
        Ok(CheckoutInput {
            order_id: order_id(saga_id),
            email: req.email,
            card: req.card,
            items: req.items,
            amount,
        })
    }
}

/// The saga id of a checkout keyed by `key` (for instance the idempotency layer's record
/// key, tenant and route included): the same on every retry, so a retried request finds the
/// saga it started.
pub fn saga_id(key: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for part in key {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("co_{hex}")
}

/// The order a checkout saga places.
pub fn order_id(saga_id: &str) -> String {
    format!("ord_{}", saga_id.strip_prefix("co_").unwrap_or(saga_id))
}

/// How patient the checkout is.
#[derive(Debug, Clone)]
pub struct CheckoutConfig {
    /// How long a step is retried after its first attempt (default 2 min).
    pub step_deadline: Duration,
    /// The whole checkout's deadline (default 10 min): past it, a checkout before its
    /// payment turns back.
    pub deadline: Duration,
    /// Retries wait up to this long at first (default 200 ms)...
    pub backoff_base: Duration,
    /// ...and never longer than this (default 10 s).
    pub backoff_cap: Duration,
    /// A compensation that failed this many times parks the checkout as stuck (default 30).
    pub compensation_attempts: u32,
}

impl Default for CheckoutConfig {
    fn default() -> Self {
        CheckoutConfig {
            step_deadline: Duration::from_secs(120),
            deadline: Duration::from_secs(600),
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(10),
            compensation_attempts: 30,
        }
    }
}

/// Called at each step boundary (`before-do:place_order`, `after-undo:reserve_stock`...):
/// crash tests kill the process there.
pub type Boundary = Arc<dyn Fn(&str) + Send + Sync>;

/// The checkout: its services, and how to start and read checkouts.
pub struct Checkout {
    /// The orders table.
    pub orders: OrdersDb,
    /// The inventory service's base URL.
    pub inventory: String,
    /// The payment provider's base URL.
    pub payments: String,
    /// How the HTTP steps are sent.
    pub http: HttpSteps,
    /// How patient it is.
    pub config: CheckoutConfig,
}

impl Checkout {
    /// The saga definition a [`Runner`] runs checkouts with; `boundary` is told of every
    /// step boundary.
    pub fn definition(self: &Arc<Self>, boundary: Option<Boundary>) -> SagaDefinition {
        let c = &self.config;
        let plan = SagaPlan {
            steps: STEPS
                .iter()
                .enumerate()
                .map(|(i, name)| StepPlan {
                    name: (*name).to_owned(),
                    compensable: i < PIVOT,
                    deadline: c.step_deadline,
                })
                .collect(),
            pivot: Some(PIVOT),
            deadline: Some(c.deadline),
            backoff_base: c.backoff_base,
            backoff_cap: c.backoff_cap,
            compensation_attempts: c.compensation_attempts,
        };
        let steps = STEPS
            .iter()
            .enumerate()
            .map(|(i, name)| {
                Arc::new(CheckoutStep {
                    checkout: self.clone(),
                    index: i,
                    name,
                    boundary: boundary.clone(),
                }) as Arc<dyn Step>
            })
            .collect();
        SagaDefinition {
            kind: KIND.to_owned(),
            plan,
            steps,
        }
    }

    /// Starts the checkout `saga_id` (a no-op when it exists with the same input).
    pub async fn start(
        runner: &Runner,
        saga_id: &str,
        input: &CheckoutInput,
    ) -> Result<Created, SagaError> {
        let input = serde_json::to_value(input).map_err(|e| SagaError::Invalid(e.to_string()))?;
        runner
            .start(&NewSaga {
                id: saga_id.to_owned(),
                kind: KIND.to_owned(),
                input,
            })
            .await
    }

    /// Where a checkout stands, from its saga and its order.
    pub async fn outcome(&self, saga: &SagaRecord) -> Result<Outcome, String> {
        let input: CheckoutInput =
            serde_json::from_value(saga.input.clone()).map_err(|e| e.to_string())?;
        let order = self.orders.get(&input.order_id).await?;
        Ok(match (&saga.state.phase, order) {
            (oncely_core::saga::Phase::Completed, Some(order)) => Outcome::Confirmed(order),
            (oncely_core::saga::Phase::Compensated, order) => Outcome::Cancelled {
                order_id: input.order_id,
                order,
                reason: saga.state.failure.clone().unwrap_or_default(),
            },
            (oncely_core::saga::Phase::Stuck { reason, .. }, _) => Outcome::Stuck {
                order_id: input.order_id,
                reason: reason.clone(),
            },
            _ => Outcome::Pending {
                order_id: input.order_id,
            },
        })
    }
}

/// Where a checkout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Paid and confirmed.
    Confirmed(Order),
    /// Turned back (a declined card, a cancel, the deadline): the stock released and the
    /// order, if it was placed, cancelled.
    Cancelled {
        /// The order's id.
        order_id: String,
        /// The order, if it was placed.
        order: Option<Order>,
        /// Why it turned back.
        reason: String,
    },
    /// Still on its way.
    Pending {
        /// The order's id.
        order_id: String,
    },
    /// Parked for a person (see `oncely saga show`).
    Stuck {
        /// The order's id.
        order_id: String,
        /// Why.
        reason: String,
    },
}

/// The pending order a checkout places.
fn order_of(saga_id: &str, input: CheckoutInput) -> Result<Order, StepError> {
    Ok(Order {
        id: input.order_id,
        saga_id: saga_id.to_owned(),
        email: input.email,
        items: serde_json::to_value(&input.items).map_err(|e| StepError::Failed(e.to_string()))?,
        amount: input.amount,
        status: "pending".into(),
        charge_id: None,
        cancel_reason: None,
    })
}

struct CheckoutStep {
    checkout: Arc<Checkout>,
    index: usize,
    name: &'static str,
    boundary: Option<Boundary>,
}

impl CheckoutStep {
    fn at(&self, when: &str) {
        if let Some(b) = &self.boundary {
            b(&format!("{when}:{}", self.name));
        }
    }

    fn input(cx: &StepContext) -> Result<CheckoutInput, StepError> {
        serde_json::from_value(cx.input.clone())
            .map_err(|e| StepError::Failed(format!("the checkout's input does not read: {e}")))
    }

    async fn act(&self, cx: &StepContext) -> Result<serde_json::Value, StepError> {
        let c = &self.checkout;
        let input = Self::input(cx)?;
        match self.index {
            0 => {
                let order = order_of(&cx.saga_id, input)?;
                match c.orders.place(&order).await {
                    Ok(true) => Ok(serde_json::json!({ "order_id": order.id })),
                    Ok(false) => Err(StepError::Failed(format!(
                        "order {} belongs to another checkout",
                        order.id
                    ))),
                    Err(e) => Err(StepError::Retryable(e)),
                }
            }
            1 => {
                let body = serde_json::json!({ "reference": input.order_id, "items": input.items });
                c.http
                    .post(cx, &format!("{}/reservations", c.inventory), &body)
                    .await
            }
            2 => {
                let body = serde_json::json!({
                    "amount": input.amount,
                    "card": input.card,
                    "reference": input.order_id,
                });
                c.http
                    .post(cx, &format!("{}/charges", c.payments), &body)
                    .await
            }
            _ => {
                let charge_id = cx
                    .outputs
                    .get("capture_payment")
                    .and_then(|o| o.get("id"))
                    .and_then(|id| id.as_str())
                    .ok_or_else(|| StepError::Failed("no charge id from capture_payment".into()))?
                    .to_owned();
                match c.orders.confirm(&input.order_id, &charge_id).await {
                    Ok(Some(s)) if s == "confirmed" => {
                        Ok(serde_json::json!({ "status": "confirmed" }))
                    }
                    // Paid but not confirmable: after the pivot that is for a person.
                    Ok(other) => Err(StepError::Failed(format!(
                        "order {} is {} and cannot be confirmed",
                        input.order_id,
                        other.as_deref().unwrap_or("missing")
                    ))),
                    Err(e) => Err(StepError::Retryable(e)),
                }
            }
        }
    }

    async fn compensate(&self, cx: &StepContext) -> Result<(), StepError> {
        let c = &self.checkout;
        let input = Self::input(cx)?;
        match self.index {
            0 => {
                let reason = cx
                    .failure
                    .clone()
                    .unwrap_or_else(|| "checkout turned back".into());
                // Written whether or not the order exists: an insert still on its way (its
                // attempt timed out) then finds the order cancelled and changes nothing.
                c.orders
                    .cancel(&order_of(&cx.saga_id, input)?, &reason)
                    .await
                    .map_err(StepError::Retryable)
            }
            1 => {
                let url = format!("{}/reservations/{}/release", c.inventory, input.order_id);
                c.http
                    .post(cx, &url, &serde_json::json!({}))
                    .await
                    .map(|_| ())
            }
            // The pivot and what follows are never compensated.
            _ => Ok(()),
        }
    }
}

#[async_trait]
impl Step for CheckoutStep {
    async fn run(&self, cx: &StepContext) -> Result<serde_json::Value, StepError> {
        self.at("before-do");
        let result = self.act(cx).await;
        self.at("after-do");
        result
    }

    async fn undo(&self, cx: &StepContext) -> Result<(), StepError> {
        self.at("before-undo");
        let result = self.compensate(cx).await;
        self.at("after-undo");
        result
    }
}

/// Every boundary a checkout can pass, in the order of a run that turns back at the
/// payment and then of one that completes: `before-do:place_order`, `after-do:...`,
/// `before-undo:...`.
pub fn boundaries() -> Vec<String> {
    let mut all = Vec::new();
    for (i, step) in STEPS.iter().enumerate() {
        all.push(format!("before-do:{step}"));
        all.push(format!("after-do:{step}"));
        if i < PIVOT {
            all.push(format!("before-undo:{step}"));
            all.push(format!("after-undo:{step}"));
        }
    }
    all
}
