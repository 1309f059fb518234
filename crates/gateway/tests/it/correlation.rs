//! Correlation through the gateway: ids kept or made, passed upstream, returned to the client,
//! and written into the gateway's own problem answers.

use std::sync::Arc;

use oncely_core::correlation::TraceParent;
use oncely_core::SystemClock;
use oncely_gateway::{Config, Gateway, RunningGateway};
use oncely_open::StoreUrl;
use oncely_store::MemoryStore;
use oncely_testkit::{CountingUpstream, TestClient};

async fn start() -> (RunningGateway, CountingUpstream) {
    let upstream = CountingUpstream::start().await;
    let config = Config::new(
        "127.0.0.1:0".parse().unwrap(),
        Some(upstream.url().parse().unwrap()),
        StoreUrl::Memory,
    );
    let gateway = Gateway::with_store(
        config,
        Arc::new(MemoryStore::new(Arc::new(SystemClock))),
        Arc::new(SystemClock),
    )
    .start()
    .await
    .unwrap();
    (gateway, upstream)
}

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test]
async fn ids_sent_by_the_client_are_kept_and_passed_on() {
    let (gw, _up) = start().await;
    let client = TestClient::new();
    let url = format!("http://{}/orders", gw.addr());
    let a = client
        .post_keyed(
            &url,
            "c-1",
            "{}",
            &[("x-request-id", "req-abc-1"), ("traceparent", TP)],
        )
        .await
        .unwrap();
    assert_eq!(a.status, 201);
    assert_eq!(a.header("x-request-id"), Some("req-abc-1"));
    assert_eq!(a.json()["request_id"], "req-abc-1", "the upstream got it");
    assert_eq!(a.json()["traceparent"], TP, "passed unchanged");

    // A replay answers with the ids of the request that asked, not of the first one.
    let b = client
        .post_keyed(&url, "c-1", "{}", &[("x-request-id", "req-abc-2")])
        .await
        .unwrap();
    assert!(b.replayed());
    assert_eq!(b.header("x-request-id"), Some("req-abc-2"));
    assert_eq!(b.body, a.body, "the stored body is replayed byte for byte");
    gw.shutdown().await;
}

#[tokio::test]
async fn missing_or_invalid_ids_are_made_up() {
    let (gw, _up) = start().await;
    let client = TestClient::new();
    let url = format!("http://{}/orders", gw.addr());
    let long = "r".repeat(201);
    for headers in [
        vec![],
        vec![
            ("x-request-id", long.as_str()),
            ("traceparent", "00-zz-bad-01"),
        ],
        vec![(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )],
    ] {
        let a = client.send("GET", &url, &headers, "").await.unwrap();
        let rid = a
            .header("x-request-id")
            .expect("always a request id")
            .to_owned();
        assert_eq!(rid.len(), 36, "a fresh UUID: {rid}");
        assert_eq!(a.json()["request_id"], rid.as_str());
        let tp = a.json()["traceparent"].as_str().unwrap().to_owned();
        assert!(TraceParent::parse(&tp).is_some(), "a valid new trace: {tp}");
    }
    // Two requests never share a made-up id or trace.
    let x = client.send("GET", &url, &[], "").await.unwrap();
    let y = client.send("GET", &url, &[], "").await.unwrap();
    assert_ne!(x.header("x-request-id"), y.header("x-request-id"));
    assert_ne!(x.json()["traceparent"], y.json()["traceparent"]);

    // `tracestate` goes with the trace it belongs to: kept with a valid `traceparent`,
    // dropped when the trace is replaced, and two `traceparent` headers are invalid.
    let kept = client
        .send(
            "GET",
            &url,
            &[("traceparent", TP), ("tracestate", "v=1")],
            "",
        )
        .await
        .unwrap();
    assert_eq!(
        (
            kept.json()["traceparent"].as_str(),
            kept.json()["tracestate"].as_str()
        ),
        (Some(TP), Some("v=1"))
    );
    let dropped = client
        .send(
            "GET",
            &url,
            &[("traceparent", "nonsense"), ("tracestate", "v=1")],
            "",
        )
        .await
        .unwrap();
    assert!(dropped.json()["tracestate"].is_null());
    let two = client
        .send("GET", &url, &[("traceparent", TP), ("traceparent", TP)], "")
        .await
        .unwrap();
    assert_ne!(two.json()["traceparent"], TP);
    gw.shutdown().await;
}

#[tokio::test]
async fn problem_answers_name_the_request() {
    let (gw, up) = start().await;
    let client = TestClient::new();
    let url = format!("http://{}/orders", gw.addr());
    client
        .post_keyed(&url, "p-1", r#"{"a":1}"#, &[])
        .await
        .unwrap();
    let reused = client
        .post_keyed(
            &url,
            "p-1",
            r#"{"a":2}"#,
            &[("x-request-id", "req-422"), ("traceparent", TP)],
        )
        .await
        .unwrap();
    assert_eq!(reused.status, 422);
    let body = reused.json();
    assert_eq!(body["type"], "urn:oncely:problem:idempotency-key-reused");
    assert_eq!(body["request_id"], "req-422");
    assert_eq!(body["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(reused.header("x-request-id"), Some("req-422"));
    let len: usize = reused.header("content-length").unwrap().parse().unwrap();
    assert_eq!(
        len,
        reused.body.len(),
        "the length matches the rewritten body"
    );
    let bad = client.post_keyed(&url, "bad key", "{}", &[]).await.unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["request_id"],
        bad.header("x-request-id").unwrap()
    );
    assert_eq!(up.total(), 1);
    gw.shutdown().await;
}
