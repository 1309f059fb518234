//! Webhooks end to end: the relay POSTs 10 000 signed events to a receiver that is down for
//! the first 30 s; they arrive once it is up, each applied once through the receiver's inbox; a repeat is
//! answered 2xx and applies nothing; a bad signature or an old timestamp is refused with a
//! problem answer and applies nothing; a verified body that is not an event is a 422.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use oncely_core::Timestamp;
use oncely_outbox::conformance::Fixture;
use oncely_outbox::webhook::{sign, WebhookPublisher, WebhookReceiver, WebhookSecret};
use oncely_outbox::Publisher;

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_arrive_once_after_the_receiver_comes_up() {
    const AGGREGATES: usize = 100;
    const PER_AGGREGATE: usize = 100;
    const TOTAL: usize = AGGREGATES * PER_AGGREGATE;
    let effects = crate::consume::Effects::new();
    let secret = WebhookSecret::from_bytes(b"a shared secret of 32 bytes!!!!!");
    let receiver = WebhookReceiver::new("hooks", secret.clone(), effects.handler("hooks", None));
    let metrics = receiver.metrics();

    // A free port, with nothing listening on it yet: the receiver is down.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/hooks");
    let publisher =
        Arc::new(WebhookPublisher::new(&url, secret.clone(), Duration::from_secs(5)).unwrap());
    let f = crate::sqlite::fixture();
    crate::consume::commit_rounds(&f, "w", AGGREGATES, PER_AGGREGATE).await;
    let running = crate::consume::Running::start(f.store(), publisher.clone());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let stats = f.store().stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.delivered, stats.dead),
        (TOTAL as u64, 0, 0),
        "nothing delivered while down, nothing given up"
    );

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = Router::new().route("/hooks", receiver.into_route());
    tokio::spawn(async move { axum::serve(listener, app).await });
    crate::consume::all_applied_once(&effects, running, &*f.store(), TOTAL).await;
    assert_eq!(metrics.applied(), TOTAL as u64);

    // A repeat (the sender never saw the answer): 2xx, nothing applied.
    assert!(f.store().dead_letters(1).await.unwrap().is_empty());
    let event = oncely_outbox::OutboxEvent {
        id: oncely_outbox::EventId::parse(&effects.all()[0].0).unwrap(),
        aggregate_type: "order".into(),
        aggregate_id: "w0".into(),
        sequence: 1,
        event_type: "order.changed".into(),
        payload: serde_json::json!({ "round": 0 }),
        headers: Default::default(),
        created_at: Timestamp(0),
        attempts: 1,
        last_error: None,
    };
    let before = metrics.duplicates();
    publisher.publish(&event).await.unwrap();
    assert_eq!(effects.count(), TOTAL, "the repeat applied nothing");
    assert_eq!(
        metrics.duplicates(),
        before + 1,
        "the repeat was answered as one"
    );

    // Forged and stale requests: refused with a problem, nothing applied.
    let client = oncely_testkit::TestClient::new();
    let body = br#"{"type":"order.changed","data":{},"aggregate":{"id":"x","sequence":1}}"#;
    let stale = now_secs() - 3600;
    let forged = [
        ("forged", now_secs(), "v1,AAAA".to_owned()),
        ("stale", stale, sign(&secret, "stale", stale, body)),
    ];
    for (id, ts, sig) in forged {
        let a = client
            .send(
                "POST",
                &url,
                &[
                    ("content-type", "application/json"),
                    ("webhook-id", id),
                    ("webhook-timestamp", &ts.to_string()),
                    ("webhook-signature", &sig),
                ],
                body.to_vec(),
            )
            .await
            .unwrap();
        assert_eq!(a.status, 401, "{id}");
        assert_eq!(
            a.problem_type().as_deref(),
            Some("urn:oncely:problem:webhook-refused"),
            "{id}"
        );
    }
    assert_eq!(effects.count(), TOTAL, "nothing applied");

    // Verified, but not an envelope: 422, nothing applied.
    let ts = now_secs();
    let junk = b"not json";
    let a = client
        .send(
            "POST",
            &url,
            &[
                ("content-type", "application/json"),
                ("webhook-id", "junk"),
                ("webhook-timestamp", &ts.to_string()),
                ("webhook-signature", &sign(&secret, "junk", ts, junk)),
            ],
            junk.to_vec(),
        )
        .await
        .unwrap();
    assert_eq!(a.status, 422);
    assert_eq!(
        a.problem_type().as_deref(),
        Some("urn:oncely:problem:message-rejected")
    );
    assert_eq!(effects.count(), TOTAL, "nothing applied");
}

/// A receiver that refuses an event for good (a 4xx other than 408 and 429) makes it a dead
/// letter at once, while a 503 is retried: a refusal holds its aggregate back no longer
/// than it must.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_webhook_is_a_dead_letter_at_once_and_a_503_is_retried() {
    use axum::http::StatusCode;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route(
            "/refuse",
            axum::routing::post(|| async { StatusCode::UNPROCESSABLE_ENTITY }),
        )
        .route(
            "/busy",
            axum::routing::post(|| async { StatusCode::SERVICE_UNAVAILABLE }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let secret = WebhookSecret::from_bytes(b"a shared secret of 32 bytes!!!!!");
    for (path, dead) in [("refuse", 1), ("busy", 0)] {
        let f = crate::sqlite::fixture();
        crate::consume::commit_rounds(&f, path, 1, 1).await;
        let publisher = Arc::new(
            WebhookPublisher::new(
                &format!("http://{addr}/{path}"),
                secret.clone(),
                Duration::from_secs(5),
            )
            .unwrap(),
        );
        let relay = oncely_outbox::Relay::new(
            f.store(),
            publisher,
            oncely_outbox::RelayConfig {
                dead_after: 20,
                ..oncely_outbox::RelayConfig::default()
            },
        );
        let pass = relay.pass().await.unwrap();
        assert_eq!((pass.claimed, pass.dead), (1, dead), "{path}");
        let stats = f.store().stats().await.unwrap();
        assert_eq!(
            (stats.dead, stats.pending),
            (dead as u64, 1 - dead as u64),
            "{path}"
        );
        if dead == 1 {
            let letter = &f.store().dead_letters(1).await.unwrap()[0];
            assert!(
                letter.last_error.as_deref().unwrap_or("").contains("422"),
                "{letter:?}"
            );
        }
    }
}
