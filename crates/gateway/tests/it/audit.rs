//! The gateway's audit trail in process: one event per keyed answer, whatever the outcome,
//! also for an execution whose client hung up; nothing for unkeyed requests; counted on
//! `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use oncely_audit::log::verify_log;
use oncely_audit::sqlite::SqliteAuditLog;
use oncely_audit::{AuditLog, Filter};
use oncely_core::SystemClock;
use oncely_gateway::audit::{AuditConfig, AuditUrl, RedactionKey};
use oncely_gateway::{AdminConfig, Config, Gateway};
use oncely_open::StoreUrl;
use oncely_store::MemoryStore;
use oncely_testkit::{CountingUpstream, TestClient};

const KEY: &str = "redaction key of the gateway test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_keyed_answer_is_one_event() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let upstream = CountingUpstream::start().await;
    let mut config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(upstream.url().parse().unwrap()),
        StoreUrl::Memory,
    )
    .apply_toml("[defaults]\ntenant = \"header:x-tenant\"\n")
    .unwrap();
    config.admin = Some(AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: None,
        is_default: false,
    });
    config.audit = Some(AuditConfig {
        url: AuditUrl::parse(&format!("sqlite://{}", path.display())).unwrap(),
        chain: "gw-test".into(),
        key: Some(RedactionKey::parse(KEY).unwrap()),
        queue: 1000,
    });
    let clock = Arc::new(SystemClock);
    let gateway = Gateway::with_store(config, Arc::new(MemoryStore::new(clock.clone())), clock)
        .start()
        .await
        .unwrap();
    let orders = format!("http://{}/orders", gateway.addr());
    let client = TestClient::new();
    let json = ("content-type", "application/json");
    let tenant = ("x-tenant", "acme");

    let send = |key: &'static str, body: &'static str, extra: Vec<(&'static str, &'static str)>| {
        let (client, orders) = (client.clone(), orders.clone());
        async move {
            let mut headers = vec![json, tenant, ("idempotency-key", key)];
            headers.extend(extra);
            client
                .send("POST", &orders, &headers, body)
                .await
                .unwrap()
                .status
        }
    };
    assert_eq!(send("k-1", "{}", vec![]).await, 201);
    assert_eq!(send("k-1", "{}", vec![]).await, 201);
    assert_eq!(send("k-1", r#"{"x":1}"#, vec![]).await, 422);
    assert_eq!(send("k-2", "{}", vec![("x-test-status", "503")]).await, 503);
    // Unkeyed: no event.
    let plain = client.send("POST", &orders, &[json], "{}").await.unwrap();
    assert_eq!(plain.status, 201);
    // A client that hangs up while its request runs: the execution finishes without it,
    // and its event is still written.
    let slow = tokio::spawn(send("k-slow", "{}", vec![("x-test-delay-ms", "1000")]));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while upstream.executions("k-slow") == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow request arrives"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    slow.abort();
    // A duplicate while it runs is rejected (and recorded).
    assert_eq!(send("k-slow", "{}", vec![]).await, 409);

    // The anchor and the six answers (the slow one within its second) reach the table;
    // /metrics counts them.
    let admin = format!("http://{}/metrics", gateway.admin_addr().unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let page = loop {
        let page = client.send("GET", &admin, &[], "").await.unwrap().body;
        let page = String::from_utf8(page.to_vec()).unwrap();
        if page.contains("oncely_audit_events_total 7\n") {
            break page;
        }
        assert!(std::time::Instant::now() < deadline, "{page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        page.contains("oncely_audit_events_dropped_total 0\n"),
        "{page}"
    );
    assert!(
        page.contains("oncely_audit_append_failures_total 0\n"),
        "{page}"
    );
    assert_eq!(upstream.executions("k-slow"), 1);
    gateway.shutdown().await;

    let log = SqliteAuditLog::open(&path, Duration::from_secs(5)).unwrap();
    let mut events = log.find(&Filter::default(), 100).await.unwrap();
    events.reverse();
    let seen: Vec<(String, String, Option<String>)> = events
        .iter()
        .map(|e| (e.action.clone(), e.resource_id.clone(), e.new_value.clone()))
        .collect();
    let want = |a: &str, r: &str, s: &str| (a.to_owned(), r.to_owned(), Some(s.to_owned()));
    let mut expected = vec![
        want("executed", "POST /orders k-1", "201"),
        want("replayed", "POST /orders k-1", "201"),
        want("mismatch", "POST /orders k-1", "422"),
        want("released", "POST /orders k-2", "503"),
        want("in_flight_rejected", "POST /orders k-slow", "409"),
        want("executed", "POST /orders k-slow", "201"),
    ];
    assert_eq!(seen[0].0, "audit.chain_opened");
    let mut rest = seen[1..].to_vec();
    rest.sort();
    expected.sort();
    assert_eq!(rest, expected);
    assert!(events[1..].iter().all(|e| e.actor
        == Some(oncely_audit::Personal::Value("hdr:acme".into()))
        && e.actor_type == "tenant"
        && e.correlation_id.is_some()));
    let summary = verify_log(&log, Some(KEY.as_bytes()), |_| {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(summary.events, 7);
}
