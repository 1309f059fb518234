//! Measures the cost of the engine's keyed path in process (no sockets), on the in-memory
//! store and on SQLite:
//! `cargo run --release -p oncely-http --example engine_cost`.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use oncely_core::{Fingerprint, SystemClock};
use oncely_http::body::full;
use oncely_http::{BoxBody, Engine, Forward, ForwardFuture, RoutePolicy, Routes};
use oncely_store::MemoryStore;
use oncely_store_sqlite::{SqliteOptions, SqliteStore};

fn forward() -> Forward {
    Box::new(|_req: Request<BoxBody>| -> ForwardFuture {
        Box::pin(async {
            let mut r = Response::new(full(Bytes::from_static(br#"{"id":"ord_1","ok":true}"#)));
            *r.status_mut() = http::StatusCode::CREATED;
            r.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            Ok(r)
        })
    })
}

/// Average wall time per request of `n` keyed requests from 64 concurrent tasks, in µs.
async fn concurrent_keyed(engine: Arc<Engine>, body: &str, n: u32) -> f64 {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64u32 {
        let (engine, body) = (engine.clone(), body.to_owned());
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 64 {
                let req = Request::post("/orders")
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("c-{w}-{i}"))
                    .body(full(body.clone()))
                    .unwrap();
                let resp = engine.clone().handle(forward(), req).await;
                assert_eq!(resp.status(), 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n = 100_000u32;
    let body = format!(
        r#"{{"item":"book","quantity":1,"note":"{}"}}"#,
        "x".repeat(216)
    );
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(Fingerprint::compute(
            "POST",
            "/orders",
            Some("application/json"),
            body.as_bytes(),
        ));
    }
    println!(
        "fingerprint: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );

    let clock = Arc::new(SystemClock);
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let engine = Arc::new(Engine::new(
        store,
        clock.clone(),
        Routes::keyed_post_and_patch(RoutePolicy::default()),
    ));
    let t = Instant::now();
    for i in 0..n {
        let req = Request::post("/orders")
            .header("content-type", "application/json")
            .header("idempotency-key", format!("k-{i}"))
            .body(full(body.clone()))
            .unwrap();
        let resp = engine.clone().handle(forward(), req).await;
        assert_eq!(resp.status(), 201);
    }
    println!(
        "keyed request through the engine (memory store): {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let per_request = concurrent_keyed(engine.clone(), &body, n).await;
    println!("keyed, 64 concurrent tasks on 2 workers (memory store): {per_request:.2} us");

    let dir = std::env::temp_dir().join(format!("oncely-engine-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sqlite =
        SqliteStore::open(SqliteOptions::new(dir.join("cost.db")), clock.clone()).expect("open");
    let routes = Routes::keyed_post_and_patch(RoutePolicy::default());
    let on_sqlite = Arc::new(Engine::new(Arc::new(sqlite), clock.clone(), routes));
    let per_request = concurrent_keyed(on_sqlite, &body, n / 2).await;
    println!(
        "keyed, 64 concurrent tasks on 2 workers (SQLite store): {per_request:.2} us ({:.0} req/s)",
        1e6 / per_request
    );
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    for _ in 0..n {
        let req = Request::get("/orders").body(full(Bytes::new())).unwrap();
        let resp = engine.clone().handle(forward(), req).await;
        assert_eq!(resp.status(), 201);
    }
    println!(
        "pass-through request through the engine: {:.2} us",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
