//! `oncely relay` as a process: an axum service writes orders and their events in one
//! transaction; the relay, SIGKILLed while it publishes to the machine's JetStream and
//! started again, leaves every event in the stream exactly once (the duplicate window takes
//! the repeats), a consumer applies each once through its inbox, and `/metrics` says so; `oncely outbox` reports it, and lists and
//! retries dead letters.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oncely_core::{Clock, SystemClock};
use oncely_outbox::sqlite::SqliteOutbox;
use oncely_outbox::{NewEvent, OutboxStore};
use oncely_testkit::services::{unique_name, Service};

use crate::common::{oncely, oncely_output, signal, KillOnDrop};

fn enqueue(path: &std::path::Path, aggregates: usize, per: usize) {
    let mut conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    for round in 0..per {
        let tx = conn.transaction().unwrap();
        for a in 0..aggregates {
            let e = NewEvent::new(
                "order",
                format!("k{a}"),
                "order.changed",
                serde_json::json!({ "round": round }),
            );
            SqliteOutbox::enqueue(&tx, &e, SystemClock.now()).unwrap();
        }
        tx.commit().unwrap();
    }
}

fn start_relay(db: &str, nats: &str, name: &str, extra: &[&str]) -> KillOnDrop {
    KillOnDrop(
        oncely()
            .args([
                "relay",
                "--db",
                db,
                "--to",
                nats,
                "--subject-prefix",
                name,
                "--stream",
                name,
            ])
            .args(["--batch", "8", "--lease", "1s", "--poll", "50ms"])
            .args(extra)
            .stdout(Stdio::null())
            .spawn()
            .expect("start oncely relay"),
    )
}

fn outbox_cli(db: &str, args: &[&str]) -> (bool, String) {
    oncely_output(&[&["outbox", "--db", db][..], args].concat())
}

/// The application: an axum service whose `POST /orders/{id}` writes the order and its
/// `order.placed` event in one SQLite transaction.
fn orders_app(path: std::path::PathBuf) -> axum::Router {
    use axum::extract::{Path, State};
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, total INTEGER NOT NULL)",
    )
    .unwrap();
    let db = Arc::new(std::sync::Mutex::new(conn));
    axum::Router::new()
        .route(
            "/orders/{id}",
            axum::routing::post(
                |State(db): State<Arc<std::sync::Mutex<rusqlite::Connection>>>,
                 Path(id): Path<String>| async move {
                    let mut conn = db.lock().unwrap();
                    let tx = conn.transaction().unwrap();
                    tx.execute("INSERT INTO orders (id, total) VALUES (?1, 100)", [&id])
                        .unwrap();
                    let event = NewEvent::new(
                        "order",
                        &id,
                        "order.placed",
                        serde_json::json!({ "order": id, "total": 100 }),
                    );
                    SqliteOutbox::enqueue(&tx, &event, SystemClock.now()).unwrap();
                    tx.commit().unwrap();
                    axum::http::StatusCode::CREATED
                },
            ),
        )
        .with_state(db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_run_and_restarted_delivers_every_event_once() {
    let Some(nats) =
        Service::Nats.available("a_relay_killed_mid_run_and_restarted_delivers_every_event_once")
    else {
        return;
    };
    const ORDERS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = Arc::new(
        SqliteOutbox::open(&path, Duration::from_secs(10), Arc::new(SystemClock)).unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app_addr = listener.local_addr().unwrap();
    let app = orders_app(path.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = oncely_testkit::TestClient::new();
    for n in 0..ORDERS {
        let a = client
            .send(
                "POST",
                &format!("http://{app_addr}/orders/o{n}"),
                &[],
                Vec::new(),
            )
            .await
            .unwrap();
        assert_eq!(a.status, 201);
    }
    let db = format!("sqlite://{}", path.display());
    let name = unique_name("oncely_relay");
    let js = oncely_outbox::nats::NatsPublisher::connect(&nats, &name)
        .await
        .unwrap();

    let relay = start_relay(&db, &nats, &name, &[]);
    // Wait until it is well into the work, then kill it without warning.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let delivered = store.stats().await.unwrap().delivered;
        if delivered >= 100 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay delivered only {delivered}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    signal(relay.0.id(), libc::SIGKILL);
    drop(relay);
    let after_kill = store.stats().await.unwrap();
    assert!(
        after_kill.pending > 0,
        "killed before it finished: {after_kill:?}"
    );

    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let relay = start_relay(&db, &nats, &name, &["--metrics", &metrics_addr.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while store.stats().await.unwrap().pending > 0 {
        assert!(
            Instant::now() < deadline,
            "the restarted relay did not drain the outbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let page = client
        .send(
            "GET",
            &format!("http://{metrics_addr}/metrics"),
            &[],
            Vec::new(),
        )
        .await
        .unwrap();
    let page = String::from_utf8_lossy(&page.body).into_owned();
    let value = |series: &str| -> f64 {
        page.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} in\n{page}"))
    };
    assert_eq!(value("oncely_outbox_pending"), 0.0);
    assert_eq!(value("oncely_outbox_lag_seconds"), 0.0);
    assert!(value("oncely_outbox_delivered_total{publisher=\"nats\"}") > 0.0);
    relay.stop();

    let mut stream = js.jetstream().get_stream(&name).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        ORDERS as u64,
        "every event in the stream exactly once"
    );

    // A consumer applies each order once through its inbox, in its own database.
    let consumer_db = Arc::new(std::sync::Mutex::new(
        rusqlite::Connection::open(dir.path().join("billing.db")).unwrap(),
    ));
    {
        let mut c = consumer_db.lock().unwrap();
        c.execute_batch("CREATE TABLE invoices (order_id TEXT NOT NULL, total INTEGER NOT NULL)")
            .unwrap();
        oncely_outbox::inbox::sqlite::migrate(&mut c).unwrap();
    }
    let consumer = oncely_outbox::nats::NatsConsumer::durable(
        js.jetstream(),
        &name,
        "billing",
        oncely_outbox::nats::ConsumerConfig::default(),
    )
    .await
    .unwrap();
    let handler = {
        let db = consumer_db.clone();
        oncely_outbox::handler_fn(move |m: oncely_outbox::Message| {
            let db = db.clone();
            async move {
                let order: serde_json::Value = m.json()?;
                let mut c = db.lock().unwrap();
                let applied = oncely_outbox::inbox::sqlite::apply_once(
                    &mut c,
                    "billing",
                    &m.id,
                    SystemClock.now(),
                    |tx| {
                        tx.execute(
                            "INSERT INTO invoices (order_id, total) VALUES (?1, ?2)",
                            rusqlite::params![order["order"].as_str(), order["total"].as_i64()],
                        )
                        .map_err(|e| oncely_outbox::inbox::InboxError::Unavailable(e.to_string()))
                    },
                )?;
                Ok(applied.into())
            }
        })
    };
    let metrics = consumer.metrics();
    let consuming =
        tokio::spawn(async move { consumer.run(handler, std::future::pending()).await });
    let deadline = Instant::now() + Duration::from_secs(60);
    while metrics.applied() < ORDERS as u64 {
        assert!(
            Instant::now() < deadline,
            "the consumer applied {}",
            metrics.applied()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    consuming.abort();
    let (invoices, distinct): (i64, i64) = consumer_db
        .lock()
        .unwrap()
        .query_row(
            "SELECT count(*), count(DISTINCT order_id) FROM invoices",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (invoices, distinct),
        (ORDERS as i64, ORDERS as i64),
        "one invoice per order"
    );

    let (ok, status) = outbox_cli(&db, &["status"]);
    assert!(ok, "{status}");
    assert!(status.contains("pending    0"), "{status}");
    assert!(status.contains("dead       0"), "{status}");
    js.jetstream().delete_stream(&name).await.unwrap();
}

#[tokio::test]
async fn dead_letters_are_listed_and_retried_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = SqliteOutbox::open(&path, Duration::from_secs(10), Arc::new(SystemClock)).unwrap();
    enqueue(&path, 1, 1);
    let db = format!("sqlite://{}", path.display());
    let c = store
        .claim(1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    let failure = oncely_outbox::Failure {
        error: "the broker said no".into(),
        retry_in: Duration::ZERO,
        dead_after: 1,
    };
    store.failed(c.event.id, c.token, &failure).await.unwrap();

    let (ok, listed) = outbox_cli(&db, &["dead-letters"]);
    assert!(ok, "{listed}");
    assert!(
        listed.contains(&c.event.id.to_string()) && listed.contains("the broker said no"),
        "{listed}"
    );
    let (ok, out) = outbox_cli(&db, &["retry", &c.event.id.to_string()]);
    assert!(ok, "{out}");
    assert_eq!(store.stats().await.unwrap().pending, 1);
    let (ok, out) = outbox_cli(&db, &["retry", &c.event.id.to_string()]);
    assert!(!ok && out.contains("is not a dead letter"), "{out}");
    let (ok, out) = outbox_cli(&db, &["retry", "nonsense"]);
    assert!(!ok && out.contains("is not an event id"), "{out}");
    let (ok, out) = outbox_cli("mysql://x", &["status"]);
    assert!(!ok && out.lines().count() == 1, "one line: {out}");
}

/// On PostgreSQL the relay listens: with a poll interval of a minute, events enqueued after
/// it started are still published within seconds of their commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_a_commit_wakes_the_relay() {
    let test = "on_postgres_a_commit_wakes_the_relay";
    let (Some(pg), Some(nats)) = (
        Service::Postgres.available(test),
        Service::Nats.available(test),
    ) else {
        return;
    };
    let schema = unique_name("oncely_relay");
    let pool = oncely_db::postgres::pool(&oncely_db::postgres::PgOptions::new(&pg)).unwrap();
    let store =
        oncely_outbox::postgres::PgOutbox::open(pool.clone(), &schema, Arc::new(SystemClock))
            .await
            .unwrap();
    let db = format!(
        "{pg}{}schema={schema}",
        if pg.contains('?') { '&' } else { '?' }
    );
    let name = unique_name("oncely_relay");
    let js = oncely_outbox::nats::NatsPublisher::connect(&nats, &name)
        .await
        .unwrap();
    let relay = KillOnDrop(
        oncely()
            .args([
                "relay",
                "--db",
                &db,
                "--to",
                &nats,
                "--subject-prefix",
                &name,
                "--stream",
                &name,
            ])
            .args(["--poll", "60s"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("start oncely relay"),
    );
    // Started once it announces itself; its first pass found nothing.
    let mut relay = relay;
    let mut out = std::io::BufReader::new(relay.0.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(line.starts_with("relaying "), "{line}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut client = pool.get().await.unwrap();
    for i in 0..5 {
        let tx = client.transaction().await.unwrap();
        for a in 0..10 {
            let e = NewEvent::new(
                "order",
                format!("p{a}"),
                "order.changed",
                serde_json::json!({ "i": i }),
            );
            store.enqueue(&tx, &e).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    let started = Instant::now();
    while store.stats().await.unwrap().pending > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "not woken by the commits (the poll is a minute)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.stop();
    let mut stream = js.jetstream().get_stream(&name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 50);
    js.jetstream().delete_stream(&name).await.unwrap();
    oncely_testkit::services::drop_postgres_schemas(&pg, &[schema]);
}
