//! Audit trail URLs (`--audit`, `audit.url`): SQLite or PostgreSQL, with the options of store
//! URLs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use oncely_audit::postgres::{PgAuditLog, PgOptions};
use oncely_audit::sqlite::SqliteAuditLog;
use oncely_audit::AuditLog;
use oncely_db::migrate::MigrationReport;

use crate::StoreUrl;

/// Where the audit trail is kept: `sqlite://PATH` or `postgres://...?schema=NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditUrl {
    /// A SQLite file.
    Sqlite {
        /// The file.
        path: PathBuf,
        /// How long a write waits for another process holding the file.
        busy_timeout: Duration,
    },
    /// A PostgreSQL schema (`schema=` picks it).
    Postgres(PgOptions),
}

impl std::fmt::Display for AuditUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuditUrl::Sqlite { path, .. } => write!(f, "sqlite://{}", path.display()),
            AuditUrl::Postgres(opts) => write!(f, "{opts}"),
        }
    }
}

impl AuditUrl {
    /// Parses the URL as a store URL would be (same options), keeping the SQL backends.
    pub fn parse(url: &str) -> Result<AuditUrl, String> {
        let sql = ["sqlite://", "postgres://", "postgresql://"];
        if !sql.iter().any(|p| url.starts_with(p)) {
            return Err(format!(
                "`{url}` is not an audit log URL: the audit trail is kept in SQLite or PostgreSQL (sqlite://PATH or postgres://HOST/DB)"
            ));
        }
        match StoreUrl::parse(url)? {
            StoreUrl::Sqlite {
                path, busy_timeout, ..
            } => Ok(AuditUrl::Sqlite {
                path,
                busy_timeout: busy_timeout.unwrap_or(Duration::from_secs(5)),
            }),
            StoreUrl::Postgres(opts) => Ok(AuditUrl::Postgres(opts)),
            other => Err(format!("`{other}` is not an audit log URL")),
        }
    }

    /// Opens the log; does not create the table.
    pub fn open(&self) -> Result<Arc<dyn AuditLog>, String> {
        let log: Arc<dyn AuditLog> = match self {
            AuditUrl::Sqlite { path, busy_timeout } => Arc::new(
                SqliteAuditLog::open(path, *busy_timeout)
                    .map_err(|e| format!("cannot open the audit log {self}: {e}"))?,
            ),
            AuditUrl::Postgres(opts) => Arc::new(
                PgAuditLog::new(opts)
                    .map_err(|e| format!("cannot open the audit log {self}: {e}"))?,
            ),
        };
        Ok(log)
    }

    /// Opens the log and brings its table up to date, reporting the trail's version.
    pub async fn migrate(&self) -> Result<MigrationReport, String> {
        self.open()?
            .migrate()
            .await
            .map_err(|e| format!("cannot migrate the audit log {self}: {e}"))
    }
}
