//! `oncely check` both ways: against a target with no idempotency at all (its own recording
//! upstream, attacked directly) it fails `at_most_one_effect` and `identical_successes` and
//! exits 1; against `oncely serve` on SQLite in front of the same recorder every property
//! holds. The history file reads back.

use crate::common::{oncely, serve, KillOnDrop};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(target: &str, upstream_port: u16, history: &std::path::Path) -> (bool, String) {
    let out = oncely()
        .args(["check", "--target", target, "--path", "/payments"])
        .args(["--body", r#"{"reference":"{reference}","amount":{amount}}"#])
        .args(["--keys", "8", "--repeats", "4", "--concurrency", "12"])
        .args(["--upstream-listen", &format!("127.0.0.1:{upstream_port}")])
        .arg("--history")
        .arg(history)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_target_without_idempotency_fails_and_the_gateway_passes() {
    let dir = tempfile::tempdir().unwrap();

    // No idempotency: the recorder itself is the target.
    let port = free_port();
    let history = dir.path().join("broken.jsonl");
    let (ok, out) = check(&format!("http://127.0.0.1:{port}"), port, &history);
    assert!(!ok, "{out}");
    assert!(out.contains("FAIL  at_most_one_effect"), "{out}");
    assert!(out.contains("FAIL  identical_successes"), "{out}");
    assert!(
        out.contains("took effect 4 times"),
        "the sequential key ran each time: {out}"
    );
    assert!(out.contains("verdict: FAILED"), "{out}");
    let text = std::fs::read_to_string(&history).unwrap();
    let events = oncely_core::check::history::parse(&text).unwrap();
    let ops = oncely_core::check::history::operations(&events).unwrap();
    assert_eq!(
        ops.len(),
        4 * 2 + 13 * 2 + 2 * 2 + 2,
        "every operation is in the history"
    );

    // The gateway in front of the same kind of recorder.
    let port = free_port();
    let db = dir.path().join("oncely.db");
    let (gw, url) = serve(&format!("http://127.0.0.1:{port}"), &db, None);
    let _gw = KillOnDrop(gw);
    let history = dir.path().join("gateway.jsonl");
    let (ok, out) = check(&url, port, &history);
    assert!(ok, "{out}");
    for p in [
        "at_most_one_effect",
        "no_phantom_success",
        "identical_successes",
        "failure_has_no_effect",
        "no_foreign_result",
    ] {
        assert!(out.contains(&format!("PASS  {p}")), "{p}: {out}");
    }
    assert!(out.contains("verdict: every property held"), "{out}");

    // Bad input: one line, non-zero.
    for (target, body, says) in [
        ("ftp://x", "{}", "--target ftp://x"),
        ("http://127.0.0.1:9", "{}", "{reference}"),
    ] {
        let out = oncely()
            .args([
                "check",
                "--target",
                target,
                "--body",
                body,
                "--ledger",
                "http://127.0.0.1:9",
            ])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
}

/// A target that remembers answers by key alone, forgetting the tenant: the second tenant
/// to send a key string gets the first one's result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_keyed_without_the_tenant_is_caught() {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Broken {
        answers: Mutex<HashMap<String, String>>,
        effects: Mutex<HashMap<String, u64>>,
    }
    let broken = Arc::new(Broken::default());
    let (b1, b2) = (broken.clone(), broken.clone());
    let app = axum::Router::new()
        .route(
            "/payments",
            axum::routing::post(move |headers: http::HeaderMap, body: String| {
                let b = b1.clone();
                async move {
                    let key = headers
                        .get("idempotency-key")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned();
                    let mut answers = b.answers.lock().unwrap();
                    if let Some(a) = answers.get(&key) {
                        return (http::StatusCode::CREATED, a.clone());
                    }
                    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                    let reference = v["reference"].as_str().unwrap().to_owned();
                    *b.effects
                        .lock()
                        .unwrap()
                        .entry(reference.clone())
                        .or_default() += 1;
                    let a = serde_json::json!({ "reference": reference }).to_string();
                    answers.insert(key, a.clone());
                    (http::StatusCode::CREATED, a)
                }
            }),
        )
        .route(
            "/ledger",
            axum::routing::get(move |q: axum::extract::Query<HashMap<String, String>>| {
                let b = b2.clone();
                async move {
                    let r = q.get("reference").cloned().unwrap_or_default();
                    let n = b.effects.lock().unwrap().get(&r).copied().unwrap_or(0);
                    serde_json::json!({ "count": n }).to_string()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let out = tokio::task::spawn_blocking(move || {
        oncely()
            .args(["check", "--target", &url, "--path", "/payments"])
            .args(["--body", r#"{"reference":"{reference}"}"#])
            .args(["--keys", "4", "--repeats", "2", "--concurrency", "1"])
            .args(["--tenant-header", "x-tenant", "--tenants", "acme,globex"])
            .args(["--ledger", &format!("{url}/ledger")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("FAIL  no_foreign_result"), "{text}");
    assert!(
        text.contains("tenant globex"),
        "the second tenant got the first's answer: {text}"
    );
    assert!(text.contains("FAIL  no_phantom_success"), "{text}");
    assert!(text.contains("PASS  at_most_one_effect"), "{text}");
}
