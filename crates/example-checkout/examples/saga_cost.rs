//! What running the checkout as a saga costs, against the same four calls made directly:
//! the order placed, the stock reserved and the card charged over HTTP (with keys, through
//! the same client), the order confirmed. In one process, with the inventory service and
//! the payment provider on loopback, on SQLite and (with `--postgres URL`) PostgreSQL.
//!
//! ```sh
//! cargo run --release -p oncely-example-checkout --example saga_cost -- \
//!     --n 2000 --concurrency 16 --postgres postgres://postgres@127.0.0.1/test
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use oncely_core::{Clock, SystemClock};
use oncely_example_checkout::checkout::{Checkout, CheckoutConfig, CheckoutInput, Item};
use oncely_example_checkout::orders::{Order, OrdersDb};
use oncely_example_checkout::{inventory, payments};
use oncely_saga::http::HttpSteps;
use oncely_saga::{Runner, RunnerConfig, SagaStore, StepContext};

struct Args {
    n: usize,
    concurrency: usize,
    postgres: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        n: 1000,
        concurrency: 16,
        postgres: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => a.n = value()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--concurrency" => {
                a.concurrency = value()?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            "--postgres" => a.postgres = Some(value()?),
            other => {
                return Err(format!(
                    "unknown flag {other} (--n N --concurrency C --postgres URL)"
                ))
            }
        }
    }
    Ok(a)
}

async fn serve(app: axum::Router) -> Result<String, String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let url = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(url)
}

fn input(i: usize, run: &str) -> (String, CheckoutInput) {
    let id = format!("co_{run}_{i}");
    let input = CheckoutInput {
        order_id: format!("ord_{run}_{i}"),
        email: "ada@example.com".into(),
        card: "tok_visa".into(),
        items: vec![Item {
            sku: "tea".into(),
            qty: 1,
        }],
        amount: 450,
    };
    (id, input)
}

/// The four calls, made directly, with the keys a saga would send.
async fn direct(c: &Checkout, id: &str, input: &CheckoutInput) -> Result<(), String> {
    let cx = |step: &str| StepContext {
        saga_id: id.to_owned(),
        input: serde_json::Value::Null,
        outputs: serde_json::Map::new(),
        key: format!("{id}/{step}/do"),
        attempt: 1,
        failure: None,
    };
    let order = Order {
        id: input.order_id.clone(),
        saga_id: id.to_owned(),
        email: input.email.clone(),
        items: serde_json::to_value(&input.items).map_err(|e| e.to_string())?,
        amount: input.amount,
        status: "pending".into(),
        charge_id: None,
        cancel_reason: None,
    };
    c.orders.place(&order).await?;
    let body = serde_json::json!({ "reference": input.order_id, "items": input.items });
    c.http
        .post(
            &cx("reserve_stock"),
            &format!("{}/reservations", c.inventory),
            &body,
        )
        .await
        .map_err(|e| e.to_string())?;
    let body = serde_json::json!({ "amount": input.amount, "card": input.card, "reference": input.order_id });
    let charge = c
        .http
        .post(
            &cx("capture_payment"),
            &format!("{}/charges", c.payments),
            &body,
        )
        .await
        .map_err(|e| e.to_string())?;
    let charge_id = charge["id"].as_str().unwrap_or_default().to_owned();
    c.orders.confirm(&input.order_id, &charge_id).await?;
    Ok(())
}

struct Figures {
    direct_c1_ms: f64,
    saga_c1_ms: f64,
    direct_per_s: f64,
    saga_per_s: f64,
}

async fn measure(
    name: &str,
    sagas: Arc<dyn SagaStore>,
    orders: OrdersDb,
    a: &Args,
) -> Result<Figures, String> {
    let (inv, _) = inventory::router_with(inventory::Ledger::with_stock(u32::MAX / 2))?;
    let (pay, _) = payments::router()?;
    let client = oncely_client::Client::builder()
        .attempt_timeout(Some(Duration::from_secs(2)))
        .build()
        .map_err(|e| e.to_string())?;
    let checkout = Arc::new(Checkout {
        orders,
        inventory: serve(inv).await?,
        payments: serve(pay).await?,
        http: HttpSteps::new(Arc::new(client)),
        config: CheckoutConfig::default(),
    });
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let runner = |batch| {
        Runner::new(
            sagas.clone(),
            vec![checkout.definition(None)],
            clock.clone(),
            RunnerConfig {
                lease: Duration::from_secs(30),
                batch,
                poll: Duration::from_millis(1),
            },
        )
        .map_err(|e| e.to_string())
    };
    let run = format!("{}", SystemClock.now().as_millis());
    let n1 = (a.n / 4).max(50);

    // One at a time: the latency a saga adds to one checkout.
    let t = Instant::now();
    for i in 0..n1 {
        let (id, input) = input(i, &format!("{run}d1"));
        direct(&checkout, &id, &input).await?;
    }
    let direct_c1_ms = t.elapsed().as_secs_f64() * 1000.0 / n1 as f64;
    let r = runner(1)?;
    let t = Instant::now();
    for i in 0..n1 {
        let (id, input) = input(i, &format!("{run}s1"));
        Checkout::start(&r, &id, &input)
            .await
            .map_err(|e| e.to_string())?;
        r.pass().await.map_err(|e| e.to_string())?;
    }
    let saga_c1_ms = t.elapsed().as_secs_f64() * 1000.0 / n1 as f64;

    // Many at once: checkouts per second.
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per = a.n.div_ceil(a.concurrency);
    for w in 0..a.concurrency {
        let (c, run) = (checkout.clone(), format!("{run}dc{w}"));
        tasks.spawn(async move {
            for i in 0..per {
                let (id, input) = input(i, &run);
                direct(&c, &id, &input).await?;
            }
            Ok::<_, String>(())
        });
    }
    while let Some(j) = tasks.join_next().await {
        j.map_err(|e| e.to_string())??;
    }
    let direct_per_s = (per * a.concurrency) as f64 / t.elapsed().as_secs_f64();
    let r = runner(a.concurrency)?;
    let t = Instant::now();
    for i in 0..per * a.concurrency {
        let (id, input) = input(i, &format!("{run}sc"));
        Checkout::start(&r, &id, &input)
            .await
            .map_err(|e| e.to_string())?;
    }
    loop {
        let pass = r.pass().await.map_err(|e| e.to_string())?;
        if pass.claimed == 0 {
            break;
        }
    }
    let saga_per_s = (per * a.concurrency) as f64 / t.elapsed().as_secs_f64();
    let stats = sagas.stats().await.map_err(|e| e.to_string())?;
    if stats.completed as usize != n1 + per * a.concurrency
        || stats.running + stats.compensating + stats.stuck > 0
    {
        return Err(format!("{name}: not every saga completed: {stats:?}"));
    }
    Ok(Figures {
        direct_c1_ms,
        saga_c1_ms,
        direct_per_s,
        saga_per_s,
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), String> {
    let a = args()?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut rows = Vec::new();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("shop.db");
    eprintln!(
        "SQLite: {} checkouts at c=1, {} at c={} ...",
        (a.n / 4).max(50),
        a.n,
        a.concurrency
    );
    let sagas =
        oncely_saga::sqlite::SqliteSagas::open(&path, Duration::from_secs(10), clock.clone())
            .map_err(|e| e.to_string())?;
    rows.push((
        "SQLite",
        measure("SQLite", Arc::new(sagas), OrdersDb::sqlite(&path)?, &a).await?,
    ));
    if let Some(url) = &a.postgres {
        eprintln!("PostgreSQL ...");
        let schema = format!("saga_bench_{}", std::process::id());
        let mut opts = oncely_db::postgres::PgOptions::new(url.clone());
        opts.schema = schema.clone();
        let pool = oncely_db::postgres::pool(&opts)?;
        let sagas = oncely_saga::postgres::PgSagas::open(pool.clone(), &schema, clock.clone())
            .await
            .map_err(|e| e.to_string())?;
        let orders = OrdersDb::postgres(pool.clone(), &schema).await?;
        let figures = measure("PostgreSQL", Arc::new(sagas), orders, &a).await;
        if let Ok(c) = pool.get().await {
            let _ = c
                .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .await;
        }
        rows.push(("PostgreSQL", figures?));
    }
    println!("| database | direct, c=1 | saga, c=1 | saga/direct time | direct checkouts/s, c={c} | sagas/s, c={c} | saga/direct rate |", c = a.concurrency);
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (db, f) in rows {
        println!(
            "| {db} | {:.2} ms | {:.2} ms | {:.2}x | {:.0} | {:.0} | {:.0} % |",
            f.direct_c1_ms,
            f.saga_c1_ms,
            f.saga_c1_ms / f.direct_c1_ms,
            f.direct_per_s,
            f.saga_per_s,
            100.0 * f.saga_per_s / f.direct_per_s
        );
    }
    println!("peak RSS {} MiB", rss_kib() / 1024);
    Ok(())
}
