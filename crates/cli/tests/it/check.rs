//! `oncely check` both ways. Broken targets fail the property made for them: no idempotency
//! at all, a check-then-insert without atomicity, a cache keyed without the tenant, a proxy
//! that stores 500s. `oncely serve` passes every property on SQLite, PostgreSQL and Redis,
//! with its upstream failing now and then, the gateway killed and restarted mid-run and a
//! fault proxy dropping answers and resetting connections in front of it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::{oncely, postgres, redis, serve, KillOnDrop};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const BODY: &str = r#"{"reference":"{reference}","amount":{amount}}"#;

/// Runs `oncely check` with `args`: whether it passed, and what it printed.
fn check(args: &[&str]) -> (bool, String) {
    let out = oncely()
        .arg("check")
        .args(args)
        .args(["--body", BODY, "--seed", "7"])
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn passes_all(out: &str) {
    for p in oncely_core::check::Property::ALL {
        assert!(
            out.contains(&format!("PASS  {}", p.as_str())),
            "{p:?}: {out}"
        );
    }
    assert!(out.contains("verdict: every property held"), "{out}");
}

#[test]
fn a_target_without_idempotency_fails_and_the_gateway_passes() {
    let dir = tempfile::tempdir().unwrap();

    // No idempotency: the recorder itself is the target.
    let port = free_port();
    let history = dir.path().join("broken.jsonl");
    let url = format!("http://127.0.0.1:{port}");
    let upstream = format!("127.0.0.1:{port}");
    let (ok, out) = check(&[
        "--target",
        &url,
        "--path",
        "/payments",
        "--keys",
        "8",
        "--repeats",
        "4",
        "--concurrency",
        "12",
        "--parallel",
        "1",
        "--upstream-listen",
        &upstream,
        "--history",
        history.to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  at_most_one_effect"), "{out}");
    assert!(out.contains("FAIL  identical_successes"), "{out}");
    assert!(
        out.contains("took effect 4 times"),
        "the sequential key ran each time: {out}"
    );
    // Twice or more each: both sequential keys, both concurrent ones, the respelled, the
    // chunked, and the retry after a timeout.
    assert!(
        out.contains("9 checked, 7 violated"),
        "every key sent more than once ran again: {out}"
    );
    assert!(out.contains("verdict: FAILED"), "{out}");
    let text = std::fs::read_to_string(&history).unwrap();
    let events = oncely_core::check::history::parse(&text).unwrap();
    let ops = oncely_core::check::history::operations(&events).unwrap();
    // sequential 4, concurrent 12 + 1, other body 2, respelled 2, chunked 2, timeout 2,
    // sequential 4, concurrent 13 (no tenants workload without tenants): every reference
    // settles at its first success.
    assert_eq!(ops.len(), 42, "every operation is in the history");

    // The gateway in front of the same kind of recorder, which fails a third of first
    // deliveries with a 500 the gateway must not store.
    let port = free_port();
    let db = dir.path().join("oncely.db");
    let (gw, url) = serve(&format!("http://127.0.0.1:{port}"), &db, None);
    let _gw = KillOnDrop(gw);
    let html = dir.path().join("report.html");
    let upstream = format!("127.0.0.1:{port}");
    let (ok, out) = check(&[
        "--target",
        &url,
        "--path",
        "/payments",
        "--keys",
        "21",
        "--repeats",
        "4",
        "--concurrency",
        "12",
        "--upstream-listen",
        &upstream,
        "--upstream-errors",
        "0.3",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    passes_all(&out);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("id=\"op-1\""), "every operation is drawn");
    assert!(page.contains("key_recovers"));

    // An upstream that honours the forwarded key does not hide a target without
    // idempotency: nothing excuses its second deliveries.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let upstream = format!("127.0.0.1:{port}");
    let (ok, out) = check(&[
        "--target",
        &url,
        "--keys",
        "2",
        "--workloads",
        "sequential",
        "--upstream-listen",
        &upstream,
        "--upstream-dedupe",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  at_most_one_effect"), "{out}");

    // A run where nothing succeeds proves nothing: an error, not a pass.
    let (ok, out) = check(&[
        "--target",
        &format!("http://127.0.0.1:{}", free_port()),
        "--keys",
        "1",
        "--workloads",
        "sequential",
        "--settle",
        "200ms",
        "--ledger",
        "http://127.0.0.1:9",
    ]);
    assert!(!ok, "{out}");
    assert!(out.contains("no request succeeded"), "{out}");

    // Bad input: one line, non-zero.
    for (target, body, extra, says) in [
        ("ftp://x", "{}", "--seed=1", "--target ftp://x"),
        ("http://127.0.0.1:9", "{}", "--seed=1", "{reference}"),
        (
            "http://127.0.0.1:9",
            BODY,
            "--workloads=sequential,nope",
            "--workloads nope",
        ),
        ("http://127.0.0.1:9", BODY, "--faults=melt", "--faults melt"),
        (
            "http://127.0.0.1:9",
            BODY,
            "--workloads=tenants",
            "the tenants workload needs",
        ),
    ] {
        let out = oncely()
            .args(["check", "--target", target, "--body", body, extra])
            .args(["--ledger", "http://127.0.0.1:9"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    // A fault setting without --faults is refused, not silently ignored.
    let out = oncely()
        .args(["check", "--target", "http://127.0.0.1:9", "--body", BODY])
        .args(["--fault-rate", "0.5", "--ledger", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--faults"));
}

#[derive(Default)]
struct Broken {
    answers: Mutex<HashMap<String, (u16, String)>>,
    effects: Mutex<HashMap<String, u64>>,
}

fn header(headers: &http::HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// Targets that are broken on purpose, one route each, with a ledger of their effects.
async fn broken_targets() -> String {
    let broken = Arc::new(Broken::default());
    let (b1, b2, b3, b4) = (
        broken.clone(),
        broken.clone(),
        broken.clone(),
        broken.clone(),
    );
    let act = |b: &Broken, body: &str| {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        let reference = v["reference"].as_str().unwrap().to_owned();
        *b.effects
            .lock()
            .unwrap()
            .entry(reference.clone())
            .or_default() += 1;
        serde_json::json!({ "reference": reference }).to_string()
    };
    let app = axum::Router::new()
        // Remembers answers by key alone, forgetting the tenant.
        .route(
            "/tenant-blind",
            axum::routing::post(move |headers: http::HeaderMap, body: String| {
                let b = b1.clone();
                async move {
                    let key = header(&headers, "idempotency-key");
                    let mut answers = b.answers.lock().unwrap();
                    if let Some((_, a)) = answers.get(&key) {
                        return (http::StatusCode::CREATED, a.clone());
                    }
                    let a = act(&b, &body);
                    answers.insert(key, (201, a.clone()));
                    (http::StatusCode::CREATED, a)
                }
            }),
        )
        // Looks the key up, does the work, then stores the key: two copies at once both
        // find nothing.
        .route(
            "/check-then-insert",
            axum::routing::post(move |headers: http::HeaderMap, body: String| {
                let b = b2.clone();
                async move {
                    let key = format!("racy/{}", header(&headers, "idempotency-key"));
                    let known = b.answers.lock().unwrap().get(&key).cloned();
                    if let Some((_, a)) = known {
                        return (http::StatusCode::CREATED, a);
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let a = act(&b, &body);
                    b.answers.lock().unwrap().insert(key, (201, a.clone()));
                    (http::StatusCode::CREATED, a)
                }
            }),
        )
        // A caching proxy that stores every answer, a 500 as well as a 201, in front of an
        // upstream whose first attempt fails for every key with an even number.
        .route(
            "/stores-500",
            axum::routing::post(move |headers: http::HeaderMap, body: String| {
                let b = b3.clone();
                async move {
                    let key = format!("proxy/{}", header(&headers, "idempotency-key"));
                    let mut answers = b.answers.lock().unwrap();
                    let (status, a) = answers
                        .entry(key.clone())
                        .or_insert_with(|| {
                            let even = key.ends_with(['0', '2', '4', '6', '8']);
                            if even {
                                (500, r#"{"error":"transient"}"#.to_owned())
                            } else {
                                (201, act(&b, &body))
                            }
                        })
                        .clone();
                    (http::StatusCode::from_u16(status).unwrap(), a)
                }
            }),
        )
        .route(
            "/ledger",
            axum::routing::get(move |q: axum::extract::Query<HashMap<String, String>>| {
                let b = b4.clone();
                async move {
                    let r = q.get("reference").cloned().unwrap_or_default();
                    let n = b.effects.lock().unwrap().get(&r).copied().unwrap_or(0);
                    serde_json::json!({ "count": n }).to_string()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// Each broken target fails the property made for it, and names what broke it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_target_fails_its_property() {
    let url = broken_targets().await;
    let run = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            check(&args)
        })
    };
    let ledger = format!("{url}/ledger");
    let args = |path: &str, extra: &[&str]| {
        let mut a: Vec<String> = ["--target", &url, "--path", path]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };

    let (ok, out) = run(args(
        "/tenant-blind",
        &[
            "--keys",
            "4",
            "--workloads",
            "tenants",
            "--tenant-header",
            "x-tenant",
            "--tenants",
            "acme,globex",
            "--ledger",
            &ledger,
        ],
    ))
    .await
    .unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  no_foreign_result"), "{out}");
    assert!(
        out.contains("tenant globex"),
        "the second tenant got the first's answer: {out}"
    );
    assert!(out.contains("FAIL  no_phantom_success"), "{out}");
    assert!(out.contains("PASS  at_most_one_effect"), "{out}");

    let (ok, out) = run(args(
        "/check-then-insert",
        &[
            "--keys",
            "2",
            "--parallel",
            "1",
            "--workloads",
            "concurrent",
            "--concurrency",
            "10",
            "--ledger",
            &ledger,
        ],
    ))
    .await
    .unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  at_most_one_effect"), "{out}");
    assert!(
        out.contains("took effect 10 times"),
        "every copy ran: {out}"
    );

    let (ok, out) = run(args(
        "/stores-500",
        &[
            "--keys",
            "6",
            "--workloads",
            "sequential",
            "--repeats",
            "2",
            "--settle",
            "1s",
            "--ledger",
            &ledger,
        ],
    ))
    .await
    .unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  key_recovers"), "{out}");
    assert!(
        out.contains("never settled: its last answers were 500, 500"),
        "{out}"
    );
    assert!(out.contains("PASS  at_most_one_effect"), "{out}");
}

/// A gateway whose process the check can kill and start again on one port.
struct Restartable {
    dir: tempfile::TempDir,
    port: u16,
    start: String,
}

impl Restartable {
    fn new(upstream_port: u16, store: &str) -> Restartable {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("oncely.toml");
        std::fs::write(&config, "[defaults]\nlease = \"2s\"\n").unwrap();
        let start = format!(
            "'{bin}' --log-level warn serve --listen 127.0.0.1:{port} --admin-listen 127.0.0.1:0 \
             --upstream http://127.0.0.1:{upstream_port} --store '{store}' --config '{config}' \
             >>'{log}' 2>&1 & echo $! > '{pid}'",
            bin = env!("CARGO_BIN_EXE_oncely"),
            config = config.display(),
            log = dir.path().join("gateway.log").display(),
            pid = dir.path().join("pid").display(),
        );
        Restartable { dir, port, start }
    }

    fn kill(&self) -> String {
        format!("kill -9 $(cat '{}')", self.dir.path().join("pid").display())
    }

    fn start_and_wait(&self) {
        assert!(std::process::Command::new("sh")
            .args(["-c", &self.start])
            .status()
            .unwrap()
            .success());
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("the gateway did not start: {}", self.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .args(["-c", &self.kill()])
            .status();
    }
}

/// The gateway on `store`, killed twice and restarted mid-run, with a fault proxy in front
/// of it dropping answers and resetting connections: every property holds, and the report
/// says how long it took to work again.
fn survives_the_nemesis(store: &str) {
    let upstream_port = free_port();
    let gw = Restartable::new(upstream_port, store);
    // The recorder must be up before the gateway forwards anything; the check starts it, so
    // the gateway starts first and only answers once the attack runs.
    gw.start_and_wait();
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history.jsonl");
    let html = dir.path().join("report.html");
    let (ok, out) = check(&[
        "--target",
        &format!("http://127.0.0.1:{}", gw.port),
        "--path",
        "/payments",
        "--keys",
        "28",
        "--mix",
        "--concurrency",
        "8",
        "--upstream-listen",
        &format!("127.0.0.1:{upstream_port}"),
        "--upstream-dedupe",
        "--kill-cmd",
        &gw.kill(),
        "--start-cmd",
        &gw.start,
        "--nemesis-every",
        "700ms",
        "--down-for",
        "300ms",
        "--nemesis-max",
        "2",
        "--faults",
        "drop-response,reset",
        "--fault-rate",
        "0.2",
        "--fault-max",
        "6",
        "--history",
        history.to_str().unwrap(),
        "--html",
        html.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\ngateway log:\n{}", gw.log());
    passes_all(&out);
    assert!(out.contains("nemesis: 2 kill 2 start"), "{out}");
    assert_eq!(
        out.matches("crash at +").count(),
        2,
        "a recovery time per kill: {out}"
    );
    assert!(!out.contains("NOT working again"), "{out}");
    let events =
        oncely_core::check::history::parse(&std::fs::read_to_string(&history).unwrap()).unwrap();
    let faults = oncely_core::check::history::faults(&events);
    assert!(
        faults.iter().any(|f| matches!(
            f.kind,
            oncely_core::check::FaultKind::DropResponse | oncely_core::check::FaultKind::Reset
        )),
        "the proxy spoiled connections: {faults:?}"
    );
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.contains("<g class=\"fault crash\"><title>kill at +"),
        "the kills are marked in the timeline"
    );
}

#[test]
fn the_gateway_on_sqlite_survives_kills_and_a_faulty_network() {
    let dir = tempfile::tempdir().unwrap();
    survives_the_nemesis(&format!(
        "sqlite://{}",
        dir.path().join("oncely.db").display()
    ));
}

#[test]
fn the_gateway_on_postgres_survives_kills_and_a_faulty_network() {
    let Some(store) = postgres("check on postgres") else {
        return;
    };
    survives_the_nemesis(&store.url);
}

#[test]
fn the_gateway_on_redis_survives_kills_and_a_faulty_network() {
    let Some(store) = redis("check on redis") else {
        return;
    };
    survives_the_nemesis(&store.url);
}

/// A private Redis on a free port whose data survives a `SHUTDOWN SAVE` and a restart.
struct PrivateRedis {
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivateRedis {
    fn start() -> Option<PrivateRedis> {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let r = PrivateRedis { dir, port };
        let ok = std::process::Command::new("sh")
            .args(["-c", &r.start_cmd()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return None;
        }
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(r);
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        None
    }

    fn start_cmd(&self) -> String {
        format!(
            "redis-server --port {} --bind 127.0.0.1 --dir '{}' --save '' --daemonize yes \
             --logfile '{}'",
            self.port,
            self.dir.path().display(),
            self.dir.path().join("redis.log").display()
        )
    }

    fn stop_cmd(&self) -> String {
        format!("redis-cli -p {} shutdown save", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = std::process::Command::new("sh")
            .args(["-c", &format!("redis-cli -p {} shutdown nosave", self.port)])
            .output();
    }
}

/// The gateway's Redis stopped and started twice mid-run: every property holds (the
/// gateway fails closed while it is away) and each outage has its recovery time.
#[test]
fn the_gateway_survives_outages_of_its_store() {
    if oncely_testkit::services::Service::Redis
        .available("check with store outages (needs redis-server)")
        .is_none()
    {
        return;
    }
    let redis = PrivateRedis::start().expect("a private redis-server");
    let upstream_port = free_port();
    let gw = Restartable::new(upstream_port, &format!("redis://127.0.0.1:{}", redis.port));
    gw.start_and_wait();
    let (ok, out) = check(&[
        "--target",
        &format!("http://127.0.0.1:{}", gw.port),
        "--path",
        "/payments",
        "--keys",
        "14",
        "--concurrency",
        "8",
        "--upstream-listen",
        &format!("127.0.0.1:{upstream_port}"),
        "--upstream-dedupe",
        "--store-stop-cmd",
        &redis.stop_cmd(),
        "--store-start-cmd",
        &redis.start_cmd(),
        "--nemesis-every",
        "500ms",
        "--down-for",
        "500ms",
        "--nemesis-max",
        "2",
    ]);
    assert!(ok, "{out}\ngateway log:\n{}", gw.log());
    passes_all(&out);
    assert!(out.contains("nemesis: 2 store-stop 2 store-start"), "{out}");
    assert_eq!(out.matches("crash at +").count(), 2, "{out}");
    assert!(!out.contains("NOT working again"), "{out}");
}

/// Effects counted in the system's own database: a target that inserts a row per request
/// and nothing more is caught by a count over its table, on SQLite and on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn effects_are_counted_by_a_query_against_the_systems_database() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shop.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("PRAGMA journal_mode=WAL; CREATE TABLE charges (reference TEXT NOT NULL);")
        .unwrap();
    let conn = Arc::new(Mutex::new(conn));
    let pg = match crate::common::postgres("check effects in postgres") {
        Some(store) => {
            let base = store.url.split('?').next().unwrap().to_owned();
            let (client, connection) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(connection);
            let table = oncely_testkit::services::unique_name("check_charges");
            client
                .batch_execute(&format!("CREATE TABLE {table} (reference TEXT NOT NULL)"))
                .await
                .unwrap();
            Some((Arc::new(client), table, base, store))
        }
        None => None,
    };
    let pg_target = pg.as_ref().map(|(c, t, _, _)| (c.clone(), t.clone()));
    let app = axum::Router::new().route(
        "/charges",
        axum::routing::post(move |body: String| {
            let (conn, pg) = (conn.clone(), pg_target.clone());
            async move {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                let reference = v["reference"].as_str().unwrap().to_owned();
                conn.lock()
                    .unwrap()
                    .execute("INSERT INTO charges VALUES (?1)", [&reference])
                    .unwrap();
                if let Some((client, table)) = pg {
                    client
                        .execute(&format!("INSERT INTO {table} VALUES ($1)"), &[&reference])
                        .await
                        .unwrap();
                }
                (http::StatusCode::CREATED, body)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let mut counters = vec![(
        format!("sqlite://{}", db.display()),
        "SELECT count(*) FROM charges WHERE reference = ?1".to_owned(),
    )];
    if let Some((_, table, base, _)) = &pg {
        counters.push((
            base.clone(),
            format!("SELECT count(*) FROM {table} WHERE reference = $1"),
        ));
    }
    for (effects_db, query) in counters {
        let url = url.clone();
        let (ok, out) = tokio::task::spawn_blocking(move || {
            check(&[
                "--target",
                &url,
                "--path",
                "/charges",
                "--keys",
                "2",
                "--workloads",
                "sequential",
                "--repeats",
                "3",
                "--effects-db",
                &effects_db,
                "--effects-query",
                &query,
            ])
        })
        .await
        .unwrap();
        assert!(!ok, "{out}");
        assert!(out.contains("took effect 3 times"), "{out}");
    }
    // A query that does not answer a number is a clear error.
    let (ok, out) = tokio::task::spawn_blocking(move || {
        check(&[
            "--target",
            &url,
            "--path",
            "/charges",
            "--keys",
            "1",
            "--workloads",
            "sequential",
            "--effects-db",
            &format!("sqlite://{}", db.display()),
            "--effects-query",
            "SELECT reference FROM charges WHERE reference = ?1",
        ])
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(out.contains("counting effects: the effects query"), "{out}");
}

/// The fault proxy between the gateway and its upstream, delaying answers and swallowing
/// requests: the gateway holds an unanswered key for its lease and then forwards it again,
/// which the upstream sees as a first delivery; every property holds without an upstream
/// that deduplicates.
#[test]
fn the_gateway_survives_a_faulty_upstream_network() {
    let dir = tempfile::tempdir().unwrap();
    let upstream_port = free_port();
    let gw = Restartable::new(
        upstream_port,
        &format!("sqlite://{}", dir.path().join("oncely.db").display()),
    );
    gw.start_and_wait();
    let history = dir.path().join("history.jsonl");
    let (ok, out) = check(&[
        "--target",
        &format!("http://127.0.0.1:{}", gw.port),
        "--path",
        "/payments",
        "--keys",
        "14",
        "--concurrency",
        "6",
        "--upstream-listen",
        &format!("127.0.0.1:{upstream_port}"),
        "--faults",
        "delay,black-hole",
        "--fault-between",
        "upstream",
        "--fault-rate",
        "0.3",
        "--fault-max",
        "4",
        "--fault-hold",
        "700ms",
        "--history",
        history.to_str().unwrap(),
    ]);
    assert!(ok, "{out}\ngateway log:\n{}", gw.log());
    passes_all(&out);
    let events =
        oncely_core::check::history::parse(&std::fs::read_to_string(&history).unwrap()).unwrap();
    let kinds: Vec<_> = oncely_core::check::history::faults(&events)
        .into_iter()
        .map(|f| f.kind)
        .collect();
    assert!(
        !kinds.is_empty() && kinds.len() <= 4,
        "the proxy spoiled connections, within its bound: {kinds:?}"
    );
}
