//! What sealing stored responses costs: AES-256-GCM seal (on completion) and open (on
//! every read from the store; replay-cache hits skip it), per response size.
//!
//! `cargo run --release -p oncely-store --example seal_cost`

use std::time::Instant;

use bytes::Bytes;
use oncely_core::{IdempotencyKey, RecordKey, StoredResponse, Tenant};
use oncely_store::Keyring;

fn main() {
    let ring = Keyring::from_hex([("k1", "ab".repeat(32).as_str())]).expect("a valid key");
    let key = RecordKey::new(
        Tenant::from_header_value(b"acme"),
        "POST",
        "/payments",
        IdempotencyKey::new("bench-key").expect("a valid key"),
    );
    println!("| body | seal µs | open µs | seal+open MB/s |");
    println!("|---:|---:|---:|---:|");
    for size in [256usize, 4096, 65_536, 1 << 20] {
        let response = StoredResponse {
            status: 201,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: Bytes::from(vec![b'x'; size]),
        };
        let rounds = (200_000_000 / size.max(1024)).clamp(50, 200_000);
        let started = Instant::now();
        let mut sealed = None;
        for _ in 0..rounds {
            sealed = Some(ring.seal(&key, &response).expect("seals"));
        }
        let seal = started.elapsed().as_secs_f64() / rounds as f64;
        let sealed = sealed.expect("at least one round");
        let started = Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(ring.open(&key, sealed.clone()).expect("opens"));
        }
        let open = started.elapsed().as_secs_f64() / rounds as f64;
        println!(
            "| {} | {:.2} | {:.2} | {:.0} |",
            if size >= 1024 {
                format!("{} KiB", size / 1024)
            } else {
                format!("{size} B")
            },
            seal * 1e6,
            open * 1e6,
            size as f64 / (seal + open) / 1e6
        );
    }
}
