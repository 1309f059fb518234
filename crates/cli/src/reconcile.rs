//! `oncely reconcile`: run a reconciliation job (once, or every period, with `/metrics` and
//! the JSON API), and work through its findings (list, acknowledge, resolve).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Subcommand};
use oncely_core::reconcile::WindowPlan;
use oncely_core::{parse_duration, Clock, SystemClock};
use oncely_example_checkout::orders::OrdersDb;
use oncely_reconcile::alert::AlertHook;
use oncely_reconcile::{
    FindingFilter, FindingState, Job, ReconcileStore, Reconciler, RunError, RunOutcome, RunSummary,
};

/// The jobs this command knows.
const JOBS: &str = "payments (the payment provider's charges against the shop's orders)";

#[derive(Args)]
pub(crate) struct ReconcileArgs {
    /// The database holding our side's records and the findings: sqlite://PATH (the shop's
    /// file) or postgres://USER@HOST/DB?schema=NAME (the shop's schema, default `oncely`).
    #[arg(long, value_name = "URL", env = "ONCELY_RECONCILE_DB")]
    db: String,
    #[command(subcommand)]
    command: ReconcileCommand,
}

#[derive(Subcommand)]
enum ReconcileCommand {
    /// Runs a job: once (exit 0 when clean or when another run holds the job, 1 when it found
    /// drifts or failed), or every --every until stopped.
    Run(RunArgs),
    /// The review queue.
    Findings {
        #[command(subcommand)]
        command: FindingsCommand,
    },
    /// The newest runs, with their counts.
    Runs {
        #[arg(long)]
        job: Option<String>,
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Each job's checkpoint and last run, and the findings per class and state.
    Status,
}

#[derive(Args)]
struct RunArgs {
    /// The job: payments.
    job: String,
    /// The payment provider's base URL (its paged `GET /charges`).
    #[arg(long, default_value = "http://127.0.0.1:3100")]
    provider: String,
    /// Run again every period (a failed run is retried at the next).
    #[arg(long, value_parser = parse_duration)]
    every: Option<Duration>,
    /// With --every: serve /metrics and the JSON API (/reconcile/...) here (loopback only).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Post a Slack-style alert here when a run passes --alert-threshold.
    #[arg(long, value_name = "URL")]
    alert_url: Option<String>,
    /// New alert findings in one run that make it worth an alert.
    #[arg(long, default_value_t = 1)]
    alert_threshold: u64,
    /// Alert on any invariant violation too, new or not.
    #[arg(long)]
    alert_on_violation: bool,
    /// Each window's length.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    window: Duration,
    /// How far an order and its charge may lie apart, and how far back before the
    /// checkpoint each run looks again.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    overlap: Duration,
    /// Records younger than this wait for the next run.
    #[arg(long, default_value = "1m", value_parser = parse_duration)]
    settle: Duration,
    /// How far back the first run starts.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    lookback: Duration,
    /// How long a run holds the job between renewals.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    lease: Duration,
}

#[derive(Subcommand)]
enum FindingsCommand {
    /// Findings, the most recently seen first.
    List {
        #[arg(long)]
        job: Option<String>,
        /// open, acknowledged, resolved or healed.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        class: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Takes an open finding: someone is on it.
    Ack {
        id: i64,
        /// Who (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Closes a finding: the drift was dealt with (seen again, it opens again).
    Resolve {
        id: i64,
        #[arg(long)]
        by: Option<String>,
    },
}

/// The store and our side's records, in one database.
async fn open(url: &str) -> Result<(Arc<dyn ReconcileStore>, OrdersDb), String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if let Some(path) = url.strip_prefix("sqlite://") {
        let store =
            oncely_reconcile::sqlite::SqliteReconcile::open(path, Duration::from_secs(10), clock)
                .map_err(|e| format!("--db {url}: {e}"))?;
        let orders =
            OrdersDb::sqlite(std::path::Path::new(path)).map_err(|e| format!("--db {url}: {e}"))?;
        return Ok((Arc::new(store), orders));
    }
    let opts = oncely_db::postgres::PgOptions::from_url(url)
        .map_err(|e| format!("--db: {e} (expected sqlite://PATH or postgres://...)"))?;
    let pool = oncely_db::postgres::pool(&opts).map_err(|e| format!("--db: {e}"))?;
    let shown = oncely_db::postgres::hide_password(url);
    let store = oncely_reconcile::postgres::PgReconcile::open(pool.clone(), &opts.schema, clock)
        .await
        .map_err(|e| format!("--db {shown}: {e}"))?
        .with_timeout(opts.timeout);
    let orders = OrdersDb::postgres(pool, &opts.schema)
        .await
        .map_err(|e| format!("--db {shown}: {e}"))?;
    Ok((Arc::new(store), orders))
}

/// The most windows one run may plan (a window too short for its lookback would plan
/// millions).
const MAX_WINDOWS: u128 = 100_000;

fn job(args: &RunArgs, orders: OrdersDb) -> Result<Job, String> {
    if args.job != oncely_example_checkout::reconcile::JOB {
        return Err(format!("unknown job `{}` (jobs: {JOBS})", args.job));
    }
    if args.window < Duration::from_secs(1) {
        return Err("--window must be at least 1s".into());
    }
    if args.every.is_some_and(|e| e < Duration::from_secs(1)) {
        return Err("--every must be at least 1s".into());
    }
    if args.lookback.as_millis() / args.window.as_millis() > MAX_WINDOWS {
        return Err(format!(
            "--lookback {:?} in windows of {:?} is more than {MAX_WINDOWS} windows: take longer windows",
            args.lookback, args.window
        ));
    }
    Ok(oncely_example_checkout::reconcile::job(
        orders,
        &args.provider,
        WindowPlan {
            length: args.window,
            overlap: args.overlap,
            settle: args.settle,
            lookback: args.lookback,
        },
    ))
}

fn summary_line(job: &str, s: &RunSummary) -> String {
    let n = |k: &str| s.report.counts.get(k).copied().unwrap_or(0);
    let mut line = format!(
        "{job} run {}: {} ({} windows, {} ours, {} theirs, {} agree, {} healed, {} accepted, {} alerts ({} new), {} invariant violations)",
        s.run,
        s.outcome.as_str(),
        n("windows"),
        n("ours_read"),
        n("theirs_read"),
        n("agree"),
        n("healed"),
        n("accepted"),
        n("alerts"),
        n("new_findings"),
        n("invariant_violations"),
    );
    if let Some(e) = &s.error {
        line.push_str(&format!(": {e}"));
    }
    line
}

pub(crate) async fn run(args: ReconcileArgs) -> Result<(), String> {
    let (store, orders) = open(&args.db).await?;
    let e = |e: oncely_reconcile::ReconcileError| e.to_string();
    match args.command {
        ReconcileCommand::Run(run) => run_job(run, store, orders).await,
        ReconcileCommand::Findings { command } => match command {
            FindingsCommand::List {
                job,
                state,
                class,
                limit,
            } => {
                let state = match state.as_deref() {
                    None => None,
                    Some(s) => Some(FindingState::parse(s).ok_or_else(|| {
                        format!("--state {s}: expected open, acknowledged, resolved or healed")
                    })?),
                };
                let found = store
                    .findings(&FindingFilter { job, state, class }, limit)
                    .await
                    .map_err(e)?;
                if found.is_empty() {
                    println!("no findings");
                }
                for f in found {
                    println!(
                        "{:>5}  {:<12}  {:<20} {:<24} ours {:?} theirs {:?}  seen {}x  {}",
                        f.id,
                        f.state.as_str(),
                        f.class,
                        f.key,
                        f.ours,
                        f.theirs,
                        f.seen,
                        f.detail
                    );
                }
                Ok(())
            }
            FindingsCommand::Ack { id, by } => {
                review(&store, id, FindingState::Acknowledged, by).await
            }
            FindingsCommand::Resolve { id, by } => {
                review(&store, id, FindingState::Resolved, by).await
            }
        },
        ReconcileCommand::Runs { job, limit } => {
            let runs = store.runs(job.as_deref(), limit).await.map_err(e)?;
            if runs.is_empty() {
                println!("no runs");
            }
            for r in runs {
                let counts: Vec<String> = r
                    .report
                    .counts
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                println!(
                    "{:>5}  {:<12} {:<8} started {}  {}{}",
                    r.id,
                    r.job,
                    r.outcome.as_str(),
                    oncely_core::conditional::format_rfc3339(r.started_at),
                    counts.join(" "),
                    r.error.map(|e| format!("  error: {e}")).unwrap_or_default()
                );
            }
            Ok(())
        }
        ReconcileCommand::Status => {
            let s = store.stats().await.map_err(e)?;
            if s.jobs.is_empty() {
                println!("no job has run yet");
            }
            let fmt = oncely_core::conditional::format_rfc3339;
            for (job, j) in &s.jobs {
                println!(
                    "{job}: checkpoint {}, last run {}, last success {}",
                    j.checkpoint.map(fmt).unwrap_or_else(|| "-".into()),
                    j.last_run
                        .map(|(at, o)| format!("{} at {}", o.as_str(), fmt(at)))
                        .unwrap_or_else(|| "-".into()),
                    j.last_success.map(fmt).unwrap_or_else(|| "-".into()),
                );
            }
            for ((job, class, state), n) in &s.findings {
                println!("  {job} {class} {state}: {n}");
            }
            Ok(())
        }
    }
}

async fn review(
    store: &Arc<dyn ReconcileStore>,
    id: i64,
    to: FindingState,
    by: Option<String>,
) -> Result<(), String> {
    let by = by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "operator".into());
    if store.review(id, to, &by).await.map_err(|e| e.to_string())? {
        println!("finding {id}: {} by {by}", to.as_str());
        Ok(())
    } else {
        Err(format!(
            "finding {id}: no such finding, or it cannot be made {} (healed findings are closed)",
            to.as_str()
        ))
    }
}

async fn run_job(
    args: RunArgs,
    store: Arc<dyn ReconcileStore>,
    orders: OrdersDb,
) -> Result<(), String> {
    let job = job(&args, orders)?;
    let hook = match &args.alert_url {
        Some(url) => {
            let client = oncely_client::Client::builder()
                .deadline(Some(Duration::from_secs(30)))
                .build()
                .map_err(|e| e.to_string())?;
            let mut hook = AlertHook::new(url, args.alert_threshold, Arc::new(client));
            hook.on_violation = args.alert_on_violation;
            Some(hook)
        }
        None => None,
    };
    let reconciler = Reconciler::new(store.clone(), Arc::new(SystemClock), args.lease);
    let Some(every) = args.every else {
        if args.metrics.is_some() {
            return Err("--metrics needs --every (a single run has nothing to serve)".into());
        }
        let summary = match once(&reconciler, &job, hook.as_ref()).await {
            Ok(s) => s,
            // Another run is doing the work: nothing failed, nothing to report here.
            Err(Once::Busy(e)) => {
                eprintln!("oncely: {e}");
                return Ok(());
            }
            Err(Once::Failed(e)) => return Err(e),
        };
        return match summary.outcome {
            RunOutcome::Clean => Ok(()),
            _ => Err(format!(
                "{} (oncely reconcile findings list --state open)",
                summary_line(&job.name, &summary)
            )),
        };
    };
    if let Some(addr) = args.metrics {
        if !addr.ip().is_loopback() {
            return Err(format!(
                "--metrics {addr}: the JSON API has no authentication; bind loopback"
            ));
        }
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let metrics_store = store.clone();
        let app = oncely_reconcile::api::router(store.clone()).route(
            "/metrics",
            axum::routing::get(move || {
                let store = metrics_store.clone();
                async move {
                    let mut text = oncely_metrics::Text::new();
                    if let Ok(stats) = store.stats().await {
                        oncely_reconcile::metrics::render(&stats, SystemClock.now(), &mut text);
                    }
                    (
                        [(http::header::CONTENT_TYPE, oncely_metrics::CONTENT_TYPE)],
                        text.finish(),
                    )
                }
            }),
        );
        say(&format!(
            "metrics and the JSON API on http://{}",
            listener.local_addr().map_err(|e| e.to_string())?
        ));
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    loop {
        if let Err(Once::Busy(e) | Once::Failed(e)) = once(&reconciler, &job, hook.as_ref()).await {
            eprintln!("oncely: {e}");
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}

/// Prints a line; a closed stdout (the reader went away) must not stop a periodic run.
fn say(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Why a run gave no summary.
enum Once {
    /// Another run holds the job.
    Busy(String),
    /// The run could not be made.
    Failed(String),
}

/// One run, its summary line printed, its alert sent.
async fn once(
    reconciler: &Reconciler,
    job: &Job,
    hook: Option<&AlertHook>,
) -> Result<RunSummary, Once> {
    let summary = match reconciler.run(job).await {
        Ok(s) => s,
        Err(e @ RunError::Busy(_)) => return Err(Once::Busy(format!("{e}: nothing done"))),
        Err(e) => return Err(Once::Failed(e.to_string())),
    };
    say(&summary_line(&job.name, &summary));
    if let Some(hook) = hook {
        match hook.notify(&job.name, &summary).await {
            Ok(true) => say(&format!("alert sent to {}", hook.url)),
            Ok(false) => {}
            Err(e) => eprintln!("oncely: {e}"),
        }
    }
    Ok(summary)
}
