//! The contract of docs/contract.md, over real loopback HTTP and a real SQLite file, against
//! an upstream that counts executions per key.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::SystemClock;
use oncely_gateway::{Config, Gateway, RunningGateway};
use oncely_open::StoreUrl;
use oncely_testkit::{Answer, CountingUpstream, TestClient};

const JSON: (&str, &str) = ("content-type", "application/json");

struct Setup {
    gateway: RunningGateway,
    upstream: CountingUpstream,
    client: TestClient,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway.addr(), path)
    }

    /// Starts a keyed POST in the background and returns once the gateway has claimed its
    /// key, so that it is the holder whatever comes next: the gateway's worker threads serve
    /// connections in parallel, and a duplicate sent right after could otherwise be claimed
    /// first.
    async fn spawn_post(
        &self,
        key: &str,
        body: &str,
        extra: &[(&str, &str)],
    ) -> tokio::task::JoinHandle<Answer> {
        let claims = || self.gateway.store_metrics().count("claim");
        let before = claims();
        let pending = self
            .client
            .spawn_post(&self.url("/orders"), key, body, extra);
        let holder = tokio::spawn(async move { pending.await.expect("task").expect("transport") });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while claims() == before {
            assert!(
                std::time::Instant::now() < deadline,
                "{key} was never claimed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        holder
    }

    /// Asserts that duplicates keep getting 409 while the first request (already started) is
    /// still working: its lease is renewed, so it is never taken over.
    async fn assert_held_meanwhile(&self, key: &str, why: &str) {
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(350)).await;
            assert_eq!(self.post(key, "{}", &[]).await.status, 409, "{why}");
        }
    }

    async fn post(&self, key: &str, body: &str, extra: &[(&str, &str)]) -> Answer {
        let mut headers = vec![JSON, ("idempotency-key", key)];
        headers.extend_from_slice(extra);
        self.client
            .send("POST", &self.url("/orders"), &headers, body.to_owned())
            .await
            .expect("transport")
    }
}

/// Defaults in front of `upstream`, on a free port, before any store is chosen.
fn config_for(upstream: &CountingUpstream) -> Config {
    Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(upstream.url().parse().unwrap()),
        StoreUrl::Memory,
    )
}

async fn setup(toml: &str) -> Setup {
    let upstream = CountingUpstream::start().await;
    setup_with(toml, upstream).await
}

async fn setup_with(toml: &str, upstream: CountingUpstream) -> Setup {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = StoreUrl::sqlite(dir.path().join("oncely.db"));
    let config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(upstream.url().parse().unwrap()),
        store,
    )
    .apply_toml(toml)
    .expect("test config");
    config.validate().expect("valid config");
    let gateway = Gateway::open(config)
        .await
        .expect("open")
        .start()
        .await
        .expect("start");
    Setup {
        gateway,
        upstream,
        client: TestClient::new(),
        _dir: dir,
    }
}

#[tokio::test]
async fn same_key_five_times_executes_once_and_replays_identically() {
    let s = setup("").await;
    let first = s.post("k-5", r#"{"item":"book"}"#, &[]).await;
    assert_eq!(first.status, 201);
    assert!(!first.replayed());
    assert!(
        first.header("set-cookie").is_some(),
        "the first answer is the upstream's own"
    );
    for _ in 0..4 {
        let again = s.post("k-5", r#"{"item":"book"}"#, &[]).await;
        assert_eq!(again.status, 201);
        assert_eq!(again.body, first.body, "byte-identical body");
        assert!(again.replayed(), "replays are marked");
        assert_eq!(
            again.header("location"),
            first.header("location"),
            "stored headers are replayed"
        );
        assert_eq!(again.header("content-type"), first.header("content-type"));
        assert_eq!(
            again.header("set-cookie"),
            None,
            "cookies are never replayed"
        );
    }
    assert_eq!(s.upstream.executions("k-5"), 1);
}

async fn hundred_concurrent(s: &Setup, key: &str) -> Vec<Answer> {
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (client, url, key) = (s.client.clone(), s.url("/orders"), key.to_owned());
        tasks.push(tokio::spawn(async move {
            client
                .send(
                    "POST",
                    &url,
                    &[JSON, ("idempotency-key", &key), ("x-test-delay-ms", "300")],
                    r#"{"n":1}"#,
                )
                .await
                .expect("transport")
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn hundred_concurrent_duplicates_reject_mode() {
    let s = setup("").await;
    let answers = hundred_concurrent(&s, "race-reject").await;
    let created: Vec<&Answer> = answers.iter().filter(|a| a.status == 201).collect();
    let rejected: Vec<&Answer> = answers.iter().filter(|a| a.status == 409).collect();
    assert_eq!(
        created.len(),
        1,
        "statuses: {:?}",
        answers.iter().map(|a| a.status).collect::<Vec<_>>()
    );
    assert_eq!(rejected.len(), 99);
    for r in rejected {
        assert_eq!(r.header("retry-after"), Some("1"));
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        assert_eq!(
            r.problem_type().as_deref(),
            Some("urn:oncely:problem:request-in-progress")
        );
    }
    assert_eq!(s.upstream.executions("race-reject"), 1);
}

/// Eight worker threads, each with its own runtime and upstream pool, share one engine and
/// store: a hundred concurrent duplicates spread over them still execute once, and every
/// waiting duplicate gets that one answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_duplicates_across_eight_workers() {
    let s =
        setup("[server]\nworkers = 8\n[defaults]\nin_flight = \"wait\"\nmax_wait = \"5s\"").await;
    let answers = hundred_concurrent(&s, "race-workers").await;
    assert!(answers.iter().all(|a| a.status == 201));
    assert!(answers.iter().all(|a| a.body == answers[0].body));
    assert_eq!(answers.iter().filter(|a| a.replayed()).count(), 99);
    assert_eq!(s.upstream.executions("race-workers"), 1);
    assert_eq!(s.upstream.max_overlap("race-workers"), 1);
}

#[tokio::test]
async fn hundred_concurrent_duplicates_wait_mode() {
    let s = setup("[defaults]\nin_flight = \"wait\"\nmax_wait = \"5s\"").await;
    let answers = hundred_concurrent(&s, "race-wait").await;
    assert!(
        answers.iter().all(|a| a.status == 201),
        "all get the answer"
    );
    assert!(
        answers.iter().all(|a| a.body == answers[0].body),
        "one body for all"
    );
    assert_eq!(answers.iter().filter(|a| a.replayed()).count(), 99);
    assert_eq!(s.upstream.executions("race-wait"), 1);
}

#[tokio::test]
async fn wait_mode_gives_up_after_max_wait() {
    let s = setup("[defaults]\nin_flight = \"wait\"\nmax_wait = \"200ms\"").await;
    let first = s
        .spawn_post("slow", "{}", &[("x-test-delay-ms", "1000")])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let dup = s.post("slow", "{}", &[]).await;
    assert_eq!(dup.status, 409);
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "bounded wait"
    );
    assert_eq!(first.await.unwrap().status, 201);
    assert_eq!(s.upstream.executions("slow"), 1);
}

#[tokio::test]
async fn reused_key_with_another_body_never_executes() {
    let s = setup("").await;
    // While the first is still in flight...
    let first = s
        .spawn_post("reuse", r#"{"a":1}"#, &[("x-test-delay-ms", "300")])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let during = s.post("reuse", r#"{"a":2}"#, &[]).await;
    assert_eq!(during.status, 422);
    assert_eq!(
        during.problem_type().as_deref(),
        Some("urn:oncely:problem:idempotency-key-reused")
    );
    assert_eq!(first.await.unwrap().status, 201);
    // ...and after it completed.
    let after = s.post("reuse", r#"{"a":2}"#, &[]).await;
    assert_eq!(after.status, 422);
    assert_eq!(s.upstream.executions("reuse"), 1);
}

#[tokio::test]
async fn mismatch_status_can_be_409() {
    let s = setup("[defaults]\nmismatch_status = 409").await;
    assert_eq!(s.post("m409", r#"{"a":1}"#, &[]).await.status, 201);
    let other = s.post("m409", r#"{"a":2}"#, &[]).await;
    assert_eq!(other.status, 409);
    assert_eq!(
        other.problem_type().as_deref(),
        Some("urn:oncely:problem:idempotency-key-reused")
    );
}

#[tokio::test]
async fn tenants_never_share_records() {
    let s = setup("").await;
    let a1 = s
        .post("shared", "{}", &[("authorization", "Bearer alice")])
        .await;
    let b1 = s
        .post("shared", "{}", &[("authorization", "Bearer bob")])
        .await;
    assert_eq!((a1.status, b1.status), (201, 201));
    assert!(
        !b1.replayed(),
        "bob's request executes: another tenant's record is invisible"
    );
    assert_ne!(a1.body, b1.body);
    assert_eq!(s.upstream.executions("shared"), 2);
    let a2 = s
        .post("shared", "{}", &[("authorization", "Bearer alice")])
        .await;
    let b2 = s
        .post("shared", "{}", &[("authorization", "Bearer bob")])
        .await;
    assert_eq!(a2.body, a1.body);
    assert_eq!(b2.body, b1.body);
    let anon = s.post("shared", "{}", &[]).await;
    assert!(!anon.replayed());
    assert_eq!(s.upstream.executions("shared"), 3);
}

#[tokio::test]
async fn tenant_from_a_header() {
    let s = setup("[defaults]\ntenant = \"header:x-tenant\"").await;
    let a = s
        .post(
            "tk",
            "{}",
            &[("x-tenant", "acme"), ("authorization", "Bearer one")],
        )
        .await;
    // Same tenant header, another credential: the same tenant, so a replay.
    let a2 = s
        .post(
            "tk",
            "{}",
            &[("x-tenant", "acme"), ("authorization", "Bearer two")],
        )
        .await;
    let b = s.post("tk", "{}", &[("x-tenant", "globex")]).await;
    assert!(a2.replayed() && a2.body == a.body);
    assert!(!b.replayed());
    assert_eq!(s.upstream.executions("tk"), 2);
}

#[tokio::test]
async fn upstream_500_releases_the_key_and_201_is_stored() {
    let s = setup("").await;
    let failed = s
        .post("flaky", r#"{"x":1}"#, &[("x-test-status", "500")])
        .await;
    assert_eq!(failed.status, 500, "the upstream's answer is passed on");
    let retried = s.post("flaky", r#"{"x":1}"#, &[]).await;
    assert_eq!(retried.status, 201);
    assert!(!retried.replayed(), "the retry executed");
    let replay = s
        .post("flaky", r#"{"x":1}"#, &[("x-test-status", "500")])
        .await;
    assert_eq!(replay.status, 201);
    assert!(replay.replayed());
    assert_eq!(replay.body, retried.body);
    assert_eq!(s.upstream.executions("flaky"), 2);
    for transient in ["408", "429", "503"] {
        let key = format!("transient-{transient}");
        assert_eq!(
            s.post(&key, "{}", &[("x-test-status", transient)])
                .await
                .status
                .to_string(),
            transient
        );
        assert_eq!(
            s.post(&key, "{}", &[]).await.status,
            201,
            "{transient} does not poison the key"
        );
    }
    // A 4xx answer is final: stored and replayed.
    assert_eq!(
        s.post("final-404", "{}", &[("x-test-status", "404")])
            .await
            .status,
        404
    );
    let again = s.post("final-404", "{}", &[]).await;
    assert_eq!((again.status, again.replayed()), (404, true));
}

#[tokio::test]
async fn dropped_connection_holds_the_key_until_the_lease_ends() {
    let s = setup("[defaults]\nlease = \"1s\"").await;
    let dropped = s.post("drop", "{}", &[("x-test-drop", "1")]).await;
    assert_eq!(dropped.status, 502);
    assert_eq!(
        dropped.problem_type().as_deref(),
        Some("urn:oncely:problem:upstream-unavailable")
    );
    let soon = s.post("drop", "{}", &[]).await;
    assert_eq!(soon.status, 409, "outcome unknown: the key stays held");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let later = s.post("drop", "{}", &[]).await;
    assert_eq!(later.status, 201, "free once the lease ended");
    assert_eq!(
        s.upstream.executions("drop"),
        2,
        "the same key reached the upstream again, for it to dedupe"
    );
}

#[tokio::test]
async fn dropped_connection_with_release_policy_frees_at_once() {
    let s = setup("[defaults]\nunknown_outcome = \"release\"").await;
    assert_eq!(
        s.post("drop-r", "{}", &[("x-test-drop", "1")]).await.status,
        502
    );
    assert_eq!(s.post("drop-r", "{}", &[]).await.status, 201);
}

#[tokio::test]
async fn lease_takeover_fences_the_stale_holder() {
    // A lease shorter than the upstream's work and not renewed: the holder looks dead.
    let s = setup("[defaults]\nlease = \"300ms\"\nrenew_lease = false").await;
    let slow = s
        .spawn_post("fence", "{}", &[("x-test-delay-ms", "2000")])
        .await;
    // Retry like a client would until the lease has lapsed and the key is taken over
    // (polling rather than one fixed sleep keeps this independent of machine load).
    let mut taker = s.post("fence", "{}", &[]).await;
    for _ in 0..30 {
        if taker.status != 409 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        taker = s.post("fence", "{}", &[]).await;
    }
    assert_eq!(taker.status, 201);
    assert!(!taker.replayed(), "the takeover executed");
    let slow = slow.await.unwrap();
    assert_eq!(
        slow.status, 201,
        "the stale holder's client still gets its own answer"
    );
    assert_eq!(slow.json()["execution"], 1);
    assert_eq!(taker.json()["execution"], 2);
    let replay = s.post("fence", "{}", &[]).await;
    assert!(replay.replayed());
    assert_eq!(
        replay.body, taker.body,
        "the stale completion was refused: the successor's outcome stands"
    );
}

#[tokio::test]
async fn renewed_lease_is_never_taken_over() {
    // Renewed every 200 ms, so a renewal may run 400 ms late before the lease lapses.
    let s = setup("[defaults]\nlease = \"600ms\"").await;
    let slow = s
        .spawn_post("renew", "{}", &[("x-test-delay-ms", "1800")])
        .await;
    s.assert_held_meanwhile("renew", "the live holder keeps its key")
        .await;
    assert_eq!(slow.await.unwrap().status, 201);
    assert_eq!(s.upstream.executions("renew"), 1);
    assert_eq!(s.upstream.max_overlap("renew"), 1);
}

#[tokio::test]
async fn ttl_expiry_frees_the_key() {
    let s = setup("[defaults]\nttl = \"1s\"\nlease = \"500ms\"").await;
    assert_eq!(s.post("ttl", r#"{"v":1}"#, &[]).await.status, 201);
    assert_eq!(s.post("ttl", r#"{"v":2}"#, &[]).await.status, 422);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = s.post("ttl", r#"{"v":2}"#, &[]).await;
    assert_eq!(fresh.status, 201);
    assert!(!fresh.replayed());
}

#[tokio::test]
async fn json_spelling_does_not_change_the_fingerprint() {
    let s = setup("").await;
    let first = s
        .post(
            "canon",
            r#"{"amount":10.0,"items":[1,2],"who":{"b":1,"a":2}}"#,
            &[],
        )
        .await;
    for variant in [
        r#"{"who":{"a":2,"b":1},"items":[1,2],"amount":10}"#,
        "{ \"amount\" : 1e1,\n  \"items\" : [ 1 , 2 ],\n  \"who\" : { \"b\" : 1.0 , \"a\" : 2 } }",
    ] {
        let again = s.post("canon", variant, &[]).await;
        assert_eq!(again.status, 201, "{variant}");
        assert!(again.replayed());
        assert_eq!(again.body, first.body);
    }
    assert_eq!(
        s.post(
            "canon",
            r#"{"amount":10,"items":[2,1],"who":{"a":2,"b":1}}"#,
            &[]
        )
        .await
        .status,
        422,
        "array order matters"
    );
}

#[tokio::test]
async fn bad_input_gets_problem_answers() {
    let s = setup("[[routes]]\npath = \"/orders\"\nmethods = [\"POST\"]\nkey = \"required\"\nmax_body = \"1KiB\"").await;
    let url = s.url("/orders");
    let check = |a: &Answer, status: u16, slug: &str| {
        assert_eq!(a.status, status, "{:?}", a.body);
        assert_eq!(a.header("content-type"), Some("application/problem+json"));
        let j = a.json();
        assert_eq!(j["type"], format!("urn:oncely:problem:{slug}"));
        assert!(j["title"].is_string() && j["detail"].is_string());
    };
    let bad_keys: [&[u8]; 5] = [
        b"",
        &[b'k'; 256],
        b"a\tb",
        "clé".as_bytes(),
        b"\"unterminated",
    ];
    for raw in bad_keys {
        let answer = s
            .client
            .send_raw_header(&url, "idempotency-key", raw, b"{}")
            .await
            .unwrap();
        check(&answer, 400, "invalid-idempotency-key");
    }
    check(
        &s.client.send("POST", &url, &[JSON], "{}").await.unwrap(),
        400,
        "missing-idempotency-key",
    );
    check(
        &s.client
            .send(
                "POST",
                &url,
                &[JSON, ("idempotency-key", "a"), ("idempotency-key", "b")],
                "{}",
            )
            .await
            .unwrap(),
        400,
        "invalid-idempotency-key",
    );
    check(
        &s.post("big", &"x".repeat(1025), &[]).await,
        413,
        "request-body-too-large",
    );
    assert_eq!(
        s.post(&"k".repeat(255), "{}", &[]).await.status,
        201,
        "255 characters is fine"
    );
    assert_eq!(s.post("\"quoted-key\"", "{}", &[]).await.status, 201);
    assert!(
        s.post("quoted-key", "{}", &[]).await.replayed(),
        "sf-string and token spell one key"
    );
    // Malformed JSON is fingerprinted as bytes, not refused.
    assert_eq!(s.post("broken", "{not json", &[]).await.status, 201);
    assert!(s.post("broken", "{not json", &[]).await.replayed());
    assert_eq!(s.post("broken", "{not json ", &[]).await.status, 422);
    assert_eq!(s.upstream.total(), 3, "no bad request reached the upstream");
}

#[tokio::test]
async fn control_bytes_in_the_key_never_crash_the_gateway() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup("").await;
    for raw_key in [&b"a\x01b"[..], b"\x7f", b"\xff\xfe", b"\"a\\"] {
        let mut stream = tokio::net::TcpStream::connect(s.gateway.addr())
            .await
            .unwrap();
        let mut req = b"POST /orders HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nconnection: close\r\nidempotency-key: ".to_vec();
        req.extend_from_slice(raw_key);
        req.extend_from_slice(b"\r\n\r\n{}");
        stream.write_all(&req).await.unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("HTTP/1.1 400"), "{raw_key:?} -> {text}");
    }
    // Still serving.
    assert_eq!(s.post("after-garbage", "{}", &[]).await.status, 201);
    assert_eq!(s.upstream.total(), 1);
}

#[tokio::test]
async fn unkeyed_requests_pass_through() {
    let s = setup("").await;
    let get = s
        .client
        .send("GET", &s.url("/things?x=1"), &[], "")
        .await
        .unwrap();
    assert_eq!(get.status, 201);
    assert_eq!(get.json()["path"], "/things");
    let a = s
        .client
        .send("POST", &s.url("/orders"), &[JSON], "{}")
        .await
        .unwrap();
    let b = s
        .client
        .send("POST", &s.url("/orders"), &[JSON], "{}")
        .await
        .unwrap();
    assert!(
        !a.replayed() && !b.replayed() && a.body != b.body,
        "no key: no protection, as configured"
    );
    assert!(a.header("set-cookie").is_some());
    assert_eq!(
        a.json()["forwarded_for"],
        "127.0.0.1",
        "X-Forwarded-For is added"
    );
    assert_eq!(s.upstream.total(), 3);
}

#[tokio::test]
async fn unreachable_upstream_releases_the_key() {
    // Reserve a port with nothing listening on it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = tempfile::tempdir().unwrap();
    let store = StoreUrl::sqlite(dir.path().join("o.db"));
    let config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(format!("http://127.0.0.1:{port}").parse().unwrap()),
        store,
    );
    let gateway = Gateway::open(config).await.unwrap().start().await.unwrap();
    let client = TestClient::new();
    let url = format!("http://{}/orders", gateway.addr());
    let down = client
        .send("POST", &url, &[JSON, ("idempotency-key", "u1")], "{}")
        .await
        .unwrap();
    assert_eq!(down.status, 502);
    assert_eq!(
        down.problem_type().as_deref(),
        Some("urn:oncely:problem:upstream-unavailable")
    );
    // The upstream comes up on that port: the retry executes at once (nothing was sent).
    let upstream = CountingUpstream::start_on(format!("127.0.0.1:{port}").parse().unwrap()).await;
    let up = client
        .send("POST", &url, &[JSON, ("idempotency-key", "u1")], "{}")
        .await
        .unwrap();
    assert_eq!(up.status, 201);
    assert_eq!(upstream.executions("u1"), 1);
}

#[tokio::test]
async fn graceful_shutdown_finishes_requests_in_flight() {
    let s = setup("").await;
    let in_flight = s
        .spawn_post("bye", "{}", &[("x-test-delay-ms", "500")])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let addr = s.gateway.addr();
    s.gateway.shutdown().await;
    let done = in_flight.await.unwrap();
    assert_eq!(done.status, 201, "the request in flight completed");
    assert!(
        TestClient::new()
            .send("POST", &format!("http://{addr}/orders"), &[JSON], "{}")
            .await
            .is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn a_client_hanging_up_does_not_abort_the_execution() {
    let s = setup("").await;
    let impatient = s
        .spawn_post("hangup", "{}", &[("x-test-delay-ms", "300")])
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    impatient.abort();
    tokio::time::sleep(Duration::from_millis(400)).await;
    let retry = s.post("hangup", "{}", &[]).await;
    assert_eq!(retry.status, 201);
    assert!(
        retry.replayed(),
        "the first execution finished and was stored"
    );
    assert_eq!(s.upstream.executions("hangup"), 1);
}

/// A store that can be switched off, to test the fail-closed and fail-open policies. The
/// backend behind it is real; only reachability is simulated.
struct SwitchableStore {
    inner: oncely_store::MemoryStore,
    down: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl oncely_store::IdempotencyStore for SwitchableStore {
    async fn claim(
        &self,
        k: &oncely_core::RecordKey,
        f: oncely_core::Fingerprint,
        l: Duration,
        t: Duration,
    ) -> oncely_store::StoreResult<oncely_core::ClaimOutcome> {
        self.check()?;
        self.inner.claim(k, f, l, t).await
    }
    async fn complete(
        &self,
        k: &oncely_core::RecordKey,
        tok: oncely_core::LeaseToken,
        r: oncely_core::StoredResponse,
        t: Duration,
    ) -> oncely_store::StoreResult<()> {
        self.check()?;
        self.inner.complete(k, tok, r, t).await
    }
    async fn release(
        &self,
        k: &oncely_core::RecordKey,
        tok: oncely_core::LeaseToken,
    ) -> oncely_store::StoreResult<()> {
        self.check()?;
        self.inner.release(k, tok).await
    }
    async fn renew(
        &self,
        k: &oncely_core::RecordKey,
        tok: oncely_core::LeaseToken,
        l: Duration,
    ) -> oncely_store::StoreResult<oncely_core::Timestamp> {
        self.check()?;
        self.inner.renew(k, tok, l).await
    }
    async fn get(
        &self,
        k: &oncely_core::RecordKey,
    ) -> oncely_store::StoreResult<Option<oncely_core::Record>> {
        self.check()?;
        self.inner.get(k).await
    }
}

#[async_trait::async_trait]
impl oncely_store::StoreAdmin for SwitchableStore {
    async fn purge_expired(&self, b: usize) -> oncely_store::StoreResult<u64> {
        self.check()?;
        self.inner.purge_expired(b).await
    }
    async fn stats(&self) -> oncely_store::StoreResult<oncely_store::StoreStats> {
        self.check()?;
        self.inner.stats().await
    }
    async fn evict(&self, key: &oncely_core::RecordKey) -> oncely_store::StoreResult<bool> {
        self.check()?;
        self.inner.evict(key).await
    }
    async fn list_in_progress(
        &self,
        limit: usize,
    ) -> oncely_store::StoreResult<Vec<(oncely_core::RecordKey, oncely_core::Record)>> {
        self.check()?;
        self.inner.list_in_progress(limit).await
    }
}

impl SwitchableStore {
    fn new() -> Arc<Self> {
        Arc::new(SwitchableStore {
            inner: oncely_store::MemoryStore::new(Arc::new(SystemClock)),
            down: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn check(&self) -> oncely_store::StoreResult<()> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            Err(oncely_store::StoreError::Unavailable("switched off".into()))
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn store_outage_fails_closed_or_open_per_route() {
    let upstream = CountingUpstream::start().await;
    let store = SwitchableStore::new();
    let config = config_for(&upstream)
    // No replay cache: the replay after the outage must come from the store itself.
    .apply_toml("[server]\nreplay_cache = \"0\"\n[[routes]]\npath = \"/open\"\nstore_unavailable = \"fail-open\"")
    .unwrap();
    let gateway = Gateway::with_store(config, store.clone(), Arc::new(SystemClock))
        .start()
        .await
        .unwrap();
    let client = TestClient::new();
    let base = format!("http://{}", gateway.addr());
    let done = client
        .send(
            "POST",
            &format!("{base}/orders"),
            &[JSON, ("idempotency-key", "before")],
            "{}",
        )
        .await
        .unwrap();
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let closed = client
        .send(
            "POST",
            &format!("{base}/orders"),
            &[JSON, ("idempotency-key", "during")],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(closed.status, 503);
    assert_eq!(
        closed.problem_type().as_deref(),
        Some("urn:oncely:problem:idempotency-store-unavailable")
    );
    assert!(closed.header("retry-after").is_some());
    assert_eq!(
        upstream.executions("during"),
        0,
        "fail closed: nothing forwarded"
    );
    let open = client
        .send(
            "POST",
            &format!("{base}/open"),
            &[JSON, ("idempotency-key", "during")],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(open.status, 201, "fail open: forwarded without protection");
    let unkeyed = client
        .send("GET", &format!("{base}/anything"), &[], "")
        .await
        .unwrap();
    assert_eq!(unkeyed.status, 201, "unkeyed traffic never needs the store");
    store.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let back = client
        .send(
            "POST",
            &format!("{base}/orders"),
            &[JSON, ("idempotency-key", "before")],
            "{}",
        )
        .await
        .unwrap();
    assert!(back.replayed(), "records from before the outage are intact");
    assert_eq!(back.body, done.body);
}

#[tokio::test]
async fn the_lease_is_renewed_while_a_slow_body_arrives() {
    let s = setup("[defaults]\nlease = \"600ms\"").await;
    let slow = s
        .spawn_post("slow-body", "{}", &[("x-test-body-delay-ms", "1800")])
        .await;
    s.assert_held_meanwhile(
        "slow-body",
        "headers arrived, body still coming: still held",
    )
    .await;
    let first = slow.await.unwrap();
    assert_eq!(first.status, 201);
    let replay = s.post("slow-body", "{}", &[]).await;
    assert!(replay.replayed());
    assert_eq!(replay.body, first.body);
    assert_eq!(s.upstream.executions("slow-body"), 1);
}

#[tokio::test]
async fn a_body_that_stalls_is_an_unknown_outcome_not_a_hang() {
    let s = setup("[server]\nconnect_timeout = \"200ms\"\nresponse_timeout = \"400ms\"\n[defaults]\nlease = \"1s\"").await;
    let started = std::time::Instant::now();
    let stalled = s
        .post("stall", "{}", &[("x-test-body-delay-ms", "5000")])
        .await;
    assert_eq!(stalled.status, 502, "{:?}", stalled.body);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "bounded by the idle timeout"
    );
    assert_eq!(
        s.post("stall", "{}", &[]).await.status,
        409,
        "the outcome is unknown: held for the lease"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(s.post("stall", "{}", &[]).await.status, 201);
}

#[tokio::test]
async fn large_integers_are_compared_exactly() {
    let s = setup("").await;
    assert_eq!(
        s.post("big-int", r#"{"account":9007199254740993}"#, &[])
            .await
            .status,
        201
    );
    let other = s
        .post("big-int", r#"{"account":9007199254740992}"#, &[])
        .await;
    assert_eq!(
        other.status, 422,
        "ids that differ beyond 2^53 are different requests"
    );
    let dup_names = s.post("dup-names", r#"{"a":1,"a":2}"#, &[]).await;
    assert_eq!(dup_names.status, 201);
    assert_eq!(s.post("dup-names", r#"{"a":2}"#, &[]).await.status, 422);
}

#[tokio::test]
async fn waiting_duplicates_of_a_failing_request_never_overlap() {
    // Every execution answers 500, so each release lets one waiter execute next: many
    // executions in all, but never two at once, and every client gets an answer.
    let s = setup("[defaults]\nin_flight = \"wait\"\nmax_wait = \"10s\"").await;
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (c, u) = (s.client.clone(), s.url("/orders"));
        tasks.push(tokio::spawn(async move {
            c.send(
                "POST",
                &u,
                &[
                    JSON,
                    ("idempotency-key", "fail-wait"),
                    ("x-test-status", "500"),
                    ("x-test-delay-ms", "20"),
                ],
                "{}",
            )
            .await
            .expect("transport")
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().status, 500);
    }
    assert_eq!(
        s.upstream.max_overlap("fail-wait"),
        1,
        "executions of one key never overlap"
    );
    assert!(
        s.upstream.executions("fail-wait") >= 2,
        "a released key lets a waiter execute"
    );
}

#[tokio::test]
async fn completed_keys_replay_from_memory_even_while_the_store_is_down() {
    let upstream = CountingUpstream::start().await;
    let store = SwitchableStore::new();
    let config = config_for(&upstream);
    let gateway = Gateway::with_store(config, store.clone(), Arc::new(SystemClock))
        .start()
        .await
        .unwrap();
    let client = TestClient::new();
    let url = format!("http://{}/orders", gateway.addr());
    let first = client
        .send(
            "POST",
            &url,
            &[JSON, ("idempotency-key", "cached")],
            r#"{"a":1}"#,
        )
        .await
        .unwrap();
    store.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let replay = client
        .send(
            "POST",
            &url,
            &[JSON, ("idempotency-key", "cached")],
            r#"{"a":1}"#,
        )
        .await
        .unwrap();
    assert!(replay.replayed(), "served from the replay cache");
    assert_eq!(replay.body, first.body);
    let reused = client
        .send(
            "POST",
            &url,
            &[JSON, ("idempotency-key", "cached")],
            r#"{"a":2}"#,
        )
        .await
        .unwrap();
    assert_eq!(
        reused.status, 422,
        "a mismatch is known without the store too"
    );
    let fresh = client
        .send("POST", &url, &[JSON, ("idempotency-key", "new")], "{}")
        .await
        .unwrap();
    assert_eq!(fresh.status, 503, "anything else still needs the store");
    assert_eq!(upstream.executions("cached"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_sqlite_file_fails_closed_in_bounded_time_then_recovers() {
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("locked.db");
    let store =
        StoreUrl::parse(&format!("sqlite://{}?busy_timeout=300ms", path.display())).unwrap();
    let mut config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(upstream.url().parse().unwrap()),
        store,
    );
    // The replay after the outage must come from the file, not from memory.
    config.replay_cache = 0;
    let gateway = Gateway::open(config).await.unwrap().start().await.unwrap();
    let client = TestClient::new();
    let url = format!("http://{}/orders", gateway.addr());
    let done = client
        .send("POST", &url, &[JSON, ("idempotency-key", "before")], "{}")
        .await
        .unwrap();
    assert_eq!(done.status, 201);

    // Another process (here: another connection) takes the file's write lock and keeps it.
    let (locked_tx, locked_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn({
        let path = path.clone();
        move || {
            let conn = rusqlite::Connection::open(&path).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            locked_tx.send(()).unwrap();
            release_rx.recv().unwrap();
            conn.execute_batch("ROLLBACK").unwrap();
        }
    });
    locked_rx.recv().unwrap();

    let started = std::time::Instant::now();
    let blocked = client
        .send("POST", &url, &[JSON, ("idempotency-key", "during")], "{}")
        .await
        .unwrap();
    assert_eq!(blocked.status, 503);
    assert_eq!(
        blocked.problem_type().as_deref(),
        Some("urn:oncely:problem:idempotency-store-unavailable")
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the busy timeout, not a hang"
    );
    assert_eq!(upstream.executions("during"), 0);
    let unkeyed = client
        .send("GET", &format!("http://{}/x", gateway.addr()), &[], "")
        .await
        .unwrap();
    assert_eq!(
        unkeyed.status, 201,
        "unkeyed traffic does not need the store"
    );

    release_tx.send(()).unwrap();
    holder.join().unwrap();
    let after = client
        .send("POST", &url, &[JSON, ("idempotency-key", "during")], "{}")
        .await
        .unwrap();
    assert_eq!(
        after.status, 201,
        "recovered by itself once the lock is gone"
    );
    assert_eq!(upstream.executions("during"), 1);
    let replay = client
        .send("POST", &url, &[JSON, ("idempotency-key", "before")], "{}")
        .await
        .unwrap();
    assert_eq!(
        replay.body, done.body,
        "nothing completed before the outage was lost"
    );
}

// --- Slow clients ---------------------------------------------------------------------------

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A request head announcing a 100-byte body, followed by its first 10 bytes.
fn stalled_request(path: &str, key: Option<&str>) -> Vec<u8> {
    let key = key.map_or(String::new(), |k| format!("Idempotency-Key: {k}\r\n"));
    format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{key}Content-Length: 100\r\n\r\n{{\"a\":\"0123"
    )
    .into_bytes()
}

/// Everything the gateway sends on `stream` until it closes it, or an error if it has not
/// closed it by `deadline`.
async fn read_until_closed(
    stream: &mut TcpStream,
    deadline: tokio::time::Instant,
) -> Result<String, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => {
                return Err(format!(
                    "still open, having sent {:?}",
                    String::from_utf8_lossy(&got)
                ))
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

fn assert_request_timeout(answer: &str) {
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let lower = answer.to_ascii_lowercase();
    assert!(
        lower.contains("content-type: application/problem+json"),
        "{answer}"
    );
    assert!(lower.contains("connection: close"), "{answer}");
    let body = &answer[answer.find("\r\n\r\n").expect("a head and a body") + 4..];
    let problem: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(problem["type"], "urn:oncely:problem:request-timeout");
    assert_eq!(problem["status"], 408);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_stalled_bodies_are_cut_off_while_others_are_served() {
    let s = setup("[server]\nbody_idle_timeout = \"1s\"\n").await;
    let addr = s.gateway.addr();
    let mut stalled = Vec::new();
    for i in 0..500 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        // Keyed ones and unkeyed ones (streamed on to the upstream as they arrive).
        let key = format!("stall-{i}");
        let keyed = i % 2 == 0;
        c.write_all(&stalled_request("/orders", keyed.then_some(key.as_str())))
            .await
            .unwrap();
        stalled.push((c, key, keyed));
    }
    let stalled_at = tokio::time::Instant::now();
    // Meanwhile ordinary requests are answered as usual.
    for i in 0..20 {
        let a = s.post(&format!("fine-{i}"), "{}", &[]).await;
        assert_eq!(a.status, 201, "{:?}", a.body);
    }
    let deadline = stalled_at + Duration::from_secs(6);
    let mut answers = Vec::new();
    for (c, key, keyed) in &mut stalled {
        let answer = read_until_closed(c, deadline)
            .await
            .unwrap_or_else(|e| panic!("{key}: {e}"));
        answers.push((answer, key.clone(), *keyed));
    }
    assert!(
        stalled_at.elapsed() < Duration::from_secs(6),
        "all closed within the idle timeout and some slack"
    );
    for (answer, key, keyed) in answers {
        assert_request_timeout(&answer);
        if keyed {
            assert_eq!(s.upstream.executions(&key), 0, "{key} never executed");
            let record = oncely_core::RecordKey::new(
                oncely_core::Tenant::anonymous(),
                "POST",
                "/orders",
                oncely_core::IdempotencyKey::new(&key).unwrap(),
            );
            let stored = s.gateway.engine().store().get(&record).await.unwrap();
            assert!(stored.is_none(), "nothing claimed for {key}");
        }
    }
    assert_eq!(
        s.gateway.metrics().requests("body_timeout"),
        250,
        "the keyed ones"
    );
}

/// Sends a POST of a 101-byte JSON body to `path` in `chunk`-byte pieces 400 ms apart and
/// returns the whole answer.
async fn trickle(s: &Setup, path: &str, key: Option<&str>, chunk: usize) -> String {
    let mut c = TcpStream::connect(s.gateway.addr()).await.unwrap();
    let body = format!("{{\"note\":\"{}\"}}", "x".repeat(90));
    let key = key.map_or(String::new(), |k| format!("Idempotency-Key: {k}\r\n"));
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{key}Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).await.unwrap();
    for piece in body.as_bytes().chunks(chunk) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        c.write_all(piece).await.unwrap();
    }
    read_until_closed(&mut c, tokio::time::Instant::now() + Duration::from_secs(5))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_body_that_trickles_steadily_is_not_cut() {
    let s = setup("[server]\nbody_idle_timeout = \"1s\"\n").await;
    // 6 chunks 400 ms apart: 2.4 s in all, never more than 0.4 s idle.
    let answer = trickle(&s, "/orders", Some("trickle"), 17).await;
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
    assert_eq!(s.upstream.executions("trickle"), 1);
}

#[tokio::test]
async fn a_keyed_body_slower_than_the_total_timeout_gets_408_and_claims_nothing() {
    let s = setup("[server]\nbody_idle_timeout = \"1s\"\nbody_timeout = \"1500ms\"\n").await;
    let mut c = TcpStream::connect(s.gateway.addr()).await.unwrap();
    c.write_all(&stalled_request("/orders", Some("too-slow")))
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    // Never idle for long, but never done either.
    let trickle = async {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if c.write_all(b"4").await.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1800), trickle).await;
    let answer = read_until_closed(&mut c, started + Duration::from_secs(4))
        .await
        .unwrap();
    assert_request_timeout(&answer);
    assert!(answer.contains("1.5s"), "says which limit: {answer}");
    assert_eq!(s.upstream.executions("too-slow"), 0);
    // The key is free: the whole request, sent again, executes.
    let retried = s.post("too-slow", "{}", &[]).await;
    assert_eq!(retried.status, 201);
}

#[tokio::test]
async fn a_stalled_unkeyed_upload_is_aborted_upstream() {
    // An upstream of our own that reads the head and then the body, and records how the
    // body ended.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel::<(usize, bool)>();
    tokio::spawn(async move {
        let (mut c, _) = upstream.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let aborted = loop {
            match c.read(&mut buf).await {
                Ok(0) | Err(_) => break true,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&got);
            if let Some(at) = text.find("\r\n\r\n") {
                if got.len() - at - 4 >= 100 {
                    break false;
                }
            }
        };
        let body = String::from_utf8_lossy(&got)
            .find("\r\n\r\n")
            .map_or(0, |at| got.len() - at - 4);
        let _ = ended_tx.send((body, aborted));
    });
    let dir = tempfile::tempdir().unwrap();
    let config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(format!("http://{upstream_addr}").parse().unwrap()),
        StoreUrl::sqlite(dir.path().join("o.db")),
    )
    // A response timeout shorter than the body's idle timeout, as by default (30 s against
    // 60 s): it runs from the end of the upload, so the client's stall is what ends this.
    .apply_toml(
        "[server]\nconnect_timeout = \"200ms\"\nresponse_timeout = \"1s\"\nbody_idle_timeout = \"2s\"\n",
    )
    .unwrap();
    let gateway = Gateway::open(config).await.unwrap().start().await.unwrap();
    let mut c = TcpStream::connect(gateway.addr()).await.unwrap();
    c.write_all(&stalled_request("/upload", None))
        .await
        .unwrap();
    let answer = read_until_closed(&mut c, tokio::time::Instant::now() + Duration::from_secs(5))
        .await
        .unwrap();
    assert_request_timeout(&answer);
    let (body_seen, aborted) = tokio::time::timeout(Duration::from_secs(4), ended_rx)
        .await
        .expect("the upstream's connection ended")
        .unwrap();
    assert!(aborted, "the upstream saw the request cut short");
    assert_eq!(body_seen, 10, "it got the 10 bytes that were sent, no more");
    gateway.shutdown().await;
}

#[tokio::test]
async fn header_timeout_is_configurable() {
    let s = setup("[server]\nheader_timeout = \"1s\"\n").await;
    let mut c = TcpStream::connect(s.gateway.addr()).await.unwrap();
    c.write_all(b"POST /orders HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    read_until_closed(&mut c, started + Duration::from_secs(4))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_for_a_free_slot() {
    let s = setup("[server]\nmax_connections = 3\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let c = TcpStream::connect(s.gateway.addr()).await.unwrap();
        held.push(c);
    }
    // Let the gateway accept those three.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = s.url("/orders");
    let waiting = s.client.spawn_post(&url, "fourth", "{}", &[]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "no slot: the fourth waits");
    assert_eq!(s.upstream.executions("fourth"), 0);
    drop(held.pop());
    let answer = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once a slot was free")
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, 201);
}

#[tokio::test]
async fn a_steady_pass_through_upload_outlasts_the_response_timeout() {
    let s = setup(
        "[server]\nconnect_timeout = \"200ms\"\nresponse_timeout = \"1s\"\nbody_idle_timeout = \"1s\"\n",
    )
    .await;
    // 9 chunks 400 ms apart: 3.6 s of upload, three times the response timeout.
    let answer = trickle(&s, "/upload", None, 12).await;
    assert!(answer.starts_with("HTTP/1.1 201 "), "{answer}");
}
