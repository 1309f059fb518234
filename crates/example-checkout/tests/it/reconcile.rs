//! The seed's reconciliation job for real: 200 orders paid at the fake provider, whose
//! webhooks to the shop's process are dropped (10 %), duplicated (10 %) and late (10 %), and
//! each unsafe drift injected (an orphan charge, an amount mismatch, a paid order without a
//! charge, a malformed provider row). Then the `payments` job, run twice at once: one run
//! does the work, the other is refused; every drift is found, every missed webhook healed
//! exactly once (one `order.confirmed` event per order, whoever confirmed it), every unsafe
//! drift is an open finding with its ids, and a second run finds nothing new. On SQLite and
//! PostgreSQL.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use oncely_core::reconcile::WindowPlan;
use oncely_core::{Clock, SystemClock};
use oncely_example_checkout::orders::Order;
use oncely_example_checkout::payments::Chaos;
use oncely_example_checkout::reconcile::job;
use oncely_outbox::webhook::WebhookSecret;
use oncely_reconcile::{FindingFilter, FindingState, Reconciler, RunError, RunOutcome};
use oncely_testkit::TestClient;

use crate::saga::{postgres, services, start_shop, Db, PgDb, SqliteDb};

const ORDERS: usize = 200;

fn order(id: &str, amount: u64) -> Order {
    Order {
        id: id.into(),
        saga_id: format!("co_{id}"),
        email: "ada@example.com".into(),
        items: serde_json::json!([{ "sku": "tea", "qty": 1 }]),
        amount,
        status: "pending".into(),
        charge_id: None,
        cancel_reason: None,
    }
}

async fn chaos_and_drifts(db: impl Db) {
    let s = services().await;
    let secret = WebhookSecret::from_bytes(b"the provider's secret, 32 bytes");
    let shop = start_shop(
        &db.url(),
        &s,
        &["--webhook-secret", &secret.to_text()],
        None,
    )
    .await;
    let orders = db.orders_db().await;
    s.charges.send_webhooks(
        &format!("{}/webhooks/provider", shop.url),
        secret,
        Chaos {
            drop_pct: 10,
            duplicate_pct: 10,
            late_pct: 10,
            max_delay: Duration::from_millis(400),
            seed: 7,
        },
    );
    // Orders placed and paid at the provider; the provider tells the shop by webhook.
    let client = TestClient::new();
    for i in 0..ORDERS {
        let id = format!("ord_{i:04}");
        let amount = 400 + (i as u64 % 7) * 50;
        assert!(orders.place(&order(&id, amount)).await.unwrap());
        let body = serde_json::json!({ "amount": amount, "card": "tok_visa", "reference": id });
        let a = client
            .post_keyed(
                &format!("{}/charges", s.payments),
                &format!("pay-{id}"),
                &body.to_string(),
                &[],
            )
            .await
            .unwrap();
        assert_eq!(a.status, 201);
    }
    // The unsafe drifts.
    s.charges.insert(999, "ord_ghost");
    assert!(orders.place(&order("ord_mismatch", 900)).await.unwrap());
    let short = s.charges.insert(850, "ord_mismatch");
    // Its webhook, signed, is refused by the shop for its amount; a forged one (unsigned)
    // for an unpaid order is refused outright.
    let hook = format!("{}/webhooks/provider", shop.url);
    let (body, headers) = s.charges.webhook_for(&short).unwrap();
    let mut h: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    h.push(("content-type", "application/json"));
    let a = client.send("POST", &hook, &h, body.clone()).await.unwrap();
    assert_eq!(
        (a.status, &a.json()["applied"]),
        (200, &serde_json::json!(false))
    );
    assert!(orders.place(&order("ord_unpaid", 300)).await.unwrap());
    let forged = serde_json::json!({"id": "evt_x", "type": "charge.succeeded", "data": {"id": "ch_x", "amount": 300, "reference": "ord_unpaid", "status": "paid", "created_at": 0}});
    let a = client
        .send(
            "POST",
            &hook,
            &[("content-type", "application/json")],
            forged.to_string(),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 401, "{:?}", a.json());
    assert!(orders.place(&order("ord_phantom", 700)).await.unwrap());
    orders
        .confirm("ord_phantom", "ch_never_made")
        .await
        .unwrap();
    s.charges.insert_raw(
        SystemClock.now().as_millis(),
        serde_json::json!({ "id": "ch_bad", "amount": "12,50", "reference": "ord_0001", "status": "paid", "created_at": SystemClock.now().as_millis() }),
    );
    // Every delivery made (late ones included), then the orders a missed webhook left.
    let charged_webhooks = ORDERS as u64 - s.charges.webhook_counts().dropped;
    for _ in 0..200 {
        let c = s.charges.webhook_counts();
        if c.delivered >= charged_webhooks && c.sent == c.delivered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = s.charges.webhook_counts();
    assert!(
        counts.dropped > 0 && counts.sent > charged_webhooks,
        "chaos happened: {counts:?}"
    );
    let missed: BTreeSet<String> = db
        .orders()
        .await
        .into_iter()
        .filter(|o| o.status == "pending" && o.id.starts_with("ord_0"))
        .map(|o| o.id)
        .collect();
    assert_eq!(
        missed.len() as u64,
        counts.dropped,
        "each dropped webhook left its order pending"
    );

    // Two runs at once: one works, the other is refused.
    let store = db.reconcile_store().await;
    let windows = WindowPlan {
        length: Duration::from_secs(60),
        overlap: Duration::from_secs(30),
        settle: Duration::ZERO,
        lookback: Duration::from_secs(600),
    };
    let payments = job(orders.clone(), &s.payments, windows);
    let mut runs = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let r = Reconciler::new(
            store.clone(),
            Arc::new(SystemClock),
            Duration::from_secs(60),
        );
        let job = payments.clone();
        runs.spawn(async move { r.run(&job).await });
    }
    let mut summaries = Vec::new();
    while let Some(j) = runs.join_next().await {
        match j.unwrap() {
            Ok(s) => summaries.push(s),
            Err(RunError::Busy(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(summaries.len(), 1, "one run did the work");
    let run = &summaries[0];
    assert_eq!(run.outcome, RunOutcome::Drift, "{run:?}");
    let n = |name: &str| run.report.counts.get(name).copied().unwrap_or(0);
    assert_eq!(
        n("healed"),
        counts.dropped,
        "every missed webhook healed: {run:?}"
    );

    // Every drift found: the healed ones are exactly the missed webhooks...
    let findings = store
        .findings(&FindingFilter::default(), 1000)
        .await
        .unwrap();
    let healed: BTreeSet<String> = findings
        .iter()
        .filter(|f| f.state == FindingState::Healed)
        .map(|f| f.key.clone())
        .collect();
    assert_eq!(healed, missed);
    // ...and each unsafe drift is an open finding with its ids.
    let mut open: Vec<(String, String, Vec<String>, Vec<String>)> = findings
        .iter()
        .filter(|f| f.state == FindingState::Open)
        .map(|f| {
            (
                f.class.clone(),
                f.key.clone(),
                f.ours.clone(),
                f.theirs.clone(),
            )
        })
        .collect();
    open.sort();
    let charge_of = |reference: &str| {
        s.charges
            .charges()
            .into_iter()
            .find(|c| c.reference == reference)
            .unwrap()
            .id
    };
    assert_eq!(
        open,
        [
            (
                "amount_mismatch".into(),
                "ord_mismatch".into(),
                vec!["ord_mismatch".into()],
                vec![charge_of("ord_mismatch")]
            ),
            (
                "malformed".into(),
                "theirs:ch_bad".into(),
                vec![],
                vec!["ch_bad".into()]
            ),
            (
                "orphan_charge".into(),
                "ord_ghost".into(),
                vec![],
                vec![charge_of("ord_ghost")]
            ),
            (
                "paid_without_charge".into(),
                "ord_phantom".into(),
                vec!["ord_phantom".into()],
                vec![]
            ),
        ]
    );
    assert_eq!(n("invariant_violations"), 3, "orphan, mismatch, phantom");

    // Healed exactly once: every paid order confirmed, one order.confirmed event each.
    let all = db.orders().await;
    let confirmed: Vec<&Order> = all.iter().filter(|o| o.status == "confirmed").collect();
    assert_eq!(confirmed.len(), ORDERS + 1, "the 200 and the phantom");
    for o in all.iter().filter(|o| o.id.starts_with("ord_0")) {
        assert_eq!(
            o.charge_id.as_deref(),
            Some(charge_of(&o.id).as_str()),
            "{}",
            o.id
        );
    }
    let events = db.events().await;
    let announced: BTreeSet<&str> = events.iter().map(|(order, _)| order.as_str()).collect();
    assert_eq!(events.len(), ORDERS + 1, "one event per confirmed order");
    assert_eq!(announced.len(), ORDERS + 1);

    // Again: nothing new, nothing healed twice.
    let again = Reconciler::new(
        store.clone(),
        Arc::new(SystemClock),
        Duration::from_secs(60),
    )
    .run(&payments)
    .await
    .unwrap();
    assert_eq!(again.report.counts.get("new_findings"), None, "{again:?}");
    assert_eq!(again.report.counts.get("healed"), None);
    let mut fresh = payments.clone();
    fresh.name = "payments-from-scratch".into();
    let whole = Reconciler::new(
        store.clone(),
        Arc::new(SystemClock),
        Duration::from_secs(60),
    )
    .run(&fresh)
    .await
    .unwrap();
    assert_eq!(
        whole.report.counts.get("healed"),
        None,
        "nothing left to heal: {whole:?}"
    );
    assert_eq!(whole.report.counts.get("alerts"), Some(&4));
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_every_drift_is_found_and_missed_webhooks_healed_once() {
    chaos_and_drifts(SqliteDb::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_every_drift_is_found_and_missed_webhooks_healed_once() {
    if let Some(new_db) = postgres("postgres_every_drift_is_found_and_missed_webhooks_healed_once")
    {
        let db: PgDb = new_db();
        chaos_and_drifts(db).await;
    }
}
