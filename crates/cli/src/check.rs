//! `oncely check`: attacks an HTTP API with the requests that break idempotency and says,
//! per property, whether it held (docs/check.md).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use oncely_check::{Effects, Ledger, Plan, Recorder};
use oncely_core::parse_duration;

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
    /// Keys to attack (each gets one workload in turn: sequential, concurrent, other body,
    /// tenants).
    #[arg(long, default_value_t = 8)]
    keys: usize,
    /// Requests per key in the sequential workload.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Copies at once in the concurrent workload.
    #[arg(long, default_value_t = 20)]
    concurrency: usize,
    /// The bound on one request; past it the operation is indeterminate.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    timeout: Duration,
    /// Count effects with a recording upstream listening here (put it behind the target).
    #[arg(long, value_name = "ADDR", conflicts_with = "ledger")]
    upstream_listen: Option<SocketAddr>,
    /// Count effects by asking this URL: GET URL?reference=R answers their number.
    #[arg(long, value_name = "URL")]
    ledger: Option<String>,
    /// Write the history (JSON Lines) here as the attack runs.
    #[arg(long, value_name = "FILE")]
    history: Option<std::path::PathBuf>,
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
    let effects: Arc<dyn Effects> = match (&args.upstream_listen, &args.ledger) {
        (Some(addr), None) => {
            let recorder = Arc::new(Recorder::default());
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("--upstream-listen {addr}: {e}"))?;
            let app = recorder.router();
            println!(
                "recording upstream on http://{}",
                listener.local_addr().map_err(|e| e.to_string())?
            );
            tokio::spawn(async move { axum::serve(listener, app).await });
            recorder
        }
        (None, Some(url)) => Arc::new(Ledger::new(url)),
        _ => {
            return Err(
                "how are effects counted? --upstream-listen ADDR (a recording upstream behind the target) or --ledger URL".into(),
            )
        }
    };
    let history = args
        .history
        .as_ref()
        .map(|p| std::fs::File::create(p).map_err(|e| format!("--history {}: {e}", p.display())))
        .transpose()?;
    let plan = Plan {
        target: args.target,
        method,
        path: args.path,
        body,
        headers,
        tenants: args.tenant_header.map(|h| (h, args.tenants)),
        keys: args.keys,
        repeats: args.repeats,
        concurrency: args.concurrency,
        timeout: args.timeout,
    };
    let found = oncely_check::run(plan, effects.as_ref(), history)
        .await
        .map_err(|e| e.to_string())?;
    print!(
        "{}",
        oncely_check::report::text(&found.verdict, found.operations.len())
    );
    if found.verdict.passed() {
        Ok(())
    } else {
        Err(format!(
            "{} violation(s): the API is not idempotent under this attack",
            found.verdict.violations.len()
        ))
    }
}
