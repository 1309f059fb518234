//! `oncely serve`.

use std::path::PathBuf;

use clap::Args;
use oncely_gateway::audit::{default_chain, AuditConfig, AuditUrl, RedactionKey};
use oncely_gateway::config::{
    parse_admin_listen, parse_duration, parse_size, parse_upstream, read_key_file,
};
use oncely_gateway::AdminConfig;
use oncely_gateway::{Config, Gateway};
use oncely_open::StoreUrl;

#[derive(Args)]
pub(crate) struct ServeArgs {
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
    /// The admin listener (/metrics, /healthz), or `off` [default: 127.0.0.1:7979, or
    /// admin.listen in the config]. If the default address is taken (another gateway on this
    /// host), the gateway warns and runs without one; an address given here must be free.
    #[arg(long, value_name = "ADDR|off")]
    admin_listen: Option<String>,
    /// Memory for completed responses replayed without the store, e.g. 64MiB; 0 turns the
    /// cache off [default: 64MiB, or server.replay_cache].
    #[arg(long, value_name = "SIZE")]
    replay_cache: Option<String>,
    /// Time a client may take to send a request's headers [default: 30s, or
    /// server.header_timeout].
    #[arg(long, value_name = "DURATION")]
    header_timeout: Option<String>,
    /// Time a request body may send nothing before the request is cut off with 408
    /// [default: 60s, or server.body_idle_timeout].
    #[arg(long, value_name = "DURATION")]
    body_idle_timeout: Option<String>,
    /// Time a keyed request's whole body may take to arrive [default: 2min, or
    /// server.body_timeout].
    #[arg(long, value_name = "DURATION")]
    body_timeout: Option<String>,
    /// Client connections served at once; more wait until one closes [default: 10000, or
    /// less where `ulimit -n` cannot hold that many, or server.max_connections].
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Threads serving connections, each with its own runtime and upstream connections
    /// [default: one per CPU, or server.workers].
    #[arg(long, value_name = "N")]
    workers: Option<usize>,
    /// Bearer token the admin listener requires (at least 16 characters); needed to bind it
    /// to a non-loopback address.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "ONCELY_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,
    /// Keep an audit trail of every keyed request's outcome: sqlite://PATH or
    /// postgres://USER@HOST/DB?schema=NAME [or audit.url in the config].
    #[arg(long, value_name = "URL")]
    audit: Option<String>,
    /// This gateway's chain in the audit trail [default: the host name, or audit.chain].
    #[arg(long, value_name = "NAME")]
    audit_chain: Option<String>,
    /// File holding the secret that keys personal fields' hashes (at least 16 characters)
    /// [or audit.key_file in the config].
    #[arg(long, value_name = "FILE")]
    audit_key_file: Option<PathBuf>,
    /// The redaction secret itself, instead of a file.
    #[arg(long, env = "ONCELY_AUDIT_KEY", hide_env_values = true, hide = true)]
    audit_key: Option<String>,
}

pub(crate) async fn run(args: ServeArgs) -> Result<(), String> {
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
    let workers = config.worker_count();
    let audit = config
        .audit
        .as_ref()
        .map(|a| format!("{} (chain {})", a.url, a.chain));
    let gateway = Gateway::open(config)
        .await
        .map_err(|e| e.to_string())?
        .start()
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(listen = %gateway.addr(), %upstream, %store, workers, audit = audit.as_deref().unwrap_or("off"), "oncely gateway ready");
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
    defaults.admin = Some(AdminConfig::default_listener());
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
                is_default: false,
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
    if let Some(v) = &args.replay_cache {
        config.replay_cache = parse_size(v).map_err(|e| format!("--replay-cache: {e}"))?;
    }
    for (flag, value, setting) in [
        (
            "--header-timeout",
            &args.header_timeout,
            &mut config.header_timeout,
        ),
        (
            "--body-idle-timeout",
            &args.body_idle_timeout,
            &mut config.body_idle_timeout,
        ),
        (
            "--body-timeout",
            &args.body_timeout,
            &mut config.body_timeout,
        ),
    ] {
        if let Some(v) = value {
            *setting = parse_duration(v).map_err(|e| format!("{flag}: {e}"))?;
        }
    }
    if let Some(n) = args.max_connections {
        config.max_connections = Some(n);
    }
    if let Some(n) = args.workers {
        config.workers = Some(n);
    }
    apply_audit_args(args, &mut config)?;
    if config.upstream.is_none() {
        return Err(
            "no upstream: pass --upstream http://HOST:PORT (or set server.upstream in the config)"
                .into(),
        );
    }
    Ok(config)
}

/// The `--audit*` flags over the config file's `[audit]` section.
fn apply_audit_args(args: &ServeArgs, config: &mut Config) -> Result<(), String> {
    if let Some(u) = &args.audit {
        let url = AuditUrl::parse(u).map_err(|e| format!("--audit: {e}"))?;
        config.audit = Some(match config.audit.take() {
            Some(a) => AuditConfig { url, ..a },
            None => AuditConfig {
                url,
                chain: default_chain(),
                key: None,
                queue: oncely_audit::writer::DEFAULT_QUEUE,
            },
        });
    }
    let flags_without_trail = args.audit_chain.is_some() || args.audit_key_file.is_some();
    let Some(audit) = config.audit.as_mut() else {
        if flags_without_trail {
            return Err(
                "--audit-chain and --audit-key-file need --audit URL (or audit.url in the config)"
                    .into(),
            );
        }
        return Ok(());
    };
    if let Some(c) = &args.audit_chain {
        oncely_audit::validate_chain(c).map_err(|e| format!("--audit-chain: {e}"))?;
        audit.chain = c.clone();
    }
    if let Some(f) = &args.audit_key_file {
        audit.key = Some(read_key_file(f).map_err(|e| format!("--audit-key-file: {e}"))?);
    } else if let Some(k) = &args.audit_key {
        audit.key = Some(RedactionKey::parse(k).map_err(|e| format!("ONCELY_AUDIT_KEY: {e}"))?);
    }
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub(crate) async fn shutdown_signal() {
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
