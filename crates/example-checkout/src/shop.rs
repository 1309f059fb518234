//! The checkout: `POST /checkout` creates an order, charges the card at the payment
//! provider, and queues a receipt email, as one operation with recovery points. The
//! idempotency layer in front decides replays, 409s and 422s; the operation makes the three
//! steps survive a crash between any two of them.
//!
//! ```text
//!   create_order (atomic)   INSERT order                       -> point create_order
//!   charge       (foreign)  POST provider/charges, key {op}/charge -> point charge
//!   send_receipt (atomic)   UPDATE order, INSERT outbox email,
//!                           store the response                 -> point finished
//! ```

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use oncely_core::StoredResponse;
use oncely_recovery::{Flow, ForeignCall, PhaseError};
use serde::{Deserialize, Serialize};

/// Prices in cents; a checkout names items by sku.
pub const PRICES: &[(&str, u64)] = &[("tea", 450), ("coffee", 380), ("cake", 520)];

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
    /// Where the receipt goes.
    pub email: String,
    /// The card token passed to the provider; [`DECLINED_CARD`](crate::payments::DECLINED_CARD)
    /// is declined.
    pub card: String,
    /// 1-50 items.
    pub items: Vec<Item>,
}

/// The operation's state: its input, then what each phase learned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckoutState {
    /// Derived from the claimed key (`oncely_recovery::operation_id`): the same on every
    /// retry, so a retry finds the operation it resumes, and the charge's derived key is the
    /// same on every attempt.
    pub operation_id: String,
    /// The receipt's recipient, from the request.
    pub email: String,
    /// The card token the charge phase sends, from the request.
    pub card: String,
    /// The items as requested. With the rest of the initial state they make the input
    /// digest, so a retry of the operation with other items is refused.
    pub items: Vec<Item>,
    /// The total in cents, priced when the request is checked. The phases charge and report
    /// this stored value, so a resumed run never prices again.
    pub amount: u64,
    /// Derived from the operation id, never from a database sequence: PostgreSQL sequences
    /// are not transactional, so an insert rolled back by a crash would skip a number and the
    /// retry's response would differ from the first run's.
    pub order_id: String,
    /// The provider's charge id, learned by the charge phase.
    pub charge_id: Option<String>,
    /// Set by the charge phase when the provider answers 402. A decline is a final answer
    /// (stored and replayed, no receipt), not an error to retry.
    pub declined: bool,
}

impl CheckoutState {
    /// Checks a request and prices it; the error is the detail of a 400 answer.
    pub fn from_request(operation_id: String, req: CheckoutRequest) -> Result<Self, String> {
        if req.email.is_empty() || req.email.len() > 254 || !req.email.contains('@') {
            return Err("`email` must be an e-mail address".into());
        }
        if req.card.is_empty() || req.card.len() > 64 {
            return Err("`card` must be 1-64 characters".into());
        }
        if req.items.is_empty() || req.items.len() > 50 {
            return Err("`items` must hold 1-50 items".into());
        }
        let mut amount = 0u64;
        for item in &req.items {
            let price = PRICES
                .iter()
                .find(|(sku, _)| *sku == item.sku)
                .map(|(_, p)| *p)
                .ok_or_else(|| format!("unknown sku `{}`", item.sku))?;
            if !(1..=99).contains(&item.qty) {
                return Err(format!("`qty` of `{}` must be 1-99", item.sku));
            }
            amount += price * u64::from(item.qty);
        }
        let prefix: String = operation_id.chars().take(24).collect();
        let order_id = format!("ord_{prefix}");
        Ok(CheckoutState {
            operation_id,
            email: req.email,
            card: req.card,
            items: req.items,
            amount,
            order_id,
            charge_id: None,
            declined: false,
        })
    }

    /// The receipt email's subject, from the state alone (as everything a phase writes must
    /// be, so a rerun after a crash writes what the first run would have).
    pub fn receipt_subject(&self) -> String {
        format!("Your order {}", self.order_id)
    }

    /// The receipt email's text: order, amount in EUR and charge.
    pub fn receipt_body(&self) -> String {
        format!(
            "Thank you. Order {} for {}.{:02} EUR, paid with charge {}.",
            self.order_id,
            self.amount / 100,
            self.amount % 100,
            self.charge_id.as_deref().unwrap_or("-")
        )
    }
}

/// What `create_order` does once its insert ran: a new order goes on; an order that already
/// exists for this id can only be an earlier checkout whose records have all expired while
/// the client kept its key (a crash retry never gets here: its insert rolled back, or its
/// point moved past this phase). That is a final answer, not something to retry.
pub fn after_order_insert(inserted: usize, state: &CheckoutState) -> Flow {
    if inserted == 1 {
        return Flow::Continue;
    }
    let body = serde_json::json!({
        "type": "urn:oncely:example:key-reused-after-retention",
        "title": "This Idempotency-Key was already used for an older order",
        "status": 409,
        "order_id": state.order_id,
    });
    Flow::Respond(json_response(409, "application/problem+json", &body))
}

/// The final answer, built from the state alone, so every run that reaches the end (first
/// try, retry after a crash, the completer) stores the same bytes.
pub fn final_response(state: &CheckoutState) -> StoredResponse {
    if state.declined {
        let body = serde_json::json!({
            "type": "urn:oncely:example:payment-declined",
            "title": "The card was declined",
            "status": 402,
            "order_id": state.order_id,
        });
        return json_response(402, "application/problem+json", &body);
    }
    let body = serde_json::json!({
        "order_id": state.order_id,
        "status": "paid",
        "amount": state.amount,
        "charge_id": state.charge_id,
        "receipt": "queued",
    });
    json_response(201, "application/json", &body)
}

/// A response a phase stores as the operation's answer: `status`, the one header
/// `content-type`, and `body` serialised.
pub fn json_response(status: u16, content_type: &str, body: &serde_json::Value) -> StoredResponse {
    StoredResponse {
        status,
        headers: vec![("content-type".into(), content_type.as_bytes().to_vec())],
        body: Bytes::from(serde_json::to_vec(body).unwrap_or_default()),
    }
}

/// The payment provider as the charge phase sees it.
pub struct Provider {
    /// The base URL, without a trailing slash.
    pub url: String,
    /// The merchant's bearer token (the fake provider does not check it). One credential
    /// serves every tenant, which is why a charge is keyed by the operation id and never by
    /// the client's raw key.
    pub token: String,
    /// The HTTP client, whose timeout bounds every charge request.
    pub client: reqwest::Client,
}

impl Provider {
    /// A provider at `url`, each request bounded by `timeout`; it fails only if the HTTP
    /// client cannot be built.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Provider {
            url: url.trim_end_matches('/').to_owned(),
            token: "sk_test_example_shop".into(),
            client,
        })
    }
}

/// The foreign phase: one charge, with the derived key on every attempt. A timeout or a 5xx
/// leaves the point where it was; the retry sends the same key and the provider replays the
/// charge it made, if it made one.
pub async fn charge(
    provider: Arc<Provider>,
    call: ForeignCall<CheckoutState>,
) -> Result<(CheckoutState, Flow), PhaseError> {
    let mut state = call.state;
    let body = serde_json::json!({
        "amount": state.amount,
        "card": state.card,
        "reference": state.order_id,
    });
    let resp = provider
        .client
        .post(format!("{}/charges", provider.url))
        .header("idempotency-key", &call.idempotency_key)
        .header("authorization", format!("Bearer {}", provider.token))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body)?)
        .send()
        .await
        .map_err(|e| PhaseError::new(format!("payment provider: {e}")))?;
    let status = resp.status().as_u16();
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| PhaseError::new(format!("payment provider body: {e}")))?;
    match status {
        201 => {
            let v: serde_json::Value = serde_json::from_slice(&bytes)?;
            let id = v["id"]
                .as_str()
                .ok_or_else(|| PhaseError::new("payment provider: no charge id"))?;
            state.charge_id = Some(id.to_owned());
        }
        402 => state.declined = true,
        other => {
            return Err(PhaseError::new(format!(
                "payment provider answered {other}"
            )))
        }
    }
    Ok((state, Flow::Continue))
}
