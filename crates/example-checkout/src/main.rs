//! `oncely-example-checkout`: the checkout service, and the inventory and payment services
//! its saga calls.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use oncely_core::parse_duration;
use oncely_example_checkout::app::{self, Config, DbUrl};
use oncely_example_checkout::checkout::CheckoutConfig;
use oncely_open::StoreUrl;

#[derive(Parser)]
#[command(
    name = "oncely-example-checkout",
    about = "The checkout saga across three services: the shop, an inventory service and a payment provider"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The shop: POST /checkout runs the checkout saga; GET /checkouts/ID, GET /orders.
    Checkout(Box<CheckoutArgs>),
    /// The fake payment provider: POST /charges (Idempotency-Key required), GET /charges.
    Payments {
        #[arg(long, default_value = "127.0.0.1:3100")]
        listen: SocketAddr,
    },
    /// The fake inventory service: POST /reservations, POST /reservations/REF/release
    /// (Idempotency-Key required), GET /reservations, GET /stock.
    Inventory {
        #[arg(long, default_value = "127.0.0.1:3200")]
        listen: SocketAddr,
    },
    /// Prints the checkout's crash boundaries, one per line.
    Boundaries,
}

#[derive(Args)]
struct CheckoutArgs {
    /// The shop's database (orders and sagas): sqlite://PATH or
    /// postgres://USER@HOST/DB?schema=NAME.
    #[arg(long, default_value = "sqlite://checkout.db")]
    db: String,
    /// The idempotency layer's store (any `oncely serve --store` URL); by default beside
    /// the shop's data: PATH.keys, or the schema NAME_keys.
    #[arg(long)]
    keys: Option<String>,
    /// The inventory service's base URL.
    #[arg(long, default_value = "http://127.0.0.1:3200")]
    inventory: String,
    /// The payment provider's base URL.
    #[arg(long, default_value = "http://127.0.0.1:3100")]
    provider: String,
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,
    /// The admin listener: GET /metrics, GET /sagas, POST /sagas/ID/cancel...
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// The bearer token the admin listener requires (needed to bind beyond loopback).
    #[arg(long, env = "ONCELY_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// How long a crashed request blocks its key, and a crashed runner its sagas.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    lease: Duration,
    /// The bound on one HTTP attempt of a step (under half of --lease).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    provider_timeout: Duration,
    /// How long POST /checkout waits for the outcome before answering 202.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    wait: Duration,
    /// How often an idle runner looks for due sagas.
    #[arg(long, default_value = "250ms", value_parser = parse_duration)]
    poll: Duration,
    /// How long a step is retried before it counts as failed.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    step_deadline: Duration,
    /// A checkout's deadline: past it, one before its payment turns back.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    deadline: Duration,
    /// Run no saga runner here (another process runs the checkouts).
    #[arg(long)]
    no_runner: bool,
    /// Kill the process with SIGKILL when a checkout reaches this boundary (crash
    /// tests; see `boundaries`).
    #[arg(long, env = "CHECKOUT_CRASH_AT")]
    crash_at: Option<String>,
    /// How long finished keys are kept.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    retention: Duration,
    /// The audit trail (sqlite://PATH or postgres://...?schema=NAME): every saga transition
    /// and operator action.
    #[arg(long, value_name = "URL")]
    audit: Option<String>,
    /// The file holding the trail's key (16 bytes or more).
    #[arg(long, value_name = "PATH")]
    audit_key_file: Option<std::path::PathBuf>,
    /// The secret the provider signs its webhooks with (whsec_...); without it
    /// POST /webhooks/provider refuses them.
    #[arg(long, env = "ONCELY_PROVIDER_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse().command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oncely-example-checkout: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn listen(addr: SocketAddr) -> Result<tokio::net::TcpListener, String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("listen on {addr}: {e}"))?;
    println!(
        "listening on http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    Ok(listener)
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Checkout(args) => {
            let CheckoutArgs {
                db,
                keys,
                inventory,
                provider,
                listen,
                admin,
                admin_token,
                lease,
                provider_timeout,
                wait,
                poll,
                step_deadline,
                deadline,
                no_runner,
                crash_at,
                retention,
                audit,
                audit_key_file,
                webhook_secret,
            } = *args;
            let webhook_secret = webhook_secret
                .map(|s| {
                    oncely_outbox::webhook::WebhookSecret::parse(&s)
                        .map_err(|e| format!("--webhook-secret: {e}"))
                })
                .transpose()?;
            let audit = audit
                .map(|u| oncely_open::AuditUrl::parse(&u))
                .transpose()?;
            let audit_key = audit_key_file
                .map(|p| {
                    std::fs::read_to_string(&p)
                        .map(|k| k.trim().as_bytes().to_vec())
                        .map_err(|e| format!("--audit-key-file {}: {e}", p.display()))
                })
                .transpose()?;
            let db = DbUrl::parse(&db)?;
            let keys = match keys {
                Some(k) => StoreUrl::parse(&k)?,
                None => db.default_keys()?,
            };
            app::run(Config {
                db,
                keys,
                inventory,
                provider,
                listen,
                admin,
                admin_token,
                lease,
                provider_timeout,
                wait,
                poll,
                checkout: CheckoutConfig {
                    step_deadline,
                    deadline,
                    ..CheckoutConfig::default()
                },
                crash_at,
                no_runner,
                retention,
                audit,
                audit_key,
                webhook_secret,
            })
            .await
        }
        Command::Payments { listen: addr } => {
            oncely_example_checkout::payments::serve(listen(addr).await?).await
        }
        Command::Inventory { listen: addr } => {
            oncely_example_checkout::inventory::serve(listen(addr).await?).await
        }
        Command::Boundaries => {
            for b in oncely_example_checkout::checkout::boundaries() {
                println!("{b}");
            }
            Ok(())
        }
    }
}
