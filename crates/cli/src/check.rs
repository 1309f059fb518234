//! `oncely check`: attacks an HTTP API with the requests that break idempotency and says,
//! per property, whether it held (docs/check.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use oncely_check::effects::RecorderOptions;
use oncely_check::proxy::{FaultPlan, FaultProxy};
use oncely_check::run::{Journal, Nemesis, Workload};
use oncely_check::{Effects, Ledger, Plan, Recorder};
use oncely_core::check::FaultKind;
use oncely_core::parse_duration;

/// Where the fault proxy sits.
#[derive(Clone, Copy, ValueEnum)]
enum Between {
    /// Between this attack and the target.
    Client,
    /// Between the target and the recording upstream (needs --upstream-listen).
    Upstream,
}

#[derive(Args)]
pub(crate) struct CheckArgs {
    /// The API's base URL.
    #[arg(long, value_name = "URL")]
    target: String,
    /// The method of the operation under test.
    #[arg(long, default_value = "POST")]
    method: String,
    /// Its path.
    #[arg(long, default_value = "/")]
    path: String,
    /// The JSON body, with {reference} (unique per key and request: effects are counted by
    /// it) and optionally {amount}; @FILE reads it from a file.
    #[arg(long)]
    body: String,
    /// A header for every request, `Name: value` (repeatable: credentials, say).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// The header that names the tenant; with --tenants, one key string is sent as each.
    #[arg(long, requires = "tenants")]
    tenant_header: Option<String>,
    /// The tenants, comma-separated.
    #[arg(long, value_delimiter = ',', requires = "tenant_header")]
    tenants: Vec<String>,

    /// Keys to attack; each gets one workload.
    #[arg(long, default_value_t = 14)]
    keys: usize,
    /// The workloads, comma-separated: sequential, concurrent, other-body, tenants,
    /// respelled, chunked, timeout (default: all; tenants with --tenant-header only).
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    workloads: Vec<String>,
    /// Draw each key's workload at random (from --seed) instead of in turn.
    #[arg(long)]
    mix: bool,
    /// The seed of every random choice; the same seed repeats the attack (default: random,
    /// printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Keys attacked at once.
    #[arg(long, default_value_t = 4)]
    parallel: usize,
    /// Requests per key in the sequential workload.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Copies at once in the concurrent workload.
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
    /// The bound on one request; past it the operation is indeterminate.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// The timeout workload's first attempt gives up after this.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    short_timeout: Duration,
    /// How long each reference is retried until it settles: with a kill nemesis, longer
    /// than the target's lease plus --down-for (a key whose holder died is held until
    /// its lease ends).
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    settle: Duration,

    /// Count effects with a recording upstream listening here (put it behind the target).
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["ledger", "effects_db"])]
    upstream_listen: Option<SocketAddr>,
    /// The recording upstream honours the forwarded Idempotency-Key, as a service behind a
    /// gateway should for crashes between its work and the gateway's record.
    #[arg(long, requires = "upstream_listen")]
    upstream_dedupe: bool,
    /// The share (0 to 1) of first deliveries the recording upstream answers 500 without
    /// acting.
    #[arg(long, default_value_t = 0.0, requires = "upstream_listen")]
    upstream_errors: f64,
    /// How long the recording upstream takes over the timeout workload's requests.
    #[arg(long, default_value = "300ms", value_parser = parse_duration)]
    upstream_slow: Duration,
    /// Count effects by asking this URL: GET URL?reference=R answers their number.
    #[arg(long, value_name = "URL", conflicts_with = "effects_db")]
    ledger: Option<String>,
    /// Count effects in the system's database (sqlite://PATH or postgres://...).
    #[arg(long, value_name = "URL", requires = "effects_query")]
    effects_db: Option<String>,
    /// The query that counts one reference's effects, its one parameter $1 (or ?1).
    #[arg(long, value_name = "SQL", requires = "effects_db")]
    effects_query: Option<String>,

    /// Kills the system under test (sh -c), with --start-cmd to start it again.
    #[arg(long, value_name = "CMD", requires = "start_cmd")]
    kill_cmd: Option<String>,
    /// Starts the system under test again after --kill-cmd.
    #[arg(long, value_name = "CMD", requires = "kill_cmd")]
    start_cmd: Option<String>,
    /// Stops the system's store, with --store-start-cmd to start it again.
    #[arg(long, value_name = "CMD", requires = "store_start_cmd")]
    store_stop_cmd: Option<String>,
    /// Starts the store again.
    #[arg(long, value_name = "CMD", requires = "store_stop_cmd")]
    store_start_cmd: Option<String>,
    /// The pause before each kill or store outage.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    nemesis_every: Duration,
    /// How long the system or its store stays down.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    down_for: Duration,
    /// Kills and outages in all.
    #[arg(long, default_value_t = 3)]
    nemesis_max: usize,
    /// Spoil connections with a fault proxy, comma-separated kinds: drop-response, reset,
    /// delay, black-hole.
    #[arg(long, value_delimiter = ',', value_name = "KINDS")]
    faults: Vec<String>,
    /// Where the fault proxy sits.
    #[arg(long, value_enum, default_value = "client", requires = "faults")]
    fault_between: Between,
    /// The share (0 to 1) of connections the fault proxy spoils.
    #[arg(long, default_value_t = 0.1, requires = "faults")]
    fault_rate: f64,
    /// Faults in all.
    #[arg(long, default_value_t = 10, requires = "faults")]
    fault_max: u64,
    /// How long a delay holds an answer, and a black hole a connection.
    #[arg(long, default_value = "2s", value_parser = parse_duration, requires = "faults")]
    fault_hold: Duration,

    /// Write the history (JSON Lines) here as the attack runs.
    #[arg(long, value_name = "FILE")]
    history: Option<std::path::PathBuf>,
    /// Write the report with its timeline (one HTML file) here.
    #[arg(long, value_name = "FILE")]
    html: Option<std::path::PathBuf>,
}

/// The authority of an `http://` URL as it was written (for `Host`), and the `host:port`
/// to connect to.
fn authority(url: &str) -> Result<(String, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("--target {url}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "--faults between the client and {url}: the fault proxy carries http:// only"
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| format!("--target {url}: no host"))?;
    let written = uri
        .authority()
        .map(|a| {
            a.as_str()
                .rsplit('@')
                .next()
                .unwrap_or(a.as_str())
                .to_owned()
        })
        .unwrap_or_else(|| host.to_owned());
    let port = uri.port_u16().unwrap_or(80);
    Ok((written, format!("{host}:{port}")))
}

async fn serve_recorder(
    addr: SocketAddr,
    options: RecorderOptions,
) -> Result<(Arc<Recorder>, SocketAddr), String> {
    let recorder = Arc::new(Recorder::new(options));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("the recording upstream on {addr}: {e}"))?;
    let bound = listener.local_addr().map_err(|e| e.to_string())?;
    let app = recorder.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((recorder, bound))
}

pub(crate) async fn run(args: CheckArgs) -> Result<(), String> {
    let body = match args.body.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("--body @{path}: {e}"))?,
        None => args.body.clone(),
    };
    let method = http::Method::from_bytes(args.method.as_bytes())
        .map_err(|_| format!("--method {}: not an HTTP method", args.method))?;
    if !args.target.starts_with("http://") && !args.target.starts_with("https://") {
        return Err(format!(
            "--target {}: expected an http:// or https:// URL",
            args.target
        ));
    }
    let mut headers = Vec::new();
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("--header {h:?}: expected `Name: value`"))?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let workloads = if args.workloads.is_empty() {
        Workload::ALL
            .into_iter()
            .filter(|w| *w != Workload::Tenants || args.tenant_header.is_some())
            .collect()
    } else {
        args.workloads
            .iter()
            .map(|w| {
                Workload::parse(w).ok_or_else(|| {
                    let all: Vec<&str> = Workload::ALL.iter().map(|w| w.as_str()).collect();
                    format!("--workloads {w}: expected one of {}", all.join(", "))
                })
            })
            .collect::<Result<_, _>>()?
    };
    let faults = args
        .faults
        .iter()
        .map(|f| {
            FaultKind::parse(f).ok_or_else(|| {
                format!("--faults {f}: expected drop-response, reset, delay or black-hole")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !(0.0..=1.0).contains(&args.upstream_errors) {
        return Err(format!(
            "--upstream-errors {}: a share between 0 and 1",
            args.upstream_errors
        ));
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    println!("seed {seed} (--seed {seed} repeats this attack)");

    let history = args
        .history
        .as_ref()
        .map(|p| std::fs::File::create(p).map_err(|e| format!("--history {}: {e}", p.display())))
        .transpose()?;
    let journal = Arc::new(Journal::new(history));
    let on_fault: oncely_check::proxy::OnFault = {
        let journal = journal.clone();
        Arc::new(move |kind, detail| journal.fault(kind, detail))
    };
    let fault_plan = FaultPlan {
        kinds: faults.clone(),
        rate: args.fault_rate,
        max: args.fault_max,
        hold: args.fault_hold,
        seed,
    };
    // Kept alive for the whole run.
    let mut proxies: Vec<FaultProxy> = Vec::new();
    let mut target = args.target.clone();
    let mut recorder = None;
    let effects: Arc<dyn Effects> = match (&args.upstream_listen, &args.ledger, &args.effects_db) {
        (Some(addr), None, None) => {
            let spoiled = !faults.is_empty() && matches!(args.fault_between, Between::Upstream);
            // What may make a target forward a request again: a crash or an outage, and
            // a broken connection to the upstream when the proxy sits there.
            let mut excuses = vec![FaultKind::Kill, FaultKind::StoreStop];
            if spoiled {
                excuses.extend(oncely_check::proxy::PROXY_FAULTS);
            }
            let excuse: oncely_check::effects::Excuse = {
                let journal = journal.clone();
                Arc::new(move |from, to| journal.any_fault_between(from, to, &excuses))
            };
            if spoiled && !args.upstream_dedupe && faults.iter().any(|f| matches!(f, FaultKind::DropResponse | FaultKind::Reset)) {
                println!("note: a target whose upstream connection breaks after the upstream acted forwards the request again; without --upstream-dedupe that is a second effect");
            }
            let options = RecorderOptions {
                dedupe: args.upstream_dedupe.then_some(excuse),
                errors: args.upstream_errors,
                slow: args.upstream_slow,
            };
            let (r, bound) = if spoiled {
                let (r, inner) = serve_recorder("127.0.0.1:0".parse().map_err(|_| "loopback")?, options).await?;
                let proxy =
                    FaultProxy::start(*addr, &inner.to_string(), fault_plan.clone(), on_fault.clone()).await?;
                let bound = proxy.addr();
                proxies.push(proxy);
                (r, bound)
            } else {
                serve_recorder(*addr, options).await?
            };
            println!("recording upstream on http://{bound}");
            recorder = Some(r.clone());
            r
        }
        (None, Some(url), None) => Arc::new(Ledger::new(url)),
        (None, None, Some(url)) => Arc::new(oncely_check::effects::SqlCount::open(
            url,
            args.effects_query.as_deref().unwrap_or_default(),
        )?),
        _ => {
            return Err(
                "how are effects counted? --upstream-listen ADDR (a recording upstream behind the target), --ledger URL or --effects-db URL --effects-query SQL".into(),
            )
        }
    };
    let mut host = None;
    if !faults.is_empty() && matches!(args.fault_between, Between::Client) {
        let (written, to) = authority(&args.target)?;
        host = Some(written);
        let proxy = FaultProxy::start(
            "127.0.0.1:0".parse().map_err(|_| "loopback")?,
            &to,
            fault_plan,
            on_fault,
        )
        .await?;
        let path = args
            .target
            .trim_start_matches("http://")
            .split_once('/')
            .map(|(_, p)| format!("/{p}"))
            .unwrap_or_default();
        target = format!("http://{}{path}", proxy.addr());
        println!("fault proxy on {target} in front of {}", args.target);
        proxies.push(proxy);
    } else if !faults.is_empty() && args.upstream_listen.is_none() {
        return Err("--fault-between upstream puts the fault proxy in front of the recording upstream: it needs --upstream-listen".into());
    }
    let plan = Plan {
        target,
        method,
        path: args.path,
        body,
        headers,
        tenants: args.tenant_header.map(|h| (h, args.tenants)),
        keys: args.keys,
        workloads,
        mix: args.mix,
        seed,
        parallel: args.parallel,
        repeats: args.repeats,
        concurrency: args.concurrency,
        timeout: args.timeout,
        short_timeout: args.short_timeout,
        settle: args.settle,
        fresh_connections: !faults.is_empty() && matches!(args.fault_between, Between::Client),
        host,
        nemesis: Nemesis {
            kill: args.kill_cmd.zip(args.start_cmd),
            store: args.store_stop_cmd.zip(args.store_start_cmd),
            every: args.nemesis_every,
            down_for: args.down_for,
            max: args.nemesis_max,
        },
    };
    let found = oncely_check::run(plan, effects.as_ref(), journal)
        .await
        .map_err(|e| e.to_string())?;
    drop(proxies);
    print!("{}", oncely_check::report::text(&found));
    if let Some(r) = &recorder {
        let absorbed = r.absorbed();
        if absorbed > 0 {
            println!("the recording upstream answered {absorbed} repeated deliveries of a key from its first execution");
        }
    }
    if let Some(path) = &args.html {
        let title = format!("oncely check of {}", args.target);
        let page = oncely_check::timeline::html(
            &title,
            &found.operations,
            &found.faults,
            &found.verdict,
            &found.effects,
        );
        std::fs::write(path, page).map_err(|e| format!("--html {}: {e}", path.display()))?;
        println!("report: {}", path.display());
    }
    if !found.nemesis_failed.is_empty() {
        return Err(format!(
            "the nemesis failed, so the verdict is in doubt: {}",
            found.nemesis_failed.join("; ")
        ));
    }
    if found.verdict.passed() {
        Ok(())
    } else {
        Err(format!(
            "{} violation(s): the API is not idempotent under this attack",
            found.verdict.violations.len()
        ))
    }
}
