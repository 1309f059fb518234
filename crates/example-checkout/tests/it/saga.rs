//! The checkout saga across three real HTTP services. The shop's process (the saga's
//! worker) is killed with SIGKILL at every step and compensation boundary, restarted on the
//! same database, and the client retries: every checkout ends confirmed or cancelled, each
//! effect happened once in each service's own ledger, and the answer is the very bytes of a
//! run that never crashed. Also: a provider timeout retried with the same key, a
//! compensation failing twice then succeeding, a deadline passing mid-step, a cancel during
//! a step, the admin API and metrics. On SQLite and on PostgreSQL.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use oncely_example_checkout::checkout::boundaries;
use oncely_example_checkout::orders::{Order, OrdersDb};
use oncely_example_checkout::{inventory, payments};
use oncely_outbox::OutboxStore;
use oncely_testkit::services::{unique_name, Service};
use oncely_testkit::{Answer, TestClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub(crate) const ORDER: &str = r#"{"email":"ada@example.com","card":"tok_visa","items":[{"sku":"tea","qty":2},{"sku":"cake","qty":1}]}"#;
const DECLINED: &str =
    r#"{"email":"bob@example.com","card":"tok_declined","items":[{"sku":"coffee","qty":3}]}"#;

/// The inventory service and the payment provider, in this process: they outlive every
/// shop process of a scenario, and their ledgers are what the test counts.
pub(crate) struct Services {
    pub(crate) inventory: String,
    pub(crate) stock: Arc<inventory::Ledger>,
    pub(crate) payments: String,
    pub(crate) charges: Arc<payments::Ledger>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Services {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn serve(app: axum::Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task)
}

pub(crate) async fn services() -> Services {
    let (inv, stock) = inventory::router().unwrap();
    let (pay, charges) = payments::router().unwrap();
    let (inventory, t1) = serve(inv).await;
    let (payments, t2) = serve(pay).await;
    Services {
        inventory,
        stock,
        payments,
        charges,
        tasks: vec![t1, t2],
    }
}

pub(crate) struct Shop {
    pub(crate) child: Child,
    pub(crate) url: String,
    pub(crate) admin: String,
}

pub(crate) async fn start_shop(
    db: &str,
    s: &Services,
    extra: &[&str],
    crash_at: Option<&str>,
) -> Shop {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oncely-example-checkout"));
    cmd.args(["checkout", "--db", db])
        .args(["--inventory", &s.inventory, "--provider", &s.payments])
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        // A short lease: after a crash the next process takes the saga (and the client's
        // key) over within a second; each step attempt gets half of it.
        .args([
            "--lease",
            "1s",
            "--provider-timeout",
            "200ms",
            "--poll",
            "50ms",
        ])
        .args(extra)
        .env_remove("CHECKOUT_CRASH_AT")
        .env_remove("ONCELY_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    if let Some(b) = crash_at {
        cmd.args(["--crash-at", b]);
    }
    let mut child = cmd.spawn().expect("start the shop");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut printed = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the shop starts within 30 s")
            .unwrap()
            .expect("the shop prints where it listens");
        printed.push(line);
    }
    let (admin, listen) = (&printed[0], &printed[1]);
    let admin = admin
        .strip_prefix("admin on ")
        .unwrap_or_else(|| panic!("unexpected line {admin:?}"))
        .to_owned();
    let url = listen
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected line {listen:?}"))
        .to_owned();
    Shop { child, url, admin }
}

impl Shop {
    pub(crate) async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Retries like a client should (409 while a crashed request's lease runs, 503, no
/// connection), and follows a 202 to the checkout's page until it has an outcome.
async fn checkout_until_final(client: &TestClient, url: &str, key: &str, body: &str) -> Answer {
    for _ in 0..300 {
        match client
            .post_keyed(&format!("{url}/checkout"), key, body, &[])
            .await
        {
            Ok(a) if a.status == 409 || a.status == 503 => {}
            Ok(a) if a.status == 202 => {
                let page = a.header("location").unwrap().to_owned();
                let mut last = serde_json::Value::Null;
                for _ in 0..300 {
                    let p = client
                        .send("GET", &format!("{url}{page}"), &[], "")
                        .await
                        .unwrap();
                    if !matches!(p.json()["state"].as_str(), Some("pending" | "stuck")) {
                        return p;
                    }
                    last = p.json();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                panic!("checkout {key} never ended: {last:#}");
            }
            Ok(a) => return a,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no final answer for {key}");
}

/// One database per scenario: a fresh file, or a fresh schema.
pub(crate) trait Db {
    fn url(&self) -> String;
    async fn orders(&self) -> Vec<Order>;
    /// The outbox's events, as (aggregate id, event type): claimed, so read them once.
    async fn events(&self) -> Vec<(String, String)>;
    /// The shop's orders table, to write to as a test.
    async fn orders_db(&self) -> OrdersDb;
    /// A reconciliation store in the shop's database.
    async fn reconcile_store(&self) -> Arc<dyn oncely_reconcile::ReconcileStore>;
}

/// The events of an outbox, as (aggregate id, event type), in the order they were enqueued.
/// A claim hands out only the first pending event of each order, so the count of pending
/// events is checked to match: a second event for one order would not hide.
pub(crate) async fn claim_events(outbox: &dyn OutboxStore) -> Vec<(String, String)> {
    let events: Vec<(String, String)> = outbox
        .claim(1000, Duration::from_secs(600))
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.event.aggregate_id, c.event.event_type))
        .collect();
    let pending = outbox.stats().await.unwrap().pending;
    assert_eq!(
        pending,
        events.len() as u64,
        "no order has a second event: {events:?}"
    );
    events
}

pub(crate) struct SqliteDb {
    dir: tempfile::TempDir,
}

impl SqliteDb {
    pub(crate) fn new() -> Self {
        SqliteDb {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

impl Db for SqliteDb {
    fn url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("shop.db").display())
    }
    async fn orders(&self) -> Vec<Order> {
        OrdersDb::sqlite(&self.dir.path().join("shop.db"))
            .unwrap()
            .list()
            .await
            .unwrap()
    }
    async fn orders_db(&self) -> OrdersDb {
        OrdersDb::sqlite(&self.dir.path().join("shop.db")).unwrap()
    }
    async fn reconcile_store(&self) -> Arc<dyn oncely_reconcile::ReconcileStore> {
        Arc::new(
            oncely_reconcile::sqlite::SqliteReconcile::open(
                self.dir.path().join("shop.db"),
                Duration::from_secs(10),
                Arc::new(oncely_core::SystemClock),
            )
            .unwrap(),
        )
    }
    async fn events(&self) -> Vec<(String, String)> {
        let outbox = oncely_outbox::sqlite::SqliteOutbox::open(
            self.dir.path().join("shop.db"),
            Duration::from_secs(5),
            Arc::new(oncely_core::SystemClock),
        )
        .unwrap();
        claim_events(&outbox).await
    }
}

pub(crate) struct PgDb {
    base: String,
    schema: String,
}

impl Db for PgDb {
    fn url(&self) -> String {
        format!("{}?schema={}", self.base, self.schema)
    }
    async fn orders(&self) -> Vec<Order> {
        let mut opts = oncely_db::postgres::PgOptions::new(self.base.clone());
        opts.pool_size = 1;
        let pool = oncely_db::postgres::pool(&opts).unwrap();
        OrdersDb::postgres(pool, &self.schema)
            .await
            .unwrap()
            .list()
            .await
            .unwrap()
    }
    async fn orders_db(&self) -> OrdersDb {
        let pool =
            oncely_db::postgres::pool(&oncely_db::postgres::PgOptions::new(self.base.clone()))
                .unwrap();
        OrdersDb::postgres(pool, &self.schema).await.unwrap()
    }
    async fn reconcile_store(&self) -> Arc<dyn oncely_reconcile::ReconcileStore> {
        let pool =
            oncely_db::postgres::pool(&oncely_db::postgres::PgOptions::new(self.base.clone()))
                .unwrap();
        Arc::new(
            oncely_reconcile::postgres::PgReconcile::open(
                pool,
                &self.schema,
                Arc::new(oncely_core::SystemClock),
            )
            .await
            .unwrap(),
        )
    }
    async fn events(&self) -> Vec<(String, String)> {
        let mut opts = oncely_db::postgres::PgOptions::new(self.base.clone());
        opts.pool_size = 1;
        let pool = oncely_db::postgres::pool(&opts).unwrap();
        let outbox = oncely_outbox::postgres::PgOutbox::open(
            pool,
            &self.schema,
            Arc::new(oncely_core::SystemClock),
        )
        .await
        .unwrap();
        claim_events(&outbox).await
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let keys = format!("{}_keys", self.schema);
        oncely_testkit::services::drop_postgres_schemas(&self.base, &[self.schema.clone(), keys]);
    }
}

pub(crate) fn postgres(test: &str) -> Option<impl Fn() -> PgDb> {
    let base = Service::Postgres.available(test)?;
    Some(move || PgDb {
        base: base.clone(),
        schema: unique_name("shop"),
    })
}

/// What the services' ledgers and the orders table must show after one checkout.
async fn assert_effects_once(db: &impl Db, s: &Services, declined: bool, at: &str) {
    let orders = db.orders().await;
    assert_eq!(orders.len(), 1, "one order after {at}: {orders:?}");
    let order = &orders[0];
    let reservations = s.stock.reservations();
    assert_eq!(
        reservations.len(),
        1,
        "one reservation after {at}: {reservations:?}"
    );
    assert_eq!(reservations[0].reference, order.id);
    let charges = s.charges.charges();
    let announced = if declined {
        "order.cancelled"
    } else {
        "order.confirmed"
    };
    assert_eq!(
        db.events().await,
        [(order.id.clone(), announced.to_owned())],
        "one event in the outbox after {at}"
    );
    if declined {
        assert_eq!(order.status, "cancelled", "after {at}");
        assert!(charges.is_empty(), "no charge after {at}: {charges:?}");
        assert!(reservations[0].released, "the stock released after {at}");
        assert_eq!(s.stock.releases(), 1, "released once after {at}");
        assert_eq!(
            s.stock.stock("coffee"),
            inventory::INITIAL_STOCK,
            "after {at}"
        );
    } else {
        assert_eq!(order.status, "confirmed", "after {at}");
        assert_eq!(charges.len(), 1, "one charge after {at}: {charges:?}");
        assert_eq!(charges[0].reference, order.id);
        assert_eq!(charges[0].amount, 2 * 450 + 520);
        assert_eq!(order.charge_id.as_deref(), Some(charges[0].id.as_str()));
        assert!(
            !reservations[0].released,
            "the stock stays reserved after {at}"
        );
        assert_eq!(s.stock.releases(), 0);
        assert_eq!(
            s.stock.stock("tea"),
            inventory::INITIAL_STOCK - 2,
            "after {at}"
        );
        assert_eq!(
            s.stock.stock("cake"),
            inventory::INITIAL_STOCK - 1,
            "after {at}"
        );
    }
}

/// A run that never crashed, on a fresh database and services: its answer.
async fn baseline(db: &impl Db, body: &str, declined: bool) -> Answer {
    let s = services().await;
    let shop = start_shop(&db.url(), &s, &[], None).await;
    let answer = checkout_until_final(&TestClient::new(), &shop.url, "checkout-1", body).await;
    assert_effects_once(db, &s, declined, "a run without crashes").await;
    shop.stop().await;
    answer
}

async fn crash_at_every_boundary<D: Db>(new_db: impl Fn() -> D) {
    let client = TestClient::new();
    let confirmed = baseline(&new_db(), ORDER, false).await;
    assert_eq!(
        confirmed.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&confirmed.body)
    );
    assert_eq!(confirmed.json()["charge_id"], "ch_1");
    let declined = baseline(&new_db(), DECLINED, true).await;
    assert_eq!(
        declined.status,
        402,
        "{:?}",
        String::from_utf8_lossy(&declined.body)
    );
    assert_eq!(
        declined.problem_type().as_deref(),
        Some("urn:oncely:example:payment-declined")
    );
    let all = boundaries();
    assert_eq!(all.len(), 12, "{all:?}");
    let mut runs = 0;
    for boundary in &all {
        // A declined card passes every boundary before the pivot, compensations included;
        // an accepted one every forward boundary.
        let undo = boundary.starts_with("before-undo") || boundary.starts_with("after-undo");
        let mut cases = Vec::new();
        if !undo {
            cases.push((ORDER, false, &confirmed));
        }
        if !boundary.ends_with("confirm_order") {
            cases.push((DECLINED, true, &declined));
        }
        for (body, is_declined, expected) in cases {
            runs += 1;
            let db = new_db();
            let s = services().await;
            let mut crashing = start_shop(&db.url(), &s, &[], Some(boundary)).await;
            let first = client
                .post_keyed(
                    &format!("{}/checkout", crashing.url),
                    "checkout-1",
                    body,
                    &[],
                )
                .await;
            assert!(
                first.is_err(),
                "the shop dies at {boundary} before answering: {first:?}"
            );
            let status = tokio::time::timeout(Duration::from_secs(10), crashing.child.wait())
                .await
                .expect("the crashed process is gone")
                .unwrap();
            assert_eq!(status.signal(), Some(libc::SIGKILL), "killed at {boundary}");

            let shop = start_shop(&db.url(), &s, &[], None).await;
            let answer = checkout_until_final(&client, &shop.url, "checkout-1", body).await;
            let at = format!("a crash at {boundary} (declined: {is_declined})");
            assert_eq!(answer.status, expected.status, "after {at}");
            assert_eq!(answer.body, expected.body, "after {at}: the same bytes");
            assert_effects_once(&db, &s, is_declined, &at).await;
            if boundary == "after-do:capture_payment" && !is_declined {
                // Charged, then killed before recording it: the next worker asked again
                // with the same key, and the provider replayed.
                assert_eq!(s.charges.executions(), 1, "executed once at {boundary}");
                assert_eq!(s.charges.received(), 2, "asked twice at {boundary}");
            }
            shop.stop().await;
        }
    }
    assert_eq!(
        runs,
        4 * 2 + 3 * 2 + 2 * 2,
        "every boundary each checkout passes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_crash_at_every_boundary() {
    crash_at_every_boundary(SqliteDb::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_at_every_boundary() {
    if let Some(new_db) = postgres("postgres_crash_at_every_boundary") {
        crash_at_every_boundary(new_db).await;
    }
}

async fn get_json(client: &TestClient, url: &str) -> serde_json::Value {
    let a = client.send("GET", url, &[], "").await.unwrap();
    assert_eq!(
        a.status,
        200,
        "{url}: {:?}",
        String::from_utf8_lossy(&a.body)
    );
    a.json()
}

/// The saga's log lines for one step and direction: their outcomes.
fn outcomes(page: &serde_json::Value, step: &str, direction: &str) -> Vec<String> {
    page["saga"]["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["step"] == step && l["direction"] == direction)
        .map(|l| l["outcome"].as_str().unwrap().to_owned())
        .collect()
}

/// Failures a saga must ride out, over HTTP.
async fn failures_on_the_way<D: Db>(new_db: impl Fn() -> D) {
    let client = TestClient::new();

    // The provider charges, then answers after the step's attempt timed out: the attempt is
    // retried with the same key, and the provider charges once.
    let db = new_db();
    let s = services().await;
    let shop = start_shop(&db.url(), &s, &[], None).await;
    s.charges.slow_next(700);
    let a = checkout_until_final(&client, &shop.url, "slow", ORDER).await;
    assert_eq!(a.json()["state"], "confirmed", "{:?}", a.json());
    assert_effects_once(&db, &s, false, "a provider timeout").await;
    assert!(s.charges.received() >= 2, "the charge was asked again");
    let page = get_json(
        &client,
        &format!(
            "{}/checkouts/{}",
            shop.url,
            a.json()["checkout"].as_str().unwrap()
        ),
    )
    .await;
    let capture = outcomes(&page, "capture_payment", "do");
    assert!(capture[0].starts_with("retryable"), "{capture:?}");
    assert_eq!(capture.last().unwrap(), "done");
    shop.stop().await;

    // A compensation that fails twice, then succeeds: the stock is released once.
    let db = new_db();
    let s = services().await;
    let shop = start_shop(&db.url(), &s, &[], None).await;
    s.stock.fail_next_releases(2);
    let a = checkout_until_final(&client, &shop.url, "release-twice", DECLINED).await;
    assert_eq!(a.status, 402, "{:?}", a.json());
    assert_effects_once(&db, &s, true, "a compensation failing twice").await;
    let page = get_json(
        &client,
        &format!(
            "{}/checkouts/{}",
            shop.url,
            a.json()["checkout"].as_str().unwrap()
        ),
    )
    .await;
    let release = outcomes(&page, "reserve_stock", "undo");
    assert_eq!(release.len(), 3, "{release:?}");
    assert!(
        release[0].starts_with("retryable: ") && release[1].starts_with("retryable: "),
        "{release:?}"
    );
    assert_eq!(release[2], "done");
    shop.stop().await;

    // The saga's deadline passes while a step keeps failing: it turns back, and what may
    // have acted is undone.
    let db = new_db();
    let s = services().await;
    let shop = start_shop(&db.url(), &s, &["--deadline", "1s"], None).await;
    s.stock.fail_next(1_000_000);
    // The outage ends after the deadline (the compensation needs the service back).
    let stock = s.stock.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        stock.fail_next(0);
    });
    let a = checkout_until_final(&client, &shop.url, "deadline", ORDER).await;
    assert_eq!(a.json()["state"], "cancelled", "{:?}", a.json());
    assert!(
        a.json()["reason"].as_str().unwrap().contains("deadline"),
        "{:?}",
        a.json()
    );
    let orders = db.orders().await;
    assert_eq!((orders.len(), orders[0].status.as_str()), (1, "cancelled"));
    assert!(s.stock.reservations().is_empty(), "nothing was reserved");
    assert!(s.charges.charges().is_empty(), "nothing was charged");
    shop.stop().await;

    // A cancel arrives while a step is running (the reservation is being retried): the
    // saga turns back, releasing what the step may have reserved, and cancels the order.
    let db = new_db();
    let s = services().await;
    let trail_dir = tempfile::tempdir().unwrap();
    let trail = trail_dir.path().join("audit.db");
    let trail_url = format!("sqlite://{}", trail.display());
    let shop = start_shop(
        &db.url(),
        &s,
        &["--wait", "100ms", "--audit", &trail_url],
        None,
    )
    .await;
    s.stock.fail_next(1_000_000);
    let a = client
        .post_keyed(&format!("{}/checkout", shop.url), "cancel-me", ORDER, &[])
        .await
        .unwrap();
    assert_eq!(a.status, 202, "{:?}", a.json());
    let id = a.json()["checkout"].as_str().unwrap().to_owned();
    let c = client
        .send(
            "POST",
            &format!("{}/sagas/{id}/cancel", shop.admin),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(c.status, 202, "{:?}", c.json());
    s.stock.fail_next(0);
    let a = checkout_until_final(&client, &shop.url, "cancel-me", ORDER).await;
    assert_eq!(a.json()["state"], "cancelled", "{:?}", a.json());
    assert_eq!(db.orders().await[0].status, "cancelled");
    assert!(s.charges.charges().is_empty());
    assert!(s.stock.reservations().iter().all(|r| r.released));
    assert_eq!(s.stock.stock("tea"), inventory::INITIAL_STOCK);

    // The operator's view: the admin API and the metrics.
    let list = get_json(&client, &format!("{}/sagas?phase=compensated", shop.admin)).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    let shown = get_json(&client, &format!("{}/sagas/{id}", shop.admin)).await;
    assert!(shown["log"].as_array().unwrap().len() >= 3, "{shown}");
    let missing = client
        .send(
            "POST",
            &format!("{}/sagas/nope/cancel", shop.admin),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(missing.status, 404);
    let not_stuck = client
        .send("POST", &format!("{}/sagas/{id}/retry", shop.admin), &[], "")
        .await
        .unwrap();
    assert_eq!(not_stuck.status, 409);
    let metrics = client
        .send("GET", &format!("{}/metrics", shop.admin), &[], "")
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.contains(r#"oncely_sagas{phase="compensated"} 1"#),
        "{text}"
    );
    assert!(text.contains("oncely_sagas_started_total 1"), "{text}");

    // The audit trail holds the operator's cancel and every transition, to the end.
    use oncely_audit::AuditLog as _;
    let log = oncely_audit::sqlite::SqliteAuditLog::open(&trail, Duration::from_secs(5)).unwrap();
    let filter = oncely_audit::Filter {
        resource_id: Some(id.clone()),
        ..oncely_audit::Filter::default()
    };
    let mut events = Vec::new();
    for _ in 0..100 {
        events = log.find(&filter, 1000).await.unwrap();
        if events.iter().any(|e| {
            e.new_value
                .as_deref()
                .is_some_and(|v| v.contains(r#""phase":"compensated""#))
        }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        events
            .iter()
            .any(|e| e.action == "saga.cancel_requested" && e.actor_type == "operator"),
        "{events:#?}"
    );
    let transitions = events
        .iter()
        .filter(|e| e.action == "saga.transition")
        .count();
    let by_runner = shown["log"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| !matches!(l["outcome"].as_str(), Some("started" | "cancel requested")))
        .count();
    assert_eq!(
        transitions, by_runner,
        "every transition the runner recorded: {events:#?}"
    );
    assert!(
        events.iter().any(|e| e
            .new_value
            .as_deref()
            .is_some_and(|v| v.contains(r#""phase":"compensated""#))),
        "{events:#?}"
    );
    assert!(
        oncely_audit::log::verify_log(&log, None, |_| {})
            .await
            .unwrap()
            .is_ok(),
        "the trail verifies"
    );
    shop.stop().await;
}

/// Bad input is a 400 before any saga starts; an item out of stock turns the checkout back
/// (422) with the order cancelled and nothing charged.
async fn bad_input_and_no_stock<D: Db>(db: D) {
    let client = TestClient::new();
    let s = services().await;
    let shop = start_shop(&db.url(), &s, &[], None).await;
    let url = format!("{}/checkout", shop.url);
    for (body, says) in [
        (
            r#"{"email":"ada@example.com","card":"tok_visa","items":[]}"#,
            "1-50 items",
        ),
        (
            r#"{"email":"ada@example.com","card":"tok_visa","items":[{"sku":"tea","qty":60},{"sku":"tea","qty":60}]}"#,
            "listed twice",
        ),
        (
            r#"{"email":"ada@example.com","card":"tok_visa","items":[{"sku":"gin","qty":1}]}"#,
            "unknown sku",
        ),
        (
            r#"{"email":"ada","card":"tok_visa","items":[{"sku":"tea","qty":1}]}"#,
            "e-mail",
        ),
        (
            r#"{"email":"ada@example.com","card":"tok_visa","items":[{"sku":"tea","qty":1}],"coupon":"x"}"#,
            "unknown field",
        ),
        ("not json", "expected"),
    ] {
        let a = client
            .post_keyed(&url, &format!("bad-{}", body.len()), body, &[])
            .await
            .unwrap();
        assert_eq!(a.status, 400, "{body}: {:?}", a.json());
        assert_eq!(
            a.problem_type().as_deref(),
            Some("urn:oncely:example:invalid-checkout")
        );
        assert!(
            a.json()["detail"].as_str().unwrap().contains(says),
            "{body}: {:?}",
            a.json()
        );
    }
    let no_key = client
        .send("POST", &url, &[("content-type", "application/json")], ORDER)
        .await
        .unwrap();
    assert_eq!(no_key.status, 400, "{:?}", no_key.json());
    assert!(
        db.orders().await.is_empty(),
        "no saga started for bad input"
    );

    let most = r#"{"email":"ada@example.com","card":"tok_visa","items":[{"sku":"tea","qty":99}]}"#;
    let a = checkout_until_final(&client, &shop.url, "most", most).await;
    assert_eq!(a.status, 201, "{:?}", a.json());
    let more = r#"{"email":"bob@example.com","card":"tok_visa","items":[{"sku":"tea","qty":2}]}"#;
    let b = checkout_until_final(&client, &shop.url, "more", more).await;
    assert_eq!(b.status, 422, "{:?}", b.json());
    assert_eq!(
        b.problem_type().as_deref(),
        Some("urn:oncely:example:checkout-cancelled")
    );
    assert!(
        b.json()["reason"]
            .as_str()
            .unwrap()
            .contains("out_of_stock"),
        "{:?}",
        b.json()
    );
    let orders = db.orders().await;
    let bob = orders
        .iter()
        .find(|o| o.email == "bob@example.com")
        .unwrap();
    assert_eq!(bob.status, "cancelled");
    assert_eq!(s.charges.charges().len(), 1, "only the first was charged");
    assert_eq!(s.stock.stock("tea"), 1);
    shop.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_bad_input_and_no_stock() {
    bad_input_and_no_stock(SqliteDb::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_bad_input_and_no_stock() {
    if let Some(new_db) = postgres("postgres_bad_input_and_no_stock") {
        bad_input_and_no_stock(new_db()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_failures_on_the_way() {
    failures_on_the_way(SqliteDb::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_failures_on_the_way() {
    if let Some(new_db) = postgres("postgres_failures_on_the_way") {
        failures_on_the_way(new_db).await;
    }
}

/// Two shop processes on one database, checkouts sent to both at once, one of them killed
/// while it runs them: the other finishes every checkout, each effect once.
async fn two_shops_share_one_database(db: impl Db) {
    let client = TestClient::new();
    let s = services().await;
    let mut a = start_shop(&db.url(), &s, &[], None).await;
    let b = start_shop(&db.url(), &s, &[], None).await;
    let checkouts: Vec<(String, &str)> = (0..16)
        .map(|i| (format!("two-{i}"), if i % 4 < 2 { ORDER } else { DECLINED }))
        .collect();
    let mut sent = tokio::task::JoinSet::new();
    for (i, (key, body)) in checkouts.iter().enumerate() {
        let url = format!("{}/checkout", if i % 2 == 0 { &a.url } else { &b.url });
        let (client, key, body) = (client.clone(), key.clone(), body.to_string());
        sent.spawn(async move { client.post_keyed(&url, &key, &body, &[]).await });
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    a.child.kill().await.unwrap();
    while sent.join_next().await.is_some() {}
    for (key, body) in &checkouts {
        let answer = checkout_until_final(&client, &b.url, key, body).await;
        let expected = if *body == ORDER {
            "confirmed"
        } else {
            "cancelled"
        };
        assert_eq!(
            answer.json()["state"],
            expected,
            "{key}: {:?}",
            answer.json()
        );
    }
    let orders = db.orders().await;
    assert_eq!(orders.len(), 16);
    assert_eq!(orders.iter().filter(|o| o.status == "confirmed").count(), 8);
    assert_eq!(orders.iter().filter(|o| o.status == "cancelled").count(), 8);
    let charges = s.charges.charges();
    let mut charged: Vec<&str> = charges.iter().map(|c| c.reference.as_str()).collect();
    charged.sort();
    charged.dedup();
    assert_eq!(
        (charges.len(), charged.len()),
        (8, 8),
        "one charge per paid order: {charges:?}"
    );
    let reservations = s.stock.reservations();
    assert_eq!(
        reservations.len(),
        16,
        "one reservation per order: {reservations:?}"
    );
    assert_eq!(reservations.iter().filter(|r| r.released).count(), 8);
    assert_eq!(s.stock.releases(), 8);
    assert_eq!(s.stock.stock("tea"), inventory::INITIAL_STOCK - 16);
    assert_eq!(s.stock.stock("cake"), inventory::INITIAL_STOCK - 8);
    assert_eq!(s.stock.stock("coffee"), inventory::INITIAL_STOCK);
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_shops_share_one_database() {
    two_shops_share_one_database(SqliteDb::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_shops_share_one_database() {
    if let Some(new_db) = postgres("postgres_two_shops_share_one_database") {
        two_shops_share_one_database(new_db()).await;
    }
}

/// Bad flags get one line on stderr and a non-zero exit, before anything is opened.
#[test]
fn bad_flags_are_refused_in_one_line() {
    let bin = env!("CARGO_BIN_EXE_oncely-example-checkout");
    for (args, expected) in [
        (
            vec!["checkout", "--crash-at", "nowhere"],
            "is not a boundary",
        ),
        (
            vec!["checkout", "--db", "mysql://x"],
            "is not a database URL",
        ),
        (
            vec!["checkout", "--db", "postgres://h/db?pool=3"],
            "the only option is schema",
        ),
        (vec!["checkout", "--db", "sqlite://"], "needs a file path"),
        (
            vec!["checkout", "--lease", "1s", "--provider-timeout", "600ms"],
            "under half of --lease",
        ),
        (
            vec!["checkout", "--admin", "0.0.0.0:9999"],
            "binds loopback only",
        ),
    ] {
        let out = std::process::Command::new(bin)
            .args(&args)
            .env_remove("ONCELY_ADMIN_TOKEN")
            .env_remove("CHECKOUT_CRASH_AT")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
    }
    let out = std::process::Command::new(bin)
        .arg("boundaries")
        .output()
        .unwrap();
    let listed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(listed, boundaries());
}
