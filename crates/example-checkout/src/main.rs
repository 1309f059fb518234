//! `oncely-example-checkout`: the example checkout service and its fake payment provider.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use oncely_core::parse_duration;
use oncely_example_checkout::app::{self, Config, DbUrl};
use oncely_open::StoreUrl;

#[derive(Parser)]
#[command(
    name = "oncely-example-checkout",
    about = "A checkout on recovery points behind the idempotency layer, and a fake payment provider"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The checkout service: POST /checkout, GET /orders.
    Checkout {
        /// The shop's database: sqlite://PATH or postgres://USER@HOST/DB?schema=NAME.
        #[arg(long, default_value = "sqlite://checkout.db")]
        db: String,
        /// The idempotency layer's store (any `oncely serve --store` URL); by default beside
        /// the shop's data: PATH.keys, or the schema NAME_keys.
        #[arg(long)]
        keys: Option<String>,
        /// The payment provider's base URL.
        #[arg(long, default_value = "http://127.0.0.1:3100")]
        provider: String,
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        /// How long a crashed request blocks its key before a retry takes it over.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        lease: Duration,
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        provider_timeout: Duration,
        /// Kill the process with SIGKILL when a checkout reaches this boundary (for crash
        /// tests; see `boundaries`).
        #[arg(long, env = "CHECKOUT_CRASH_AT")]
        crash_at: Option<String>,
        /// The completer finishes checkouts untouched for this long (the client went away).
        #[arg(long, default_value = "5m", value_parser = parse_duration)]
        complete_after: Duration,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        complete_every: Duration,
        /// How long finished checkouts and their keys are kept.
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        retention: Duration,
    },
    /// The fake payment provider: POST /charges (Idempotency-Key required), GET /charges.
    Payments {
        #[arg(long, default_value = "127.0.0.1:3100")]
        listen: SocketAddr,
    },
    /// Prints the checkout's crash boundaries, one per line.
    Boundaries,
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

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Checkout {
            db,
            keys,
            provider,
            listen,
            lease,
            provider_timeout,
            crash_at,
            complete_after,
            complete_every,
            retention,
        } => {
            let db = DbUrl::parse(&db)?;
            let keys = match keys {
                Some(k) => StoreUrl::parse(&k)?,
                None => db.default_keys()?,
            };
            let boundaries = oncely_example_checkout::boundaries();
            if let Some(b) = &crash_at {
                if !boundaries.contains(b) {
                    return Err(format!(
                        "--crash-at `{b}` is not a boundary (one of: {})",
                        boundaries.join(", ")
                    ));
                }
            }
            app::run(Config {
                db,
                keys,
                provider,
                listen,
                lease,
                provider_timeout,
                crash_at,
                complete_after,
                complete_every,
                retention,
            })
            .await
        }
        Command::Payments { listen } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("listen on {listen}: {e}"))?;
            println!(
                "listening on http://{}",
                listener.local_addr().map_err(|e| e.to_string())?
            );
            oncely_example_checkout::payments::serve(listener).await
        }
        Command::Boundaries => {
            for b in oncely_example_checkout::boundaries() {
                println!("{b}");
            }
            Ok(())
        }
    }
}
