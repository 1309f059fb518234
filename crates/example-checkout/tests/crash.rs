//! The checkout process killed (SIGKILL) at every boundary of its operation, restarted on the
//! same database, and retried: one order, one charge, one receipt email, and the very bytes
//! a run without crashes answers. On SQLite and on PostgreSQL.

use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use oncely_example_checkout::db::ShopDb;
use oncely_example_checkout::payments::{self, Ledger};
use oncely_recovery::postgres::{pool, PgJournal};
use oncely_recovery::sqlite::SqliteJournal;
use oncely_testkit::services::{unique_name, Service};
use oncely_testkit::{Answer, TestClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const ORDER: &str = r#"{"email":"ada@example.com","card":"tok_visa","items":[{"sku":"tea","qty":2},{"sku":"cake","qty":1}]}"#;
const DECLINED: &str =
    r#"{"email":"bob@example.com","card":"tok_declined","items":[{"sku":"coffee","qty":1}]}"#;

/// A payment provider in this process: it outlives every checkout process of a scenario.
struct Provider {
    url: String,
    ledger: Arc<Ledger>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn provider() -> Provider {
    let (app, ledger) = payments::router().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Provider { url, ledger, task }
}

struct Checkout {
    child: Child,
    url: String,
}

async fn start_checkout(
    db: &str,
    provider: &str,
    extra: &[&str],
    crash_at: Option<&str>,
) -> Checkout {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_oncely-example-checkout"));
    cmd.args([
        "checkout",
        "--db",
        db,
        "--provider",
        provider,
        "--listen",
        "127.0.0.1:0",
    ])
    // A short lease: after a crash the retry takes the key over within a second.
    .args(["--lease", "1s"])
    .args(extra)
    .env_remove("CHECKOUT_CRASH_AT")
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .kill_on_drop(true);
    if let Some(b) = crash_at {
        cmd.args(["--crash-at", b]);
    }
    let mut child = cmd.spawn().expect("start the checkout service");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the service starts within 30 s")
        .unwrap()
        .expect("the service prints where it listens");
    let url = line
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Checkout { child, url }
}

impl Checkout {
    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// One checkout request; `Err` when the connection died (the service crashed).
async fn checkout_once(
    client: &TestClient,
    url: &str,
    key: &str,
    body: &str,
) -> Result<Answer, String> {
    client
        .post_keyed(&format!("{url}/checkout"), key, body, &[])
        .await
}

/// A problem answer of this status and type.
fn assert_problem(a: &Answer, status: u16, problem_type: &str) {
    assert_eq!(a.status, status, "{:?}", String::from_utf8_lossy(&a.body));
    assert_eq!(a.problem_type().as_deref(), Some(problem_type));
}

/// Retries like a client should: 409 (the crashed request's lease has not run out yet) and
/// 503 (interrupted) are retried; anything else is the answer.
async fn checkout_until_final(client: &TestClient, url: &str, key: &str, body: &str) -> Answer {
    for _ in 0..120 {
        match checkout_once(client, url, key, body).await {
            Ok(a) if a.status == 409 || a.status == 503 => {}
            Ok(a) => return a,
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no final answer for {key}");
}

/// One database per scenario: a fresh file, or a fresh schema, read through the example's
/// own `ShopDb`.
trait Db {
    type Journal: ShopDb;
    fn url(&self) -> String;
    /// A journal of its own on the scenario's database.
    fn journal(&self) -> Self::Journal;
    /// Deletes every finished operation, as the reaper does after the retention.
    async fn reap_all(&self) {
        use oncely_recovery::Journal;
        self.journal()
            .reap(oncely_core::Timestamp(i64::MAX), 1000)
            .await
            .unwrap();
    }
    async fn orders(&self) -> Vec<oncely_example_checkout::db::OrderView> {
        self.journal().orders().await.unwrap()
    }
    async fn outbox(&self) -> Vec<(String, String)> {
        self.journal().outbox().await.unwrap()
    }
}

struct SqliteDb {
    dir: tempfile::TempDir,
}

impl Db for SqliteDb {
    type Journal = SqliteJournal;
    fn url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("shop.db").display())
    }
    fn journal(&self) -> SqliteJournal {
        SqliteJournal::open(self.dir.path().join("shop.db"), Duration::from_secs(5)).unwrap()
    }
}

impl SqliteDb {
    fn new() -> Self {
        SqliteDb {
            dir: tempfile::tempdir().unwrap(),
        }
    }
}

struct PgDb {
    base: String,
    schema: String,
}

impl PgDb {
    fn new(base: &str) -> Self {
        PgDb {
            base: base.to_owned(),
            schema: unique_name("shop"),
        }
    }
}

impl Db for PgDb {
    type Journal = PgJournal;
    fn url(&self) -> String {
        format!("{}?schema={}", self.base, self.schema)
    }
    fn journal(&self) -> PgJournal {
        let pool = pool(&self.base, 2, Duration::from_secs(10)).unwrap();
        PgJournal::new(pool, &self.schema, Duration::from_secs(10)).unwrap()
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let keys = format!("{}_keys", self.schema);
        oncely_testkit::services::drop_postgres_schemas(&self.base, &[self.schema.clone(), keys]);
    }
}

/// The answer of a run that never crashed, on a fresh database and provider.
async fn baseline(db: &impl Db, body: &str) -> Answer {
    let p = provider().await;
    let svc = start_checkout(&db.url(), &p.url, &[], None).await;
    let answer = checkout_until_final(&TestClient::new(), &svc.url, "checkout-1", body).await;
    svc.stop().await;
    answer
}

async fn crash_at_every_boundary<D: Db>(new_db: impl Fn() -> D) {
    let client = TestClient::new();
    let expected = baseline(&new_db(), ORDER).await;
    assert_eq!(
        expected.status,
        201,
        "{:?}",
        String::from_utf8_lossy(&expected.body)
    );
    assert_eq!(expected.json()["charge_id"], "ch_1");
    let boundaries = oncely_example_checkout::boundaries();
    assert_eq!(boundaries.len(), 9, "{boundaries:?}");
    for boundary in &boundaries {
        let db = new_db();
        let p = provider().await;
        let mut crashing = start_checkout(&db.url(), &p.url, &[], Some(boundary)).await;
        let first = checkout_once(&client, &crashing.url, "checkout-1", ORDER).await;
        assert!(
            first.is_err(),
            "the process dies at {boundary} before answering: {first:?}"
        );
        let status = tokio::time::timeout(Duration::from_secs(10), crashing.child.wait())
            .await
            .expect("the crashed process is gone")
            .unwrap();
        assert_eq!(status.signal(), Some(libc::SIGKILL), "killed at {boundary}");

        let svc = start_checkout(&db.url(), &p.url, &[], None).await;
        let answer = checkout_until_final(&client, &svc.url, "checkout-1", ORDER).await;
        assert_eq!(
            answer.status, expected.status,
            "after a crash at {boundary}"
        );
        assert_eq!(
            answer.body, expected.body,
            "after a crash at {boundary}: the same bytes"
        );
        let again = checkout_once(&client, &svc.url, "checkout-1", ORDER)
            .await
            .unwrap();
        assert!(again.replayed());
        assert_eq!(again.body, expected.body);

        let orders = db.orders().await;
        assert_eq!(
            orders.len(),
            1,
            "one order after a crash at {boundary}: {orders:?}"
        );
        assert_eq!(orders[0].status, "paid");
        assert_eq!(orders[0].charge_id.as_deref(), Some("ch_1"));
        assert_eq!(
            db.outbox().await,
            [(orders[0].id.clone(), "ada@example.com".to_owned())],
            "one email"
        );
        assert_eq!(
            p.ledger.charges().len(),
            1,
            "one charge after a crash at {boundary}"
        );
        assert_eq!(
            p.ledger.executions(),
            1,
            "the provider executed once at {boundary}"
        );
        if boundary == "after-call:charge" {
            // The charge was made, then the process died before recording it: the retry
            // called again with the same derived key and the provider replayed.
            assert_eq!(
                p.ledger.received(),
                2,
                "the charge was asked twice at {boundary}"
            );
        }
        svc.stop().await;
    }
}

/// The client never comes back: the completer finishes the checkout by itself, and a late
/// retry gets the same answer.
async fn the_completer_finishes_an_abandoned_checkout<D: Db>(new_db: impl Fn() -> D) {
    let client = TestClient::new();
    let expected = baseline(&new_db(), ORDER).await;
    let db = new_db();
    let p = provider().await;
    let mut crashing = start_checkout(&db.url(), &p.url, &[], Some("after-call:charge")).await;
    let _ = checkout_once(&client, &crashing.url, "checkout-1", ORDER).await;
    crashing.child.wait().await.unwrap();
    let svc = start_checkout(
        &db.url(),
        &p.url,
        &["--complete-after", "1s", "--complete-every", "200ms"],
        None,
    )
    .await;
    let mut finished = false;
    for _ in 0..100 {
        let orders = db.orders().await;
        if orders.first().is_some_and(|o| o.status == "paid") && db.outbox().await.len() == 1 {
            finished = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        finished,
        "the completer paid the order and queued the email"
    );
    let late = checkout_until_final(&client, &svc.url, "checkout-1", ORDER).await;
    assert_eq!((late.status, &late.body), (expected.status, &expected.body));
    assert_eq!(p.ledger.charges().len(), 1);
    assert_eq!(db.orders().await.len(), 1);
    svc.stop().await;
}

/// The provider fails once (503): the checkout answers 503, keeps its order, and the retry
/// charges once. A declined card is a final answer, replayed as such, with no email.
async fn outage_and_decline<D: Db>(db: D) {
    let client = TestClient::new();
    let p = provider().await;
    let svc = start_checkout(&db.url(), &p.url, &[], None).await;
    p.ledger.fail_next(1);
    let first = checkout_once(&client, &svc.url, "k-outage", ORDER)
        .await
        .unwrap();
    assert_problem(&first, 503, "urn:oncely:example:checkout-interrupted");
    assert_eq!(db.orders().await.len(), 1, "the order stays, pending");
    assert_eq!(db.orders().await[0].status, "pending");
    let retry = checkout_until_final(&client, &svc.url, "k-outage", ORDER).await;
    assert_eq!(retry.status, 201);
    assert_eq!(p.ledger.charges().len(), 1);
    assert_eq!(db.outbox().await.len(), 1);

    let declined = checkout_until_final(&client, &svc.url, "k-declined", DECLINED).await;
    assert_eq!(declined.status, 402);
    let again = checkout_until_final(&client, &svc.url, "k-declined", DECLINED).await;
    assert!(again.replayed());
    assert_eq!(again.body, declined.body);
    let orders = db.orders().await;
    assert_eq!(orders.len(), 2);
    let bob = orders
        .iter()
        .find(|o| o.email == "bob@example.com")
        .unwrap();
    assert_eq!(bob.status, "declined");
    assert_eq!(bob.charge_id, None);
    assert_eq!(db.outbox().await.len(), 1, "no receipt for a declined card");

    // Bad input: a clear problem, nothing stored in the shop.
    let caviar = r#"{"email":"x@y","card":"c","items":[{"sku":"caviar","qty":1}]}"#;
    let bad = checkout_once(&client, &svc.url, "k-bad", caviar)
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    assert!(String::from_utf8_lossy(&bad.body).contains("unknown sku"));
    assert_eq!(db.orders().await.len(), 2);
    svc.stop().await;
}

/// The layer's records gone (a memory store, restarted) while the operation's remain: another
/// body under the key is refused with 409, which the layer does not store, so the original
/// request still gets its answer. With the operation reaped too, the old key gets a final 409
/// instead of a new order colliding with the old one.
async fn the_layer_forgetting_first_is_safe<D: Db>(db: D) {
    let client = TestClient::new();
    let p = provider().await;
    let memory = ["--keys", "memory://"];
    let svc = start_checkout(&db.url(), &p.url, &memory, None).await;
    let first = checkout_until_final(&client, &svc.url, "k-old", ORDER).await;
    assert_eq!(first.status, 201);
    svc.stop().await;

    let svc = start_checkout(&db.url(), &p.url, &memory, None).await;
    let other = checkout_once(&client, &svc.url, "k-old", DECLINED)
        .await
        .unwrap();
    assert_problem(&other, 409, "urn:oncely:example:checkout-input-mismatch");
    let original = checkout_until_final(&client, &svc.url, "k-old", ORDER).await;
    assert_eq!(
        (original.status, &original.body),
        (first.status, &first.body)
    );
    svc.stop().await;

    db.reap_all().await;
    let svc = start_checkout(&db.url(), &p.url, &memory, None).await;
    let reused = checkout_once(&client, &svc.url, "k-old", ORDER)
        .await
        .unwrap();
    assert_problem(
        &reused,
        409,
        "urn:oncely:example:key-reused-after-retention",
    );
    assert_eq!(db.orders().await.len(), 1);
    assert_eq!(p.ledger.charges().len(), 1);
    svc.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_layer_forgetting_first_is_safe() {
    the_layer_forgetting_first_is_safe(SqliteDb::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_layer_forgetting_first_is_safe() {
    if let Some(new_db) = postgres("postgres_the_layer_forgetting_first_is_safe") {
        the_layer_forgetting_first_is_safe(new_db()).await;
    }
}

fn postgres(test: &str) -> Option<impl Fn() -> PgDb> {
    let base = Service::Postgres.available(test)?;
    Some(move || PgDb::new(&base))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_crash_at_every_boundary() {
    crash_at_every_boundary(SqliteDb::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crash_at_every_boundary() {
    if let Some(new_db) = postgres("postgres_crash_at_every_boundary") {
        // The PostgreSQL operation has the phases the boundaries were read from.
        let p = Arc::new(
            oncely_example_checkout::shop::Provider::new(
                "http://127.0.0.1:9",
                Duration::from_secs(1),
            )
            .unwrap(),
        );
        assert_eq!(
            new_db().journal().checkout(p).boundaries(),
            oncely_example_checkout::boundaries()
        );
        crash_at_every_boundary(new_db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_the_completer_finishes_an_abandoned_checkout() {
    the_completer_finishes_an_abandoned_checkout(SqliteDb::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_the_completer_finishes_an_abandoned_checkout() {
    if let Some(new_db) = postgres("postgres_the_completer_finishes_an_abandoned_checkout") {
        the_completer_finishes_an_abandoned_checkout(new_db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outage_and_decline() {
    outage_and_decline(SqliteDb::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_and_decline() {
    if let Some(new_db) = postgres("postgres_outage_and_decline") {
        outage_and_decline(new_db()).await;
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
    ] {
        let out = std::process::Command::new(bin)
            .args(&args)
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
    assert_eq!(listed, oncely_example_checkout::boundaries());
}
