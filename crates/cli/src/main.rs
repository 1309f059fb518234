//! The `oncely` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod audit;
mod check;
mod demo;
mod keys;
mod logging;
mod migrate;
mod outbox;
mod reconcile;
mod saga;
mod serve;

#[derive(Parser)]
#[command(
    name = "oncely",
    version,
    about = "Effectively-once writes: an Idempotency-Key gateway for any HTTP service"
)]
struct Cli {
    #[command(flatten)]
    log: logging::LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway in front of an upstream service.
    Serve(serve::ServeArgs),
    /// Serve the reference shop (API and UI); `--tour`: an orders service behind the
    /// gateway, and a guided tour of what the gateway does.
    Demo(demo::DemoArgs),
    /// Create or update the store's and the audit trail's tables, reporting each one's
    /// schema version (gateways also do it when they start).
    Migrate(migrate::MigrateArgs),
    /// Send one request, curl-like, retrying safely: one Idempotency-Key, full jitter.
    Send(oncely_client::send::SendArgs),
    /// Inspect, list or evict keys of a running gateway (through its admin listener).
    Keys(keys::KeysArgs),
    /// Verify, list or redact the audit trail (in its database).
    Audit(audit::AuditArgs),
    /// Publish the outbox's events to NATS JetStream, RabbitMQ or a webhook, at least once,
    /// in per-aggregate order (docs/outbox.md).
    Relay(outbox::RelayArgs),
    /// The outbox's status, dead letters, and retrying one.
    Outbox(outbox::OutboxArgs),
    /// List sagas, show one with its log, cancel one, retry a stuck one (docs/sagas.md).
    Saga(saga::SagaArgs),
    /// Run a reconciliation job, and work through its findings (docs/reconciliation.md).
    Reconcile(reconcile::ReconcileArgs),
    /// Attack an HTTP API with the requests that break idempotency, and get a verdict per
    /// property (docs/check.md).
    Check(Box<check::CheckArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(&cli.log) {
        eprintln!("oncely: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("oncely: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // `send` has its own exit codes (docs/retry-client.md).
    if let Command::Send(args) = cli.command {
        return runtime.block_on(oncely_client::send::run(args));
    }
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Demo(args) => demo::run(args).await,
            Command::Migrate(args) => migrate::run(args).await,
            Command::Keys(args) => keys::run(args).await,
            Command::Audit(args) => audit::run(args).await,
            Command::Relay(args) => outbox::relay(args).await,
            Command::Outbox(args) => outbox::run(args).await,
            Command::Saga(args) => saga::run(args).await,
            Command::Reconcile(args) => reconcile::run(args).await,
            Command::Check(args) => check::run(*args).await,
            Command::Send(_) => Ok(()), // handled above
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("oncely: {e}");
            ExitCode::FAILURE
        }
    }
}
