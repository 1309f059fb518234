//! `OutcomeObserver::answered`: once per keyed request that reached the claim, with its
//! request's headers, also for an execution that panicked; never for unkeyed or refused
//! requests, and never when the observer does not ask.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use oncely_core::SystemClock;
use oncely_http::{
    Answer, Engine, IdempotencyLayer, Observers, Outcome, OutcomeObserver, RoutePolicy, Routes,
};
use oncely_store::MemoryStore;
use oncely_testkit::TestClient;

/// An answer as heard: outcome, key, status, User-Agent.
type Heard = (Outcome, String, u16, Option<String>);

#[derive(Default)]
struct Recorder {
    wants: bool,
    observed: Mutex<Vec<Outcome>>,
    answered: Mutex<Vec<Heard>>,
}

impl OutcomeObserver for Recorder {
    fn observe(&self, outcome: Outcome) {
        self.observed.lock().unwrap().push(outcome);
    }
    fn wants_answers(&self) -> bool {
        self.wants
    }
    fn answered(&self, a: &Answer<'_>) {
        let agent = a
            .request
            .headers
            .get("user-agent")
            .map(|v| v.to_str().unwrap().to_owned());
        self.answered.lock().unwrap().push((
            a.outcome,
            a.key.key.as_str().to_owned(),
            a.status,
            agent,
        ));
    }
}

async fn serve(observer: Arc<dyn OutcomeObserver>) -> String {
    let engine = Arc::new(
        Engine::new(
            Arc::new(MemoryStore::new(Arc::new(SystemClock))),
            Arc::new(SystemClock),
            Routes::keyed_post_and_patch(RoutePolicy {
                max_body: 64,
                ..RoutePolicy::default()
            }),
        )
        .with_observer(observer),
    );
    let app = Router::new()
        .route("/orders", post(|| async { (StatusCode::CREATED, "made") }))
        .route(
            "/explode",
            post(|| async {
                if true {
                    panic!("the handler fails hard");
                }
                "never"
            }),
        )
        .layer(IdempotencyLayer::new(engine));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// The status of one keyed POST.
async fn status(
    client: &TestClient,
    url: &str,
    key: &str,
    body: &str,
    extra: &[(&str, &str)],
) -> u16 {
    client
        .post_keyed(url, key, body, extra)
        .await
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_keyed_answer_is_reported_once() {
    let recorder = Arc::new(Recorder {
        wants: true,
        ..Recorder::default()
    });
    // Through `Observers`, beside one that does not ask: only the asking one hears answers.
    let quiet = Arc::new(Recorder::default());
    let url = serve(Arc::new(Observers(vec![recorder.clone(), quiet.clone()]))).await;
    let client = TestClient::new();
    let orders = format!("{url}/orders");
    let ua = [("user-agent", "tests/1")];
    assert_eq!(status(&client, &orders, "k-1", "{}", &ua).await, 201);
    assert_eq!(status(&client, &orders, "k-1", "{}", &[]).await, 201);
    assert_eq!(status(&client, &orders, "k-1", "[]", &[]).await, 422);
    // Not reported: unkeyed, an invalid key, a body over the limit.
    client.send("POST", &orders, &[], "{}").await.unwrap();
    let bad = [
        ("content-type", "application/json"),
        ("idempotency-key", ""),
    ];
    assert_eq!(
        client
            .send("POST", &orders, &bad, "{}")
            .await
            .unwrap()
            .status,
        400
    );
    let big = "x".repeat(100);
    assert_eq!(status(&client, &orders, "k-2", &big, &[]).await, 413);
    // A handler that panics: the execution ends without deciding.
    let _ = client
        .post_keyed(&format!("{url}/explode"), "k-3", "{}", &[])
        .await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    let answered = recorder.answered.lock().unwrap().clone();
    assert_eq!(
        answered,
        vec![
            (Outcome::Executed, "k-1".into(), 201, Some("tests/1".into())),
            (Outcome::Replayed, "k-1".into(), 201, None),
            (Outcome::Mismatch, "k-1".into(), 422, None),
            (Outcome::UnknownOutcome, "k-3".into(), 500, None),
        ]
    );
    assert!(quiet.answered.lock().unwrap().is_empty());
    // Every request observed exactly once, in both observers.
    let observed = recorder.observed.lock().unwrap().clone();
    assert_eq!(observed, *quiet.observed.lock().unwrap());
    assert_eq!(
        observed,
        vec![
            Outcome::Executed,
            Outcome::Replayed,
            Outcome::Mismatch,
            Outcome::PassedThrough,
            Outcome::InvalidKey,
            Outcome::BodyTooLarge,
            Outcome::UnknownOutcome,
        ]
    );
}
