//! How fast the `payments` job compares, and how much memory it holds: N orders (ours) against
//! N charges (theirs) spread over a day, on SQLite and (with `--postgres URL`) PostgreSQL, in
//! windows of ten minutes. Ours is the job's real source (the orders table); theirs is a
//! table of charges in the same database, read page by page the way the provider's listing
//! is (the HTTP listing of the fake provider would measure JSON over loopback, not the
//! reconciler). One in a thousand orders of each kind is a drift: a missed webhook (healed),
//! an amount mismatch, a paid order without a charge, an orphan charge.
//!
//! ```sh
//! cargo run --release -p oncely-example-checkout --example reconcile_cost -- \
//!     --n 1000000 --postgres postgres://postgres@127.0.0.1/test
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oncely_core::reconcile::{Entry, WindowPlan};
use oncely_core::{ManualClock, Timestamp};
use oncely_example_checkout::orders::OrdersDb;
use oncely_example_checkout::reconcile::{invariant, mark_paid, orders_source, rules};
use oncely_reconcile::{Job, Page, ReconcileStore, Reconciler, Source, SourceError};

const DAY: i64 = 86_400_000;
const START: i64 = 1_800_000_000_000;

struct Args {
    n: i64,
    postgres: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        n: 100_000,
        postgres: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--n" => a.n = value()?.parse().map_err(|e| format!("--n: {e}"))?,
            "--postgres" => a.postgres = Some(value()?),
            other => return Err(format!("unknown flag {other} (--n N --postgres URL)")),
        }
    }
    Ok(a)
}

/// The i-th order's time, amount and status, and its charge's; the drifts by residue.
const ORDERS_SQL: &str = "\
    CASE WHEN i % 1000 = 3 THEN 'pending' ELSE 'confirmed' END";

/// Charges in a table of the same database, paged by (created_at, id).
enum Charges {
    Sqlite(Arc<std::sync::Mutex<rusqlite::Connection>>),
    Postgres(deadpool_postgres::Pool, String),
}

#[async_trait]
impl Source for Charges {
    async fn page(
        &self,
        from: Timestamp,
        to: Timestamp,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page, SourceError> {
        let (after_at, after_id) = cursor
            .as_deref()
            .and_then(|c| c.split_once('/'))
            .map(|(a, i)| (a.parse::<i64>().unwrap_or(i64::MIN), i.to_owned()))
            .unwrap_or((i64::MIN, String::new()));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, String, i64, String, i64)> = match self {
            Charges::Sqlite(conn) => {
                let conn = conn.clone();
                tokio::task::spawn_blocking(move || -> Result<_, String> {
                    let c = conn.lock().map_err(|e| e.to_string())?;
                    let mut st = c
                        .prepare_cached(
                            "SELECT id, reference, amount, status, created_at FROM bench_charges \
                             WHERE created_at >= ?1 AND created_at < ?2 AND (created_at, id) > (?3, ?4) \
                             ORDER BY created_at, id LIMIT ?5",
                        )
                        .map_err(|e| e.to_string())?;
                    let rows = st
                        .query_map(
                            rusqlite::params![from.0, to.0, after_at, after_id, limit],
                            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
                        )
                        .map_err(|e| e.to_string())?;
                    rows.collect::<Result<Vec<_>, _>>().map_err(|e| e.to_string())
                })
                .await
                .map_err(|e| SourceError(e.to_string()))?
                .map_err(SourceError)?
            }
            Charges::Postgres(pool, s) => {
                let client = pool.get().await.map_err(|e| SourceError(e.to_string()))?;
                let st = client
                    .prepare_cached(&format!(
                        "SELECT id, reference, amount, status, created_at FROM \"{s}\".bench_charges \
                         WHERE created_at >= $1 AND created_at < $2 AND (created_at, id) > ($3, $4) \
                         ORDER BY created_at, id LIMIT $5"
                    ))
                    .await
                    .map_err(|e| SourceError(e.to_string()))?;
                client
                    .query(&st, &[&from.0, &to.0, &after_at, &after_id, &limit])
                    .await
                    .map_err(|e| SourceError(e.to_string()))?
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                    .collect()
            }
        };
        let next = (rows.len() as i64 == limit)
            .then(|| rows.last().map(|r| format!("{}/{}", r.4, r.0)))
            .flatten();
        Ok(Page {
            records: rows
                .into_iter()
                .map(|(id, key, amount, status, at)| {
                    Ok(Entry {
                        id,
                        key,
                        amount,
                        status,
                        at: Timestamp(at),
                    })
                })
                .collect(),
            next,
        })
    }
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

/// The same drifts found by the database alone, in one query (the reference: no windows, no
/// findings, no heals, nothing kept).
const RAW_DRIFTS: &str = "SELECT count(*) FROM {o} o FULL OUTER JOIN {c} c ON c.reference = o.id \
     WHERE o.id IS NULL OR c.id IS NULL OR o.amount <> c.amount OR o.status = 'pending'";

struct Figures {
    raw: Duration,
    raw_drifts: i64,
    load: Duration,
    run: Duration,
    healed: u64,
    alerts: u64,
    rss_mib: u64,
}

async fn measure(
    orders: OrdersDb,
    charges: Charges,
    store: Arc<dyn ReconcileStore>,
    clock: ManualClock,
    load: Duration,
) -> Result<Figures, String> {
    let t = Instant::now();
    let raw_drifts = match &charges {
        Charges::Sqlite(conn) => {
            let c = conn.lock().map_err(|e| e.to_string())?;
            let sql = RAW_DRIFTS
                .replace("{o}", "orders")
                .replace("{c}", "bench_charges");
            c.query_row(&sql, [], |r| r.get(0))
                .map_err(|e| e.to_string())?
        }
        Charges::Postgres(pool, s) => {
            let c = pool.get().await.map_err(|e| e.to_string())?;
            let sql = RAW_DRIFTS
                .replace("{o}", &format!("\"{s}\".orders"))
                .replace("{c}", &format!("\"{s}\".bench_charges"));
            c.query_one(&sql, &[])
                .await
                .map_err(|e| oncely_db::describe(&e))?
                .get(0)
        }
    };
    let raw = t.elapsed();
    let job = Job {
        name: "payments".into(),
        ours: orders_source(orders.clone()),
        theirs: Arc::new(charges),
        rules: rules(),
        healer: mark_paid(orders),
        invariant: invariant(),
        windows: WindowPlan {
            length: Duration::from_secs(600),
            overlap: Duration::from_secs(120),
            settle: Duration::ZERO,
            lookback: Duration::from_millis(DAY as u64 + 60_000),
        },
        page_size: 2000,
    };
    clock.set(Timestamp(START + DAY + 1));
    let t = Instant::now();
    let summary = Reconciler::new(store, Arc::new(clock), Duration::from_secs(600))
        .run(&job)
        .await
        .map_err(|e| e.to_string())?;
    let run = t.elapsed();
    let n = |k: &str| summary.report.counts.get(k).copied().unwrap_or(0);
    Ok(Figures {
        raw,
        raw_drifts,
        load,
        run,
        healed: n("healed"),
        alerts: n("alerts"),
        rss_mib: rss_kib() / 1024,
    })
}

/// The rows, by residue of i: 3 a missed webhook (pending here, paid there), 5 an amount
/// mismatch, 7 a paid order without a charge, 9 an orphan charge (its order missing).
fn sqlite_load(path: &std::path::Path, n: i64) -> Result<(), String> {
    let c = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    c.execute_batch(&format!(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS bench_charges (id TEXT PRIMARY KEY, reference TEXT NOT NULL,
            amount INTEGER NOT NULL, status TEXT NOT NULL, created_at INTEGER NOT NULL);
         BEGIN;
         WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < {n})
         INSERT INTO orders (id, saga_id, email, items, amount, status, created_at)
           SELECT printf('ord_%08d', i), 'co', 'a@example.com', '[]', 400 + (i % 7) * 50,
                  {ORDERS_SQL}, {START} + i * {DAY} / {n}
           FROM s WHERE i % 1000 != 9;
         WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < {n})
         INSERT INTO bench_charges (id, reference, amount, status, created_at)
           SELECT printf('ch_%08d', i), printf('ord_%08d', i),
                  400 + (i % 7) * 50 - CASE WHEN i % 1000 = 5 THEN 10 ELSE 0 END, 'paid',
                  {START} + i * {DAY} / {n} + 1500
           FROM s WHERE i % 1000 != 7;
         COMMIT;
         CREATE INDEX IF NOT EXISTS bench_charges_created ON bench_charges (created_at, id);
         CREATE INDEX IF NOT EXISTS bench_charges_reference ON bench_charges (reference);
         ANALYZE;"
    ))
    .map_err(|e| e.to_string())
}

async fn pg_load(pool: &deadpool_postgres::Pool, s: &str, n: i64) -> Result<(), String> {
    let c = pool.get().await.map_err(|e| e.to_string())?;
    c.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS \"{s}\".bench_charges (id TEXT PRIMARY KEY, reference TEXT NOT NULL,
            amount BIGINT NOT NULL, status TEXT NOT NULL, created_at BIGINT NOT NULL);
         INSERT INTO \"{s}\".orders (id, saga_id, email, items, amount, status, created_at)
           SELECT 'ord_' || lpad(i::text, 8, '0'), 'co', 'a@example.com', '[]', 400 + (i % 7) * 50,
                  {ORDERS_SQL}, {START} + i * {DAY} / {n}
           FROM generate_series(0::bigint, {n} - 1) i WHERE i % 1000 != 9;
         INSERT INTO \"{s}\".bench_charges (id, reference, amount, status, created_at)
           SELECT 'ch_' || lpad(i::text, 8, '0'), 'ord_' || lpad(i::text, 8, '0'),
                  400 + (i % 7) * 50 - CASE WHEN i % 1000 = 5 THEN 10 ELSE 0 END, 'paid',
                  {START} + i * {DAY} / {n} + 1500
           FROM generate_series(0::bigint, {n} - 1) i WHERE i % 1000 != 7;
         CREATE INDEX IF NOT EXISTS bench_charges_created ON \"{s}\".bench_charges (created_at, id);
         CREATE INDEX IF NOT EXISTS bench_charges_reference ON \"{s}\".bench_charges (reference);
         ANALYZE \"{s}\".orders; ANALYZE \"{s}\".bench_charges;"
    ))
    .await
    .map_err(|e| oncely_db::describe(&e))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), String> {
    let a = args()?;
    let clock = ManualClock::new(Timestamp(START));
    let mut rows = Vec::new();

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let path = dir.path().join("shop.db");
    eprintln!("SQLite: loading {} orders and {} charges ...", a.n, a.n);
    let t = Instant::now();
    let orders = OrdersDb::sqlite(&path)?;
    sqlite_load(&path, a.n)?;
    let load = t.elapsed();
    let store = oncely_reconcile::sqlite::SqliteReconcile::open(
        &path,
        Duration::from_secs(30),
        Arc::new(clock.clone()),
    )
    .map_err(|e| e.to_string())?;
    let conn = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
    eprintln!("SQLite: reconciling ...");
    let charges = Charges::Sqlite(Arc::new(std::sync::Mutex::new(conn)));
    rows.push((
        "SQLite",
        measure(orders, charges, Arc::new(store), clock.clone(), load).await?,
    ));

    if let Some(url) = &a.postgres {
        let schema = format!("reconcile_bench_{}", std::process::id());
        let mut opts = oncely_db::postgres::PgOptions::new(url.clone());
        opts.schema = schema.clone();
        opts.timeout = Duration::from_secs(600);
        let pool = oncely_db::postgres::pool(&opts)?;
        eprintln!("PostgreSQL: loading ...");
        let t = Instant::now();
        let orders = OrdersDb::postgres(pool.clone(), &schema).await?;
        pg_load(&pool, &schema, a.n).await?;
        let load = t.elapsed();
        let store = oncely_reconcile::postgres::PgReconcile::open(
            pool.clone(),
            &schema,
            Arc::new(clock.clone()),
        )
        .await
        .map_err(|e| e.to_string())?
        .with_timeout(Duration::from_secs(60));
        eprintln!("PostgreSQL: reconciling ...");
        let result = measure(
            orders,
            Charges::Postgres(pool.clone(), schema.clone()),
            Arc::new(store),
            clock.clone(),
            load,
        )
        .await;
        if let Ok(c) = pool.get().await {
            let _ = c
                .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .await;
        }
        rows.push(("PostgreSQL", result?));
    }
    let compared = 2 * a.n;
    println!("| database | ours × theirs | load | run | records compared/s | healed | alerts | one SQL join (reference) | run / join | peak RSS (process) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (db, f) in rows {
        println!(
            "| {db} | {n} × {n} | {:.1} s | {:.1} s | {:.0} | {} | {} | {:.1} s ({} drifts) | {:.1}x | {} MiB |",
            f.load.as_secs_f64(),
            f.run.as_secs_f64(),
            compared as f64 / f.run.as_secs_f64(),
            f.healed,
            f.alerts,
            f.raw.as_secs_f64(),
            f.raw_drifts,
            f.run.as_secs_f64() / f.raw.as_secs_f64(),
            f.rss_mib,
            n = a.n,
        );
    }
    Ok(())
}
