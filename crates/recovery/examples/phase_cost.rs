//! What recovery points cost: the same checkout-shaped work (insert an order; update it and
//! queue an email) done as plain transactions, and as an operation with recovery points, side
//! by side on one database:
//! `cargo run --release -p oncely-recovery --example phase_cost -- [seconds] [postgres URL]`.
//!
//! Rows: `plain` = the two business transactions alone; `recovery` = the same two as atomic
//! phases (plus the operation's insert, and the point checked and moved in each);
//! `recovery + foreign` = a no-op foreign phase between them (one more transaction).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oncely_core::{StoredResponse, SystemClock};
use oncely_recovery::postgres::{pool, PgJournal};
use oncely_recovery::sqlite::SqliteJournal;
use oncely_recovery::{Flow, ForeignCall, Journal, Operation, Recovery};
use serde::{Deserialize, Serialize};

#[derive(Clone, Serialize, Deserialize)]
struct St {
    id: String,
}

fn done() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: bytes::Bytes::from_static(br#"{"status":"paid"}"#),
    }
}

async fn noop(call: ForeignCall<St>) -> Result<(St, Flow), oncely_recovery::PhaseError> {
    Ok((call.state, Flow::Continue))
}

fn sqlite_op(foreign: bool) -> Operation<SqliteJournal, St> {
    let op = Operation::<SqliteJournal, St>::new(if foreign { "with-foreign" } else { "plain" })
        .atomic("order", |tx, st: &mut St| {
            tx.execute(
                "INSERT INTO orders (id, status) VALUES (?1, 'pending')",
                [&st.id],
            )?;
            Ok(Flow::Continue)
        });
    let op = if foreign {
        op.foreign("charge", noop)
    } else {
        op
    };
    op.atomic("receipt", |tx, st: &mut St| {
        tx.execute("UPDATE orders SET status = 'paid' WHERE id = ?1", [&st.id])?;
        tx.execute("INSERT INTO emails (order_id) VALUES (?1)", [&st.id])?;
        Ok(Flow::Respond(done()))
    })
}

fn pg_op(schema: &str, foreign: bool) -> Operation<PgJournal, St> {
    let insert: Arc<str> =
        format!("INSERT INTO \"{schema}\".orders (id, status) VALUES ($1, 'pending')").into();
    let update: Arc<str> =
        format!("UPDATE \"{schema}\".orders SET status = 'paid' WHERE id = $1").into();
    let email: Arc<str> = format!("INSERT INTO \"{schema}\".emails (order_id) VALUES ($1)").into();
    let op = Operation::<PgJournal, St>::new(if foreign { "with-foreign" } else { "plain" })
        .atomic("order", move |tx, st: &mut St| {
            let insert = insert.clone();
            Box::pin(async move {
                tx.execute(&*insert, &[&st.id]).await?;
                Ok(Flow::Continue)
            })
        });
    let op = if foreign {
        op.foreign("charge", noop)
    } else {
        op
    };
    op.atomic("receipt", move |tx, st: &mut St| {
        let (update, email) = (update.clone(), email.clone());
        Box::pin(async move {
            tx.execute(&*update, &[&st.id]).await?;
            tx.execute(&*email, &[&st.id]).await?;
            Ok(Flow::Respond(done()))
        })
    })
}

/// Runs `one(n)` from `concurrency` tasks for `secs`; returns (ops/s, p50 µs, p99 µs).
async fn measure<F, Fut>(concurrency: usize, secs: f64, one: F) -> (f64, u64, u64)
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let one = Arc::new(one);
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (one, next) = (one.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let t = Instant::now();
                one(n).await;
                lat.push(t.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    (all.len() as f64 / elapsed, pct(0.5), pct(0.99))
}

fn row(db: &str, what: &str, c: usize, (ops, p50, p99): (f64, u64, u64), plain: f64) {
    println!(
        "| {db} | {what} | {c} | {ops:.0} | {:.0} % | {p50} | {p99} |",
        100.0 * ops / plain
    );
}

/// The operation without and with a foreign phase, measured against `plain` ops/s.
async fn recovery_rows<J: Journal>(
    db: &str,
    rec: &Arc<Recovery<J>>,
    op: impl Fn(bool) -> Operation<J, St>,
    c: usize,
    secs: f64,
    plain: f64,
) {
    for foreign in [false, true] {
        let (rec, op) = (rec.clone(), Arc::new(op(foreign)));
        let r = measure(c, secs, move |n| {
            let (rec, op) = (rec.clone(), op.clone());
            async move {
                let id = format!("op-{foreign}-{c}-{n}");
                rec.run(&op, &id, St { id: id.clone() }).await.expect("run");
            }
        })
        .await;
        let what = if foreign {
            "recovery + foreign"
        } else {
            "recovery"
        };
        row(db, what, c, r, plain);
    }
}

async fn sqlite(secs: f64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let journal = Arc::new(
        SqliteJournal::open(dir.path().join("bench.db"), Duration::from_secs(5)).expect("open"),
    );
    journal
        .with_connection(|c| {
            c.execute_batch(
                "CREATE TABLE orders (id TEXT PRIMARY KEY, status TEXT NOT NULL);
                 CREATE TABLE emails (id INTEGER PRIMARY KEY, order_id TEXT NOT NULL);",
            )
        })
        .await
        .expect("tables");
    let rec = Arc::new(Recovery::new(journal.clone(), Arc::new(SystemClock)));
    for c in [1, 16] {
        let j = journal.clone();
        let plain = measure(c, secs, move |n| {
            let j = j.clone();
            async move {
                let id = format!("plain-{c}-{n}");
                let id2 = id.clone();
                j.with_connection(move |conn| {
                    let tx = conn.transaction()?;
                    tx.execute(
                        "INSERT INTO orders (id, status) VALUES (?1, 'pending')",
                        [&id],
                    )?;
                    tx.commit()
                })
                .await
                .expect("plain order");
                j.with_connection(move |conn| {
                    let tx = conn.transaction()?;
                    tx.execute("UPDATE orders SET status = 'paid' WHERE id = ?1", [&id2])?;
                    tx.execute("INSERT INTO emails (order_id) VALUES (?1)", [&id2])?;
                    tx.commit()
                })
                .await
                .expect("plain receipt");
            }
        })
        .await;
        row("SQLite", "plain", c, plain, plain.0);
        recovery_rows("SQLite", &rec, sqlite_op, c, secs, plain.0).await;
    }
}

async fn postgres(secs: f64, url: &str) {
    let schema = format!("oncely_bench_{}", std::process::id());
    let journal = Arc::new(
        PgJournal::new(
            pool(url, 32, Duration::from_secs(10)).expect("pool"),
            &schema,
            Duration::from_secs(10),
        )
        .expect("journal"),
    );
    if let Err(e) = journal.migrate().await {
        println!("(PostgreSQL at {url} skipped: {e})");
        return;
    }
    let client = journal.pool().get().await.expect("client");
    client
        .batch_execute(&format!(
            "CREATE TABLE \"{schema}\".orders (id text PRIMARY KEY, status text NOT NULL);
             CREATE TABLE \"{schema}\".emails (id bigserial PRIMARY KEY, order_id text NOT NULL);"
        ))
        .await
        .expect("tables");
    let rec = Arc::new(Recovery::new(journal.clone(), Arc::new(SystemClock)));
    for c in [1, 16] {
        let (j, s) = (journal.clone(), schema.clone());
        let plain = measure(c, secs, move |n| {
            let (j, s) = (j.clone(), s.clone());
            async move {
                let id = format!("plain-{c}-{n}");
                let mut client = j.pool().get().await.expect("client");
                let tx = client.transaction().await.expect("tx");
                tx.execute(
                    &format!("INSERT INTO \"{s}\".orders (id, status) VALUES ($1, 'pending')"),
                    &[&id],
                )
                .await
                .expect("order");
                tx.commit().await.expect("commit");
                let tx = client.transaction().await.expect("tx");
                tx.execute(
                    &format!("UPDATE \"{s}\".orders SET status = 'paid' WHERE id = $1"),
                    &[&id],
                )
                .await
                .expect("update");
                tx.execute(
                    &format!("INSERT INTO \"{s}\".emails (order_id) VALUES ($1)"),
                    &[&id],
                )
                .await
                .expect("email");
                tx.commit().await.expect("commit");
            }
        })
        .await;
        row("PostgreSQL", "plain", c, plain, plain.0);
        recovery_rows(
            "PostgreSQL",
            &rec,
            |foreign| pg_op(&schema, foreign),
            c,
            secs,
            plain.0,
        )
        .await;
    }
    let _ = client
        .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let secs: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let url = args
        .next()
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    println!("| database | work | concurrency | checkouts/s | of plain | p50 µs | p99 µs |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    sqlite(secs).await;
    postgres(secs, &url).await;
}
