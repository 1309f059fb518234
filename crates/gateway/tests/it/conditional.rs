//! Preconditions at the gateway, for any upstream: a route with `precondition = "required"`
//! answers 428 at the edge (nothing claimed, nothing forwarded), a malformed `If-Match` 400,
//! and everything else passes through untouched to an upstream that does its own optimistic
//! concurrency, so that a retried conditional write replays its first success.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use oncely_conditional::{sqlite, Conditional, Refusal, Table, Versioned};
use oncely_core::{Clock, SystemClock};
use oncely_gateway::{Config, Gateway, RunningGateway};
use oncely_open::StoreUrl;
use oncely_testkit::TestClient;

const DOCS: Table = Table::new("docs", "id", "title");
const JSON: (&str, &str) = ("content-type", "application/json");

#[derive(Clone)]
struct Upstream {
    db: Arc<Mutex<rusqlite::Connection>>,
    writes: Arc<AtomicU64>,
}

fn title(row: &rusqlite::Row<'_>) -> rusqlite::Result<serde_json::Value> {
    Ok(serde_json::json!({ "title": row.get::<_, String>(0)? }))
}

async fn read(
    State(u): State<Upstream>,
    cond: Conditional,
    Path(id): Path<String>,
) -> Result<Versioned<serde_json::Value>, Refusal> {
    let current = sqlite::read(&u.db.lock().unwrap(), &DOCS, &id, title).unwrap();
    cond.read(current)
}

/// Writes whatever precondition came, including none (the gateway is what refuses blind
/// writes here), and counts each execution.
async fn write(
    State(u): State<Upstream>,
    cond: Conditional,
    Path(id): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Result<Versioned<serde_json::Value>, Refusal> {
    u.writes.fetch_add(1, Ordering::SeqCst);
    let guard = cond.guard();
    let conn = u.db.lock().unwrap();
    let change = sqlite::Change {
        by: None,
        at: SystemClock.now(),
    };
    let t = body["title"].as_str().unwrap_or_default().to_owned();
    if guard.must_be_absent {
        let created = sqlite::create(&conn, &DOCS, &id, "?1", &[&t], change, title);
        return cond.written(created).map(Versioned::created);
    }
    let updated = sqlite::update(
        &conn,
        &DOCS,
        &id,
        &guard,
        "title = ?1",
        &[&t],
        change,
        title,
    );
    cond.written(updated)
}

struct Setup {
    gateway: RunningGateway,
    upstream: Upstream,
    client: TestClient,
    _dir: tempfile::TempDir,
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr())
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        title: &str,
    ) -> oncely_testkit::Answer {
        let mut h = vec![JSON];
        h.extend_from_slice(headers);
        let body = serde_json::to_vec(&serde_json::json!({ "title": title })).unwrap();
        self.client
            .send(method, &self.url(path), &h, body)
            .await
            .unwrap()
    }

    fn writes(&self) -> u64 {
        self.upstream.writes.load(Ordering::SeqCst)
    }

    fn claims(&self) -> u64 {
        self.gateway.store_metrics().count("claim")
    }
}

async fn setup(toml: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("upstream.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE docs (id TEXT PRIMARY KEY, title TEXT NOT NULL, version INTEGER NOT NULL,
             changed_at INTEGER NOT NULL, changed_by TEXT)",
    )
    .unwrap();
    let upstream = Upstream {
        db: Arc::new(Mutex::new(conn)),
        writes: Arc::new(AtomicU64::new(0)),
    };
    let app = Router::new()
        .route("/docs/{id}", get(read).put(write).post(write).delete(write))
        .route("/free/{id}", get(read).put(write))
        .with_state(upstream.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(upstream_url.parse().unwrap()),
        StoreUrl::sqlite(dir.path().join("oncely.db")),
    )
    .apply_toml(toml)
    .expect("test config");
    config.validate().expect("valid config");
    let gateway = Gateway::open(config).await.unwrap().start().await.unwrap();
    Setup {
        gateway,
        upstream,
        client: TestClient::new(),
        _dir: dir,
    }
}

const REQUIRED: &str = r#"
    [[routes]]
    path = "/docs/{id}"
    precondition = "required"
"#;

#[tokio::test]
async fn a_required_precondition_is_enforced_at_the_edge() {
    let s = setup(REQUIRED).await;
    let created = s
        .send("PUT", "/docs/a", &[("if-none-match", "*")], "first")
        .await;
    assert_eq!(created.status, 201);
    assert_eq!(
        created.header("etag"),
        Some("\"v1\""),
        "ETag passed through"
    );
    assert_eq!(s.writes(), 1);

    for key in [None, Some("blind-1")] {
        let claims = s.claims();
        let mut headers = Vec::new();
        if let Some(k) = key {
            headers.push(("idempotency-key", k));
        }
        let blind = s.send("PUT", "/docs/a", &headers, "blind").await;
        assert_eq!(blind.status, 428, "key {key:?}");
        assert_eq!(
            blind.header("content-type"),
            Some("application/problem+json")
        );
        let body = blind.json();
        assert_eq!(body["type"], "urn:oncely:problem:precondition-required");
        assert!(
            body["request_id"].is_string(),
            "gateway problems name their request"
        );
        assert_eq!(s.claims(), claims, "nothing claimed for a refused write");
    }
    let patch = s.send("PATCH", "/docs/a", &[], "blind").await;
    assert_eq!(patch.status, 428);
    let delete = s.send("DELETE", "/docs/a", &[], "").await;
    assert_eq!(delete.status, 428);
    let garbage = s
        .send("PUT", "/docs/a", &[("if-match", "v1")], "garbage")
        .await;
    assert_eq!(garbage.status, 400);
    assert_eq!(
        garbage.json()["type"],
        "urn:oncely:problem:invalid-precondition"
    );
    assert_eq!(s.writes(), 1, "no refused write reached the upstream");

    // Reads, POST (not an update method by default) and other routes pass.
    let read = s
        .client
        .send("GET", &s.url("/docs/a"), &[], "")
        .await
        .unwrap();
    assert_eq!(read.status, 200);
    assert_eq!(read.header("etag"), Some("\"v1\""));
    let post = s
        .send("POST", "/docs/b", &[("if-none-match", "*")], "posted")
        .await;
    assert_eq!(post.status, 201);
    let free = s
        .send("PUT", "/free/c", &[("if-none-match", "*")], "c")
        .await;
    assert_eq!(free.status, 201);
    let free = s.send("PUT", "/free/c", &[], "blind is allowed here").await;
    assert_eq!(free.status, 200, "no precondition required on /free");

    // With If-Match the write goes through, and the upstream decides: stale gets its 412.
    let ok = s
        .send("PUT", "/docs/a", &[("if-match", "\"v1\"")], "second")
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("etag"), Some("\"v2\""));
    let stale = s
        .send("PUT", "/docs/a", &[("if-match", "\"v1\"")], "third")
        .await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.json()["current"]["title"], "second");
}

#[tokio::test]
async fn methods_and_an_ignored_key_are_configurable() {
    let s = setup(
        r#"
        [[routes]]
        path = "/docs/{id}"
        key = "ignored"
        precondition = "required"
        precondition_methods = ["POST"]
        "#,
    )
    .await;
    let post = s.send("POST", "/docs/x", &[], "blind").await;
    assert_eq!(
        post.status, 428,
        "POST is the listed method; the ignored key does not matter"
    );
    let put = s
        .send("PUT", "/docs/x", &[("if-none-match", "*")], "created")
        .await;
    assert_eq!(put.status, 201);
    let put = s
        .send("PUT", "/docs/x", &[], "blind put is not listed")
        .await;
    assert_eq!(put.status, 200);
}

#[tokio::test]
async fn a_retried_conditional_put_replays_through_the_gateway() {
    let s = setup(REQUIRED).await;
    assert_eq!(
        s.send("PUT", "/docs/r", &[("if-none-match", "*")], "new")
            .await
            .status,
        201
    );
    let first = s
        .send(
            "PUT",
            "/docs/r",
            &[("if-match", "\"v1\""), ("idempotency-key", "edit-1")],
            "first",
        )
        .await;
    assert_eq!(first.status, 200);
    assert_eq!(first.header("etag"), Some("\"v2\""));
    let other = s
        .send("PUT", "/docs/r", &[("if-match", "\"v2\"")], "other")
        .await;
    assert_eq!(other.status, 200);
    let writes = s.writes();

    let retry = s
        .send(
            "PUT",
            "/docs/r",
            &[("if-match", "\"v1\""), ("idempotency-key", "edit-1")],
            "first",
        )
        .await;
    assert_eq!(retry.status, 200, "the stored success, not 412");
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(retry.header("etag"), Some("\"v2\""));
    assert_eq!(s.writes(), writes, "the retry did not reach the upstream");

    let fresh = s
        .send(
            "PUT",
            "/docs/r",
            &[("if-match", "\"v1\""), ("idempotency-key", "edit-2")],
            "first",
        )
        .await;
    assert_eq!(
        fresh.status, 412,
        "a new key is a new write, judged on the current version"
    );
    assert_eq!(fresh.json()["current"]["title"], "other");
}
