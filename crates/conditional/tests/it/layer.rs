//! Idempotency and preconditions together, in process: the documents service behind the
//! idempotency layer. A retried PUT whose first attempt succeeded replays that success,
//! even though the version it named has moved on since; a new key with the same stale
//! If-Match gets 412.

use std::sync::Arc;

use oncely_conditional::ConflictStatus;
use oncely_core::SystemClock;
use oncely_http::{Engine, IdempotencyLayer, RoutePolicy, Routes};
use oncely_store::MemoryStore;
use oncely_testkit::TestClient;

use crate::app::{start_with_layer, Kind};

#[tokio::test]
async fn a_retried_conditional_write_replays_its_success() {
    let engine = Arc::new(Engine::new(
        Arc::new(MemoryStore::new(Arc::new(SystemClock))),
        Arc::new(SystemClock),
        Routes {
            routes: Vec::new(),
            fallback: Some(Arc::new(RoutePolicy::default())),
            fallback_methods: vec![http::Method::PUT],
        },
    ));
    let s = start_with_layer(
        Kind::Sqlite,
        "a_retried_conditional_write_replays_its_success",
        ConflictStatus::PreconditionFailed,
        Some(IdempotencyLayer::new(engine)),
    )
    .await
    .unwrap();
    let c = TestClient::new();
    let json = ("content-type", "application/json");
    let body = |title: &str, count: i64| {
        serde_json::to_vec(&serde_json::json!({"title": title, "count": count})).unwrap()
    };
    let url = s.doc_url("r");
    let created = c
        .send("PUT", &url, &[json, ("if-none-match", "*")], body("new", 0))
        .await
        .unwrap();
    assert_eq!(created.status, 201);

    let first = c
        .send(
            "PUT",
            &url,
            &[json, ("if-match", "\"v1\""), ("idempotency-key", "edit-1")],
            body("first", 1),
        )
        .await
        .unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.header("etag"), Some("\"v2\""));
    // Someone else edits meanwhile.
    let other = c
        .send(
            "PUT",
            &url,
            &[json, ("if-match", "\"v2\"")],
            body("other", 2),
        )
        .await
        .unwrap();
    assert_eq!(other.status, 200);

    // The client never saw its answer and retries: the same key, the same If-Match.
    let retry = c
        .send(
            "PUT",
            &url,
            &[json, ("if-match", "\"v1\""), ("idempotency-key", "edit-1")],
            body("first", 1),
        )
        .await
        .unwrap();
    assert_eq!(
        retry.status, 200,
        "the stored success, not 412: {:?}",
        retry.body
    );
    assert!(retry.replayed());
    assert_eq!(retry.body, first.body);
    assert_eq!(
        retry.header("etag"),
        Some("\"v2\""),
        "the ETag it was answered with then"
    );
    assert_eq!(
        s.stored("r").await.unwrap().value.title,
        "other",
        "nothing re-executed"
    );

    // A new key with the same stale precondition is a new write, refused.
    let fresh = c
        .send(
            "PUT",
            &url,
            &[json, ("if-match", "\"v1\""), ("idempotency-key", "edit-2")],
            body("first", 1),
        )
        .await
        .unwrap();
    assert_eq!(fresh.status, 412);
    assert_eq!(fresh.json()["current"]["title"], "other");
}
