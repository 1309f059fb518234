//! `oncely serve`.

use std::path::PathBuf;

use clap::Args;
use oncely_gateway::config::{parse_admin_listen, parse_upstream, DEFAULT_ADMIN_LISTEN};
use oncely_gateway::store_url::StoreUrl;
use oncely_gateway::AdminConfig;
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
    /// The admin listener (/metrics, /healthz), or `off` [default: 127.0.0.1:9091, or
    /// admin.listen in the config].
    #[arg(long, value_name = "ADDR|off")]
    admin_listen: Option<String>,
    /// Bearer token the admin listener requires (at least 16 characters); needed to bind it
    /// to a non-loopback address.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ONCELY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
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
    // One plain line on stdout so scripts (and tests) learn the port when listening on :0;
    // the admin listener's, if any, on the next.
    let mut ready = format!("listening on http://{}\n", gateway.addr());
    if let Some(admin) = gateway.admin_addr() {
        tracing::info!(admin = %admin, "admin listener ready (/metrics, /healthz)");
        ready.push_str(&format!("admin on http://{admin}\n"));
    }
    // One write, errors ignored: a reader that took the first line and closed the pipe must
    // not bring the gateway down.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(ready.as_bytes()).and_then(|()| out.flush());
    }
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
    let mut defaults = defaults;
    defaults.admin = Some(AdminConfig {
        listen: DEFAULT_ADMIN_LISTEN
            .parse()
            .map_err(|_| "bad default admin address".to_owned())?,
        token: None,
    });
    let mut config = match &args.config {
        Some(path) => defaults.load_file(path).map_err(|e| e.to_string())?,
        None => defaults,
    };
    if let Some(l) = &args.admin_listen {
        config.admin = parse_admin_listen(l)
            .map_err(|e| format!("--admin-listen: {e}"))?
            .map(|listen| AdminConfig {
                listen,
                token: config.admin.as_ref().and_then(|a| a.token.clone()),
            });
    }
    if let Some(t) = &args.admin_token {
        if let Some(a) = config.admin.as_mut() {
            a.token = Some(t.clone());
        }
    }
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
