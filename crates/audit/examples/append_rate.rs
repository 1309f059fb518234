//! How fast the trail itself goes: sealing alone, then events appended per second through an
//! `AuditWriter` on SQLite and on PostgreSQL, in this one process.
//!
//! `cargo run --release -p oncely-audit --features sqlite,postgres --example append_rate -- [EVENTS]`
//! PostgreSQL comes from `ONCELY_TEST_POSTGRES` (default
//! `postgres://postgres@127.0.0.1:5432/test`); it is skipped if unreachable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use oncely_audit::postgres::{PgAuditLog, PgOptions};
use oncely_audit::sqlite::SqliteAuditLog;
use oncely_audit::{AuditLog, AuditWriter, Draft, Head};
use oncely_core::SystemClock;

const KEY: &[u8] = b"append-rate example key";

fn draft(i: usize) -> Draft {
    Draft {
        event_id: format!("{i:032x}"),
        timestamp_ms: 1_800_000_000_000 + i as i64,
        actor: Some("auth:4f2a9c81d0e3b7a6".into()),
        actor_type: "tenant".into(),
        action: "executed".into(),
        resource_type: "idempotency_key".into(),
        resource_id: format!("POST /orders 0190a1b2-{i:08x}"),
        old_value: None,
        new_value: Some("201".into()),
        correlation_id: Some(format!("7d3c6a2e-{i:08x}")),
        ip_address: Some("10.1.2.3".into()),
        user_agent: Some("shop-app/2.1 (ios 18)".into()),
    }
}

async fn rate(name: &str, log: Arc<dyn AuditLog>, events: usize) {
    log.migrate().await.expect("migrate");
    let chain = format!("bench-{}", std::process::id());
    let writer = AuditWriter::open(log, &chain, KEY.to_vec(), Arc::new(SystemClock), events)
        .await
        .expect("open the chain");
    let started = Instant::now();
    for i in 0..events {
        assert!(writer.record(draft(i)), "the queue holds them all");
    }
    let queued = started.elapsed();
    assert!(writer.close(Duration::from_secs(600)).await, "appended");
    let all = started.elapsed();
    println!(
        "| {name} | {events} | {:.2} µs | {:.0} |",
        queued.as_secs_f64() * 1e6 / events as f64,
        events as f64 / all.as_secs_f64()
    );
}

#[tokio::main]
async fn main() {
    let events: usize = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);

    let mut head = Head::new("seal");
    let drafts: Vec<Draft> = (0..events).map(draft).collect();
    let started = Instant::now();
    for d in &drafts {
        std::hint::black_box(head.seal_draft(d, KEY));
    }
    println!(
        "sealing (hash, 3 commitments, MAC): {:.2} µs per event\n",
        started.elapsed().as_secs_f64() * 1e6 / events as f64
    );

    println!("| log | events | record() per event | appended per second |");
    println!("|---|---:|---:|---:|");
    let dir = std::env::temp_dir().join(format!("oncely-append-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let sqlite = SqliteAuditLog::open(dir.join("audit.db"), Duration::from_secs(5)).expect("open");
    rate("SQLite", Arc::new(sqlite), events).await;
    let _ = std::fs::remove_dir_all(&dir);

    let url = std::env::var("ONCELY_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut opts = PgOptions::new(url);
    opts.schema = format!("oncely_append_rate_{}", std::process::id());
    match PgAuditLog::new(&opts) {
        Ok(pg) => {
            let pg = Arc::new(pg);
            if pg.migrate().await.is_ok() {
                rate("PostgreSQL", pg.clone(), events).await;
                let _ = drop_schema(&opts).await;
            } else {
                eprintln!("PostgreSQL unreachable: skipped");
            }
        }
        Err(e) => eprintln!("PostgreSQL skipped: {e}"),
    }
}

/// Drops the example's schema again (the trail refuses deletes, not a dropped schema).
async fn drop_schema(opts: &PgOptions) -> Result<(), String> {
    let pool = oncely_db::postgres::pool(opts)?;
    let client = pool.get().await.map_err(|e| e.to_string())?;
    client
        .batch_execute(&format!("DROP SCHEMA {} CASCADE", opts.schema))
        .await
        .map_err(|e| e.to_string())
}
