//! `oncely migrate`: brings the schemas of the gateway's storage concerns up to date without
//! starting a gateway, and reports each concern's version.

use clap::Args;
use oncely_open::{AuditUrl, MigrationReport, StoreUrl};

#[derive(Args)]
pub(crate) struct MigrateArgs {
    /// The idempotency store: postgres://USER@HOST:PORT/DB[?schema=NAME], sqlite://PATH, or
    /// redis://HOST:PORT (only checked: Redis needs no schema). Gateways also migrate when
    /// they start; this command lets a deploy do it first.
    #[arg(long, value_name = "URL", env = "ONCELY_STORE")]
    store: Option<String>,
    /// The audit trail: postgres://... or sqlite://PATH.
    #[arg(long, value_name = "URL", env = "ONCELY_AUDIT_URL")]
    audit: Option<String>,
}

pub(crate) async fn run(args: MigrateArgs) -> Result<(), String> {
    if args.store.is_none() && args.audit.is_none() {
        return Err("nothing to migrate: pass --store URL, --audit URL, or both".into());
    }
    if let Some(store) = &args.store {
        let url = StoreUrl::parse(store).map_err(|e| format!("--store: {e}"))?;
        let reports = url.migrate().await.map_err(|e| format!("{url}: {e}"))?;
        if reports.is_empty() {
            println!("{url}: reachable; Redis needs no schema");
        }
        print(&url.to_string(), &reports);
    }
    if let Some(audit) = &args.audit {
        let url = AuditUrl::parse(audit).map_err(|e| format!("--audit: {e}"))?;
        let report = url.migrate().await?;
        print(&url.to_string(), std::slice::from_ref(&report));
    }
    Ok(())
}

fn print(url: &str, reports: &[MigrationReport]) {
    for report in reports {
        for step in &report.applied {
            println!("{url}: {}: applied migration {step}", report.concern);
        }
        println!("{url}: {report}");
    }
}
