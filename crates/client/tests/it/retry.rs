//! The retry client against a real flaky server on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::{body, conflict, in_progress, refused_addr, status, Action, Flaky};
use oncely_client::policy::{Decision, Outcome, RetryReason, StopReason, TransportKind};
use oncely_client::{
    AttemptEvent, BudgetConfig, Client, ClientBuilder, Error, KeySource, LastOutcome, Request,
};

/// Milliseconds everywhere, so the suite stays fast.
fn fast() -> ClientBuilder {
    Client::builder()
        .base_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(40))
        .attempt_timeout(Some(Duration::from_secs(5)))
        .deadline(Some(Duration::from_secs(10)))
        .budget(BudgetConfig::unlimited())
        .seed(7)
}

#[derive(Debug, Clone)]
struct Event {
    attempt: u32,
    started: Duration,
    key: String,
    outcome: Outcome,
    decision: Decision,
}

fn recorder() -> (
    Arc<Mutex<Vec<Event>>>,
    impl Fn(&AttemptEvent<'_>) + Send + Sync + 'static,
) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let e2 = events.clone();
    let hook = move |e: &AttemptEvent<'_>| {
        e2.lock().unwrap().push(Event {
            attempt: e.attempt,
            started: e.started,
            key: e.key.to_owned(),
            outcome: e.outcome.clone(),
            decision: *e.decision,
        })
    };
    (events, hook)
}

fn is_uuid_v7(k: &str) -> bool {
    k.len() == 36 && &k[14..15] == "7" && k.chars().filter(|&c| c == '-').count() == 4
}

#[tokio::test]
async fn retries_503_until_201_with_one_key() {
    let server = Flaky::start(vec![
        status(503),
        status(503),
        status(503),
        body(201, "created"),
    ])
    .await;
    let (events, hook) = recorder();
    let client = fast().max_attempts(5).hook(hook).build().unwrap();
    let resp = client
        .send(Request::post(server.url("/orders")).body("{\"sku\":1}"))
        .await
        .unwrap();
    assert_eq!(resp.status, 201);
    assert_eq!(&resp.body[..], b"created");
    assert_eq!(resp.attempts, 4);
    assert_eq!(resp.key_source, KeySource::New);
    assert!(is_uuid_v7(&resp.key), "{}", resp.key);

    let seen = server.seen();
    assert_eq!(seen.len(), 4);
    // The same key on every attempt, the one returned.
    assert!(seen
        .iter()
        .all(|s| s.key.as_deref() == Some(resp.key.as_str())));
    assert!(seen.iter().all(|s| &s.body[..] == b"{\"sku\":1}"));

    let events = events.lock().unwrap().clone();
    assert_eq!(events.len(), 4);
    assert!(events.iter().all(|e| e.key == resp.key));
    assert_eq!(
        events.iter().map(|e| e.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(events[3].decision, Decision::Finish);

    let stats = client.stats();
    assert_eq!(
        (
            stats.requests,
            stats.attempts,
            stats.retries,
            stats.answered
        ),
        (1, 4, 3, 1)
    );
}

#[tokio::test]
async fn waits_stay_within_the_full_jitter_bounds() {
    let server = Flaky::start(
        vec![status(503); 6]
            .into_iter()
            .chain([status(200)])
            .collect(),
    )
    .await;
    let (events, hook) = recorder();
    let base = Duration::from_millis(4);
    let cap = Duration::from_millis(30);
    let client = fast()
        .base_delay(base)
        .max_delay(cap)
        .max_attempts(10)
        .hook(hook)
        .build()
        .unwrap();
    client.send(Request::post(server.url("/"))).await.unwrap();
    let events = events.lock().unwrap().clone();
    let seen = server.seen();
    assert_eq!(seen.len(), 7);
    for (i, e) in events.iter().enumerate() {
        if let Decision::Retry { delay, reason } = e.decision {
            assert_eq!(reason, RetryReason::Status(503));
            let ceiling = (base * 2u32.pow(i as u32)).min(cap);
            assert!(delay <= ceiling, "retry {i}: {delay:?} > {ceiling:?}");
            // The server saw the next attempt no sooner than the wait.
            assert!(seen[i + 1].at - seen[i].at >= delay);
        }
    }
}

#[tokio::test]
async fn dropped_connections_are_retried_with_the_same_key() {
    let server = Flaky::start(vec![Action::Drop, Action::Drop, status(200)]).await;
    let (events, hook) = recorder();
    let client = fast().hook(hook).build().unwrap();
    let resp = client.send(Request::post(server.url("/"))).await.unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.attempts, 3);
    let events = events.lock().unwrap().clone();
    assert_eq!(events[0].outcome, Outcome::Transport(TransportKind::Closed));
    let keys: Vec<_> = server.seen().into_iter().map(|s| s.key).collect();
    assert_eq!(keys.len(), 3);
    assert!(keys.iter().all(|k| k == &keys[0] && k.is_some()));
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_retried() {
    let server = Flaky::start(vec![Action::Delay(Duration::from_secs(3)), status(201)]).await;
    let (events, hook) = recorder();
    let client = fast()
        .attempt_timeout(Some(Duration::from_millis(150)))
        .hook(hook)
        .build()
        .unwrap();
    let resp = client.send(Request::post(server.url("/"))).await.unwrap();
    assert_eq!(resp.status, 201);
    assert_eq!(resp.attempts, 2);
    // The first attempt timed out rather than waiting for the late answer.
    let events = events.lock().unwrap().clone();
    assert_eq!(
        events[0].outcome,
        Outcome::Transport(TransportKind::Timeout)
    );
}

#[tokio::test]
async fn retry_after_seconds_is_honoured() {
    let server = Flaky::start(vec![
        Action::Respond(429, vec![("retry-after", "1".into())], ""),
        status(201),
    ])
    .await;
    let client = fast().build().unwrap();
    let resp = client.send(Request::post(server.url("/"))).await.unwrap();
    assert_eq!(resp.status, 201);
    let seen = server.seen();
    // The jitter alone would wait at most 5 ms.
    assert!(seen[1].at - seen[0].at >= Duration::from_secs(1));
}

#[tokio::test]
async fn retry_after_http_date_is_honoured() {
    // An HTTP-date has whole seconds: start from the next whole second so that the date sent is
    // exactly `at`, not up to a second earlier.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let at = UNIX_EPOCH + Duration::from_secs(now.as_secs() + 1) + Duration::from_secs(2);
    let server = Flaky::start(vec![
        Action::Respond(503, vec![("retry-after", httpdate::fmt_http_date(at))], ""),
        status(201),
    ])
    .await;
    let (events, hook) = recorder();
    let client = fast().hook(hook).build().unwrap();
    let resp = client.send(Request::post(server.url("/"))).await.unwrap();
    assert_eq!(resp.status, 201);
    // However slow the machine, the retry reaches the server no earlier than the date asked
    // (the wait is `at` minus the time the answer was read, slept on a monotonic clock).
    let seen = server.seen();
    assert!(seen[1].wall >= at, "{:?} < {at:?}", seen[1].wall);
    let events = events.lock().unwrap().clone();
    let Decision::Retry { delay, .. } = events[0].decision else {
        panic!("{:?}", events[0].decision)
    };
    // The jitter alone would wait at most 5 ms; the date is at least 2 s away.
    assert!(delay > Duration::from_secs(1), "{delay:?}");
    assert!(seen[1].at - seen[0].at >= delay);
}

#[tokio::test]
async fn retry_after_past_the_deadline_gives_up_at_once() {
    let server = Flaky::start(vec![Action::Respond(
        429,
        vec![("retry-after", "120".into())],
        "slow down",
    )])
    .await;
    let client = fast()
        .deadline(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    let started = Instant::now();
    let err = client
        .send(Request::post(server.url("/")))
        .await
        .unwrap_err();
    // Not the 120 s asked for (a loose bound: the suite may run on a loaded machine).
    assert!(started.elapsed() < Duration::from_secs(60));
    match err {
        Error::GaveUp {
            stop,
            attempts,
            last: LastOutcome::Response(r),
            ..
        } => {
            assert_eq!(
                stop,
                StopReason::RetryAfterBeyondDeadline(Duration::from_secs(120))
            );
            assert_eq!(attempts, 1);
            assert_eq!(r.status, 429);
            assert_eq!(&r.body[..], b"slow down");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(server.count(), 1);
}

/// Without a deadline, a huge `Retry-After` must not put the client to sleep for minutes or
/// forever: above `max_retry_after` it gives up at once, with the server's answer.
#[tokio::test]
async fn a_retry_after_longer_than_the_maximum_gives_up_at_once() {
    for (value, asked) in [
        ("1000", Duration::from_secs(1000)),
        ("18446744073709551615", Duration::from_secs(u64::MAX)),
    ] {
        let server = Flaky::start(vec![
            Action::Respond(503, vec![("retry-after", value.into())], "later"),
            status(201),
        ])
        .await;
        let client = fast()
            .deadline(None)
            .max_retry_after(Some(Duration::from_secs(60)))
            .build()
            .unwrap();
        let sent = client.send(Request::post(server.url("/")));
        let err = tokio::time::timeout(Duration::from_secs(60), sent)
            .await
            .expect("the client slept on the Retry-After")
            .unwrap_err();
        match &err {
            Error::GaveUp {
                stop,
                attempts: 1,
                last: LastOutcome::Response(r),
                ..
            } => {
                assert_eq!(
                    *stop,
                    StopReason::RetryAfterTooLong {
                        asked,
                        max: Duration::from_secs(60)
                    }
                );
                assert_eq!(&r.body[..], b"later");
            }
            other => panic!("{other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("longer than max-retry-after 60s"), "{msg}");
        assert!(!msg.contains('\n'));
        assert_eq!(server.count(), 1);
    }
}

#[tokio::test]
async fn client_errors_are_never_retried() {
    for s in [400u16, 401, 404, 409, 422, 500] {
        let server = Flaky::start(vec![body(s, "no"), status(201)]).await;
        let client = fast().build().unwrap();
        let resp = client.send(Request::post(server.url("/"))).await.unwrap();
        assert_eq!(resp.status, s);
        assert_eq!(resp.attempts, 1);
        assert_eq!(server.count(), 1, "status {s} was retried");
    }
}

#[tokio::test]
async fn request_in_progress_409_is_retried() {
    let server = Flaky::start(vec![in_progress(), body(201, "done")]).await;
    let client = fast().build().unwrap();
    let resp = client.send(Request::post(server.url("/"))).await.unwrap();
    assert_eq!(resp.status, 201);
    assert_eq!(server.count(), 2);
}

/// Only the gateway's exact problem type is "in progress": an application's 409 whose type
/// merely ends alike is a final answer.
#[tokio::test]
async fn a_409_of_another_problem_type_is_not_retried() {
    for other in [
        "https://oncely.dev/problems/request-in-progress",
        "urn:example:request-in-progress",
        "about:blank",
    ] {
        let server = Flaky::start(vec![conflict(other), body(201, "done")]).await;
        let client = fast().build().unwrap();
        let resp = client.send(Request::post(server.url("/"))).await.unwrap();
        assert_eq!(resp.status, 409, "{other}");
        assert_eq!(resp.attempts, 1);
        assert_eq!(server.count(), 1, "{other} was retried");
    }
}

#[tokio::test]
async fn limits_stop_retries() {
    let server = Flaky::start(vec![status(503)]).await;
    let client = fast().max_attempts(3).build().unwrap();
    let err = client
        .send(Request::post(server.url("/")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::GaveUp {
                stop: StopReason::MaxAttempts(3),
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(server.count(), 3);

    // The deadline stops the retries long before 1000 attempts (waits of 10 ms on average:
    // 1000 attempts would take 10 s). Checked on the client's own clock, not with wall-clock
    // bounds, so that a loaded machine cannot fail it.
    let server = Flaky::start(vec![status(503)]).await;
    let (events, hook) = recorder();
    let deadline = Duration::from_secs(1);
    let client = fast()
        .max_attempts(1000)
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(20))
        .deadline(Some(deadline))
        .hook(hook)
        .build()
        .unwrap();
    let err = client
        .send(Request::post(server.url("/")))
        .await
        .unwrap_err();
    let Error::GaveUp {
        stop: StopReason::Deadline,
        attempts,
        ..
    } = err
    else {
        panic!("{err}")
    };
    assert!(attempts < 1000);
    assert_eq!(server.count(), attempts as usize);
    // No attempt started after the deadline, nor with less than the minimum left.
    let events = events.lock().unwrap().clone();
    assert!(events.len() >= 2, "{events:?}");
    for e in &events[1..] {
        assert!(e.started + Duration::from_millis(50) <= deadline, "{e:?}");
    }
}

/// With less than the minimum attempt time left, no attempt is started: the client gives up
/// with the deadline reason instead of sending an attempt the deadline would cut off.
#[tokio::test]
async fn no_attempt_is_started_with_almost_no_time_left() {
    let server = Flaky::start(vec![status(503)]).await;
    let client = fast()
        .max_attempts(1000)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(1))
        .deadline(Some(Duration::from_millis(40)))
        .min_attempt_time(Duration::from_millis(50))
        .build()
        .unwrap();
    let err = client
        .send(Request::post(server.url("/")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::GaveUp {
                stop: StopReason::Deadline,
                attempts: 1,
                last: LastOutcome::Response(_),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn connect_errors_are_retried_then_reported() {
    let addr = refused_addr().await;
    let (events, hook) = recorder();
    let client = fast().max_attempts(3).hook(hook).build().unwrap();
    let err = client
        .send(Request::post(format!("http://{addr}/")))
        .await
        .unwrap_err();
    match &err {
        Error::GaveUp {
            attempts: 3,
            last: LastOutcome::Transport { kind, .. },
            ..
        } => {
            assert_eq!(*kind, TransportKind::Connect)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(events.lock().unwrap().len(), 3);
    // One line, with the cause.
    let msg = err.to_string();
    assert!(!msg.contains('\n'));
    assert!(msg.to_lowercase().contains("refused"), "{msg}");
}

#[tokio::test]
async fn an_empty_budget_stops_retries_for_every_request_of_the_client() {
    let server = Flaky::start(vec![status(503)]).await;
    let client = fast()
        .max_attempts(10)
        .budget(BudgetConfig {
            ratio: 0.0,
            min_per_sec: 0.0,
            burst: 2.0,
        })
        .build()
        .unwrap();
    // The first request spends both tokens: 1 attempt + 2 retries.
    let err = client
        .send(Request::post(server.url("/a")))
        .await
        .unwrap_err();
    match &err {
        Error::GaveUp {
            stop: StopReason::Budget,
            attempts: 3,
            last: LastOutcome::Response(r),
            ..
        } => {
            assert_eq!(r.status, 503)
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("retry budget exhausted"), "{err}");
    // A clone shares the budget: its request is not retried at all.
    let other = client.clone();
    let err = other
        .send(Request::post(server.url("/b")))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::GaveUp {
                stop: StopReason::Budget,
                attempts: 1,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(server.count(), 4);
    let stats = client.stats();
    assert_eq!(
        (
            stats.requests,
            stats.attempts,
            stats.gave_up,
            stats.budget_exhausted
        ),
        (2, 4, 2, 2)
    );
}

#[tokio::test]
async fn the_budget_lets_a_fraction_of_requests_retry() {
    // 20% of requests fund retries; the server always fails: of 50 requests, about 10 retries.
    let server = Flaky::start(vec![status(503)]).await;
    let client = fast()
        .max_attempts(2)
        .budget(BudgetConfig {
            ratio: 0.2,
            min_per_sec: 0.0,
            burst: 1.0,
        })
        .build()
        .unwrap();
    for _ in 0..50 {
        let _ = client.send(Request::post(server.url("/"))).await;
    }
    let stats = client.stats();
    assert_eq!(stats.requests, 50);
    // 1 initial token + 50 * 0.2, and the bucket never holds more than 1.
    assert!((9..=11).contains(&stats.retries), "{stats:?}");
}

#[tokio::test]
async fn a_restarted_client_resumes_the_persisted_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("keys.db");
    let server = Flaky::start(vec![status(503), status(503), status(201)]).await;
    let req = || {
        Request::post(server.url("/pay"))
            .operation("invoice-42")
            .body("{\"eur\":10}")
    };

    let first_key = {
        let client = fast().max_attempts(2).state_file(&state).build().unwrap();
        let err = client.send(req()).await.unwrap_err();
        let Error::GaveUp { key, .. } = err else {
            panic!("{err}")
        };
        let pending = client.store().unwrap().get("invoice-42").unwrap().unwrap();
        assert_eq!(pending.key, key);
        assert_eq!(pending.attempts, 2);
        key
    }; // the client is dropped: a "restart"

    let client = fast().state_file(&state).build().unwrap();
    let resp = client.send(req()).await.unwrap();
    assert_eq!(resp.status, 201);
    assert_eq!(resp.key, first_key);
    assert_eq!(resp.key_source, KeySource::Resumed);
    assert!(server
        .seen()
        .iter()
        .all(|s| s.key.as_deref() == Some(first_key.as_str())));
    // Finished: forgotten, so the next logical request of that name is a new one.
    assert!(client.store().unwrap().pending().unwrap().is_empty());
    let next = client.send(req()).await.unwrap();
    assert_ne!(next.key, first_key);
    assert_eq!(next.key_source, KeySource::New);
}

#[tokio::test]
async fn unnamed_requests_resume_by_method_url_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("keys.db");
    let server = Flaky::start(vec![Action::Drop, status(200)]).await;
    let k1 = {
        let client = fast().max_attempts(1).state_file(&state).build().unwrap();
        match client.send(Request::post(server.url("/x")).body("a")).await {
            Err(Error::GaveUp { key, .. }) => key,
            other => panic!("{other:?}"),
        }
    };
    let client = fast().state_file(&state).build().unwrap();
    // Another body is another logical request.
    let other = client
        .send(Request::post(server.url("/x")).body("b"))
        .await
        .unwrap();
    assert_ne!(other.key, k1);
    let same = client
        .send(Request::post(server.url("/x")).body("a"))
        .await
        .unwrap();
    assert_eq!(same.key, k1);
}

/// With a state file, two identical unnamed requests in flight at once are one logical request:
/// one key, so the gateway executes them once. Distinct operation names keep them apart.
#[tokio::test]
async fn concurrent_identical_requests_share_a_key_unless_named_apart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Flaky::start(vec![Action::Delay(Duration::from_millis(500))]).await;
    let client = fast()
        .state_file(dir.path().join("keys.db"))
        .build()
        .unwrap();
    let req = || Request::post(server.url("/orders")).body("{\"sku\":1}");
    let (a, b) = tokio::join!(client.send(req()), client.send(req()));
    assert_eq!(a.unwrap().key, b.unwrap().key);
    let (a, b) = tokio::join!(
        client.send(req().operation("order-41")),
        client.send(req().operation("order-42"))
    );
    assert_ne!(a.unwrap().key, b.unwrap().key);
}

#[tokio::test]
async fn a_given_key_is_used_as_is() {
    let server = Flaky::start(vec![status(503), status(200)]).await;
    let client = fast().build().unwrap();
    let resp = client
        .send(Request::post(server.url("/")).key("my-key-1"))
        .await
        .unwrap();
    assert_eq!(resp.key_source, KeySource::Given);
    assert!(server
        .seen()
        .iter()
        .all(|s| s.key.as_deref() == Some("my-key-1")));
}

#[tokio::test]
async fn bad_input_is_an_error_not_a_panic() {
    let client = fast().build().unwrap();
    for url in ["not a url", "ftp://127.0.0.1/", ""] {
        let err = client.send(Request::post(url)).await.unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    }
    // Keys the gateway would reject fail locally: nothing is sent.
    let server = Flaky::start(vec![status(200)]).await;
    let long = "k".repeat(256);
    for key in ["bad\nkey", "a b", "clé", "", " padded", long.as_str()] {
        let err = client
            .send(Request::post(server.url("/")).key(key))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidRequest(_)), "{key:?}: {err}");
        assert!(err.to_string().contains("Idempotency-Key"), "{err}");
        assert!(!err.to_string().contains('\n'));
    }
    let err = client
        .send(Request::post(server.url("/")).header(
            oncely_client::client::IDEMPOTENCY_KEY,
            http::HeaderValue::from_static("a b"),
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidRequest(_)), "{err}");
    assert_eq!(server.count(), 0);
    let max = "k".repeat(255);
    let ok = client
        .send(Request::post(server.url("/")).key(max.as_str()))
        .await
        .unwrap();
    assert_eq!(ok.key, max);
    let dir = tempfile::tempdir().unwrap();
    let err = fast()
        .state_file(dir.path().join("missing/dir/keys.db"))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("cannot open"), "{err}");
}

#[tokio::test]
async fn a_seed_makes_the_waits_reproducible() {
    let mut runs = Vec::new();
    for _ in 0..2 {
        let server = Flaky::start(vec![status(503), status(503), status(503), status(200)]).await;
        let (events, hook) = recorder();
        let client = fast().seed(99).hook(hook).build().unwrap();
        client.send(Request::post(server.url("/"))).await.unwrap();
        let delays: Vec<Decision> = events.lock().unwrap().iter().map(|e| e.decision).collect();
        runs.push(delays);
    }
    assert_eq!(runs[0], runs[1]);
    assert_eq!(runs[0].len(), 4);
}
