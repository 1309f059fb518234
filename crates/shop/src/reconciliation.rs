//! The payments reconciliation: the checkout's `payments` job (its rules, its invariant, the
//! provider's paged charges), over the shop's side of it: whether each order's payment is
//! pending or paid, which the provider's webhook decides. A webhook that never arrived
//! leaves an order pending here and paid there; the job heals it (`mark_paid`, the same
//! idempotent write the webhook makes) and raises every unsafe drift as a finding.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::conditional::format_rfc3339;
use oncely_core::reconcile::{Entry, Group, WindowPlan};
use oncely_core::Timestamp;
use oncely_reconcile::{
    FindingFilter, FindingState, Healer, Job, Page, ReconcileError, ReconcileStore, RunRecord,
    Source, SourceError,
};
use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::store::{MarkedPaid, ShopStore};
use crate::trail::{Entity, Trail};

/// The job's windows: ten minutes each, five of overlap (an order and its charge lie
/// seconds apart), `settle` for webhooks still on their way, an hour back on the first run.
pub(crate) fn windows(settle: Duration) -> WindowPlan {
    WindowPlan {
        length: Duration::from_secs(600),
        overlap: Duration::from_secs(300),
        settle,
        lookback: Duration::from_secs(3600),
    }
}

/// The `payments` job over the shop's payments and the provider at `provider`.
pub(crate) fn job(
    store: Arc<dyn ShopStore>,
    trail: Arc<Trail>,
    wake_relay: Arc<Notify>,
    provider: &str,
    settle: Duration,
) -> Job {
    oncely_example_checkout::reconcile::job_with(
        Arc::new(Payments(store.clone())),
        Arc::new(MarkPaid {
            store,
            trail,
            wake_relay,
        }),
        provider,
        windows(settle),
    )
}

/// Our side: each order placed, `paid` once its payment is (refunded ones included: the
/// charge exists), `cancelled` when its checkout turned back before paying, else `pending`.
struct Payments(Arc<dyn ShopStore>);

#[async_trait]
impl Source for Payments {
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
            .payments_between(from.0, to.0, after, limit)
            .await
            .map_err(|e| SourceError(e.to_string()))?;
        let next = (rows.len() == limit)
            .then(|| rows.last().map(|r| format!("{}/{}", r.at, r.order)))
            .flatten();
        let records = rows
            .into_iter()
            .map(|r| {
                Ok(Entry {
                    id: r.order.clone(),
                    key: r.order,
                    amount: i64::try_from(r.amount).unwrap_or(i64::MAX),
                    status: r.status,
                    at: Timestamp(r.at),
                })
            })
            .collect();
        Ok(Page { records, next })
    }
}

/// The heal: the payment recorded as paid with the provider's charge, exactly as its
/// webhook would have.
struct MarkPaid {
    store: Arc<dyn ShopStore>,
    trail: Arc<Trail>,
    wake_relay: Arc<Notify>,
}

#[async_trait]
impl Healer for MarkPaid {
    async fn heal(&self, action: &str, group: &Group, key: &str) -> Result<(), SourceError> {
        if action != "mark_paid" {
            return Err(SourceError(format!("no heal action {action}")));
        }
        let charge = group
            .theirs
            .iter()
            .find(|e| e.status == "paid")
            .ok_or_else(|| SourceError(format!("{}: no paid charge to record", group.key)))?;
        let amount = u64::try_from(charge.amount)
            .map_err(|_| SourceError(format!("{}: a negative charge", group.key)))?;
        let now = oncely_core::Clock::now(&oncely_core::SystemClock).0;
        match self
            .store
            .mark_paid(&group.key, &charge.id, amount, "reconciliation", now)
            .await
            .map_err(|e| SourceError(e.to_string()))?
        {
            MarkedPaid::Now(_) => {
                self.wake_relay.notify_one();
                self.trail.by_system(
                    "reconciliation",
                    "order.paid",
                    Entity {
                        kind: "order",
                        id: &group.key,
                    },
                    Some(key),
                    Some(json!({ "payment": "pending" })),
                    Some(json!({ "payment": "paid", "charge_id": charge.id, "healed": true })),
                );
                Ok(())
            }
            MarkedPaid::Already => Ok(()),
            MarkedPaid::Refused(why) => Err(SourceError(why)),
        }
    }
}

/// What each finding class is called on the dashboard: a heal is named by the drift it
/// fixed (`mark_paid` healed a missing webhook), an alert by its own class.
pub(crate) fn drift_class(class: &str) -> &str {
    match class {
        "mark_paid" => "missing_webhook",
        other => other,
    }
}

fn run_json(run: &RunRecord, checked: u64, by_class: &BTreeMap<String, u64>) -> Value {
    json!({
        "id": run.id,
        "started_at": format_rfc3339(run.started_at),
        "finished_at": run.finished_at.map(format_rfc3339),
        "status": run.outcome.as_str(),
        "checked": checked,
        "mismatches_by_class": by_class,
        "error": run.error,
    })
}

fn finding_json(f: &oncely_reconcile::Finding) -> Value {
    json!({
        "id": f.id,
        "class": drift_class(&f.class),
        "key": f.key,
        "state": f.state.as_str(),
        "detail": f.detail,
        "first_seen": format_rfc3339(f.first_seen),
        "last_seen": format_rfc3339(f.last_seen),
        "seen": f.seen,
    })
}

/// The dashboard: the job's last run (what it checked, its drifts by class), the open
/// findings, and the newest findings of any state (heals included).
pub(crate) async fn dashboard(
    store: &dyn ReconcileStore,
    job: &str,
) -> Result<Value, ReconcileError> {
    let last = store.runs(Some(job), 1).await?.into_iter().next();
    let all = store
        .findings(
            &FindingFilter {
                job: Some(job.to_owned()),
                ..FindingFilter::default()
            },
            200,
        )
        .await?;
    let last_run = match &last {
        Some(run) => {
            // The drifts this run saw: the findings it recorded (new or seen again).
            let mut by_class: BTreeMap<String, u64> = BTreeMap::new();
            let end = run.finished_at.unwrap_or(Timestamp(i64::MAX));
            for f in all
                .iter()
                .filter(|f| f.last_seen >= run.started_at && f.last_seen <= end)
            {
                *by_class
                    .entry(drift_class(&f.class).to_owned())
                    .or_default() += 1;
            }
            let checked = run.report.counts.get("groups").copied().unwrap_or(0);
            run_json(run, checked, &by_class)
        }
        None => Value::Null,
    };
    let open: Vec<Value> = all
        .iter()
        .filter(|f| f.state == FindingState::Open)
        .map(finding_json)
        .collect();
    let recent: Vec<Value> = all.iter().take(20).map(finding_json).collect();
    Ok(json!({
        "job": job,
        "last_run": last_run,
        "open_findings": open,
        "recent_findings": recent,
    }))
}
