//! `oncely-bench --stores`: for each store, in one run, at one concurrency:
//!
//! 1. **raw**: the store's own limit: a tight client loop doing the same claim + complete work
//!    straight on the database with its plain driver (no oncely code): for PostgreSQL an
//!    `INSERT ... ON CONFLICT DO NOTHING RETURNING` then a token-conditioned `UPDATE`, on a
//!    table with the same key columns, through a pool of the same size; for
//!    Redis a `SET NX PX` then a `SET XX PX`; for SQLite the same two statements through one
//!    `rusqlite` connection in WAL mode with `synchronous=NORMAL` (oncely's defaults), each
//!    its own transaction, the workers taking turns on it (SQLite has one writer at a time).
//! 2. **store API**: oncely's `IdempotencyStore` (claim, then complete) called in process.
//! 3. **gateway**: keyed requests with fresh keys through `oncely serve --store URL`.
//!
//! The figure to watch is gateway / raw: how much of what the database can do the gateway's
//! store path turns into idempotent HTTP requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use oncely_core::{
    ClaimOutcome, Fingerprint, IdempotencyKey, RecordKey, StoredResponse, SystemClock, Tenant,
};
use oncely_open::StoreUrl;
use oncely_store::IdempotencyStore;
use oncely_testkit::CountingUpstream;

/// What the row measures for one store.
pub(crate) struct StoreRow {
    pub name: &'static str,
    pub raw: Option<f64>,
    pub api: f64,
    pub gateway: crate::gateway::Stats,
}

pub(crate) struct StoreBench {
    /// The `oncely` binary the gateway runs from.
    pub oncely: std::path::PathBuf,
    pub concurrency: usize,
    pub duration: Duration,
    pub body: String,
}

/// Runs `work` from `concurrency` tasks in a closed loop for `duration`; returns ops/s.
/// `work(worker, i)` does one claim + complete pair; a failure counts and ends nothing.
async fn tight_loop<F, Fut>(concurrency: usize, duration: Duration, work: F) -> (f64, u64)
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<(), String>> + Send,
{
    let work = Arc::new(work);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (work, done, failed, first_error) = (
            work.clone(),
            done.clone(),
            failed.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < deadline {
                i += 1;
                match work(w, i).await {
                    Ok(()) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(e);
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    if let Ok(Some(e)) = first_error.lock().map(|e| e.clone()) {
        eprintln!("  first error: {e}");
    }
    (
        done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64(),
        failed.load(Ordering::Relaxed),
    )
}

fn bench_response() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: Bytes::from_static(&[b'x'; 200]),
    }
}

/// oncely's store API: claim then complete on fresh keys.
async fn store_api(store: Arc<dyn IdempotencyStore>, plan: &StoreBench, tag: &str) -> f64 {
    let tag = tag.to_owned();
    let fp = Fingerprint::compute("POST", "/orders", None, b"{}");
    let (rate, _) = tight_loop(plan.concurrency, plan.duration, move |w, i| {
        let store = store.clone();
        let name = format!("{tag}-{w}-{i}");
        async move {
            let key = RecordKey::new(
                Tenant::anonymous(),
                "POST",
                "/orders",
                IdempotencyKey::new(&name).map_err(|e| e.to_string())?,
            );
            let claimed = store
                .claim(&key, fp, Duration::from_secs(60), Duration::from_secs(3600))
                .await
                .map_err(|e| e.to_string())?;
            let ClaimOutcome::Claimed { token, .. } = claimed else {
                return Err("a fresh key was not claimed".into());
            };
            store
                .complete(&key, token, bench_response(), Duration::from_secs(3600))
                .await
                .map_err(|e| e.to_string())
        }
    })
    .await;
    rate
}

/// The plain-driver PostgreSQL loop, on a scratch table shaped like oncely's.
async fn raw_postgres(url: &str, schema: &str, plan: &StoreBench) -> Result<f64, String> {
    let opts = oncely_store_postgres::PgOptions::from_url(url)?;
    let config: tokio_postgres::Config = opts.url.parse().map_err(|e| format!("{e}"))?;
    let manager = deadpool_postgres::Manager::from_config(
        config,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    let pool = deadpool_postgres::Pool::builder(manager)
        .max_size(opts.pool_size)
        .build()
        .map_err(|e| e.to_string())?;
    let table = format!("\"{schema}\".raw_claims");
    {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .batch_execute(&format!(
                "SET client_min_messages = warning;
                 CREATE SCHEMA IF NOT EXISTS \"{schema}\";
                 CREATE TABLE IF NOT EXISTS {table} (
                     tenant text, method text, route text, idem_key text,
                     fp bytea NOT NULL, token bytea, state smallint NOT NULL,
                     lease_expires_at bigint, expires_at bigint NOT NULL,
                     status smallint, headers bytea, body bytea,
                     PRIMARY KEY (tenant, method, route, idem_key))"
            ))
            .await
            .map_err(|e| e.to_string())?;
    }
    let claim = format!(
        "INSERT INTO {table} (tenant, method, route, idem_key, fp, token, state,
                              lease_expires_at, expires_at)
         VALUES ('anon', 'POST', '/orders', $1, $2, $3, 0, 0, 0)
         ON CONFLICT DO NOTHING RETURNING 1"
    );
    let complete = format!(
        "UPDATE {table} SET state = 1, token = NULL, status = 201, headers = $2, body = $3
          WHERE tenant = 'anon' AND method = 'POST' AND route = '/orders' AND idem_key = $1
            AND token = $4"
    );
    let fp = vec![7u8; 32];
    let (rate, failed) = tight_loop(plan.concurrency, plan.duration, move |w, i| {
        let (pool, claim, complete, fp) =
            (pool.clone(), claim.clone(), complete.clone(), fp.clone());
        async move {
            let client = pool.get().await.map_err(|e| e.to_string())?;
            let k = format!("raw-{w}-{i}");
            let token = vec![1u8; 16];
            let stmt = client
                .prepare_cached(&claim)
                .await
                .map_err(|e| e.to_string())?;
            let won = client
                .query(&stmt, &[&k, &fp, &token])
                .await
                .map_err(|e| e.to_string())?;
            if won.is_empty() {
                return Err("a fresh key was not claimed".into());
            }
            let stmt = client
                .prepare_cached(&complete)
                .await
                .map_err(|e| e.to_string())?;
            let headers = b"content-type:application/json".to_vec();
            let body = vec![b'x'; 200];
            client
                .execute(&stmt, &[&k, &headers, &body, &token])
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
    })
    .await;
    if failed > 0 {
        eprintln!("  raw postgres: {failed} failed pairs");
    }
    Ok(rate)
}

/// The plain-driver SQLite loop: one connection, WAL, `synchronous=NORMAL`, autocommit.
async fn raw_sqlite(path: &std::path::Path, plan: &StoreBench) -> Result<f64, String> {
    let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE IF NOT EXISTS raw_claims (
             tenant TEXT, method TEXT, route TEXT, idem_key TEXT,
             fp BLOB NOT NULL, token BLOB, state INTEGER NOT NULL,
             lease_expires_at INTEGER, expires_at INTEGER NOT NULL,
             status INTEGER, headers BLOB, body BLOB,
             PRIMARY KEY (tenant, method, route, idem_key))",
    )
    .map_err(|e| e.to_string())?;
    let conn = Arc::new(std::sync::Mutex::new(conn));
    let (rate, failed) = tight_loop(plan.concurrency, plan.duration, move |w, i| {
        let conn = conn.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = conn.lock().map_err(|_| "poisoned".to_owned())?;
                let k = format!("raw-{w}-{i}");
                let token = [1u8; 16];
                let mut claim = conn
                    .prepare_cached(
                        "INSERT INTO raw_claims (tenant, method, route, idem_key, fp, token,
                                                 state, lease_expires_at, expires_at)
                         VALUES ('anon', 'POST', '/orders', ?1, ?2, ?3, 0, 0, 0)
                         ON CONFLICT DO NOTHING RETURNING 1",
                    )
                    .map_err(|e| e.to_string())?;
                let won = claim
                    .exists(rusqlite::params![k, [7u8; 32], token])
                    .map_err(|e| e.to_string())?;
                if !won {
                    return Err("a fresh key was not claimed".to_owned());
                }
                let mut complete = conn
                    .prepare_cached(
                        "UPDATE raw_claims SET state = 1, token = NULL, status = 201,
                                headers = ?2, body = ?3
                          WHERE tenant = 'anon' AND method = 'POST' AND route = '/orders'
                            AND idem_key = ?1 AND token = ?4",
                    )
                    .map_err(|e| e.to_string())?;
                complete
                    .execute(rusqlite::params![
                        k,
                        b"content-type:application/json".as_slice(),
                        [b'x'; 200].as_slice(),
                        token
                    ])
                    .map_err(|e| e.to_string())?;
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?
        }
    })
    .await;
    if failed > 0 {
        eprintln!("  raw sqlite: {failed} failed pairs");
    }
    Ok(rate)
}

/// The plain-driver Redis loop: `SET NX PX` claims, `SET XX PX` completes, one multiplexed
/// connection (what the store uses too).
async fn raw_redis(url: &str, prefix: &str, plan: &StoreBench) -> Result<f64, String> {
    let opts = oncely_store_redis::RedisOptions::from_url(url)?;
    let client = redis::Client::open(opts.url.as_str()).map_err(|e| e.to_string())?;
    let conn = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| e.to_string())?;
    let prefix = prefix.to_owned();
    let (rate, failed) = tight_loop(plan.concurrency, plan.duration, move |w, i| {
        let mut conn = conn.clone();
        let k = format!("{prefix}:raw-{w}-{i}");
        async move {
            let won: Option<String> = redis::cmd("SET")
                .arg(&k)
                .arg("token")
                .arg("NX")
                .arg("PX")
                .arg(60_000)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            if won.is_none() {
                return Err("a fresh key was not claimed".into());
            }
            let _: Option<String> = redis::cmd("SET")
                .arg(&k)
                .arg([b'x'; 200].as_slice())
                .arg("XX")
                .arg("PX")
                .arg(60_000)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            Ok(())
        }
    })
    .await;
    if failed > 0 {
        eprintln!("  raw redis: {failed} failed pairs");
    }
    Ok(rate)
}

/// Deletes the keys a run left under `prefix`.
pub(crate) async fn drop_redis_prefix(url: &str, prefix: &str) {
    let Ok(opts) = oncely_store_redis::RedisOptions::from_url(url) else {
        return;
    };
    let Ok(client) = redis::Client::open(opts.url.as_str()) else {
        return;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return;
    };
    let mut cursor = 0u64;
    loop {
        let step: Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await;
        let Ok((next, keys)) = step else { return };
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

pub(crate) async fn drop_postgres_schema(url: &str, schema: &str) {
    let Ok(opts) = oncely_store_postgres::PgOptions::from_url(url) else {
        return;
    };
    if let Ok((client, conn)) = tokio_postgres::connect(&opts.url, tokio_postgres::NoTls).await {
        tokio::spawn(conn);
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
}

/// One store's row: raw, store API, gateway, in that order, each alone on the machine.
async fn row(
    name: &'static str,
    store_url: &str,
    raw: Option<f64>,
    upstream: &CountingUpstream,
    plan: &StoreBench,
) -> Result<StoreRow, String> {
    let parsed = StoreUrl::parse(store_url)?;
    // Keys are built from the tag: keep it to characters a key may hold.
    let tag: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    eprintln!("  {name}: store API ...");
    let store = parsed
        .open(Arc::new(SystemClock))
        .await
        .map_err(|e| format!("{name}: {e}"))?;
    let api = store_api(store, plan, "api").await;
    eprintln!("  {name}: gateway ...");
    let (mut child, gateway_url) =
        crate::gateway::spawn_gateway(&plan.oncely, &upstream.url(), store_url, &[]).await?;
    let warm = crate::gateway::Load {
        concurrency: 8,
        duplicate_share: 0.0,
        keyed: true,
        ordered: false,
        duration: Duration::from_millis(500),
        max_requests: None,
    };
    crate::gateway::load(&gateway_url, &warm, &plan.body, &format!("{tag}-warm")).await;
    let load = crate::gateway::Load {
        concurrency: plan.concurrency,
        duration: plan.duration,
        ..warm
    };
    let gateway = crate::gateway::load(&gateway_url, &load, &plan.body, &tag).await;
    let _ = child.kill().await;
    Ok(StoreRow {
        name,
        raw,
        api,
        gateway,
    })
}

/// Runs every store that is reachable and prints the table.
pub(crate) async fn run(
    plan: StoreBench,
    sqlite_dir: &std::path::Path,
    postgres: Option<String>,
    redis: Option<String>,
) -> Result<(), String> {
    let upstream = CountingUpstream::start().await;
    let mut rows = Vec::new();

    // The keyed path's ceiling on this machine: a store that costs (almost) nothing.
    eprintln!("memory (the keyed path with no store cost) ...");
    rows.push(row("memory (ceiling)", "memory://", None, &upstream, &plan).await?);

    let sqlite = format!("sqlite://{}", sqlite_dir.join("stores.db").display());
    eprintln!("sqlite ({sqlite}) ...");
    eprintln!("  SQLite: raw driver ...");
    let raw = raw_sqlite(&sqlite_dir.join("raw.db"), &plan).await?;
    rows.push(row("SQLite", &sqlite, Some(raw), &upstream, &plan).await?);

    if let Some(base) = postgres {
        let schema = format!("oncely_bench_{}", std::process::id());
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}schema={schema}");
        eprintln!(
            "postgres ({}) ...",
            oncely_store_postgres::hide_password(&url)
        );
        eprintln!("  PostgreSQL: raw driver ...");
        let result = match raw_postgres(&url, &format!("{schema}_raw"), &plan).await {
            Ok(raw) => row("PostgreSQL", &url, Some(raw), &upstream, &plan).await,
            Err(e) => Err(format!("postgres: {e}")),
        };
        drop_postgres_schema(&url, &schema).await;
        drop_postgres_schema(&url, &format!("{schema}_raw")).await;
        match result {
            Ok(r) => rows.push(r),
            Err(e) => eprintln!("PostgreSQL skipped: {e}"),
        }
    }

    if let Some(base) = redis {
        let prefix = format!("oncely_bench_{}", std::process::id());
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = format!("{base}{sep}prefix={prefix}");
        eprintln!("redis ({url}) ...");
        eprintln!("  Redis: raw driver ...");
        let result = match raw_redis(&url, &format!("{prefix}_raw"), &plan).await {
            Ok(raw) => row("Redis", &url, Some(raw), &upstream, &plan).await,
            Err(e) => Err(format!("redis: {e}")),
        };
        drop_redis_prefix(&url, &prefix).await;
        drop_redis_prefix(&url, &format!("{prefix}_raw")).await;
        match result {
            Ok(r) => rows.push(r),
            Err(e) => eprintln!("Redis skipped: {e}"),
        }
    }

    println!(
        "| store (c={}) | raw claim+complete/s | store API pairs/s | gateway keyed req/s | gateway/raw | gateway p50 | gateway p99 | errors |",
        plan.concurrency
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let (raw, ratio) = match r.raw {
            Some(raw) => (
                format!("{raw:.0}"),
                format!("{:.0}%", 100.0 * r.gateway.rps / raw.max(1.0)),
            ),
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "| {} | {raw} | {:.0} | {:.0} | {ratio} | {:.2} ms | {:.2} ms | {} |",
            r.name,
            r.api,
            r.gateway.rps,
            r.gateway.p50_us as f64 / 1000.0,
            r.gateway.p99_us as f64 / 1000.0,
            r.gateway.errors
        );
    }
    Ok(())
}
