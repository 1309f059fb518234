//! `oncely reconcile` against the fake provider and a shop database: a run that finds an
//! orphan charge and heals a missed webhook exits 1 with its summary and sends one alert
//! with counts and sample ids; the findings are listed, acknowledged and resolved from the
//! command line; a second run is clean; bad input gets one clear line.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use oncely_example_checkout::orders::{Order, OrdersDb};

use crate::common::oncely_output;

/// An alert received: its `Idempotency-Key` and its body.
type Alert = (Option<String>, serde_json::Value);

async fn cli(args: Vec<String>) -> (bool, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        oncely_output(&args)
    })
    .await
    .unwrap()
}

async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_run_and_its_findings_worked_through_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let db = format!("sqlite://{}", path.display());
    let orders = OrdersDb::sqlite(&path).unwrap();
    let (app, ledger) = oncely_example_checkout::payments::router().unwrap();
    let provider = serve(app).await;
    let alerts: Arc<Mutex<Vec<Alert>>> = Arc::default();
    let seen = alerts.clone();
    let hook = serve(axum::Router::new().route(
        "/hook",
        post(move |headers: http::HeaderMap, body: String| {
            let seen = seen.clone();
            async move {
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                seen.lock()
                    .unwrap()
                    .push((key, serde_json::from_str(&body).unwrap()));
                "ok"
            }
        }),
    ))
    .await;

    // A paid order whose webhook never came, and a charge without an order.
    let order = Order {
        id: "ord_1".into(),
        saga_id: "co_1".into(),
        email: "ada@example.com".into(),
        items: serde_json::json!([]),
        amount: 450,
        status: "pending".into(),
        charge_id: None,
        cancel_reason: None,
    };
    assert!(orders.place(&order).await.unwrap());
    ledger.insert(450, "ord_1");
    ledger.insert(999, "ord_ghost");

    let run = |extra: &[&str]| {
        let mut args: Vec<String> = [
            "reconcile",
            "--db",
            &db,
            "run",
            "payments",
            "--provider",
            &provider,
            "--settle",
            "0s",
            "--lookback",
            "1h",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let (ok, out) = cli(run(&["--alert-url", &format!("{hook}/hook")])).await;
    assert!(!ok, "drift exits non-zero: {out}");
    assert!(out.contains("payments run 1: drift"), "{out}");
    assert!(
        out.contains("1 healed") && out.contains("1 alerts (2 new)"),
        "{out}"
    );
    assert!(out.contains("alert sent to"), "{out}");
    assert_eq!(
        orders.get("ord_1").await.unwrap().unwrap().status,
        "confirmed",
        "healed"
    );
    {
        let alerts = alerts.lock().unwrap();
        assert_eq!(alerts.len(), 1, "one alert per run, not per row");
        let (key, body) = &alerts[0];
        assert_eq!(key.as_deref(), Some("reconcile/payments/1"));
        assert_eq!(
            body["samples"]["orphan_charge"],
            serde_json::json!(["ord_ghost"])
        );
        assert_eq!(body["counts"]["healed"], 1);
        assert!(body["text"]
            .as_str()
            .unwrap()
            .contains("Reconciliation payments, run 1: drift"));
    }

    let (ok, out) = cli(vec![
        "reconcile".into(),
        "--db".into(),
        db.clone(),
        "findings".into(),
        "list".into(),
        "--state".into(),
        "open".into(),
    ])
    .await;
    assert!(ok, "{out}");
    assert!(
        out.contains("orphan_charge") && out.contains("ord_ghost"),
        "{out}"
    );
    assert!(!out.contains("mark_paid"), "the heal is not open: {out}");
    let id: String = out.split_whitespace().next().unwrap().to_owned();
    let review = |verb: &str| {
        vec![
            "reconcile".into(),
            "--db".into(),
            db.clone(),
            "findings".into(),
            verb.into(),
            id.clone(),
            "--by".into(),
            "ada".into(),
        ]
    };
    let (ok, out) = cli(review("ack")).await;
    assert!(ok && out.contains("acknowledged by ada"), "{out}");
    let (ok, out) = cli(review("ack")).await;
    assert!(
        !ok && out.trim().lines().count() == 1,
        "only an open finding is acknowledged: {out}"
    );
    let (ok, out) = cli(review("resolve")).await;
    assert!(ok && out.contains("resolved by ada"), "{out}");

    // The orphan is still there: the next run sees it again, and it opens again.
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (ok, out) = cli(run(&[])).await;
    assert!(
        !ok && out.contains("payments run 2: drift") && out.contains("(0 new)"),
        "{out}"
    );
    let (ok, out) = cli(vec![
        "reconcile".into(),
        "--db".into(),
        db.clone(),
        "status".into(),
    ])
    .await;
    assert!(
        ok && out.contains("payments: checkpoint") && out.contains("orphan_charge open: 1"),
        "{out}"
    );
    let (ok, out) = cli(vec![
        "reconcile".into(),
        "--db".into(),
        db.clone(),
        "runs".into(),
    ])
    .await;
    assert!(ok && out.lines().count() == 2, "{out}");

    for (args, says) in [
        (vec!["run", "refunds"], "unknown job `refunds`"),
        (
            vec!["findings", "list", "--state", "closed"],
            "expected open, acknowledged",
        ),
        (
            vec!["run", "payments", "--metrics", "127.0.0.1:0"],
            "--metrics needs --every",
        ),
        (
            vec!["run", "payments", "--window", "1ms"],
            "--window must be at least 1s",
        ),
        (
            vec!["run", "payments", "--window", "1s", "--lookback", "30d"],
            "more than 100000 windows",
        ),
        (
            vec!["run", "payments", "--every", "0s"],
            "--every must be at least 1s",
        ),
    ] {
        let mut a: Vec<String> = vec!["reconcile".into(), "--db".into(), db.clone()];
        a.extend(args.iter().map(|s| s.to_string()));
        let (ok, out) = cli(a).await;
        assert!(!ok && out.contains(says), "{args:?}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "{args:?}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_run_serves_metrics_and_the_json_api() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shop.db");
    let db = format!("sqlite://{}", path.display());
    OrdersDb::sqlite(&path).unwrap();
    let (app, ledger) = oncely_example_checkout::payments::router().unwrap();
    let provider = serve(app).await;
    ledger.insert(999, "ord_ghost");
    let mut child = crate::common::oncely()
        .args([
            "reconcile",
            "--db",
            &db,
            "run",
            "payments",
            "--provider",
            &provider,
        ])
        .args([
            "--settle",
            "0s",
            "--lookback",
            "1h",
            "--every",
            "1s",
            "--metrics",
            "127.0.0.1:0",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Only the first line is read, then the pipe is closed: the runs after it must go on
    // (a closed stdout must not stop a periodic job).
    let first = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    })
    .await
    .unwrap();
    let _running = crate::common::KillOnDrop(child);
    let base = first
        .trim()
        .strip_prefix("metrics and the JSON API on ")
        .unwrap_or_else(|| panic!("unexpected {first:?}"))
        .to_owned();
    let client = oncely_testkit::TestClient::new();
    let mut page = String::new();
    for _ in 0..100 {
        let a = client
            .send("GET", &format!("{base}/metrics"), &[], "")
            .await
            .unwrap();
        page = String::from_utf8_lossy(&a.body).into_owned();
        if page.contains(r#"oncely_reconcile_last_run{job="payments",outcome="drift"} 1"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for line in [
        r#"oncely_reconcile_findings{job="payments",class="orphan_charge",state="open"} 1"#,
        r#"oncely_reconcile_last_run{job="payments",outcome="drift"} 1"#,
        r#"oncely_reconcile_last_run{job="payments",outcome="clean"} 0"#,
        "oncely_reconcile_last_success_age_seconds{job=\"payments\"}",
        "oncely_reconcile_last_run_timestamp_seconds{job=\"payments\"}",
    ] {
        assert!(page.contains(line), "{line} in\n{page}");
    }
    let open = client
        .send(
            "GET",
            &format!("{base}/reconcile/findings?state=open"),
            &[],
            "",
        )
        .await
        .unwrap();
    let open = open.json();
    assert_eq!(open[0]["class"], "orphan_charge", "{open}");
    assert_eq!(open[0]["theirs"], serde_json::json!(["ch_1"]));
    let id = open[0]["id"].as_i64().unwrap();
    let ack = client
        .send(
            "POST",
            &format!("{base}/reconcile/findings/{id}/ack?by=bob"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(ack.status, 202);
    let again = client
        .send(
            "POST",
            &format!("{base}/reconcile/findings/{id}/ack?by=bob"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(again.status, 409);
    let bad = client
        .send(
            "GET",
            &format!("{base}/reconcile/findings?state=closed"),
            &[],
            "",
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
    let status = client
        .send("GET", &format!("{base}/reconcile/status"), &[], "")
        .await
        .unwrap()
        .json();
    assert_eq!(
        status["jobs"]["payments"]["last_run"]["outcome"], "drift",
        "{status}"
    );
    let runs = client
        .send(
            "GET",
            &format!("{base}/reconcile/runs?job=payments&limit=2"),
            &[],
            "",
        )
        .await
        .unwrap()
        .json();
    assert!(!runs.as_array().unwrap().is_empty(), "{runs}");
    assert!(runs[0]["counts"].is_object(), "{runs}");
}
