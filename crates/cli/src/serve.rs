//! `oncely serve`.

use std::path::PathBuf;

use clap::Args;
use oncely_gateway::config::parse_upstream;
use oncely_gateway::store_url::StoreUrl;
use oncely_gateway::{Config, Gateway};

#[derive(Args)]
pub struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080, or server.listen in the config].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The service to protect, e.g. http://127.0.0.1:3000 [or server.upstream in the config].
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Where records live: sqlite://PATH, postgres://USER@HOST/DB, redis://HOST:PORT or
    /// memory:// (options in docs/configuration.md) [default: sqlite://oncely.db].
    #[arg(long, value_name = "URL")]
    store: Option<String>,
    /// Routes and policies (see docs/configuration.md). Without it, POST and PATCH are keyed
    /// when they carry an Idempotency-Key.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

pub async fn run(args: ServeArgs) -> Result<(), String> {
    let config = build_config(&args)?;
    for w in config.validate().map_err(|e| e.to_string())? {
        tracing::warn!("{w}");
    }
    let upstream = config
        .upstream
        .as_ref()
        .map(|u| u.to_string())
        .unwrap_or_default();
    let store = config.store.clone();
    let gateway = Gateway::open(config).await?.start().await?;
    tracing::info!(listen = %gateway.addr(), %upstream, %store, "oncely gateway ready");
    // One plain line on stdout so scripts (and tests) learn the port when listening on :0.
    println!("listening on http://{}", gateway.addr());
    gateway.run_until(shutdown_signal()).await;
    tracing::info!("stopped");
    Ok(())
}

fn build_config(args: &ServeArgs) -> Result<Config, String> {
    let defaults = Config::new(
        "127.0.0.1:8080"
            .parse()
            .map_err(|_| "bad default address".to_owned())?,
        None,
        StoreUrl::parse("sqlite://oncely.db")?,
    );
    let mut config = match &args.config {
        Some(path) => defaults.load_file(path).map_err(|e| e.to_string())?,
        None => defaults,
    };
    if let Some(l) = &args.listen {
        config.listen = l
            .parse()
            .map_err(|_| format!("--listen: `{l}` is not an address like 127.0.0.1:8080"))?;
    }
    if let Some(u) = &args.upstream {
        config.upstream = Some(parse_upstream(u).map_err(|e| format!("--upstream: {e}"))?);
    }
    if let Some(s) = &args.store {
        config.store = StoreUrl::parse(s).map_err(|e| format!("--store: {e}"))?;
    }
    if config.upstream.is_none() {
        return Err(
            "no upstream: pass --upstream http://HOST:PORT (or set server.upstream in the config)"
                .into(),
        );
    }
    Ok(config)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
