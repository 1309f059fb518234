//! PostgreSQL: `postgres://` URLs (where the database is, plus oncely's own options), the
//! connection pool every concern connects with, and the bound on each operation
//! ([`bounded`]).
//!
//! The URL is a libpq-style connection URL as `tokio-postgres` understands it
//! (`postgres://user[:password]@host[:port]/database?sslmode=disable&application_name=...`);
//! oncely takes its own options out of the query before handing the rest over:
//!
//! - `schema=NAME`: the schema holding oncely's tables (default `oncely`), so one database
//!   can host several independent gateways' records, or a test's;
//! - `pool_size=N`: connections per gateway (default 16);
//! - `timeout=DURATION`: the bound on every store operation, connecting included (default
//!   `5s`); past it the store counts as unavailable and the gateway fails closed.

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::migrate::{MigrationError, MigrationReport, Migrations};

/// Connection and behaviour options of a PostgreSQL-backed concern (the idempotency store,
/// the audit log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgOptions {
    /// The connection URL without oncely's options.
    pub url: String,
    /// The schema holding the concern's tables (`schema=`).
    pub schema: String,
    /// Connections in the pool (`pool_size=`).
    pub pool_size: usize,
    /// The bound on every operation, connecting included (`timeout=`).
    pub timeout: Duration,
}

/// The schema unless `schema=` names another.
pub const DEFAULT_SCHEMA: &str = "oncely";
/// Connections per pool unless `pool_size=` says otherwise.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// The operation bound unless `timeout=` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const KNOWN: &str = "schema=NAME, pool_size=N, timeout=DURATION";

impl PgOptions {
    /// Default options for a connection URL.
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            pool_size: DEFAULT_POOL_SIZE,
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Parses a `postgres://` or `postgresql://` URL, taking oncely's options out of it.
    /// Options the driver knows (`sslmode`, `application_name`, ...) stay in the URL.
    pub fn from_url(url: &str) -> Result<PgOptions, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(format!("`{url}` is not a postgres:// URL"));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut opts = PgOptions::new(base);
        let mut passed_on = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            match name {
                "schema" => {
                    validate_schema(value).map_err(|e| format!("`{url}`: schema: {e}"))?;
                    opts.schema = value.to_owned();
                }
                "pool_size" => {
                    opts.pool_size = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=1024).contains(n))
                        .ok_or_else(|| {
                            format!("`{url}`: pool_size must be a number from 1 to 1024")
                        })?;
                }
                "timeout" => {
                    opts.timeout =
                        oncely_core::parse_duration(value)
                            .ok()
                            .filter(|d| !d.is_zero())
                            .ok_or_else(|| {
                                format!("`{url}`: timeout must be a duration longer than 0, like 500ms, 1.5s or 5s")
                            })?;
                }
                // The driver's own parameters (sslmode, application_name, connect_timeout,
                // options, ...) are checked by the driver when the store connects.
                _ => passed_on.push(pair),
            }
        }
        if !passed_on.is_empty() {
            opts.url = format!("{base}?{}", passed_on.join("&"));
        }
        // Fail here, with the URL in the message, rather than at the first request.
        opts.url
            .parse::<tokio_postgres::Config>()
            .map_err(|e| format!("`{url}`: {e} (oncely's own options: {KNOWN})"))?;
        Ok(opts)
    }
}

impl std::fmt::Display for PgOptions {
    /// The URL with oncely's options, the password hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = hide_password(&self.url);
        let sep = if shown.contains('?') { '&' } else { '?' };
        write!(
            f,
            "{shown}{sep}schema={}&pool_size={}&timeout={}ms",
            self.schema,
            self.pool_size,
            self.timeout.as_millis()
        )
    }
}

/// Replaces the password of `scheme://user:password@host` with `***` for logs.
pub fn hide_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// A schema name oncely will quote into statements: a plain lower-case identifier, so that
/// no quoting rule can be abused and the name reads the same in `psql`.
pub fn validate_schema(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if first_ok && rest_ok && name.len() <= 63 {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a plain identifier (a-z, 0-9 and _, not starting with a digit, at most 63 characters)"
        ))
    }
}

/// A connection pool for `opts`, every wait bounded by its timeout. The error is one line.
pub fn pool(opts: &PgOptions) -> Result<Pool, String> {
    let mut config: tokio_postgres::Config =
        opts.url.parse().map_err(|e| format!("postgres URL: {e}"))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(opts.timeout);
    }
    if config.get_application_name().is_none() {
        config.application_name("oncely");
    }
    // Dead peers (a database host that vanished without closing the socket) are noticed by
    // the operation timeout; keepalives make the kernel drop such sockets too.
    config.keepalives(true);
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            // A broken connection is noticed by the first query on it, which fails that one
            // operation (503 for one request); checking every checkout would cost a round trip.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(opts.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(opts.timeout))
        .create_timeout(Some(opts.timeout))
        .recycle_timeout(Some(opts.timeout))
        .build()
        .map_err(|e| format!("postgres pool: {e}"))
}

/// A database operation that ran past its bound: the server may be down, stuck or waiting on
/// a lock, and whether the operation took effect is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("postgres did not answer within {}ms", .limit.as_millis())]
pub struct NoAnswer {
    /// The bound that ran out.
    pub limit: Duration,
}

/// Runs `op` for at most `limit`, so that a server that stopped answering (a vanished host, a
/// lock that is never released) fails the caller instead of hanging it; `no_answer` makes the
/// caller's error from what ran out. The statement may still be running on the server, and on
/// the connection, when this returns: a connection whose statement was abandoned is busy until
/// the server finishes it.
pub async fn bounded<T, E>(
    limit: Duration,
    op: impl Future<Output = Result<T, E>>,
    no_answer: impl FnOnce(NoAnswer) -> E,
) -> Result<T, E> {
    match tokio::time::timeout(limit, op).await {
        Ok(done) => done,
        Err(_) => Err(no_answer(NoAnswer { limit })),
    }
}

/// Runs `sql` with `params` on a connection from `pool`, the statement prepared once per
/// connection (its statement cache), all within `limit` (see [`bounded`]); the rows it
/// returns, or what failed, described.
pub async fn query_prepared(
    pool: &Pool,
    limit: Duration,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<tokio_postgres::Row>, String> {
    let run = async {
        let client = pool.get().await.map_err(|e| crate::describe(&e))?;
        let stmt = client
            .prepare_cached(sql)
            .await
            .map_err(|e| crate::describe(&e))?;
        client
            .query(&stmt, params)
            .await
            .map_err(|e| crate::describe(&e))
    };
    bounded(limit, run, |e| e.to_string()).await
}

/// [`migrate`] on a connection from `pool`, within `limit`; what failed, described.
pub async fn migrate_pooled(
    pool: &Pool,
    schema: &str,
    migrations: &Migrations,
    limit: Duration,
) -> Result<MigrationReport, String> {
    let run = async {
        let mut client = pool.get().await.map_err(|e| crate::describe(&e))?;
        migrate(&mut client, schema, migrations)
            .await
            .map_err(|e| e.to_string())
    };
    bounded(limit, run, |e| e.to_string()).await
}

/// Brings `migrations` up to date in `schema` (created if absent) and reports what it did.
///
/// A database already current is only read: no lock, no DDL, so a role that may read
/// `{schema}.oncely_migrations` and use its own tables (and nothing more) can start. Otherwise
/// one transaction takes an advisory lock on the schema, creates the bookkeeping table if
/// needed, re-reads the version, applies the pending steps and records them: replicas
/// starting together on a new database wait for the first, then find nothing to do, and a
/// step that fails leaves nothing of the run behind.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: &str,
    migrations: &Migrations,
) -> Result<MigrationReport, MigrationError> {
    let concern = migrations.concern;
    let db = |e: tokio_postgres::Error| MigrationError::database(concern, &e);
    validate_schema(schema).map_err(|message| MigrationError::Database { concern, message })?;
    let q = format!("\"{schema}\"");
    let book = format!("{q}.oncely_migrations");
    let applied_version =
        format!("SELECT COALESCE(max(version), 0) FROM {book} WHERE concern = $1");
    let exists: bool = client
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&book])
        .await
        .and_then(|r| r.try_get(0))
        .map_err(db)?;
    if exists {
        let from = version_of(
            client.query_one(&applied_version, &[&concern]).await,
            concern,
        )?;
        if migrations.pending(from)?.is_empty() {
            return Ok(migrations.report(from, &[]));
        }
    }
    let tx = client.transaction().await.map_err(db)?;
    lock_schema(&tx, schema).await.map_err(db)?;
    tx.batch_execute(&format!(
        // Quiet the "already exists, skipping" notices every start would log.
        "SET LOCAL client_min_messages = warning;
         CREATE SCHEMA IF NOT EXISTS {q};
         CREATE TABLE IF NOT EXISTS {book} (
             concern     text        NOT NULL,
             version     integer     NOT NULL,
             description text        NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (concern, version)
         );"
    ))
    .await
    .map_err(db)?;
    let from = version_of(tx.query_one(&applied_version, &[&concern]).await, concern)?;
    let pending = migrations.pending(from)?;
    for step in pending {
        tx.batch_execute(&step.sql.replace("{schema}", &q))
            .await
            .map_err(|e| MigrationError::failed(step, concern, &e))?;
        let version = i32::try_from(step.version).unwrap_or(i32::MAX);
        tx.execute(
            &format!("INSERT INTO {book} (concern, version, description) VALUES ($1, $2, $3)"),
            &[&concern, &version, &step.description],
        )
        .await
        .map_err(db)?;
    }
    tx.commit().await.map_err(db)?;
    Ok(migrations.report(from, pending))
}

/// Takes the schema's migration lock until `tx` ends: whoever changes a schema's objects
/// (a migration, or a concern putting back a dropped trigger) holds it, so concurrent starters
/// wait for one another and then find the work done. The key is the one older builds of the
/// idempotency store took.
pub async fn lock_schema(
    tx: &tokio_postgres::Transaction<'_>,
    schema: &str,
) -> Result<(), tokio_postgres::Error> {
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('oncely migrate ' || $1::text))",
        &[&schema],
    )
    .await
    .map(|_| ())
}

fn version_of(
    row: Result<tokio_postgres::Row, tokio_postgres::Error>,
    concern: &'static str,
) -> Result<u32, MigrationError> {
    let version: i32 = row
        .and_then(|r| r.try_get(0))
        .map_err(|e| MigrationError::database(concern, &e))?;
    MigrationError::checked_version(concern, version.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takes_our_options_out_and_keeps_the_drivers() {
        let o = PgOptions::from_url(
            "postgres://u:secret@db:5433/app?schema=gw_1&sslmode=disable&pool_size=4&timeout=250ms",
        )
        .unwrap();
        assert_eq!(o.url, "postgres://u:secret@db:5433/app?sslmode=disable");
        assert_eq!(o.schema, "gw_1");
        assert_eq!(o.pool_size, 4);
        assert_eq!(o.timeout, Duration::from_millis(250));
        // The one duration grammar of every oncely setting: fractions too.
        let o = PgOptions::from_url("postgres://db/app?timeout=1.5s").unwrap();
        assert_eq!(o.timeout, Duration::from_millis(1500));
        let shown = o.to_string();
        assert!(!shown.contains("secret"), "{shown}");
        assert_eq!(
            PgOptions::from_url(&shown.replace("***", "secret")).unwrap(),
            o
        );

        let d = PgOptions::from_url("postgresql://localhost/test").unwrap();
        assert_eq!(
            (d.schema.as_str(), d.pool_size, d.timeout),
            (DEFAULT_SCHEMA, DEFAULT_POOL_SIZE, DEFAULT_TIMEOUT)
        );
    }

    #[test]
    fn refuses_bad_options_with_the_reason() {
        let err = |u: &str| PgOptions::from_url(u).unwrap_err();
        assert!(err("postgres://h/db?schema=Robert');--").contains("schema"));
        assert!(err("postgres://h/db?schema=1abc").contains("identifier"));
        assert!(err("postgres://h/db?pool_size=0").contains("pool_size"));
        assert!(err("postgres://h/db?timeout=soon").contains("timeout"));
        assert!(err("postgres://h/db?timeout=0s").contains("timeout"));
        assert!(err("postgres://h/db?frobnicate=1").contains("schema=NAME"));
        assert!(err("mysql://h/db").contains("not a postgres"));
    }

    #[tokio::test(start_paused = true)]
    async fn bounded_answers_or_says_it_did_not() {
        let limit = Duration::from_millis(100);
        let quick = bounded(limit, async { Ok::<_, String>(7) }, |e| e.to_string());
        assert_eq!(quick.await, Ok(7));
        let stuck = bounded(limit, std::future::pending::<Result<(), String>>(), |e| {
            e.to_string()
        });
        assert_eq!(
            stuck.await,
            Err("postgres did not answer within 100ms".to_owned())
        );
    }

    #[test]
    fn hides_passwords_only() {
        assert_eq!(
            hide_password("postgres://u:p@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(hide_password("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            hide_password("postgres://h/db?x=a:b@c"),
            "postgres://h/db?x=a:b@c"
        );
    }
}
