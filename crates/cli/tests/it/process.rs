//! The `oncely` binary as users run it: crash and restart on one SQLite file, graceful stop
//! on SIGTERM, command-line errors, and the demo.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use oncely_testkit::{CountingUpstream, TestClient};

use crate::common::{listening_and_admin_urls, listening_url, oncely, redis, serve, KillOnDrop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_request_then_restart_on_the_same_file() {
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oncely.db");
    let config = dir.path().join("oncely.toml");
    std::fs::write(&config, "[defaults]\nlease = \"3s\"\n").unwrap();
    let client = TestClient::new();

    let (mut gw, url) = serve(&upstream.url(), &db, Some(&config));
    let orders = format!("{url}/orders");
    let done = client
        .post_keyed(&orders, "done", r#"{"a":1}"#, &[])
        .await
        .unwrap();
    assert_eq!(done.status, 201);

    let interrupted =
        client.spawn_post(&orders, "cut", r#"{"a":2}"#, &[("x-test-delay-ms", "2000")]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    gw.kill().expect("SIGKILL");
    let killed_at = Instant::now();
    gw.wait().unwrap();
    assert!(
        interrupted.await.unwrap().is_err(),
        "the client saw the connection die"
    );

    let (mut gw, url) = serve(&upstream.url(), &db, Some(&config));
    let orders = format!("{url}/orders");
    let replay = client
        .post_keyed(&orders, "done", r#"{"a":1}"#, &[])
        .await
        .unwrap();
    assert!(replay.replayed(), "completed keys survive the crash");
    assert_eq!(replay.body, done.body);
    assert_eq!(upstream.executions("done"), 1);

    let held = client
        .post_keyed(&orders, "cut", r#"{"a":2}"#, &[])
        .await
        .unwrap();
    assert_eq!(
        held.status, 409,
        "the interrupted key is held while its lease runs"
    );

    // No crash blocks a key longer than its lease.
    let lease_end = killed_at + Duration::from_millis(3000 + 200);
    tokio::time::sleep_until(lease_end.into()).await;
    let retried = client
        .post_keyed(&orders, "cut", r#"{"a":2}"#, &[])
        .await
        .unwrap();
    assert_eq!(
        retried.status, 201,
        "free after the lease: {:?}",
        retried.body
    );
    assert_eq!(
        upstream.executions("cut"),
        2,
        "the retry reached the upstream with the same key"
    );
    gw.kill().unwrap();
    gw.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish() {
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("oncely.toml");
    std::fs::write(&config, "").unwrap();
    let (mut gw, url) = serve(&upstream.url(), &dir.path().join("o.db"), Some(&config));
    let client = TestClient::new();
    let in_flight = client.spawn_post(
        &format!("{url}/orders"),
        "term",
        "{}",
        &[("x-test-delay-ms", "700")],
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rc = crate::common::signal(gw.id(), libc::SIGTERM);
    assert_eq!(rc, 0);
    let answer = in_flight.await.unwrap().expect("answered before exiting");
    assert_eq!(answer.status, 201);
    let status = gw.wait().unwrap();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
}

#[test]
fn command_line_errors_are_one_line_and_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["serve".into()], "no upstream"),
        (
            vec!["serve".into(), "--upstream".into(), "ftp://x".into()],
            "--upstream",
        ),
        (
            vec![
                "serve".into(),
                "--upstream".into(),
                "http://127.0.0.1:9".into(),
                "--store".into(),
                "postgres://postgres@127.0.0.1:1/db?timeout=1s".into(),
            ],
            "cannot open the store",
        ),
        (
            vec![
                "serve".into(),
                "--upstream".into(),
                "http://127.0.0.1:9".into(),
                "--config".into(),
                "/nonexistent/oncely.toml".into(),
            ],
            "cannot read",
        ),
        (
            vec![
                "serve".into(),
                "--upstream".into(),
                "http://127.0.0.1:9".into(),
                "--listen".into(),
                "nowhere".into(),
            ],
            "--listen",
        ),
    ];
    let mut cases = cases;
    let upstream_args = |extra: &[&str]| -> Vec<String> {
        ["serve", "--upstream", "http://127.0.0.1:9"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    cases.push((
        upstream_args(&["--admin-listen", "0.0.0.0:0"]),
        "needs a token",
    ));
    cases.push((
        upstream_args(&["--admin-token", "short"]),
        "at least 16 characters",
    ));
    cases.push((
        upstream_args(&["--admin-listen", "nowhere"]),
        "--admin-listen",
    ));
    cases.push((
        upstream_args(&["--body-idle-timeout", "forever"]),
        "--body-idle-timeout",
    ));
    cases.push((upstream_args(&["--body-timeout", "0s"]), "body_timeout"));
    cases.push((upstream_args(&["--replay-cache", "lots"]), "--replay-cache"));
    cases.push((
        upstream_args(&["--max-connections", "0"]),
        "max_connections",
    ));
    let bad_config = dir.path().join("bad.toml");
    std::fs::write(&bad_config, "[defaults]\nlease = \"forever\"\n").unwrap();
    cases.push((
        vec![
            "serve".into(),
            "--upstream".into(),
            "http://127.0.0.1:9".into(),
            "--config".into(),
            bad_config.display().to_string(),
        ],
        "defaults.lease",
    ));
    for (args, expected) in cases {
        // A token in the caller's environment would turn the token cases into real servers.
        let out = oncely()
            .args(&args)
            .env_remove("ONCELY_ADMIN_TOKEN")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{args:?}: one line: {stderr}"
        );
        assert!(!stderr.contains("panicked"));
    }
}

#[test]
fn the_demo_tour_runs_and_shows_one_execution_per_key() {
    let out = oncely()
        .args([
            "demo",
            "--tour",
            "--port",
            "0",
            "--work-ms",
            "200",
            "--exit-after-tour",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("replayed=true identical body=true"),
        "{stdout}"
    );
    assert!(stdout.contains("422"), "{stdout}");
    assert!(stdout.contains("{201: 1, 409: 9}"), "{stdout}");
    assert!(stdout.contains("executed 2 order(s)"), "{stdout}");
    assert!(stdout.contains("curl -i -X POST"), "{stdout}");
}

/// `oncely demo` serves the shop: its API and its UI, on a database of its own that it
/// removes when stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_serves_the_shop_until_stopped() {
    let mut child = oncely()
        .args(["--log-level", "warn", "demo", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let url = listening_url(&mut child);
    let shop = KillOnDrop(child);
    let client = TestClient::new();
    let users = client
        .send("GET", &format!("{url}/api/users"), &[], "")
        .await
        .unwrap();
    assert_eq!(users.status, 200);
    assert_eq!(users.json()[0]["id"], "ada");
    let checkout = client
        .post_keyed(
            &format!("{url}/api/checkout"),
            "demo-1",
            r#"{"card":"tok_ok","items":[{"product":"tea","qty":1}]}"#,
            &[("x-shop-user", "ada")],
        )
        .await
        .unwrap();
    assert_eq!(checkout.status, 201, "{:?}", checkout.json());
    let ui = client.send("GET", &url, &[], "").await.unwrap();
    assert_eq!(ui.status, 200);
    assert!(ui
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    shop.stop();
}

/// `oncely send` through `oncely serve`: the retry client and the gateway together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_through_the_gateway_retries_with_one_key() {
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("oncely.toml");
    std::fs::write(&config, "").unwrap();
    let (mut gw, url) = serve(&upstream.url(), &dir.path().join("o.db"), Some(&config));
    let orders = format!("{url}/orders");
    let send = |key: &str, extra: &[&str]| {
        let mut cmd = oncely();
        cmd.args([
            "send",
            "POST",
            &orders,
            "-H",
            "content-type: application/json",
            "-d",
            r#"{"a":1}"#,
        ])
        .args(["--key", key, "--base-delay", "20ms", "--max-delay", "200ms"])
        .args(extra);
        cmd
    };

    // Two 503s: the gateway releases the key each time, the client retries with the same key.
    let out = tokio::task::spawn_blocking({
        let mut cmd = send("e2e-flaky", &["-H", "x-test-fail-first: 2"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(upstream.executions("e2e-flaky"), 3, "{stderr}");
    let first: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(first["execution"], 3);

    // Run again: a replay, no new execution.
    let again = tokio::task::spawn_blocking({
        let mut cmd = send("e2e-flaky", &[]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    assert!(again.status.success());
    assert_eq!(again.stdout, out.stdout, "byte-identical replay");
    assert_eq!(upstream.executions("e2e-flaky"), 3);

    // A duplicate while the first is in flight: 409 request-in-progress is retried until
    // the first completes, then the replay is the answer.
    let client = TestClient::new();
    let slow = client.spawn_post(
        &orders,
        "e2e-busy",
        r#"{"a":1}"#,
        &[("x-test-delay-ms", "600")],
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let dup = tokio::task::spawn_blocking({
        let mut cmd = send("e2e-busy", &["--max-attempts", "10"]);
        move || cmd.output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&dup.stderr);
    assert!(dup.status.success(), "{stderr}");
    assert!(
        stderr.contains("409"),
        "the in-flight answer was seen and retried: {stderr}"
    );
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(
        dup.stdout,
        slow.body.to_vec(),
        "the retry got the first request's answer"
    );
    assert_eq!(upstream.executions("e2e-busy"), 1);
    gw.kill().unwrap();
    gw.wait().unwrap();
}

/// Two gateways on one SQLite file. The holder of a key is frozen (SIGSTOP, as a long GC
/// pause or a stalled VM would): its lease lapses, the other gateway takes the key over with a
/// new token, and when the frozen one wakes up its completion is refused, while its own client
/// still receives the answer its request produced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_holder_is_fenced_off_by_the_gateway_that_took_over() {
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared.db");
    let config = dir.path().join("oncely.toml");
    // Renewed every second: the holder's writer is idle when it is frozen right after its claim.
    std::fs::write(&config, "[defaults]\nlease = \"3s\"\n").unwrap();
    let (mut a, url_a) = serve(&upstream.url(), &db, Some(&config));
    let (mut b, url_b) = serve(&upstream.url(), &db, Some(&config));
    let client = TestClient::new();
    let body = r#"{"pay":1}"#;

    let held = client.spawn_post(
        &format!("{url_a}/orders"),
        "frozen",
        body,
        &[("x-test-delay-ms", "4500")],
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(crate::common::signal(a.id(), libc::SIGSTOP), 0);
    let frozen_at = Instant::now();

    let orders_b = format!("{url_b}/orders");
    let mut taken = client
        .post_keyed(&orders_b, "frozen", body, &[])
        .await
        .unwrap();
    while taken.status == 409 && frozen_at.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        taken = client
            .post_keyed(&orders_b, "frozen", body, &[])
            .await
            .unwrap();
    }
    assert_eq!(taken.status, 201, "{:?}", taken.body);
    assert!(
        !taken.replayed(),
        "the other gateway took the key over and executed"
    );
    assert_eq!(taken.json()["execution"], 2);

    assert_eq!(crate::common::signal(a.id(), libc::SIGCONT), 0);
    let late = held.await.unwrap().unwrap();
    assert_eq!(
        late.status, 201,
        "the frozen holder's client still gets its own answer"
    );
    assert_eq!(late.json()["execution"], 1);

    for url in [&url_a, &url_b] {
        let replay = client
            .post_keyed(&format!("{url}/orders"), "frozen", body, &[])
            .await
            .unwrap();
        assert!(replay.replayed());
        assert_eq!(
            replay.body, taken.body,
            "the stale completion was refused on {url}"
        );
    }
    assert_eq!(upstream.executions("frozen"), 2);
    for gw in [&mut a, &mut b] {
        gw.kill().unwrap();
        gw.wait().unwrap();
    }
}

/// Starts `oncely serve` with an admin listener on a free port; returns it with its base URL
/// and its admin URL (the two lines it prints).
fn serve_with_admin(
    upstream: &str,
    db: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (KillOnDrop, String, String) {
    let mut cmd = oncely();
    cmd.args(["--log-level", "error", "serve", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--upstream", upstream])
        .arg("--store")
        .arg(format!("sqlite://{}", db.display()))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = KillOnDrop(cmd.spawn().expect("spawn oncely serve"));
    let (url, admin) = listening_and_admin_urls(&mut child.0);
    (child, url, admin)
}

/// `oncely serve` prints where its admin listener is; `/metrics` there counts what the
/// gateway did, for the token only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_exposes_metrics_on_the_admin_listener() {
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = "process-test-token-0123456789";
    let db = dir.path().join("o.db");
    let (_child, url, admin) =
        serve_with_admin(&upstream.url(), &db, &[], &[("ONCELY_ADMIN_TOKEN", token)]);
    let client = TestClient::new();
    for _ in 0..3 {
        let a = client
            .post_keyed(&format!("{url}/orders"), "m-1", "{}", &[])
            .await
            .unwrap();
        assert_eq!(a.status, 201);
    }
    let refused = client
        .send("GET", &format!("{admin}/metrics"), &[], "")
        .await
        .unwrap();
    assert_eq!(refused.status, 401);
    let auth = format!("Bearer {token}");
    let page = client
        .send(
            "GET",
            &format!("{admin}/metrics"),
            &[("authorization", &auth)],
            "",
        )
        .await
        .unwrap();
    assert_eq!(page.status, 200);
    let page = String::from_utf8(page.body.to_vec()).unwrap();
    assert!(
        page.contains("oncely_requests_total{outcome=\"executed\"} 1\n"),
        "{page}"
    );
    assert!(
        page.contains("oncely_requests_total{outcome=\"replayed\"} 2\n"),
        "{page}"
    );
}

/// JSON logs carry the request's correlation ids, so one request's lines can be found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_request() {
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut child = oncely()
        .args([
            "--log-level",
            "oncely_http=debug,warn",
            "--log-format",
            "json",
        ])
        .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "off"])
        .args(["--upstream", &upstream.url()])
        .arg("--store")
        .arg(format!("sqlite://{}", dir.path().join("o.db").display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let url = listening_url(&mut child);
    let client = TestClient::new();
    let a = client
        .post_keyed(
            &format!("{url}/orders"),
            "log-1",
            "{}",
            &[("x-request-id", "log-test-request-7")],
        )
        .await
        .unwrap();
    assert_eq!(a.status, 201);
    tokio::time::sleep(Duration::from_millis(200)).await;
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let logs = String::from_utf8_lossy(&out.stderr);
    let line = logs
        .lines()
        .find(|l| l.contains("idempotency outcome"))
        .unwrap_or_else(|| panic!("no outcome line in\n{logs}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
    assert_eq!(v["span"]["request_id"], "log-test-request-7", "{line}");
    assert!(
        v["span"]["trace_id"]
            .as_str()
            .is_some_and(|t| t.len() == 32),
        "{line}"
    );
}

/// `oncely keys` against a running gateway: get, list, evict, and clear one-line errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oncely_keys_inspects_and_evicts_through_the_admin_listener() {
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = "keys-test-token-0123456789";
    let db = dir.path().join("o.db");
    let (child, url, admin) =
        serve_with_admin(&upstream.url(), &db, &["--admin-token", token], &[]);
    let client = TestClient::new();
    let a = client
        .post_keyed(
            &format!("{url}/orders"),
            "k/1",
            "{}",
            &[("authorization", "Bearer sk_live_1")],
        )
        .await
        .unwrap();
    assert_eq!(a.status, 201);

    let keys = |args: &[&str], token: &str| {
        let out = oncely()
            .args(["keys", "--admin", &admin, "--admin-token", token])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let who = ["--route", "/orders", "--authorization", "Bearer sk_live_1"];
    let (code, stdout, stderr) = keys(&[&["get", "k/1"][..], &who].concat(), token);
    assert_eq!(code, Some(0), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["state"], "completed");
    assert_eq!(v["status"], 201);
    assert!(v["tenant"].as_str().unwrap().starts_with("auth:"));
    assert!(
        !stdout.contains("sk_live_1"),
        "the credential is never shown"
    );

    let (code, stdout, _) = keys(&["list"], token);
    assert_eq!(code, Some(0));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["in_progress"],
        serde_json::json!([])
    );
    let (code, stdout, _) = keys(&["stats"], token);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("\"completed\": 1"), "{stdout}");

    let (code, _, stderr) = keys(&[&["evict", "k/1"][..], &who].concat(), token);
    assert_eq!(code, Some(0), "{stderr}");
    let (code, _, stderr) = keys(&[&["get", "k/1"][..], &who].concat(), token);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("no live record"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    // The next request with the key executes again.
    let again = client
        .post_keyed(
            &format!("{url}/orders"),
            "k/1",
            "{}",
            &[("authorization", "Bearer sk_live_1")],
        )
        .await
        .unwrap();
    assert!(!again.replayed());
    assert_eq!(upstream.executions("k/1"), 2);

    let (code, _, stderr) = keys(&["list"], "a-wrong-token-0123456789");
    assert_eq!(code, Some(1));
    assert!(stderr.contains("refused the token"), "{stderr}");
    let (code, _, stderr) = keys(&["get", "k/1", "--route", "/orders"], token);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("name the key's tenant"), "{stderr}");
    drop(child);
    let out = oncely()
        .args(["keys", "--admin", &admin, "list"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the admin listener"));
}

/// Starts `oncely serve` with nothing but `--listen`, `--upstream`, `--store` and `extra`:
/// the defaults an operator gets. Returns it with its base URL; stderr is kept for reading.
fn serve_defaults(upstream: &str, store: &str, extra: &[&str]) -> (KillOnDrop, String) {
    let mut child = oncely()
        .args(["--log-level", "warn", "serve", "--listen", "127.0.0.1:0"])
        .args(["--upstream", upstream, "--store", store])
        .args(extra)
        .env_remove("ONCELY_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn oncely serve");
    let url = listening_url(&mut child);
    (KillOnDrop(child), url)
}

/// Stops the gateway and returns what it wrote on stderr.
fn stderr_of(mut gateway: KillOnDrop) -> String {
    use std::io::Read;
    let mut stderr = gateway.0.stderr.take().expect("stderr piped");
    let _ = gateway.0.kill();
    let _ = gateway.0.wait();
    let mut text = String::new();
    let _ = stderr.read_to_string(&mut text);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_with_default_flags_run_side_by_side() {
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let default_admin = "127.0.0.1:7979";
    let admin_was_free = std::net::TcpListener::bind(default_admin).is_ok();
    let client = TestClient::new();

    let (first, first_url) = serve_defaults(&upstream.url(), &store("a.db"), &[]);
    let (second, second_url) = serve_defaults(&upstream.url(), &store("b.db"), &[]);
    for (url, key) in [(&first_url, "on-first"), (&second_url, "on-second")] {
        let a = client
            .post_keyed(&format!("{url}/orders"), key, "{}", &[])
            .await
            .unwrap();
        assert_eq!(a.status, 201, "{url} serves");
    }
    if admin_was_free {
        let health = client
            .send("GET", &format!("http://{default_admin}/healthz"), &[], "")
            .await
            .unwrap();
        assert_eq!(
            health.status, 200,
            "the first gateway has the default admin"
        );
    }
    // Asked for explicitly, a taken admin address is still an error.
    let taken = oncely()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.url(),
        ])
        .args(["--store", &store("c.db"), "--admin-listen", default_admin])
        .env_remove("ONCELY_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!taken.status.success());
    let why = String::from_utf8_lossy(&taken.stderr);
    assert!(
        why.contains("cannot listen on 127.0.0.1:7979 (admin)"),
        "{why}"
    );
    // Once the first is gone (a rolling restart), the second takes the default address.
    drop(first);
    if admin_was_free {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let health = client
                .send("GET", &format!("http://{default_admin}/healthz"), &[], "")
                .await;
            if health.is_ok_and(|h| h.status == 200) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the second gateway never took the freed admin address"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let warned = stderr_of(second);
    assert!(
        warned.contains("default admin address is in use"),
        "the second gateway says why it has no admin listener: {warned}"
    );
}

/// Resident memory of a process now and at its peak, in bytes, as the kernel counts it.
fn resident_bytes(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// `requests` keyed POSTs with unique keys, `concurrency` at a time.
async fn unique_keyed_load(url: &str, requests: usize, concurrency: usize, tag: &str) {
    let client = TestClient::new();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, next, url, tag) =
                (client.clone(), next.clone(), url.to_owned(), tag.to_owned());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= requests {
                        return;
                    }
                    let key = format!("{tag}-{i:08}-0190a5c8-7d3e-7000-8f00");
                    let a = client
                        .post_keyed(&url, &key, r#"{"sku":"abc","qty":1}"#, &[])
                        .await
                        .unwrap();
                    assert_eq!(a.status, 201);
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

/// The replay cache is bounded by memory actually held: after filling the cache several
/// times over, the gateway's peak RSS is its resident size after warming up plus the bound
/// plus a little allocator slack. (Before the bound was honest, each entry kept a whole
/// 8 KiB read buffer and the peak grew by about 5.5 KiB per request.)
async fn memory_stays_within_the_replay_cache_bound(store: &str) {
    const BOUND: u64 = 8 << 20;
    let requests: usize = std::env::var("ONCELY_MEMORY_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40_000);
    let upstream = CountingUpstream::start().await;
    let (gateway, url) = serve_defaults(
        &upstream.url(),
        store,
        &["--admin-listen", "off", "--replay-cache", "8MiB"],
    );
    let orders = format!("{url}/orders");
    let pid = gateway.0.id();
    unique_keyed_load(&orders, 3_000, 32, "warm").await;
    let (warm, _) = resident_bytes(pid);
    unique_keyed_load(&orders, requests, 32, "load").await;
    let (now, peak) = resident_bytes(pid);
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "{store}: after warm-up {:.1} MiB; after {requests} unique keyed requests {:.1} MiB, peak {:.1} MiB (cache bound {:.0} MiB)",
        mib(warm), mib(now), mib(peak), mib(BOUND)
    );
    let slack = 8 << 20;
    assert!(
        peak <= warm + BOUND + slack,
        "peak RSS {:.1} MiB exceeds {:.1} MiB after warm-up + {:.0} MiB cache + {:.0} MiB slack",
        mib(peak),
        mib(warm),
        mib(BOUND),
        mib(slack)
    );
    // And the gateway still answers as before: a recent key replays.
    let last = format!("load-{:08}-0190a5c8-7d3e-7000-8f00", requests - 1);
    let replay = TestClient::new()
        .post_keyed(&orders, &last, r#"{"sku":"abc","qty":1}"#, &[])
        .await
        .unwrap();
    assert!(replay.replayed());
    drop(gateway);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_gateway_memory_stays_within_the_replay_cache_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("o.db").display());
    memory_stays_within_the_replay_cache_bound(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_gateway_memory_stays_within_the_replay_cache_bound() {
    let Some(store) = redis("redis_gateway_memory_stays_within_the_replay_cache_bound") else {
        return;
    };
    memory_stays_within_the_replay_cache_bound(&store.url).await;
}
