//! The gateway against its upstream, side by side, in one run.
//!
//! A fast upstream runs in this process; the gateway runs as a child `oncely serve` process
//! (the `oncely` binary next to this one, or `--oncely PATH`) on a fresh SQLite file, as in
//! production. Each scenario loads the upstream directly and
//! then through the gateway with the same client, concurrency and duration, and reports
//! throughput, p50, p99 and the gateway/direct ratio.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use oncely_testkit::{CountingUpstream, TestClient};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::process::{memory_of, reset_peak_rss};

#[derive(Parser)]
#[command(
    name = "oncely-bench",
    version,
    about = "Measure the oncely gateway against its upstream, nginx and the raw stores, side by side"
)]
pub(crate) struct BenchArgs {
    /// The `oncely` binary to run as the gateway [default: the one next to this binary].
    #[arg(long, value_name = "PATH")]
    oncely: Option<PathBuf>,
    /// Seconds of load per scenario and target.
    #[arg(long, default_value_t = 5)]
    pub(crate) seconds: u64,
    /// Concurrency levels with unique keys.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub(crate) concurrency: Vec<usize>,
    /// Concurrency of the 50%-duplicates scenario (0 skips it).
    #[arg(long, default_value_t = 64)]
    duplicates_at: usize,
    /// Request body size in bytes.
    #[arg(long, default_value_t = 256)]
    pub(crate) body_bytes: usize,
    /// Store for the gateway [default: a fresh SQLite file in a temporary directory].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Also run a second gateway that keeps an audit trail at URL (`sqlite://PATH`,
    /// `postgres://...`), and print a second table comparing the two. Its store is a SQLite
    /// file of its own by default; with --store, the same store (other keys).
    #[arg(long, value_name = "URL")]
    audit: Option<String>,
    /// nginx binary for a plain-proxy reference column [default: `nginx` if on the PATH].
    #[arg(long, value_name = "PATH")]
    pub(crate) nginx: Option<PathBuf>,
    /// Skip the nginx reference even if nginx is installed.
    #[arg(long)]
    pub(crate) no_nginx: bool,
    /// Compare the stores instead: per store, the raw database limit (plain driver), oncely's
    /// store API and the gateway, at the highest --concurrency (see docs/BENCHMARKS.md).
    #[arg(long)]
    stores: bool,
    /// PostgreSQL for --stores [default: $ONCELY_TEST_POSTGRES or
    /// postgres://postgres@127.0.0.1:5432/postgres]; "none" skips it.
    #[arg(long, value_name = "URL")]
    pub(crate) postgres: Option<String>,
    /// Redis for --stores [default: $ONCELY_TEST_REDIS or redis://127.0.0.1:6379/]; "none"
    /// skips it.
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// Instead of the scenarios: the cost of one request per target (upstream directly, nginx
    /// as a reverse proxy, the gateway without a key, keyed on every store), measured with an
    /// external load generator and upstream where installed: req/s, percentiles, CPU
    /// microseconds per request of the target's own processes, and peak RSS.
    #[arg(long)]
    pub(crate) cost: bool,
    /// Instead of the scenarios: what optimistic concurrency costs (a guarded update against
    /// a blind one) and buys (writers on one row: attempts, goodput, refused as stale), on
    /// SQLite and PostgreSQL (--postgres). Needs no gateway.
    #[arg(long)]
    conditional: bool,
    /// Instead of the scenarios: the transactional outbox, relay throughput against
    /// publishing straight to the broker, commit-to-consumer latency, and the cost of
    /// enqueueing in a transaction; SQLite and PostgreSQL (--postgres), NATS (--nats) and
    /// RabbitMQ (--amqp). Needs no gateway.
    #[arg(long)]
    outbox: bool,
    /// With --outbox: events per throughput measurement.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// With --outbox: the relay's batch (events claimed at once).
    #[arg(long, default_value_t = 256)]
    relay_batch: usize,
    /// With --outbox: the relay's passes in flight.
    #[arg(long, default_value_t = 2)]
    relay_passes: usize,
    /// With --outbox: events per second in the end-to-end measurement (for --seconds).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// With --outbox: NATS with JetStream [default: $ONCELY_TEST_NATS or
    /// nats://127.0.0.1:4222; `none` to skip].
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// With --outbox: RabbitMQ [default: $ONCELY_TEST_AMQP or
    /// amqp://guest:guest@127.0.0.1:5672/%2f; `none` to skip].
    #[arg(long, value_name = "URL")]
    amqp: Option<String>,
    /// Writer counts for --conditional's contention table.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16,32,64")]
    writers: Vec<usize>,
    /// With --cost: the load generator, `wrk` or `builtin` [default: wrk if installed].
    #[arg(long, value_name = "KIND")]
    pub(crate) load: Option<String>,
    /// With --cost: the wrk binary [default: `wrk` on the PATH].
    #[arg(long, value_name = "PATH")]
    pub(crate) wrk: Option<PathBuf>,
    /// With --cost: the upstream, `nginx` (one worker answering a fixed 201) or `builtin`
    /// [default: nginx if installed].
    #[arg(long, value_name = "KIND")]
    pub(crate) upstream: Option<String>,
    /// With --cost: which targets, comma-separated, from direct, nginx, hyper (a bare hyper
    /// proxy: the HTTP stack alone), pass-through, memory, sqlite, redis, postgres [default:
    /// all].
    #[arg(long, value_name = "LIST")]
    pub(crate) targets: Option<String>,
    /// With --cost: profile each target instead of only timing it, `callgrind` (instructions
    /// and allocations per request, top functions; gateways only, each with one worker) or
    /// `strace` (system calls per request, every target). Use a low --concurrency (8) and
    /// --seconds 15 under callgrind, which runs the gateway about 50 times slower.
    #[arg(long, value_name = "KIND")]
    pub(crate) profile: Option<String>,
    /// With --profile: where the raw profiles are written and kept (callgrind dumps for
    /// `callgrind_annotate --inclusive=yes FILE`, strace summaries).
    #[arg(long, value_name = "DIR", default_value = "oncely-profile")]
    pub(crate) profile_dir: PathBuf,
    /// Run as the bare hyper proxy to URL that --cost measures as its `hyper` target.
    #[arg(long, value_name = "URL", hide = true)]
    pub(crate) bare_proxy: Option<String>,
    /// Event-loop threads of the bare proxy (default: one per CPU).
    #[arg(long, value_name = "N", hide = true)]
    pub(crate) bare_workers: Option<usize>,
    /// Instead of the scenarios: send N unique keyed requests through the gateway (default
    /// settings, at the highest --concurrency) and report its resident memory as they go.
    #[arg(long, value_name = "N")]
    memory: Option<u64>,
}

struct Scenario {
    name: String,
    concurrency: usize,
    duplicate_share: f64,
    /// Send no key: measures the proxying alone, the ceiling of the keyed path.
    keyed: bool,
    /// Keys that grow with time, like UUIDv7 (what `oncely send` generates), instead of keys
    /// scattered over the key space, like UUIDv4.
    ordered: bool,
}

#[derive(Clone, Copy)]
pub(crate) struct Stats {
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub errors: u64,
}

pub(crate) async fn run(args: BenchArgs) -> Result<(), String> {
    let tmp = std::env::temp_dir().join(format!("oncely-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    if args.conditional {
        let postgres = args
            .postgres
            .clone()
            .or_else(|| std::env::var("ONCELY_TEST_POSTGRES").ok())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let result = crate::conditional::run(crate::conditional::Plan {
            duration: Duration::from_secs(args.seconds.max(1)),
            writers: args.writers.clone(),
            postgres: (postgres != "none").then_some(postgres),
            dir: tmp.clone(),
        })
        .await;
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    if args.outbox {
        let pick = |given: &Option<String>, var: &str, default: &str| {
            let url = given
                .clone()
                .or_else(|| std::env::var(var).ok())
                .unwrap_or_else(|| default.to_owned());
            (url != "none").then_some(url)
        };
        let result = crate::outbox::run(crate::outbox::Plan {
            events: args.events.max(1),
            batch: args.relay_batch.max(1),
            passes: args.relay_passes.max(1),
            rate: args.rate.max(1),
            seconds: args.seconds.max(1),
            nats: pick(&args.nats, "ONCELY_TEST_NATS", "nats://127.0.0.1:4222"),
            amqp: pick(
                &args.amqp,
                "ONCELY_TEST_AMQP",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
            postgres: pick(
                &args.postgres,
                "ONCELY_TEST_POSTGRES",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            dir: tmp.clone(),
        })
        .await;
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    let oncely = oncely_binary(args.oncely.as_deref())?;
    if args.cost {
        let result = crate::cost::run(&args, &oncely, &tmp).await;
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    if args.stores {
        let result = run_stores(&args, &oncely, &tmp).await;
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    let upstream = CountingUpstream::start().await;
    let store = args
        .store
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", tmp.join("bench.db").display()));
    let (mut child, gateway_url) = spawn_gateway(&oncely, &upstream.url(), &store, &[]).await?;
    let gateway_pid = child.id().unwrap_or(0);
    if let Some(n) = args.memory {
        let concurrency = args.concurrency.iter().copied().max().unwrap_or(64);
        let result = run_memory(&gateway_url, gateway_pid, n, concurrency, &store, &args).await;
        let _ = child.kill().await;
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    eprintln!(
        "upstream {} | gateway {gateway_url} (store {store}) | {} s per run",
        upstream.url(),
        args.seconds
    );
    // The audited twin: a SQLite file of its own by default, else the same store (the
    // keys differ), plus the trail.
    let audited = match &args.audit {
        Some(audit) => {
            let twin_store = match &args.store {
                Some(s) => s.clone(),
                None => format!("sqlite://{}", tmp.join("bench-audited.db").display()),
            };
            let extra = ["--audit".to_owned(), audit.clone()];
            let (twin, url) = spawn_gateway(&oncely, &upstream.url(), &twin_store, &extra).await?;
            eprintln!("gateway with audit trail {url} (store {twin_store}, audit {audit})");
            Some((twin, url))
        }
        None => None,
    };
    let nginx = if args.no_nginx {
        None
    } else {
        start_reference(args.nginx.clone(), upstream.addr(), &tmp).await
    };

    let mut scenarios: Vec<Scenario> = args
        .concurrency
        .iter()
        .map(|&c| Scenario {
            name: format!("unique keys, c={c}"),
            concurrency: c,
            duplicate_share: 0.0,
            keyed: true,
            ordered: false,
        })
        .collect();
    if args.duplicates_at > 0 {
        scenarios.push(Scenario {
            name: format!("50% duplicates, c={}", args.duplicates_at),
            concurrency: args.duplicates_at,
            duplicate_share: 0.5,
            keyed: true,
            ordered: false,
        });
    }
    if let Some(&c) = args.concurrency.iter().max() {
        scenarios.push(Scenario {
            name: format!("time-ordered keys, c={c}"),
            concurrency: c,
            duplicate_share: 0.0,
            keyed: true,
            ordered: true,
        });
        scenarios.push(Scenario {
            name: format!("no key (pass-through), c={c}"),
            concurrency: c,
            duplicate_share: 0.0,
            keyed: false,
            ordered: false,
        });
    }
    let body = bench_body(args.body_bytes);
    let duration = Duration::from_secs(args.seconds.max(1));
    // Warm every path (connection pools, SQLite pages) before measuring.
    let mut targets = vec![upstream.url(), gateway_url.clone()];
    targets.extend(nginx.as_ref().map(|(_, url)| url.clone()));
    targets.extend(audited.as_ref().map(|(_, url)| url.clone()));
    for (i, t) in targets.iter().enumerate() {
        let warm = Load {
            concurrency: 8,
            duplicate_share: 0.0,
            keyed: true,
            ordered: false,
            duration: Duration::from_millis(500),
            max_requests: None,
        };
        load(t, &warm, &body, &format!("warm{i}")).await;
    }

    let mut rows = Vec::new();
    let mut audit_rows = Vec::new();
    for (i, s) in scenarios.iter().enumerate() {
        eprintln!("running: {} ...", s.name);
        let plan = Load {
            concurrency: s.concurrency,
            duplicate_share: s.duplicate_share,
            keyed: s.keyed,
            ordered: s.ordered,
            duration,
            max_requests: None,
        };
        let direct = load(&upstream.url(), &plan, &body, &format!("s{i}d")).await;
        reset_peak_rss(gateway_pid);
        let gateway = load(&gateway_url, &plan, &body, &format!("s{i}g")).await;
        let gateway_peak = memory_of(gateway_pid).map(|m| m.peak);
        let reference = match &nginx {
            Some((_, url)) => Some(load(url, &plan, &body, &format!("s{i}n")).await),
            None => None,
        };
        if let Some((_, url)) = &audited {
            audit_rows.push((
                s.name.clone(),
                gateway,
                load(url, &plan, &body, &format!("s{i}a")).await,
            ));
        }
        rows.push((s.name.clone(), direct, gateway, reference, gateway_peak));
    }
    let _ = child.kill().await;
    if let Some((mut twin, _)) = audited {
        let _ = twin.kill().await;
    }
    drop(nginx);
    let _ = std::fs::remove_dir_all(&tmp);

    println!("| scenario | direct req/s | gateway req/s | gateway/direct | nginx req/s | gateway/nginx | direct p50 | gateway p50 | added p50 | nginx p50 | direct p99 | gateway p99 | nginx p99 | gateway peak RSS | errors |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, d, g, n, peak) in rows {
        let peak = peak.map_or("-".to_owned(), mib);
        let (n_rps, n_ratio, n_p50, n_p99, n_err) = match n {
            Some(n) => (
                format!("{:.0}", n.rps),
                format!("{:.0}%", 100.0 * g.rps / n.rps.max(1.0)),
                ms(n.p50_us),
                ms(n.p99_us),
                n.errors,
            ),
            None => ("-".into(), "-".into(), "-".into(), "-".into(), 0),
        };
        println!(
            "| {name} | {:.0} | {:.0} | {:.0}% | {n_rps} | {n_ratio} | {} | {} | {} | {n_p50} | {} | {} | {n_p99} | {peak} | {} |",
            d.rps,
            g.rps,
            100.0 * g.rps / d.rps.max(1.0),
            ms(d.p50_us),
            ms(g.p50_us),
            ms(g.p50_us.saturating_sub(d.p50_us)),
            ms(d.p99_us),
            ms(g.p99_us),
            d.errors + g.errors + n_err
        );
    }
    if !audit_rows.is_empty() {
        println!();
        println!("| scenario | gateway req/s | gateway + audit req/s | audit/gateway | gateway p50 | gateway + audit p50 | gateway p99 | gateway + audit p99 | errors |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (name, g, a) in audit_rows {
            println!(
                "| {name} | {:.0} | {:.0} | {:.0}% | {} | {} | {} | {} | {} |",
                g.rps,
                a.rps,
                100.0 * a.rps / g.rps.max(1.0),
                ms(g.p50_us),
                ms(a.p50_us),
                ms(g.p99_us),
                ms(a.p99_us),
                g.errors + a.errors
            );
        }
    }
    Ok(())
}

async fn run_stores(args: &BenchArgs, oncely: &Path, tmp: &Path) -> Result<(), String> {
    let plan = crate::stores::StoreBench {
        oncely: oncely.to_owned(),
        concurrency: args.concurrency.iter().copied().max().unwrap_or(64),
        duration: Duration::from_secs(args.seconds.max(1)),
        body: bench_body(args.body_bytes),
    };
    let env_or = |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.into());
    let postgres = args.postgres.clone().unwrap_or_else(|| {
        env_or(
            "ONCELY_TEST_POSTGRES",
            "postgres://postgres@127.0.0.1:5432/postgres",
        )
    });
    let postgres = (postgres != "none").then_some(postgres);
    let redis = args
        .redis
        .clone()
        .unwrap_or_else(|| env_or("ONCELY_TEST_REDIS", "redis://127.0.0.1:6379/"));
    let redis = (redis != "none").then_some(redis);
    eprintln!(
        "stores at concurrency {}, {} s per measurement",
        plan.concurrency, args.seconds
    );
    crate::stores::run(plan, tmp, postgres, redis).await
}

/// `oncely-bench --memory N`: the gateway's resident memory over a long run of unique keys,
/// which fill the replay cache (64 MiB by default) and then keep it full.
async fn run_memory(
    gateway_url: &str,
    pid: u32,
    total: u64,
    concurrency: usize,
    store: &str,
    args: &BenchArgs,
) -> Result<(), String> {
    let body = bench_body(args.body_bytes);
    let start = memory_of(pid).ok_or("cannot read the gateway's memory from /proc")?;
    eprintln!(
        "gateway {gateway_url} (store {store}, default settings): {total} unique keyed requests at c={concurrency}"
    );
    println!("| requests sent | gateway RSS | gateway peak RSS | req/s (this step) | errors |");
    println!("|---:|---:|---:|---:|---:|");
    println!("| 0 | {} | {} | - | 0 |", mib(start.now), mib(start.peak));
    let steps = 10u64;
    let mut sent = 0;
    for step in 1..=steps {
        let n = total * step / steps - sent;
        let plan = Load {
            concurrency,
            duplicate_share: 0.0,
            keyed: true,
            ordered: false,
            duration: Duration::from_secs(24 * 3600),
            max_requests: Some(n),
        };
        let stats = load(gateway_url, &plan, &body, &format!("m{step}")).await;
        sent += n;
        let m = memory_of(pid).ok_or("the gateway exited")?;
        println!(
            "| {sent} | {} | {} | {:.0} | {} |",
            mib(m.now),
            mib(m.peak),
            stats.rps,
            stats.errors
        );
    }
    Ok(())
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

pub(crate) fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

pub(crate) fn bench_body(n: usize) -> String {
    let filler = "x".repeat(n.saturating_sub(40));
    format!(r#"{{"item":"book","quantity":1,"note":"{filler}"}}"#)
}

/// The `oncely` binary: as given, or the one cargo built next to this one.
pub(crate) fn oncely_binary(given: Option<&Path>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let me = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let next_to_me = me.with_file_name("oncely");
    if next_to_me.is_file() {
        Ok(next_to_me)
    } else {
        Err(format!(
            "no oncely binary at {}: build it first (cargo build --release -p oncely -p oncely-bench) or pass --oncely PATH",
            next_to_me.display()
        ))
    }
}

pub(crate) async fn spawn_gateway(
    oncely: &Path,
    upstream: &str,
    store: &str,
    extra: &[String],
) -> Result<(tokio::process::Child, String), String> {
    spawn_gateway_under(&[], oncely, upstream, store, extra).await
}

/// [`spawn_gateway`] with `wrapper` (a profiler's command line) in front of `oncely`.
pub(crate) async fn spawn_gateway_under(
    wrapper: &[std::ffi::OsString],
    oncely: &Path,
    upstream: &str,
    store: &str,
    extra: &[String],
) -> Result<(tokio::process::Child, String), String> {
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = tokio::process::Command::new(program);
            c.args(args).arg(oncely);
            c
        }
        None => tokio::process::Command::new(oncely),
    };
    // Under a profiler the start is many times slower.
    let start_within = Duration::from_secs(if wrapper.is_empty() { 20 } else { 120 });
    let mut child = command
        .args([
            "--log-level",
            "warn",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            upstream,
            "--store",
            store,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the gateway {}: {e}", oncely.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout from the gateway")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(start_within, lines.next_line())
        .await
        .map_err(|_| format!("the gateway did not start within {start_within:?}"))?
        .map_err(|e| e.to_string())?
        .ok_or("the gateway exited before listening")?;
    let url = line
        .strip_prefix("listening on ")
        .ok_or(format!("unexpected gateway output: {line}"))?
        .to_owned();
    Ok((child, url))
}

async fn start_reference(
    explicit: Option<PathBuf>,
    upstream: SocketAddr,
    dir: &Path,
) -> Option<(Nginx, String)> {
    let Some(bin) = find_nginx(explicit) else {
        eprintln!("nginx not found: the plain-proxy reference column is skipped (install nginx or pass --nginx)");
        return None;
    };
    match spawn_nginx(&bin, upstream, dir).await {
        Ok(n) => {
            eprintln!("nginx reference proxy {} ({})", n.1, bin.display());
            Some(n)
        }
        Err(e) => {
            eprintln!("nginx reference skipped: {e}");
            None
        }
    }
}

pub(crate) fn find_nginx(explicit: Option<PathBuf>) -> Option<PathBuf> {
    if explicit.is_some() {
        return explicit;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nginx"))
        .find(|p| p.is_file())
}

/// A running reference nginx. Dropped, it is stopped through its master (`nginx -s stop`):
/// killing the master alone would leave its workers running.
pub(crate) struct Nginx {
    child: tokio::process::Child,
    stop: std::process::Command,
}

impl Nginx {
    /// The master and its workers: the processes whose CPU time is the proxy's.
    pub(crate) fn pids(&self) -> Vec<u32> {
        let Some(master) = self.child.id() else {
            return Vec::new();
        };
        let mut pids = vec![master];
        pids.extend(crate::process::children_of(master));
        pids
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self
            .stop
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // `-s stop` only signals the master; give it time to take its workers down before
        // the child handle's kill-on-drop reaches it.
        for _ in 0..100 {
            if !matches!(self.child.try_wait(), Ok(None)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A plain nginx reverse proxy with upstream keep-alive: the ceiling a proxy can reach here.
async fn spawn_nginx(
    bin: &Path,
    upstream: SocketAddr,
    dir: &Path,
) -> Result<(Nginx, String), String> {
    spawn_nginx_serving(
        bin,
        &dir.join("nginx"),
        "auto",
        &format!("upstream up {{ server {upstream}; keepalive 256; }}"),
        "proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\";",
    )
    .await
}

/// An nginx of its own under `prefix` with `workers` worker processes, whose one server runs
/// `location` for every path (`http` holds what that needs at the `http` level). Connections
/// from clients are kept alive for as many requests as they send, as a load generator's are.
pub(crate) async fn spawn_nginx_serving(
    bin: &Path,
    prefix: &Path,
    workers: &str,
    http: &str,
    location: &str,
) -> Result<(Nginx, String), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    std::fs::create_dir_all(prefix.join("logs")).map_err(|e| e.to_string())?;
    let p = prefix.display();
    let conf = format!(
        "daemon off;\nworker_processes {workers};\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_requests 100000000;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  {http}\n\
         server {{ listen 127.0.0.1:{port}; location / {{ {location} }} }}\n}}\n"
    );
    let conf_path = prefix.join("nginx.conf");
    std::fs::write(&conf_path, conf).map_err(|e| e.to_string())?;
    let child = tokio::process::Command::new(bin)
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let mut stop = std::process::Command::new(bin);
    stop.arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(&conf_path)
        .args(["-s", "stop"]);
    let nginx = Nginx { child, stop };
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok((nginx, url));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("nginx did not start listening within 5 s".into())
}

/// How one target is loaded.
#[derive(Clone, Copy)]
pub(crate) struct Load {
    pub concurrency: usize,
    pub duplicate_share: f64,
    /// Send no key: measures the proxying alone, the ceiling of the keyed path.
    pub keyed: bool,
    /// Keys in one increasing sequence instead of one sequence per worker.
    pub ordered: bool,
    pub duration: Duration,
    /// Stop after this many requests in all, if it comes before the duration.
    pub max_requests: Option<u64>,
}

/// Closed-loop load: `concurrency` workers each send one request at a time for `duration`.
pub(crate) async fn load(base: &str, plan: &Load, body: &str, tag: &str) -> Stats {
    let Load {
        concurrency,
        duplicate_share,
        keyed,
        ordered,
        duration,
        max_requests,
    } = *plan;
    let budget = Arc::new(AtomicU64::new(max_requests.unwrap_or(u64::MAX)));
    let client = TestClient::new();
    let url = format!("{base}/orders");
    let next_key = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (client, url, next_key, errors, body, tag, budget) = (
            client.clone(),
            url.clone(),
            next_key.clone(),
            errors.clone(),
            body.to_owned(),
            tag.to_owned(),
            budget.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(4096);
            let mut i: u64 = 0;
            let mut last_key: Option<String> = None;
            while Instant::now() < deadline {
                let left =
                    budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
                if left.is_err() {
                    break;
                }
                i += 1;
                // A duplicate repeats this worker's previous key (already completed), which is
                // what a client retry after a lost response looks like.
                let dup = last_key.is_some()
                    && (((i * 2654435761) % 1000) as f64) < duplicate_share * 1000.0;
                let key = match (&last_key, dup) {
                    (Some(k), true) => k.clone(),
                    _ if ordered => {
                        format!("{tag}-{:012}", next_key.fetch_add(1, Ordering::Relaxed))
                    }
                    _ => format!("{tag}-{w}-{}", next_key.fetch_add(1, Ordering::Relaxed)),
                };
                let t = Instant::now();
                let all = [
                    ("content-type", "application/json"),
                    ("idempotency-key", key.as_str()),
                ];
                let headers = if keyed { &all[..] } else { &all[..1] };
                match client.send("POST", &url, headers, body.clone()).await {
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
