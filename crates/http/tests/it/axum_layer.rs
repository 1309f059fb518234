//! The layer in an ordinary axum 0.8 application: the same engine the gateway runs, wrapped
//! around a router instead of a forwarding client.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use oncely_core::SystemClock;
use oncely_http::{Claimed, Engine, IdempotencyLayer, KeyRequirement, RoutePolicy, Routes};
use oncely_store::MemoryStore;
use oncely_testkit::TestClient;

#[derive(Default)]
struct Counters {
    orders: AtomicU64,
}

async fn create_order(
    State(counters): State<Arc<Counters>>,
    Extension(claimed): Extension<Claimed>,
    Json(body): Json<serde_json::Value>,
) -> (StatusCode, Json<serde_json::Value>) {
    // Slow enough that concurrent duplicates overlap with the first execution.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let n = counters.orders.fetch_add(1, Ordering::SeqCst) + 1;
    (
        StatusCode::CREATED,
        Json(serde_json::json!({
            "order": n,
            "item": body["item"],
            "key": claimed.record_key.key.as_str(),
            "route": claimed.record_key.scope.route,
        })),
    )
}

async fn serve_app() -> (String, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let engine = Arc::new(Engine::new(
        Arc::new(MemoryStore::new(Arc::new(SystemClock))),
        Arc::new(SystemClock),
        Routes::keyed_post_and_patch(RoutePolicy {
            key: KeyRequirement::Required,
            ..RoutePolicy::default()
        }),
    ));
    let app = Router::new()
        .route("/orders", post(create_order))
        .route("/health", get(|| async { "ok" }))
        .with_state(counters.clone())
        .layer(IdempotencyLayer::new(engine));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), counters)
}

#[tokio::test]
async fn concurrent_duplicates_run_the_handler_once_and_replay_its_response() {
    let (url, counters) = serve_app().await;
    let client = TestClient::new();
    let first = client.spawn_post(
        &format!("{url}/orders"),
        "order-1",
        r#"{"item":"tea"}"#,
        &[],
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    let during = client
        .post_keyed(
            &format!("{url}/orders"),
            "order-1",
            r#"{"item":"tea"}"#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        during.status, 409,
        "a duplicate during the first is refused"
    );
    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status, 201);
    assert_eq!(
        first.json()["key"],
        "order-1",
        "the handler saw the claimed key"
    );
    assert_eq!(first.json()["route"], "/orders");

    let mut racers = Vec::new();
    for _ in 0..16 {
        racers.push(client.spawn_post(
            &format!("{url}/orders"),
            "order-1",
            r#"{"item":"tea"}"#,
            &[],
        ));
    }
    for r in racers {
        let again = r.await.unwrap().unwrap();
        assert_eq!(again.status, 201);
        assert!(again.replayed());
        assert_eq!(again.body, first.body, "byte-identical replay");
    }
    assert_eq!(counters.orders.load(Ordering::SeqCst), 1);

    let reused = client
        .post_keyed(
            &format!("{url}/orders"),
            "order-1",
            r#"{"item":"coffee"}"#,
            &[],
        )
        .await
        .unwrap();
    assert_eq!(reused.status, 422);
    assert_eq!(counters.orders.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn the_layer_answers_contract_errors_and_leaves_other_routes_alone() {
    let (url, counters) = serve_app().await;
    let client = TestClient::new();
    let missing = client
        .send(
            "POST",
            &format!("{url}/orders"),
            &[("content-type", "application/json")],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(missing.status, 400, "{missing:?}");
    assert_eq!(
        missing.header("content-type"),
        Some("application/problem+json")
    );
    assert_eq!(counters.orders.load(Ordering::SeqCst), 0);
    let health = client
        .send("GET", &format!("{url}/health"), &[], "")
        .await
        .unwrap();
    assert_eq!((health.status, &health.body[..]), (200, &b"ok"[..]));
    // axum's own answers pass through the layer untouched.
    let unknown = client
        .post_keyed(&format!("{url}/nowhere"), "k-404", "{}", &[])
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
}
