//! A shop of the test's own, and a client that speaks to it as one of its users.

use std::time::Duration;

use oncely_shop::{Config, DbUrl, Running};
use oncely_testkit::{Answer, TestClient};

pub(crate) struct TestShop {
    pub(crate) running: Running,
    pub(crate) url: String,
    client: TestClient,
    _dir: tempfile::TempDir,
}

/// How long a test waits for something that happens in the background (a relay pass, a
/// webhook): generous, for a loaded machine.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

impl TestShop {
    pub(crate) async fn start() -> TestShop {
        TestShop::start_with(|_| {}).await
    }

    /// A shop whose reconciliation runs only on demand and takes records at once.
    pub(crate) async fn start_with(tune: impl FnOnce(&mut Config)) -> TestShop {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            db: Some(DbUrl::Sqlite(dir.path().join("shop.db"))),
            reconcile_every: None,
            reconcile_settle: Duration::ZERO,
            ..Config::default()
        };
        tune(&mut config);
        let running = oncely_shop::start(config).await.unwrap();
        let url = running.url();
        TestShop {
            running,
            url,
            client: TestClient::new(),
            _dir: dir,
        }
    }

    /// Sends a request as `user` (none if empty) with `headers` and `body`.
    pub(crate) async fn send(
        &self,
        method: &str,
        path: &str,
        user: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        let mut all: Vec<(&str, &str)> = vec![("content-type", "application/json")];
        if !user.is_empty() {
            all.push(("x-shop-user", user));
        }
        all.extend_from_slice(headers);
        self.client
            .send(
                method,
                &format!("{}{path}", self.url),
                &all,
                body.to_owned(),
            )
            .await
            .unwrap()
    }

    pub(crate) async fn get(&self, user: &str, path: &str) -> Answer {
        self.send("GET", path, user, &[], "").await
    }

    pub(crate) async fn put(
        &self,
        user: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> Answer {
        self.send("PUT", path, user, headers, body).await
    }

    /// `POST /api/checkout` as `user` under `key`.
    pub(crate) async fn checkout(&self, user: &str, key: &str, body: &str) -> Answer {
        self.send(
            "POST",
            "/api/checkout",
            user,
            &[("idempotency-key", key)],
            body,
        )
        .await
    }

    pub(crate) async fn chaos(&self, switches: serde_json::Value) {
        let a = self
            .put("ada", "/api/chaos", &[], &switches.to_string())
            .await;
        assert_eq!(a.status, 200, "{:?}", a.json());
    }

    /// Waits until `check` holds for the answer of `GET path` as `user`.
    pub(crate) async fn eventually(
        &self,
        user: &str,
        path: &str,
        what: &str,
        check: impl Fn(&Answer) -> bool,
    ) -> Answer {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let a = self.get(user, path).await;
            if check(&a) {
                return a;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: GET {path} still answers {} {:?}",
                a.status,
                a.json()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl TestShop {
    /// Waits until the outbox has nothing pending and the order history has applied every
    /// event committed: whatever the consumers will ever do about the events so far is done.
    pub(crate) async fn drained(&self) {
        self.eventually("ada", "/api/admin/outbox", "the outbox drained", |a| {
            let page = a.json();
            page["pending"] == 0 && page["read_model_position"] == page["outbox_position"]
        })
        .await;
    }

    /// `POST /api/orders/{order}/cancel` as `user` under `key`.
    pub(crate) async fn cancel(&self, user: &str, order: &str, key: &str) -> Answer {
        self.send(
            "POST",
            &format!("/api/orders/{order}/cancel"),
            user,
            &[("idempotency-key", key)],
            "",
        )
        .await
    }
}

/// How many of `events` (an array answer) have `field` equal to `value`.
pub(crate) fn count_where(events: &serde_json::Value, field: &str, value: &str) -> usize {
    events
        .as_array()
        .map_or(0, |all| all.iter().filter(|e| e[field] == value).count())
}

/// A checkout body of `qty` tea paid with `card`.
pub(crate) fn tea(qty: u32, card: &str) -> String {
    serde_json::json!({ "card": card, "items": [{ "product": "tea", "qty": qty }] }).to_string()
}

/// Asserts an answer is a problem document of `status` and type `ty`.
pub(crate) fn assert_problem(a: &Answer, status: u16, ty: &str) {
    assert_eq!(a.status, status, "{:?}", a.json());
    assert_eq!(
        a.header("content-type"),
        Some("application/problem+json"),
        "{status}: {:?}",
        a.json()
    );
    assert_eq!(a.problem_type().as_deref(), Some(ty), "{:?}", a.json());
}

/// A unique key for this test run.
pub(crate) fn key(name: &str) -> String {
    format!("{name}-{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::SeqCst) ^ std::process::id()
}
