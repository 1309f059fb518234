//! Many `oncely serve` processes on one shared store (PostgreSQL, Redis) in front of one
//! counting upstream: one execution among concurrent duplicates spread over all of them, and
//! a gateway killed mid-request whose key another gateway takes over after the lease.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{postgres, redis, SharedStore};

use oncely_testkit::{CountingUpstream, TestClient};

struct Gateway {
    child: Child,
    url: String,
}

impl Gateway {
    fn start(upstream: &str, store: &str, config: &std::path::Path) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_oncely"))
            .args(["--log-level", "warn", "serve", "--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--upstream", upstream, "--store", store])
            .arg("--config")
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn oncely serve");
        let url = crate::common::listening_url(&mut child);
        Gateway { child, url }
    }

    fn orders(&self) -> String {
        format!("{}/orders", self.url)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn three_gateways(
    upstream: &CountingUpstream,
    store: &SharedStore,
    config: &str,
) -> (tempfile::TempDir, Vec<Gateway>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("oncely.toml");
    std::fs::write(&path, config).unwrap();
    let gateways = (0..3)
        .map(|_| Gateway::start(&upstream.url(), &store.url, &path))
        .collect();
    (dir, gateways)
}

/// 200 concurrent requests with one key, spread over three gateways: exactly one execution,
/// every success carries the same body, and afterwards every gateway replays it.
async fn one_execution_across_gateways(store: SharedStore) {
    let upstream = CountingUpstream::start().await;
    let (_dir, gateways) = three_gateways(&upstream, &store, "[defaults]\nlease = \"5s\"\n");
    let client = TestClient::new();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let url = gateways[i % 3].orders();
        tasks.push(client.spawn_post(
            &url,
            "same",
            r#"{"amount":1000}"#,
            &[("x-test-delay-ms", "400")],
        ));
    }
    let (mut ok, mut in_progress, mut bodies) = (0, 0, std::collections::HashSet::new());
    for t in tasks {
        let a = tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .expect("every duplicate is answered")
            .unwrap()
            .expect("answer");
        match a.status {
            201 => {
                ok += 1;
                bodies.insert(a.body.clone());
            }
            409 => {
                assert!(a
                    .problem_type()
                    .is_some_and(|t| t.ends_with("request-in-progress")));
                in_progress += 1;
            }
            other => panic!("unexpected status {other}: {:?}", a.body),
        }
    }
    assert_eq!(upstream.executions("same"), 1, "exactly one execution");
    assert_eq!(upstream.max_overlap("same"), 1);
    assert!(ok >= 1 && ok + in_progress == 200);
    assert_eq!(bodies.len(), 1, "every success is the same response");
    let first = bodies.into_iter().next().unwrap();
    for gw in &gateways {
        let again = client
            .post_keyed(&gw.orders(), "same", r#"{ "amount": 1000 }"#, &[])
            .await
            .unwrap();
        assert!(again.replayed(), "{} replays", gw.url);
        assert_eq!(again.body, first, "byte-identical on {}", gw.url);
    }
    assert_eq!(upstream.executions("same"), 1);
}

/// A gateway dies (SIGKILL) mid-request: the others see the key held, take it over once the
/// lease has run out, and completed keys never execute twice.
async fn a_killed_gateways_key_is_taken_over_after_its_lease(store: SharedStore) {
    let upstream = CountingUpstream::start().await;
    let lease = Duration::from_secs(2);
    let (_dir, mut gateways) = three_gateways(&upstream, &store, "[defaults]\nlease = \"2s\"\n");
    let client = TestClient::new();

    let done = client
        .post_keyed(&gateways[0].orders(), "done", r#"{"a":1}"#, &[])
        .await
        .unwrap();
    assert_eq!(done.status, 201);

    let interrupted = client.spawn_post(
        &gateways[0].orders(),
        "cut",
        r#"{"a":2}"#,
        &[("x-test-delay-ms", "3000")],
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut victim = gateways.remove(0);
    victim.child.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    victim.child.wait().unwrap();
    assert!(interrupted.await.unwrap().is_err(), "the client saw it die");

    let held = client
        .post_keyed(&gateways[0].orders(), "cut", r#"{"a":2}"#, &[])
        .await
        .unwrap();
    assert_eq!(held.status, 409, "held while the dead holder's lease runs");

    // Free after the lease (renewed at most until the kill), on any gateway.
    tokio::time::sleep_until((killed_at + lease + Duration::from_millis(300)).into()).await;
    let retried = client
        .post_keyed(&gateways[1].orders(), "cut", r#"{"a":2}"#, &[])
        .await
        .unwrap();
    assert_eq!(retried.status, 201, "taken over: {:?}", retried.body);
    assert_eq!(upstream.executions("cut"), 2, "forwarded again, same key");

    for gw in &gateways {
        let r = client
            .post_keyed(&gw.orders(), "done", r#"{"a":1}"#, &[])
            .await
            .unwrap();
        assert!(r.replayed());
        assert_eq!(r.body, done.body);
        let r = client
            .post_keyed(&gw.orders(), "cut", r#"{"a":2}"#, &[])
            .await
            .unwrap();
        assert!(r.replayed());
        assert_eq!(r.body, retried.body);
    }
    assert_eq!(
        upstream.executions("done"),
        1,
        "completed keys never run twice"
    );
    assert_eq!(upstream.executions("cut"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_one_execution_across_three_gateways() {
    if let Some(store) = postgres("postgres_one_execution_across_three_gateways") {
        one_execution_across_gateways(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_gateway_is_taken_over() {
    if let Some(store) = postgres("postgres_killed_gateway_is_taken_over") {
        a_killed_gateways_key_is_taken_over_after_its_lease(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_one_execution_across_three_gateways() {
    if let Some(store) = redis("redis_one_execution_across_three_gateways") {
        one_execution_across_gateways(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_gateway_is_taken_over() {
    if let Some(store) = redis("redis_killed_gateway_is_taken_over") {
        a_killed_gateways_key_is_taken_over_after_its_lease(store).await;
    }
}

/// `oncely migrate` creates the schema once, then finds it up to date; a gateway then starts on it.
#[test]
fn migrate_creates_the_schema_then_finds_it_up_to_date() {
    let Some(store) = postgres("migrate_creates_the_schema_then_finds_it_up_to_date") else {
        return;
    };
    let migrate = || {
        let out = Command::new(env!("CARGO_BIN_EXE_oncely"))
            .args(["migrate", "--store", &store.url])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let first = migrate();
    assert!(
        first.contains("idempotency records: applied migration 1"),
        "{first}"
    );
    assert!(first.contains("from version 0 to 1"), "{first}");
    let second = migrate();
    assert!(
        second.contains("idempotency records: version 1, up to date"),
        "{second}"
    );
    assert!(!second.contains("applied"), "{second}");

    let out = Command::new(env!("CARGO_BIN_EXE_oncely"))
        .args(["migrate", "--store", "memory://"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
}

/// `oncely migrate` reports each concern's version, for a SQLite store and an audit trail
/// in one run; without a target it says what to pass, on one line.
#[test]
fn migrate_reports_each_concerns_version() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("records.db").display());
    let audit = format!("sqlite://{}", dir.path().join("audit.db").display());
    let migrate = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_oncely"))
            .arg("migrate")
            .args(args)
            .env_remove("ONCELY_STORE")
            .env_remove("ONCELY_AUDIT_URL")
            .output()
            .unwrap()
    };
    let first = migrate(&["--store", &store, "--audit", &audit]);
    assert!(first.status.success(), "{first:?}");
    let first = String::from_utf8_lossy(&first.stdout).into_owned();
    assert!(
        first.contains("idempotency records: migrated from version 0 to 1"),
        "{first}"
    );
    assert!(
        first.contains("audit trail: migrated from version 0 to 1"),
        "{first}"
    );
    let second = migrate(&["--store", &store, "--audit", &audit]);
    let second = String::from_utf8_lossy(&second.stdout).into_owned();
    assert!(
        second.contains("idempotency records: version 1, up to date"),
        "{second}"
    );
    assert!(
        second.contains("audit trail: version 1, up to date"),
        "{second}"
    );

    let none = migrate(&[]);
    assert!(!none.status.success());
    let err = String::from_utf8_lossy(&none.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--store"), "{err}");
}
