//! The admin listener: `/metrics` after a scripted scenario shows exactly what happened, and
//! nothing is served without the token.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{parse_idempotency_key, Fingerprint, RecordKey, SystemClock, Tenant};
use oncely_gateway::{AdminConfig, Config, Gateway, RunningGateway};
use oncely_open::StoreUrl;
use oncely_store::{IdempotencyStore, MemoryStore, StoreAdmin};
use oncely_testkit::{CountingUpstream, TestClient};

const TOKEN: &str = "test-admin-token-0123456789";
const JSON: (&str, &str) = ("content-type", "application/json");

async fn start(store: Arc<dyn StoreAdmin>) -> (RunningGateway, CountingUpstream) {
    let upstream = CountingUpstream::start().await;
    let config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(upstream.url().parse().unwrap()),
        StoreUrl::Memory,
    )
    .apply_toml(
        r#"
        [defaults]
        lease = "200ms"
        tenant = "anonymous"
        [[routes]]
        path = "/strict"
        key = "required"
        "#,
    )
    .unwrap();
    let mut config = config;
    config.admin = Some(AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(TOKEN.into()),
        is_default: false,
    });
    config.validate().unwrap();
    let gateway = Gateway::with_store(config, store, Arc::new(SystemClock))
        .start()
        .await
        .unwrap();
    (gateway, upstream)
}

async fn metrics(client: &TestClient, gateway: &RunningGateway) -> String {
    let url = format!("http://{}/metrics", gateway.admin_addr().unwrap());
    let auth = format!("Bearer {TOKEN}");
    let a = client
        .send("GET", &url, &[("authorization", &auth)], "")
        .await
        .unwrap();
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    String::from_utf8(a.body.to_vec()).unwrap()
}

async fn send_post(
    client: &TestClient,
    url: String,
    key: Option<&str>,
    body: &str,
    extra: Vec<(&str, &str)>,
) -> oncely_testkit::Answer {
    let mut headers = vec![JSON];
    if let Some(k) = key {
        headers.push(("idempotency-key", k));
    }
    headers.extend(extra);
    client
        .send("POST", &url, &headers, body.to_owned())
        .await
        .unwrap()
}

/// Leaves in `store` the claim of a holder that died: its lease (50 ms) has run out when this
/// returns, so the next request with the key takes it over.
async fn leave_a_dead_holder(store: &Arc<dyn StoreAdmin>, key: &str) {
    let dead = RecordKey::new(
        Tenant::anonymous(),
        "POST",
        "/orders",
        parse_idempotency_key(key.as_bytes()).unwrap(),
    );
    let fp = Fingerprint::compute("POST", "/orders", Some("application/json"), b"{}");
    store
        .claim(
            &dead,
            fp,
            Duration::from_millis(50),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// The value of one series, by its exact name and labels as rendered.
fn value(page: &str, series: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no series {series} in\n{page}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_scenario_exactly() {
    let store: Arc<dyn StoreAdmin> = Arc::new(MemoryStore::new(Arc::new(SystemClock)));
    let (gateway, _upstream) = start(store.clone()).await;
    let client = TestClient::new();
    let base = format!("http://{}", gateway.addr());
    let post = |path: &'static str,
                key: Option<&'static str>,
                body: &'static str,
                extra: Vec<(&'static str, &'static str)>| {
        send_post(&client, format!("{base}{path}"), key, body, extra)
    };
    assert_eq!(
        post("/orders", Some("k1"), r#"{"a":1}"#, vec![])
            .await
            .status,
        201
    );
    for _ in 0..2 {
        assert!(post("/orders", Some("k1"), r#"{"a":1}"#, vec![])
            .await
            .replayed());
    }
    assert_eq!(
        post("/orders", Some("k1"), r#"{"a":2}"#, vec![])
            .await
            .status,
        422
    );
    assert_eq!(post("/strict", None, "{}", vec![]).await.status, 400);
    assert_eq!(
        post("/orders", Some("bad key"), "{}", vec![]).await.status,
        400
    );
    assert_eq!(
        post(
            "/orders",
            Some("k5xx"),
            "{}",
            vec![("x-test-status", "500")]
        )
        .await
        .status,
        500
    );
    assert_eq!(
        post("/orders", None, "{}", vec![]).await.status,
        201,
        "unkeyed: passed"
    );
    let get = client
        .send("GET", &format!("{base}/orders"), &[], "")
        .await
        .unwrap();
    assert_eq!(
        get.status, 201,
        "the counting upstream answers 201 to anything"
    );

    // A holder that died: its claim is in the store, its lease runs out, a retry takes over.
    leave_a_dead_holder(&store, "k-dead").await;
    assert_eq!(
        post("/orders", Some("k-dead"), "{}", vec![]).await.status,
        201
    );

    let page = metrics(&client, &gateway).await;
    let requests = |o: &str| value(&page, &format!("oncely_requests_total{{outcome=\"{o}\"}}"));
    assert_eq!(requests("executed"), 2.0, "k1 and the taken-over k-dead");
    assert_eq!(requests("replayed"), 2.0);
    assert_eq!(requests("mismatch"), 1.0);
    assert_eq!(requests("missing_key"), 1.0);
    assert_eq!(requests("invalid_key"), 1.0);
    assert_eq!(requests("released"), 1.0, "the 500 released its key");
    assert_eq!(
        requests("passed_through"),
        2.0,
        "the unkeyed POST and the GET"
    );
    for never in [
        "in_flight_rejected",
        "store_unavailable",
        "waited",
        "body_too_large",
        "body_unreadable",
        "unknown_outcome",
        "upstream_unreachable",
    ] {
        assert_eq!(requests(never), 0.0, "{never}");
    }
    let total: f64 = page
        .lines()
        .filter(|l| l.starts_with("oncely_requests_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total, 10.0, "the ten requests sent, each counted once");
    assert_eq!(value(&page, "oncely_lease_takeovers_total"), 1.0);
    assert_eq!(value(&page, "oncely_stale_completions_refused_total"), 0.0);
    // Forwarded: k1, the 500, the unkeyed POST, the GET, k-dead.
    assert_eq!(value(&page, "oncely_upstream_duration_seconds_count"), 5.0);
    // Claims: k1, k5xx, k-dead (replays and the mismatch came from the replay cache).
    assert_eq!(
        value(
            &page,
            "oncely_store_operation_duration_seconds_count{op=\"claim\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &page,
            "oncely_store_operation_duration_seconds_count{op=\"complete\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &page,
            "oncely_store_errors_total{op=\"claim\",kind=\"unavailable\"}"
        ),
        0.0
    );
    assert_eq!(value(&page, "oncely_executions_in_flight"), 0.0);

    assert_eq!(value(&page, "oncely_records_purged_total"), 0.0);
    gateway.shutdown().await;
}

/// The periodic purge reports what it deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purged_records_are_counted() {
    let upstream = CountingUpstream::start().await;
    let mut config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(upstream.url().parse().unwrap()),
        StoreUrl::Memory,
    )
    .apply_toml(
        "[server]\npurge_interval = \"100ms\"\n[defaults]\nttl = \"200ms\"\nlease = \"100ms\"\n",
    )
    .unwrap();
    config.admin = Some(AdminConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        token: Some(TOKEN.into()),
        is_default: false,
    });
    let gateway = Gateway::with_store(
        config,
        Arc::new(MemoryStore::new(Arc::new(SystemClock))),
        Arc::new(SystemClock),
    )
    .start()
    .await
    .unwrap();
    let client = TestClient::new();
    let a = send_post(
        &client,
        format!("http://{}/orders", gateway.addr()),
        Some("short-lived"),
        "{}",
        vec![],
    )
    .await;
    assert_eq!(a.status, 201);
    let mut purged = 0.0;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        purged = value(
            &metrics(&client, &gateway).await,
            "oncely_records_purged_total",
        );
        if purged > 0.0 {
            break;
        }
    }
    assert_eq!(purged, 1.0);
    gateway.shutdown().await;
}

#[tokio::test]
async fn the_admin_listener_refuses_without_the_token() {
    let (gateway, _upstream) = start(Arc::new(MemoryStore::new(Arc::new(SystemClock)))).await;
    let client = TestClient::new();
    let admin = gateway.admin_addr().unwrap();
    for (method, path) in [
        ("GET", "/metrics"),
        ("GET", "/healthz"),
        ("HEAD", "/healthz"),
        ("GET", "/nowhere"),
        ("GET", "/stats"),
        ("GET", "/keys"),
        ("GET", "/takeovers"),
        ("DELETE", "/keys/one?tenant=anon&route=/orders&key=k"),
        ("POST", "/keys/one?tenant=anon&route=/orders&key=k"),
    ] {
        let url = format!("http://{admin}{path}");
        for auth in [
            None,
            Some("Bearer wrong-token-of-the-same-len".to_owned()),
            Some(format!("Bearer {TOKEN}x")),
            Some(TOKEN.to_owned()),
            Some(format!("Basic {TOKEN}")),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("authorization", a.as_str())).collect();
            let a = client.send(method, &url, &headers, "").await.unwrap();
            assert_eq!(a.status, 401, "{method} {path} with {auth:?}");
            assert_eq!(a.header("www-authenticate"), Some("Bearer"));
            assert_eq!(a.header("content-type"), Some("application/problem+json"));
            assert!(!String::from_utf8_lossy(&a.body).contains("oncely_requests_total"));
        }
    }
    let ok = admin_get(&client, &gateway, "GET", "/healthz").await;
    assert_eq!((ok.status, &ok.body[..]), (200, &b"ok\n"[..]));
    let any_case = client
        .send(
            "GET",
            &format!("http://{admin}/healthz"),
            &[("authorization", &format!("bearer {TOKEN}"))],
            "",
        )
        .await
        .unwrap();
    assert_eq!(any_case.status, 200, "the scheme is case-insensitive");
    let missing = admin_get(&client, &gateway, "GET", "/nowhere").await;
    assert_eq!(missing.status, 404);
    // The proxied listener does not serve the admin paths.
    let proxied = client
        .send(
            "GET",
            &format!("http://{}/metrics", gateway.addr()),
            &[],
            "",
        )
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&proxied.body).contains("oncely_requests_total"));
    gateway.shutdown().await;
}

#[test]
fn an_admin_listener_open_to_other_hosts_needs_a_token() {
    let mut config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some("http://127.0.0.1:9".parse().unwrap()),
        StoreUrl::Memory,
    );
    config.admin = Some(AdminConfig {
        listen: "0.0.0.0:9091".parse().unwrap(),
        token: None,
        is_default: false,
    });
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("needs a token"), "{err}");
    config.admin = Some(AdminConfig {
        listen: "0.0.0.0:9091".parse().unwrap(),
        token: Some("short".into()),
        is_default: false,
    });
    assert!(config.validate().unwrap_err().to_string().contains("16"));
    config.admin = Some(AdminConfig {
        listen: "[::1]:9091".parse().unwrap(),
        token: None,
        is_default: false,
    });
    assert!(config.validate().is_ok(), "loopback needs no token");
    let from_file = Config::new("127.0.0.1:0".parse().unwrap(), None, StoreUrl::Memory)
        .apply_toml("[admin]\nlisten = \"off\"\n")
        .unwrap();
    assert!(from_file.admin.is_none());
    let open_file = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some("http://127.0.0.1:9".parse().unwrap()),
        StoreUrl::Memory,
    )
    .apply_toml("[admin]\nlisten = \"0.0.0.0:9091\"\n")
    .unwrap();
    assert!(open_file
        .validate()
        .unwrap_err()
        .to_string()
        .contains("needs a token"));
    let with_token = AdminConfig {
        listen: "127.0.0.1:9091".parse().unwrap(),
        token: Some(TOKEN.into()),
        is_default: false,
    };
    assert!(
        !format!("{with_token:?}").contains(TOKEN),
        "the token never reaches a log"
    );
}

async fn admin_get(
    client: &TestClient,
    gateway: &RunningGateway,
    method: &str,
    path: &str,
) -> oncely_testkit::Answer {
    let url = format!("http://{}{path}", gateway.admin_addr().unwrap());
    let auth = format!("Bearer {TOKEN}");
    client
        .send(method, &url, &[("authorization", &auth)], "")
        .await
        .unwrap()
}

/// Inspect, list and evict keys, and see takeovers, through the admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_can_be_inspected_listed_and_evicted() {
    let store: Arc<dyn StoreAdmin> = Arc::new(MemoryStore::new(Arc::new(SystemClock)));
    let (gateway, upstream) = start(store.clone()).await;
    let client = TestClient::new();
    let base = format!("http://{}", gateway.addr());
    let done = send_post(
        &client,
        format!("{base}/orders"),
        Some("done-1"),
        r#"{"a":1}"#,
        vec![],
    )
    .await;
    assert_eq!(done.status, 201);

    // A holder that died mid-request: held until its lease ends.
    let held = RecordKey::new(
        Tenant::anonymous(),
        "POST",
        "/orders",
        parse_idempotency_key(b"held/1&x").unwrap(),
    );
    let fp = Fingerprint::compute("POST", "/orders", Some("application/json"), b"{}");
    store
        .claim(&held, fp, Duration::from_secs(60), Duration::from_secs(600))
        .await
        .unwrap();

    let list = admin_get(&client, &gateway, "GET", "/keys").await;
    assert_eq!(list.status, 200);
    let list = list.json();
    let entries = list["in_progress"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{list}");
    assert_eq!(entries[0]["key"], "held/1&x");
    assert_eq!(entries[0]["tenant"], "anon");
    assert_eq!(entries[0]["state"], "in_progress");
    assert!(entries[0]["lease_expires_at_ms"].as_i64().unwrap() > 0);

    let one = admin_get(
        &client,
        &gateway,
        "GET",
        "/keys/one?tenant=anon&route=/orders&key=done-1",
    )
    .await;
    assert_eq!(one.status, 200, "{:?}", String::from_utf8_lossy(&one.body));
    let one = one.json();
    assert_eq!(one["state"], "completed");
    assert_eq!(one["status"], 201);
    assert_eq!(
        one["body_bytes"].as_u64().unwrap() as usize,
        done.body.len()
    );
    assert_eq!(one["fingerprint"].as_str().unwrap().len(), 64);

    let stats = admin_get(&client, &gateway, "GET", "/stats").await.json();
    assert_eq!(
        (stats["in_progress"].as_u64(), stats["completed"].as_u64()),
        (Some(1), Some(1))
    );

    // The held key answers 409 until evicted; then a retry executes.
    let blocked = send_post(
        &client,
        format!("{base}/orders"),
        Some("held/1&x"),
        "{}",
        vec![],
    )
    .await;
    assert_eq!(blocked.status, 409);
    let evicted = admin_get(
        &client,
        &gateway,
        "DELETE",
        "/keys/one?tenant=anon&route=%2Forders&key=held%2F1%26x",
    )
    .await;
    assert_eq!(
        evicted.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&evicted.body)
    );
    assert_eq!(evicted.json()["evicted"], true);
    let again = admin_get(
        &client,
        &gateway,
        "DELETE",
        "/keys/one?tenant=anon&route=/orders&key=held%2F1%26x",
    )
    .await;
    assert_eq!(again.status, 404);
    assert_eq!(again.json()["type"], "urn:oncely:problem:key-not-found");
    let retried = send_post(
        &client,
        format!("{base}/orders"),
        Some("held/1&x"),
        "{}",
        vec![],
    )
    .await;
    assert_eq!(retried.status, 201);
    assert_eq!(upstream.executions("held/1&x"), 1);

    // A completed key is replayed from this gateway's cache; evicted, it leaves the cache
    // too, so its next request executes again instead of replaying from memory.
    let replay = || {
        send_post(
            &client,
            format!("{base}/orders"),
            Some("done-1"),
            r#"{"a":1}"#,
            vec![],
        )
    };
    assert!(replay().await.replayed());
    assert_eq!(upstream.executions("done-1"), 1);
    let evicted = admin_get(
        &client,
        &gateway,
        "DELETE",
        "/keys/one?tenant=anon&route=/orders&key=done-1",
    )
    .await;
    assert_eq!(evicted.status, 200);
    let executed = replay().await;
    assert_eq!(executed.status, 201);
    assert!(!executed.replayed());
    assert_eq!(upstream.executions("done-1"), 2);

    // Bad queries get a problem, not a panic.
    for bad in [
        "/keys/one?route=/orders&key=k",
        "/keys/one?tenant=anon&route=/orders&key=a%20b",
        "/keys?limit=0",
    ] {
        let a = admin_get(&client, &gateway, "GET", bad).await;
        assert_eq!(a.status, 400, "{bad}");
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
    }
    let wrong_method = admin_get(
        &client,
        &gateway,
        "POST",
        "/keys/one?tenant=anon&route=/orders&key=k",
    )
    .await;
    assert_eq!(wrong_method.status, 405);

    // A takeover is listed with its key.
    assert!(admin_get(&client, &gateway, "GET", "/takeovers")
        .await
        .json()["takeovers"]
        .as_array()
        .unwrap()
        .is_empty());
    leave_a_dead_holder(&store, "k-dead").await;
    assert_eq!(
        send_post(
            &client,
            format!("{base}/orders"),
            Some("k-dead"),
            "{}",
            vec![]
        )
        .await
        .status,
        201
    );
    let t = admin_get(&client, &gateway, "GET", "/takeovers")
        .await
        .json();
    assert_eq!(t["takeovers"][0]["key"], "k-dead", "{t}");
    assert!(t["takeovers"][0]["at_ms"].as_i64().unwrap() > 0);
    gateway.shutdown().await;
}
