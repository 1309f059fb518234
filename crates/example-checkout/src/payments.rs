//! A fake payment provider: a separate HTTP service with idempotency of its own (the same
//! layer, in front of its charge handler), as a real provider has. It keeps a ledger of the
//! charges it actually executed, which is what tests count, lists them page by page for
//! reconciliation (`GET /charges?from=&to=&after=&limit=`), refunds a whole charge once
//! (`POST /refunds`), and can announce each charge by webhook, unreliably on purpose
//! ([`Chaos`]: dropped, duplicated, late).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::Clock;
use oncely_core::SystemClock;
use oncely_http::{Engine, IdempotencyLayer, KeyRequirement, RoutePolicy};
use oncely_store::MemoryStore;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// The card number the provider always declines.
pub const DECLINED_CARD: &str = "tok_declined";

/// One charge the provider executed, as `POST /charges` answers it and `GET /charges` lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Charge {
    /// `ch_N`, numbered in the order of execution: a charge made twice shows as two ids.
    pub id: String,
    /// The amount in cents.
    pub amount: u64,
    /// The order id the checkout sent, which ties the charge to its order.
    pub reference: String,
    /// `paid`.
    pub status: String,
    /// When it was made, in milliseconds since the epoch.
    pub created_at: i64,
}

/// One refund the provider executed, as `POST /refunds` answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Refund {
    /// `rf_N`, numbered in the order of execution: a refund made twice shows as two ids.
    pub id: String,
    /// The charge refunded.
    pub charge: String,
    /// The order id of that charge.
    pub reference: String,
    /// The amount in cents: the whole charge.
    pub amount: u64,
    /// When it was made, in milliseconds since the epoch.
    pub created_at: i64,
}

/// A webhook the provider sends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Event {
    /// `evt_{charge id}`: the same for every delivery of one event.
    pub id: String,
    /// `charge.succeeded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The charge.
    pub data: Charge,
}

/// How unreliable the webhooks are, in percent of charges, decided by a seeded generator so
/// that a test run can be repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Chaos {
    /// Never delivered.
    pub drop_pct: u8,
    /// Delivered twice.
    pub duplicate_pct: u8,
    /// Delivered late, after up to `max_delay` (so after webhooks of later charges).
    pub late_pct: u8,
    /// The longest delay of a late webhook.
    pub max_delay: Duration,
    /// The generator's seed.
    pub seed: u64,
}

/// What the webhooks did, for tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WebhookCounts {
    /// Charges whose webhook was dropped.
    pub dropped: u64,
    /// Deliveries attempted (duplicates included).
    pub sent: u64,
    /// Deliveries the receiver answered with a 2xx.
    pub delivered: u64,
}

struct Webhooks {
    client: reqwest::Client,
    url: String,
    secret: oncely_outbox::webhook::WebhookSecret,
    chaos: Chaos,
    rng: rand::rngs::StdRng,
}

/// What the provider executed (replays are not executions).
#[derive(Default)]
pub struct Ledger {
    charges: Mutex<Vec<Charge>>,
    refunds: Mutex<Vec<Refund>>,
    /// Rows listed as they are, beside the charges (a provider's malformed rows).
    raw: Mutex<Vec<(i64, serde_json::Value)>>,
    webhooks: Mutex<Option<Webhooks>>,
    dropped: AtomicU64,
    sent: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    requests: AtomicU64,
    received: AtomicU64,
    fail_next: AtomicU64,
    slow_next: AtomicU64,
}

impl Ledger {
    /// The charges made, in order; declined and failed requests leave none.
    pub fn charges(&self) -> Vec<Charge> {
        self.charges.lock_ignoring_poison().clone()
    }
    /// The refunds made, in order.
    pub fn refunds(&self) -> Vec<Refund> {
        self.refunds.lock_ignoring_poison().clone()
    }
    /// Starts the books over (a shop's "start over"): no charge, no refund, no raw row, no
    /// fault pending, the counts at zero; the webhook settings stay. Keys its layer stored
    /// stay stored, so a caller that starts over must use new references (and so new keys).
    pub fn reset(&self) {
        self.charges.lock_ignoring_poison().clear();
        self.refunds.lock_ignoring_poison().clear();
        self.raw.lock_ignoring_poison().clear();
        for counter in [
            &self.dropped,
            &self.requests,
            &self.received,
            &self.fail_next,
            &self.slow_next,
        ] {
            counter.store(0, Ordering::SeqCst);
        }
        self.sent.store(0, Ordering::SeqCst);
        self.delivered.store(0, Ordering::SeqCst);
    }
    /// Charge requests that reached the handler (replays by the layer do not).
    pub fn executions(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
    /// Charge requests received, replays by the layer included.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::SeqCst)
    }
    /// The next `n` charge requests fail with 503 before doing anything.
    pub fn fail_next(&self, n: u64) {
        self.fail_next.store(n, Ordering::SeqCst);
    }
    /// The next charge executes, then answers only after `ms` milliseconds (a provider
    /// timeout: the charge happened, its answer is late).
    pub fn slow_next(&self, ms: u64) {
        self.slow_next.store(ms, Ordering::SeqCst);
    }

    /// Records a charge as if it had been made (no request, no webhook): the drifts a test
    /// injects (an orphan charge, a wrong amount).
    pub fn insert(&self, amount: u64, reference: &str) -> Charge {
        self.push(amount, reference.to_owned())
    }

    /// Lists `row` among the charges as it is, dated `created_at`: a malformed row.
    pub fn insert_raw(&self, created_at: i64, row: serde_json::Value) {
        self.raw.lock_ignoring_poison().push((created_at, row));
    }

    /// The body and headers of the webhook announcing `charge`, signed: what the provider
    /// sends (tests send one by hand, a wrong amount, say).
    pub fn webhook_for(&self, charge: &Charge) -> Option<(String, Vec<(String, String)>)> {
        let guard = self.webhooks.lock_ignoring_poison();
        let w = guard.as_ref()?;
        Some(signed(&w.secret, charge))
    }

    /// Announces every charge from now on by `POST url` (`{"id", "type":
    /// "charge.succeeded", "data": charge}`, signed with `secret` as Standard Webhooks
    /// are), as unreliably as `chaos` says.
    pub fn send_webhooks(
        &self,
        url: &str,
        secret: oncely_outbox::webhook::WebhookSecret,
        chaos: Chaos,
    ) {
        *self.webhooks.lock_ignoring_poison() = Some(Webhooks {
            client: reqwest::Client::new(),
            url: url.to_owned(),
            secret,
            chaos,
            rng: rand::rngs::StdRng::seed_from_u64(chaos.seed),
        });
    }

    /// What the webhooks did so far.
    pub fn webhook_counts(&self) -> WebhookCounts {
        WebhookCounts {
            dropped: self.dropped.load(Ordering::SeqCst),
            sent: self.sent.load(Ordering::SeqCst),
            delivered: self.delivered.load(Ordering::SeqCst),
        }
    }

    fn push(&self, amount: u64, reference: String) -> Charge {
        let mut charges = self.charges.lock_ignoring_poison();
        let c = Charge {
            id: format!("ch_{}", charges.len() + 1),
            amount,
            reference,
            status: "paid".into(),
            created_at: SystemClock.now().as_millis(),
        };
        charges.push(c.clone());
        c
    }

    /// Schedules the webhooks of `charge`: none, one, or two, now or late.
    fn announce(&self, charge: &Charge) {
        let (client, url, (body, headers), deliveries) = {
            let mut guard = self.webhooks.lock_ignoring_poison();
            let Some(w) = guard.as_mut() else { return };
            let mut roll = |pct: u8| w.rng.random_range(0..100u8) < pct;
            if roll(w.chaos.drop_pct) {
                self.dropped.fetch_add(1, Ordering::SeqCst);
                return;
            }
            let copies = if roll(w.chaos.duplicate_pct) { 2 } else { 1 };
            let late = roll(w.chaos.late_pct);
            let max = u64::try_from(w.chaos.max_delay.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            let delays: Vec<Duration> = (0..copies)
                .map(|_| {
                    if late {
                        Duration::from_millis(w.rng.random_range(0..max))
                    } else {
                        Duration::ZERO
                    }
                })
                .collect();
            (
                w.client.clone(),
                w.url.clone(),
                signed(&w.secret, charge),
                delays,
            )
        };
        for delay in deliveries {
            let (client, url, body, headers) =
                (client.clone(), url.clone(), body.clone(), headers.clone());
            let counts = (self.sent.clone(), self.delivered.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                counts.0.fetch_add(1, Ordering::SeqCst);
                let mut request = client
                    .post(&url)
                    .header(http::header::CONTENT_TYPE, "application/json");
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                let ok = request
                    .body(body)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                if ok {
                    counts.1.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    }
}

#[derive(Deserialize)]
struct ChargeRequest {
    amount: u64,
    card: String,
    reference: String,
}

async fn charge(
    State(ledger): State<Arc<Ledger>>,
    Json(req): Json<ChargeRequest>,
) -> (StatusCode, Json<serde_json::Value>) {
    ledger.requests.fetch_add(1, Ordering::SeqCst);
    if ledger
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"error": "try_again"})),
        );
    }
    if req.card == DECLINED_CARD {
        return (
            StatusCode::PAYMENT_REQUIRED,
            Json(serde_json::json!({"error": "card_declined"})),
        );
    }
    let c = ledger.push(req.amount, req.reference);
    ledger.announce(&c);
    let slow = ledger.slow_next.swap(0, Ordering::SeqCst);
    if slow > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(slow)).await;
    }
    (StatusCode::CREATED, Json(serde_json::json!(c)))
}

#[derive(Deserialize)]
struct RefundRequest {
    charge: String,
    reference: String,
}

/// `POST /refunds`: refunds a whole charge, once: a second refund of one charge, under any
/// key, gets the first back (200). A charge that does not exist, or belongs to another
/// order, is refused with 404.
async fn refund(
    State(ledger): State<Arc<Ledger>>,
    Json(req): Json<RefundRequest>,
) -> (StatusCode, Json<serde_json::Value>) {
    let charge = ledger
        .charges
        .lock_ignoring_poison()
        .iter()
        .find(|c| c.id == req.charge && c.reference == req.reference)
        .cloned();
    let Some(charge) = charge else {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"error": "no_such_charge"})),
        );
    };
    let mut refunds = ledger.refunds.lock_ignoring_poison();
    if let Some(r) = refunds.iter().find(|r| r.charge == charge.id) {
        return (StatusCode::OK, Json(serde_json::json!(r)));
    }
    let r = Refund {
        id: format!("rf_{}", refunds.len() + 1),
        charge: charge.id,
        reference: charge.reference,
        amount: charge.amount,
        created_at: SystemClock.now().as_millis(),
    };
    refunds.push(r.clone());
    (StatusCode::CREATED, Json(serde_json::json!(r)))
}

/// Counts every charge request before the idempotency layer sees it.
async fn count(
    State(ledger): State<Arc<Ledger>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if req.method() == http::Method::POST && req.uri().path() == "/charges" {
        ledger.received.fetch_add(1, Ordering::SeqCst);
    }
    next.run(req).await
}

/// The `charge.succeeded` event for `charge`, and its Standard Webhooks headers.
fn signed(
    secret: &oncely_outbox::webhook::WebhookSecret,
    charge: &Charge,
) -> (String, Vec<(String, String)>) {
    let id = format!("evt_{}", charge.id);
    let body = serde_json::json!(Event {
        id: id.clone(),
        kind: "charge.succeeded".into(),
        data: charge.clone(),
    })
    .to_string();
    let now = SystemClock.now().0 / 1000;
    let signature = oncely_outbox::webhook::sign(secret, &id, now, body.as_bytes());
    let headers = vec![
        ("webhook-id".to_owned(), id),
        ("webhook-timestamp".to_owned(), now.to_string()),
        ("webhook-signature".to_owned(), signature),
    ];
    (body, headers)
}

#[derive(Deserialize)]
struct FailNext {
    n: u64,
}

#[derive(Deserialize)]
struct SlowNext {
    ms: u64,
}

#[derive(Deserialize)]
struct ListQuery {
    /// From this time (ms), inclusive.
    from: Option<i64>,
    /// To this time (ms), exclusive.
    to: Option<i64>,
    /// After this cursor (from the last page's `next`).
    after: Option<String>,
    /// At most this many rows (default 100, at most 1000).
    limit: Option<usize>,
}

/// Where the numbers of raw rows start, past any charge's.
const RAW_ROWS: usize = 1 << 40;

/// `GET /charges`: the charges (and raw rows) with `created_at` in `[from, to)`, oldest
/// first, `limit` at a time; `next` is the cursor of the following page, `null` on the last.
fn list(ledger: &Ledger, q: ListQuery) -> serde_json::Value {
    let (from, to) = (q.from.unwrap_or(i64::MIN), q.to.unwrap_or(i64::MAX));
    let mut rows: Vec<(i64, usize, serde_json::Value)> = ledger
        .charges
        .lock_ignoring_poison()
        .iter()
        .enumerate()
        .map(|(i, c)| (c.created_at, i, serde_json::json!(c)))
        .collect();
    // Raw rows are numbered after every charge there can be, so that a charge made
    // between two pages never renumbers them (the cursor would repeat or skip one).
    rows.extend(
        ledger
            .raw
            .lock_ignoring_poison()
            .iter()
            .enumerate()
            .map(|(i, (at, v))| (*at, RAW_ROWS + i, v.clone())),
    );
    rows.retain(|(at, _, _)| from <= *at && *at < to);
    rows.sort_by_key(|(at, i, _)| (*at, *i));
    // The cursor is the position (time, then order of execution) of the last row served.
    let after = q.after.as_deref().and_then(|c| {
        let (at, i) = c.split_once('.')?;
        Some((at.parse::<i64>().ok()?, i.parse::<usize>().ok()?))
    });
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let page: Vec<&(i64, usize, serde_json::Value)> = rows
        .iter()
        .filter(|(at, i, _)| after.is_none_or(|a| (*at, *i) > a))
        .take(limit)
        .collect();
    let next = (page.len() == limit)
        .then(|| page.last().map(|(at, i, _)| format!("{at}.{i}")))
        .flatten();
    serde_json::json!({
        "data": page.iter().map(|(_, _, v)| v.clone()).collect::<Vec<_>>(),
        "next": next,
    })
}

/// The provider's router: `POST /charges` and `POST /refunds` (an `Idempotency-Key` is
/// required on both), `GET /charges` (the ledger, paged), `GET /refunds`,
/// `POST /control/fail-next?n=N` and `POST /control/slow-next?ms=N` (fault injection).
pub fn router() -> Result<(Router, Arc<Ledger>), String> {
    let ledger = Arc::new(Ledger::default());
    let engine = Arc::new(Engine::new(
        Arc::new(MemoryStore::new(Arc::new(SystemClock))),
        Arc::new(SystemClock),
        crate::keyed_routes(
            &["/charges", "/refunds"],
            RoutePolicy {
                key: KeyRequirement::Required,
                ..RoutePolicy::default()
            },
        )?,
    ));
    let app = Router::new()
        .route(
            "/charges",
            post(charge).get(
                |State(l): State<Arc<Ledger>>, Query(q): Query<ListQuery>| async move {
                    Json(list(&l, q))
                },
            ),
        )
        .route(
            "/refunds",
            post(refund).get(|State(l): State<Arc<Ledger>>| async move { Json(l.refunds()) }),
        )
        .route(
            "/control/fail-next",
            post(
                |State(l): State<Arc<Ledger>>, Query(q): Query<FailNext>| async move {
                    l.fail_next(q.n);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .route(
            "/control/slow-next",
            post(
                |State(l): State<Arc<Ledger>>, Query(q): Query<SlowNext>| async move {
                    l.slow_next(q.ms);
                    StatusCode::NO_CONTENT
                },
            ),
        )
        .with_state(ledger.clone())
        .layer(IdempotencyLayer::new(engine))
        .layer(axum::middleware::from_fn_with_state(ledger.clone(), count));
    Ok((app, ledger))
}

/// Serves the provider on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) -> Result<(), String> {
    let (app, _) = router()?;
    axum::serve(listener, app).await.map_err(|e| e.to_string())
}
