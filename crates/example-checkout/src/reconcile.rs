//! The seed's reconciliation job, `payments`: the payment provider's charges against the
//! shop's orders.
//!
//! | drift | verdict |
//! |---|---|
//! | the provider says paid, the order is still pending, same amount (a missed webhook) | **heal**: confirm the order with its charge (`mark_paid`) |
//! | an order not paid yet, no charge | accept |
//! | a paid order without a charge | alert `paid_without_charge` |
//! | a charge without an order | alert `orphan_charge` |
//! | amounts that differ | alert `amount_mismatch` |
//! | a provider row that does not read | alert `malformed` |
//!
//! The invariant: every paid charge has exactly one paid order with the same amount, and
//! every paid order has its charges.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::reconcile::{DriftKind, Entry, Group, Rule, Verdict, WindowPlan};
use oncely_core::Timestamp;
use oncely_reconcile::{Healer, Invariant, Job, Malformed, Page, Source, SourceError};

use crate::orders::OrdersDb;
use crate::payments::Event;

/// The job's name.
pub const JOB: &str = "payments";

/// Applies a provider webhook to the orders: a `charge.succeeded` for a known pending order
/// of the same amount confirms it (idempotently, so a duplicate or a late delivery changes
/// nothing twice). Anything else is left alone for reconciliation to raise: a charge
/// without an order, or of another amount, is never confirmed by a webhook. Whether it
/// confirmed an order.
pub async fn apply_webhook(orders: &OrdersDb, event: &Event) -> Result<bool, String> {
    if event.kind != "charge.succeeded" || event.data.status != "paid" {
        return Ok(false);
    }
    let charge = &event.data;
    match orders.get(&charge.reference).await? {
        Some(order) if order.amount == charge.amount && order.status == "pending" => Ok(orders
            .confirm(&order.id, &charge.id)
            .await?
            .is_some_and(|s| s == "confirmed")),
        _ => Ok(false),
    }
}

/// Heal, alert or accept, as the module's table says.
pub fn rules() -> Vec<Rule> {
    let rule = Rule::new;
    vec![
        rule(
            DriftKind::StatusDiffers,
            Some("pending"),
            Some("paid"),
            Verdict::Heal("mark_paid".into()),
        ),
        rule(DriftKind::OnlyOurs, Some("pending"), None, Verdict::Accept),
        rule(
            DriftKind::OnlyOurs,
            Some("cancelled"),
            None,
            Verdict::Accept,
        ),
        rule(
            DriftKind::OnlyOurs,
            Some("paid"),
            None,
            Verdict::Alert("paid_without_charge".into()),
        ),
        rule(
            DriftKind::OnlyTheirs,
            None,
            None,
            Verdict::Alert("orphan_charge".into()),
        ),
        rule(
            DriftKind::AmountDiffers,
            None,
            None,
            Verdict::Alert("amount_mismatch".into()),
        ),
    ]
}

/// Every paid charge has exactly one paid order with the same amount; a paid order has its
/// charges.
pub fn invariant() -> Invariant {
    Invariant {
        description: "every paid charge has exactly one paid order with the same amount".into(),
        holds: Arc::new(|g: &Group| {
            let charged: i64 = g
                .theirs
                .iter()
                .filter(|e| e.status == "paid")
                .map(|e| e.amount)
                .sum();
            let paid: Vec<&Entry> = g.ours.iter().filter(|e| e.status == "paid").collect();
            if g.theirs.is_empty() {
                return paid.is_empty();
            }
            paid.len() == 1 && paid[0].amount == charged
        }),
    }
}

/// The job over the shop's orders and the provider at `provider` (its base URL).
pub fn job(orders: OrdersDb, provider: &str, windows: WindowPlan) -> Job {
    job_with(
        orders_source(orders.clone()),
        mark_paid(orders),
        provider,
        windows,
    )
}

/// The job with another side of ours and another heal: a shop that keeps whether an order
/// is paid somewhere else than in the orders' status (the reference shop marks it paid when
/// the provider's webhook arrives). `ours` speaks the job's vocabulary (`pending`, `paid`,
/// `cancelled`), and `healer` applies `mark_paid`; the rules, the invariant and the
/// provider's side are this job's.
pub fn job_with(
    ours: Arc<dyn Source>,
    healer: Arc<dyn Healer>,
    provider: &str,
    windows: WindowPlan,
) -> Job {
    Job {
        name: JOB.into(),
        ours,
        theirs: Arc::new(ChargesSource {
            url: format!("{}/charges", provider.trim_end_matches('/')),
            http: reqwest::Client::new(),
        }),
        rules: rules(),
        healer,
        invariant: invariant(),
        windows,
        page_size: 500,
    }
}

/// The job's windows unless told otherwise: ten minutes each, five minutes of overlap (an
/// order and its charge may lie that far apart), a minute to settle, a day back on the
/// first run.
pub fn default_windows() -> WindowPlan {
    WindowPlan {
        length: Duration::from_secs(600),
        overlap: Duration::from_secs(300),
        settle: Duration::from_secs(60),
        lookback: Duration::from_secs(86_400),
    }
}

/// The job's side of the shop: the orders, in the job's vocabulary (`pending`, `paid` for
/// confirmed, `cancelled`).
pub fn orders_source(orders: OrdersDb) -> Arc<dyn Source> {
    Arc::new(OrdersSource(orders))
}

/// The job's heal: confirm a pending order with its paid charge.
pub fn mark_paid(orders: OrdersDb) -> Arc<dyn Healer> {
    Arc::new(MarkPaid(orders))
}

struct OrdersSource(OrdersDb);

#[async_trait]
impl Source for OrdersSource {
    async fn page(
        &self,
        from: Timestamp,
        to: Timestamp,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page, SourceError> {
        let after = cursor.and_then(|c| {
            let (at, id) = c.split_once('/')?;
            Some((at.parse::<i64>().ok()?, id.to_owned()))
        });
        let rows = self
            .0
            .placed_between(from.0, to.0, after, limit)
            .await
            .map_err(SourceError)?;
        let next = (rows.len() == limit)
            .then(|| rows.last().map(|(at, o)| format!("{at}/{}", o.id)))
            .flatten();
        let records = rows
            .into_iter()
            .map(|(at, o)| {
                let status = match o.status.as_str() {
                    "confirmed" => "paid",
                    other => other,
                };
                Ok(Entry {
                    key: o.id.clone(),
                    amount: i64::try_from(o.amount).unwrap_or(i64::MAX),
                    status: status.to_owned(),
                    at: Timestamp(at),
                    id: o.id,
                })
            })
            .collect();
        Ok(Page { records, next })
    }
}

/// The provider's charges, from its paged listing.
struct ChargesSource {
    url: String,
    http: reqwest::Client,
}

#[async_trait]
impl Source for ChargesSource {
    async fn page(
        &self,
        from: Timestamp,
        to: Timestamp,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page, SourceError> {
        let mut query = vec![
            ("from", from.0.to_string()),
            ("to", to.0.to_string()),
            ("limit", limit.to_string()),
        ];
        if let Some(c) = cursor {
            query.push(("after", c));
        }
        let answer = self
            .http
            .get(&self.url)
            .query(&query)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| SourceError(format!("the provider's listing: {e}")))?;
        if !answer.status().is_success() {
            return Err(SourceError(format!(
                "the provider's listing answered {}",
                answer.status()
            )));
        }
        let bytes = answer
            .bytes()
            .await
            .map_err(|e| SourceError(format!("the provider's listing: {e}")))?;
        let body: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| SourceError(format!("the provider's listing is not JSON: {e}")))?;
        let records = body["data"]
            .as_array()
            .ok_or_else(|| SourceError("the provider's listing has no `data` array".into()))?
            .iter()
            .map(charge_entry)
            .collect();
        Ok(Page {
            records,
            next: body["next"].as_str().map(str::to_owned),
        })
    }
}

/// A listed charge as an entry, or what is wrong with it.
fn charge_entry(row: &serde_json::Value) -> Result<Entry, Malformed> {
    let id = row["id"].as_str().unwrap_or("?").to_owned();
    let bad = |reason: &str| Malformed {
        id: id.clone(),
        reason: format!("{reason}: {row}"),
    };
    let amount = row["amount"]
        .as_u64()
        .and_then(|a| i64::try_from(a).ok())
        .ok_or_else(|| bad("`amount` is not a whole number of cents"))?;
    let key = row["reference"]
        .as_str()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| bad("no `reference`"))?;
    let status = row["status"].as_str().ok_or_else(|| bad("no `status`"))?;
    let at = row["created_at"]
        .as_i64()
        .ok_or_else(|| bad("no `created_at`"))?;
    if id == "?" {
        return Err(bad("no `id`"));
    }
    Ok(Entry {
        id: id.clone(),
        key: key.to_owned(),
        amount,
        status: status.to_owned(),
        at: Timestamp(at),
    })
}

/// Confirms a pending order with its paid charge: the same idempotent update the webhook
/// makes (so a heal and a late webhook confirm, and announce, once).
struct MarkPaid(OrdersDb);

#[async_trait]
impl Healer for MarkPaid {
    async fn heal(&self, action: &str, group: &Group, _key: &str) -> Result<(), SourceError> {
        if action != "mark_paid" {
            return Err(SourceError(format!("no heal action {action}")));
        }
        let charge = group
            .theirs
            .iter()
            .find(|e| e.status == "paid")
            .ok_or_else(|| SourceError(format!("{}: no paid charge to confirm with", group.key)))?;
        match self
            .0
            .confirm(&group.key, &charge.id)
            .await
            .map_err(SourceError)?
        {
            Some(s) if s == "confirmed" => Ok(()),
            other => Err(SourceError(format!(
                "order {} is {} and cannot be confirmed",
                group.key,
                other.as_deref().unwrap_or("missing")
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_rows_that_do_not_read_are_malformed() {
        let good = serde_json::json!({"id": "ch_1", "amount": 450, "reference": "ord_1", "status": "paid", "created_at": 5});
        assert_eq!(charge_entry(&good).unwrap().amount, 450);
        for (row, says) in [
            (
                serde_json::json!({"id": "ch_2", "amount": "12,50", "reference": "o", "status": "paid", "created_at": 5}),
                "amount",
            ),
            (
                serde_json::json!({"id": "ch_3", "amount": -1, "reference": "o", "status": "paid", "created_at": 5}),
                "amount",
            ),
            (
                serde_json::json!({"id": "ch_4", "amount": 1, "status": "paid", "created_at": 5}),
                "reference",
            ),
            (
                serde_json::json!({"id": "ch_5", "amount": 1, "reference": "o", "created_at": 5}),
                "status",
            ),
            (
                serde_json::json!({"id": "ch_6", "amount": 1, "reference": "o", "status": "paid"}),
                "created_at",
            ),
            (
                serde_json::json!({"amount": 1, "reference": "o", "status": "paid", "created_at": 5}),
                "id",
            ),
        ] {
            let m = charge_entry(&row).unwrap_err();
            assert!(m.reason.contains(says), "{row}: {}", m.reason);
        }
    }
}
