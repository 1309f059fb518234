//! `oncely bench`: the gateway against its upstream, side by side, in one run.
//!
//! A fast upstream runs in this process; the gateway runs as a child `oncely serve` process
//! on a fresh SQLite file, as in production. Each scenario loads the upstream directly and
//! then through the gateway with the same client, concurrency and duration, and reports
//! throughput, p50, p99 and the gateway/direct ratio.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use oncely_testkit::{CountingUpstream, TestClient};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Args)]
pub struct BenchArgs {
    /// Seconds of load per scenario and target.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrency levels with unique keys.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Concurrency of the 50%-duplicates scenario (0 skips it).
    #[arg(long, default_value_t = 64)]
    duplicates_at: usize,
    /// Request body size in bytes.
    #[arg(long, default_value_t = 256)]
    body_bytes: usize,
    /// Store for the gateway [default: a fresh SQLite file in a temporary directory].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
}

struct Scenario {
    name: String,
    concurrency: usize,
    duplicate_share: f64,
}

#[derive(Clone, Copy)]
struct Stats {
    rps: f64,
    p50_us: u64,
    p99_us: u64,
    errors: u64,
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    let upstream = CountingUpstream::start().await;
    let tmp = std::env::temp_dir().join(format!("oncely-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let store = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", tmp.join("bench.db").display()));
    let (mut child, gateway_url) = spawn_gateway(&upstream.url(), &store).await?;
    eprintln!(
        "upstream {} | gateway {gateway_url} (store {store}) | {} s per run",
        upstream.url(),
        args.seconds
    );

    let mut scenarios: Vec<Scenario> = args
        .concurrency
        .iter()
        .map(|&c| Scenario {
            name: format!("unique keys, c={c}"),
            concurrency: c,
            duplicate_share: 0.0,
        })
        .collect();
    if args.duplicates_at > 0 {
        scenarios.push(Scenario {
            name: format!("50% duplicates, c={}", args.duplicates_at),
            concurrency: args.duplicates_at,
            duplicate_share: 0.5,
        });
    }
    let body = bench_body(args.body_bytes);
    let duration = Duration::from_secs(args.seconds.max(1));
    // Warm both paths (connection pools, SQLite pages) before measuring.
    load(
        &upstream.url(),
        8,
        0.0,
        Duration::from_millis(500),
        &body,
        "warm-d",
    )
    .await;
    load(
        &gateway_url,
        8,
        0.0,
        Duration::from_millis(500),
        &body,
        "warm-g",
    )
    .await;

    let mut rows = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        let tag = format!("s{i}");
        eprintln!("running: {} ...", s.name);
        let direct = load(
            &upstream.url(),
            s.concurrency,
            s.duplicate_share,
            duration,
            &body,
            &format!("{tag}d"),
        )
        .await;
        let gateway = load(
            &gateway_url,
            s.concurrency,
            s.duplicate_share,
            duration,
            &body,
            &format!("{tag}g"),
        )
        .await;
        rows.push((s.name.clone(), direct, gateway));
    }
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&tmp);

    println!("| scenario | direct req/s | gateway req/s | ratio | direct p50 | gateway p50 | added p50 | direct p99 | gateway p99 | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, d, g) in rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.0}% | {} | {} | {} | {} | {} | {} |",
            d.rps,
            g.rps,
            100.0 * g.rps / d.rps.max(1.0),
            ms(d.p50_us),
            ms(g.p50_us),
            ms(g.p50_us.saturating_sub(d.p50_us)),
            ms(d.p99_us),
            ms(g.p99_us),
            d.errors + g.errors
        );
    }
    Ok(())
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

fn bench_body(n: usize) -> String {
    let filler = "x".repeat(n.saturating_sub(40));
    format!(r#"{{"item":"book","quantity":1,"note":"{filler}"}}"#)
}

async fn spawn_gateway(
    upstream: &str,
    store: &str,
) -> Result<(tokio::process::Child, String), String> {
    let exe: PathBuf =
        std::env::current_exe().map_err(|e| format!("cannot find the oncely binary: {e}"))?;
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--log-level",
            "warn",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--store",
            store,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the gateway: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout from the gateway")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .map_err(|_| "the gateway did not start within 20 s".to_owned())?
        .map_err(|e| e.to_string())?
        .ok_or("the gateway exited before listening")?;
    let url = line
        .strip_prefix("listening on ")
        .ok_or(format!("unexpected gateway output: {line}"))?
        .to_owned();
    Ok((child, url))
}

/// Closed-loop load: `concurrency` workers each send one request at a time for `duration`.
async fn load(
    base: &str,
    concurrency: usize,
    duplicate_share: f64,
    duration: Duration,
    body: &str,
    tag: &str,
) -> Stats {
    let client = TestClient::new();
    let url = format!("{base}/orders");
    let next_key = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (client, url, next_key, errors, body, tag) = (
            client.clone(),
            url.clone(),
            next_key.clone(),
            errors.clone(),
            body.to_owned(),
            tag.to_owned(),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut i: u64 = 0;
            let mut last_key: Option<String> = None;
            while Instant::now() < deadline {
                i += 1;
                // A duplicate repeats this worker's previous key (already completed), which is
                // what a client retry after a lost response looks like.
                let dup = last_key.is_some()
                    && (((i * 2654435761) % 1000) as f64) < duplicate_share * 1000.0;
                let key = match (&last_key, dup) {
                    (Some(k), true) => k.clone(),
                    _ => format!("{tag}-{w}-{}", next_key.fetch_add(1, Ordering::Relaxed)),
                };
                let t = Instant::now();
                let headers = [
                    ("content-type", "application/json"),
                    ("idempotency-key", key.as_str()),
                ];
                match client.send("POST", &url, &headers, body.clone()).await {
                    Ok(a) if a.status == 201 => latencies.push(t.elapsed().as_micros() as u64),
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                last_key = Some(key);
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        if let Ok(l) = w.await {
            all.extend(l);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Stats {
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        errors: errors.load(Ordering::Relaxed),
    }
}
