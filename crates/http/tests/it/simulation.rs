//! Randomised concurrent traffic through the engine, in process: bursts of requests over a
//! few keys in two tenants, with two bodies per key, answers that are stored (201, 404) or
//! not (500), and random delays, in `reject` and `wait` modes. Whatever the interleaving,
//! invariants 1 to 4 must hold and every request must get an answer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use oncely_core::SystemClock;
use oncely_http::body::full;
use oncely_http::{
    BoxBody, Engine, Forward, ForwardFuture, InFlightMode, KeyRequirement, RoutePolicy, Routes,
    TenantSource,
};
use oncely_store::MemoryStore;
use proptest::prelude::*;

#[derive(Debug, Clone)]
struct Req {
    tenant: usize,
    key: usize,
    body: usize,
    status: u16,
    delay_ms: u64,
    start_ms: u64,
}

fn req() -> impl Strategy<Value = Req> {
    (
        0..2usize,
        0..3usize,
        0..2usize,
        prop_oneof![3 => Just(201u16), 1 => Just(500), 1 => Just(404)],
        0..15u64,
        0..30u64,
    )
        .prop_map(|(tenant, key, body, status, delay_ms, start_ms)| Req {
            tenant,
            key,
            body,
            status,
            delay_ms,
            start_ms,
        })
}

/// The upstream: counts executions, notices overlaps, echoes who it executed for.
#[derive(Default)]
struct Upstream {
    running: HashMap<String, u32>,
    max_overlap: u32,
    executions: u32,
}

fn forward(up: Arc<Mutex<Upstream>>) -> Forward {
    Box::new(move |req: Request<BoxBody>| -> ForwardFuture {
        Box::pin(async move {
            let (tenant, key, status, delay) = {
                let h = |n: &str| {
                    req.headers()
                        .get(n)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                let delay: u64 = h("x-delay").parse().unwrap_or(0);
                (h("x-tenant"), h("idempotency-key"), h("x-status"), delay)
            };
            let body = req.into_body().collect().await?.to_bytes();
            let scope = format!("{tenant}/{key}");
            let n = {
                let mut u = up.lock().unwrap();
                u.executions += 1;
                let r = u.running.entry(scope.clone()).or_default();
                *r += 1;
                let r = *r;
                u.max_overlap = u.max_overlap.max(r);
                u.executions
            };
            tokio::time::sleep(Duration::from_millis(delay)).await;
            up.lock()
                .unwrap()
                .running
                .entry(scope)
                .and_modify(|r| *r -= 1);
            let echo = format!("{tenant}|{key}|{}|exec{n}", String::from_utf8_lossy(&body));
            let mut resp = Response::new(full(Bytes::from(echo)));
            *resp.status_mut() = http::StatusCode::from_u16(status.parse().unwrap_or(201)).unwrap();
            Ok(resp)
        })
    })
}

async fn run_burst(reqs: Vec<Req>, wait: bool, cache: bool) -> Result<(), TestCaseError> {
    let clock = Arc::new(SystemClock);
    let policy = RoutePolicy {
        key: KeyRequirement::Required,
        tenant: TenantSource::Header(http::HeaderName::from_static("x-tenant")),
        in_flight: if wait {
            InFlightMode::Wait {
                max_wait: Duration::from_secs(5),
            }
        } else {
            InFlightMode::Reject
        },
        ..RoutePolicy::default()
    };
    let store = Arc::new(MemoryStore::new(clock.clone()));
    let engine = Engine::new(store, clock, Routes::keyed_post_and_patch(policy))
        .with_replay_cache(if cache { 1 << 20 } else { 0 });
    let engine = Arc::new(engine);
    let upstream = Arc::new(Mutex::new(Upstream::default()));
    let mut tasks = Vec::new();
    for r in reqs.clone() {
        let (engine, upstream) = (engine.clone(), upstream.clone());
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(r.start_ms)).await;
            let request = Request::post("/pay")
                .header("x-tenant", format!("t{}", r.tenant))
                .header("idempotency-key", format!("k{}", r.key))
                .header("x-status", r.status.to_string())
                .header("x-delay", r.delay_ms.to_string())
                .body(full(format!("body{}", r.body)))
                .unwrap();
            let resp = engine.handle(forward(upstream), request).await;
            let status = resp.status().as_u16();
            let replayed = resp.headers().contains_key("idempotent-replayed");
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            (status, replayed, body)
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        let answer = tokio::time::timeout(Duration::from_secs(10), t).await;
        prop_assert!(answer.is_ok(), "a request never got an answer");
        answers.push(answer.unwrap().unwrap());
    }
    prop_assert!(
        upstream.lock().unwrap().max_overlap <= 1,
        "two executions of one key overlapped"
    );

    let mut first_stored: HashMap<(usize, usize), Bytes> = HashMap::new();
    for (r, (status, replayed, body)) in reqs.iter().zip(&answers) {
        let text = String::from_utf8_lossy(body);
        match status {
            201 | 404 => {
                // Invariant 4: only this tenant's outcome. Invariant 3: only this body's.
                let expected = format!("t{}|k{}|body{}|", r.tenant, r.key, r.body);
                prop_assert!(text.starts_with(&expected), "{:?} answered with {text}", r);
                // Invariant 2: one stored outcome per key, byte for byte.
                let stored = first_stored
                    .entry((r.tenant, r.key))
                    .or_insert_with(|| body.clone());
                prop_assert_eq!(&*stored, body, "two different stored outcomes for one key");
            }
            500 => prop_assert!(!replayed, "a 500 is never stored, so never replayed"),
            409 => {
                prop_assert!(text.contains("request-in-progress"), "{text}");
                prop_assert!(!wait, "in wait mode a duplicate waits (up to 5 s) instead");
            }
            422 => prop_assert!(text.contains("idempotency-key-reused")),
            other => prop_assert!(false, "unexpected status {other}: {text}"),
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_bursts_keep_the_invariants(
        reqs in proptest::collection::vec(req(), 1..40),
        wait in any::<bool>(),
        cache in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(run_burst(reqs, wait, cache))?;
    }
}
