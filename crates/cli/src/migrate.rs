//! `oncely migrate`: brings a store's schema up to date without starting a gateway.

use std::sync::Arc;

use clap::Args;
use oncely_core::SystemClock;
use oncely_open::StoreUrl;

#[derive(Args)]
pub(crate) struct MigrateArgs {
    /// The store to migrate: postgres://USER@HOST:PORT/DB[?schema=NAME] or sqlite://PATH.
    /// Gateways also migrate when they start; this command lets a deploy do it first.
    #[arg(long, value_name = "URL", env = "ONCELY_STORE")]
    store: String,
}

pub(crate) async fn run(args: MigrateArgs) -> Result<(), String> {
    let url = StoreUrl::parse(&args.store).map_err(|e| format!("--store: {e}"))?;
    match &url {
        StoreUrl::Postgres(opts) => {
            let report = oncely_store_postgres::migrate(opts)
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            if report.applied.is_empty() {
                println!(
                    "{url}: schema {} is up to date (version {})",
                    opts.schema, report.to
                );
            } else {
                for m in &report.applied {
                    println!("applied migration {m}");
                }
                println!(
                    "{url}: schema {} migrated from version {} to {}",
                    opts.schema, report.from, report.to
                );
            }
        }
        StoreUrl::Sqlite { .. } => {
            // Opening a SQLite store applies its migrations (and refuses a newer file).
            url.open(Arc::new(SystemClock))
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            println!("{url}: schema is up to date");
        }
        StoreUrl::Redis(_) => {
            // Nothing to create: each record is one hash, written by the scripts.
            url.open(Arc::new(SystemClock))
                .await
                .map_err(|e| format!("{url}: {e}"))?;
            println!("{url}: reachable; Redis needs no schema");
        }
        StoreUrl::Memory => {
            return Err("memory:// keeps nothing, so there is nothing to migrate".into())
        }
    }
    Ok(())
}
