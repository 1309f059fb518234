//! A gateway whose clock runs behind its shared store's: records it learns from the store must
//! not be replayed from its memory long after the store let them expire.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use oncely_core::{ManualClock, Timestamp};
use oncely_http::body::full;
use oncely_http::{BoxBody, Engine, Forward, ForwardFuture, RoutePolicy, Routes};
use oncely_store::MemoryStore;

fn counting(executions: Arc<AtomicU32>) -> Forward {
    Box::new(move |_req: Request<BoxBody>| -> ForwardFuture {
        let n = executions.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            let mut resp = Response::new(full(Bytes::from(format!("execution {n}"))));
            *resp.status_mut() = http::StatusCode::CREATED;
            Ok(resp)
        })
    })
}

async fn post(engine: &Arc<Engine>, executions: &Arc<AtomicU32>) -> (u16, bool, Bytes) {
    let request = Request::post("/orders")
        .header("idempotency-key", "k1")
        .body(full("{}"))
        .unwrap();
    let resp = engine
        .clone()
        .handle(counting(executions.clone()), request)
        .await;
    let status = resp.status().as_u16();
    let replayed = resp.headers().contains_key("idempotent-replayed");
    (
        status,
        replayed,
        resp.into_body().collect().await.unwrap().to_bytes(),
    )
}

#[tokio::test]
async fn a_gateway_behind_the_store_clock_never_replays_past_the_records_expiry() {
    let ttl = Duration::from_secs(60);
    let policy = RoutePolicy {
        ttl,
        ..RoutePolicy::default()
    };
    // The store (a shared database) is an hour ahead of gateway B's clock.
    let store_clock = ManualClock::new(Timestamp(1_700_000_000_000 + 3_600_000));
    let gateway_b_clock = ManualClock::new(Timestamp(1_700_000_000_000));
    let store = Arc::new(MemoryStore::new(Arc::new(store_clock.clone())));
    let executions = Arc::new(AtomicU32::new(0));

    // Gateway A executes and stores the response.
    let a = Arc::new(
        Engine::new(
            store.clone(),
            Arc::new(store_clock.clone()),
            Routes::keyed_post_and_patch(policy.clone()),
        )
        .with_replay_cache(1 << 20),
    );
    assert_eq!(
        post(&a, &executions).await,
        (201, false, Bytes::from("execution 1"))
    );

    // Gateway B learns the record from the store and caches it.
    let b = Arc::new(
        Engine::new(
            store.clone(),
            Arc::new(gateway_b_clock.clone()),
            Routes::keyed_post_and_patch(policy),
        )
        .with_replay_cache(1 << 20),
    );
    let (status, replayed, body) = post(&b, &executions).await;
    assert_eq!(
        (status, replayed, body),
        (201, true, Bytes::from("execution 1"))
    );

    // The TTL passes on both clocks: the store has let the record go.
    let past_ttl = ttl + Duration::from_millis(1);
    store_clock.advance(past_ttl);
    gateway_b_clock.advance(past_ttl);
    // Were the cache entry kept until the record's expiry read on B's clock, B would replay
    // for another hour; it executes afresh, as the store says.
    let (status, replayed, body) = post(&b, &executions).await;
    assert_eq!((status, replayed), (201, false), "{body:?}");
    assert_eq!(executions.load(Ordering::SeqCst), 2);
}
