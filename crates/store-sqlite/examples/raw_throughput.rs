//! The SQLite store's own limit: claim + complete pairs from N concurrent tasks, no HTTP.
//! `cargo run --release -p oncely-store-sqlite --example raw_throughput -- 64`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use oncely_core::{
    ClaimOutcome, Fingerprint, IdempotencyKey, RecordKey, StoredResponse, SystemClock, Tenant,
};
use oncely_store::IdempotencyStore;
use oncely_store_sqlite::{SqliteOptions, SqliteStore};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let concurrency: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(64);
    let dir = std::env::temp_dir().join(format!("oncely-raw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let store = Arc::new(
        SqliteStore::open(
            SqliteOptions::new(dir.join("raw.db")),
            Arc::new(SystemClock),
        )
        .expect("open"),
    );
    let run_for = Duration::from_secs(3);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let fp = Fingerprint::compute("POST", "/orders", None, b"{}");
            let response = StoredResponse {
                status: 201,
                headers: vec![("content-type".into(), b"application/json".to_vec())],
                body: Bytes::from_static(&[b'x'; 200]),
            };
            while start.elapsed() < run_for {
                let key = RecordKey::new(
                    Tenant::anonymous(),
                    "POST",
                    "/orders",
                    IdempotencyKey::new(&format!("w{w}-{done}")).expect("key"),
                );
                let ClaimOutcome::Claimed { token, .. } = store
                    .claim(
                        &key,
                        fp,
                        Duration::from_secs(60),
                        Duration::from_secs(86400),
                    )
                    .await
                    .expect("claim")
                else {
                    panic!("fresh keys always claim")
                };
                store
                    .complete(&key, token, response.clone(), Duration::from_secs(86400))
                    .await
                    .expect("complete");
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "concurrency {concurrency}: {:.0} claim+complete pairs/s, {} batches committed",
        total as f64 / secs,
        store.committed_batches()
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
