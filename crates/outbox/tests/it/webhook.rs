//! Webhooks end to end: the relay POSTs signed events to a receiver that is down at first;
//! they arrive once it is up, each applied once through the receiver's inbox; a repeat is
//! answered 2xx and applies nothing; a bad signature or an old timestamp is refused with a
//! problem answer and applies nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use oncely_core::Timestamp;
use oncely_outbox::conformance::Fixture;
use oncely_outbox::inbox::{sqlite as inbox, Applied, InboxError};
use oncely_outbox::webhook::{sign, verify, WebhookPublisher, WebhookSecret};
use oncely_outbox::{NewEvent, Publisher, Relay, RelayConfig};

#[derive(Clone)]
struct Receiver {
    secret: WebhookSecret,
    db: Arc<Mutex<rusqlite::Connection>>,
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let id = match verify(
        &r.secret,
        &headers,
        &body,
        now_secs(),
        Duration::from_secs(300),
    ) {
        Ok(id) => id,
        Err(e) => {
            let (status, problem) = e.problem();
            return (
                StatusCode::from_u16(status).unwrap(),
                [("content-type", "application/problem+json")],
                problem,
            )
                .into_response();
        }
    };
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let mut conn = r.db.lock().unwrap();
    let applied = inbox::apply_once(&mut conn, "hooks", &id, Timestamp(0), |tx| {
        tx.execute(
            "INSERT INTO effects (message_id, aggregate, sequence) VALUES (?1, ?2, ?3)",
            rusqlite::params![
                id,
                event["aggregate"]["id"].as_str().unwrap(),
                event["aggregate"]["sequence"].as_i64().unwrap()
            ],
        )
        .map_err(|e| InboxError::Unavailable(e.to_string()))
    })
    .unwrap();
    match applied {
        Applied::Now(_) => StatusCode::NO_CONTENT.into_response(),
        Applied::Before => StatusCode::OK.into_response(),
    }
}

fn effects(db: &Mutex<rusqlite::Connection>) -> Vec<(String, i64)> {
    let conn = db.lock().unwrap();
    let mut s = conn
        .prepare("SELECT aggregate, sequence FROM effects ORDER BY rowid")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_webhooks_arrive_once_after_the_receiver_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = rusqlite::Connection::open(dir.path().join("receiver.db")).unwrap();
    conn.execute_batch(
        "CREATE TABLE effects (message_id TEXT NOT NULL, aggregate TEXT NOT NULL, sequence INTEGER NOT NULL)",
    )
    .unwrap();
    inbox::migrate(&mut conn).unwrap();
    let secret = WebhookSecret::from_bytes(b"a shared secret of 32 bytes!!!!!");
    let receiver = Receiver {
        secret: secret.clone(),
        db: Arc::new(Mutex::new(conn)),
    };

    // A free port, with nothing listening on it yet: the receiver is down.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/hooks");
    let publisher =
        Arc::new(WebhookPublisher::new(&url, secret.clone(), Duration::from_secs(5)).unwrap());
    let f = crate::sqlite::fixture();
    for round in 0..3 {
        let events = (0..5)
            .map(|a| {
                NewEvent::new(
                    "order",
                    format!("w{a}"),
                    "order.changed",
                    serde_json::json!({ "round": round }),
                )
            })
            .collect();
        f.commit(events).await;
    }
    let relay = Relay::new(
        f.store(),
        publisher.clone(),
        RelayConfig {
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_millis(200),
            // Many quick failures while the receiver is down; none may go dead meanwhile.
            dead_after: 1000,
            ..RelayConfig::default()
        },
    );
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        relay.pass().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = f.store().stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.delivered),
        (15, 0),
        "nothing delivered while down"
    );

    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let app = Router::new()
        .route("/hooks", post(receive))
        .with_state(receiver.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    for _ in 0..500 {
        if f.store().stats().await.unwrap().pending == 0 {
            break;
        }
        relay.pass().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let applied = effects(&receiver.db);
    assert_eq!(applied.len(), 15, "every event applied once");
    for a in 0..5 {
        let seqs: Vec<i64> = applied
            .iter()
            .filter(|(agg, _)| *agg == format!("w{a}"))
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3], "w{a} in order");
    }

    // A repeat (the sender never saw the answer): 2xx, nothing applied.
    let first = f.store().dead_letters(1).await.unwrap();
    assert!(first.is_empty());
    let event = oncely_outbox::OutboxEvent {
        id: oncely_outbox::EventId::parse(
            &receiver
                .db
                .lock()
                .unwrap()
                .query_row("SELECT message_id FROM effects LIMIT 1", [], |r| {
                    r.get::<_, String>(0)
                })
                .unwrap(),
        )
        .unwrap(),
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
    publisher.publish(&event).await.unwrap();
    assert_eq!(
        effects(&receiver.db).len(),
        15,
        "the repeat applied nothing"
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
    assert_eq!(effects(&receiver.db).len(), 15, "nothing applied");
}
