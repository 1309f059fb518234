//! Store URLs (`--store`, `server.store`): which backend of the idempotency records, where.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use oncely_core::Clock;
use oncely_db::migrate::MigrationReport;
use oncely_store::{MemoryStore, StoreAdmin, StoreError, TimeSource};
use oncely_store_postgres::{PgOptions, PgStore};
use oncely_store_redis::{RedisOptions, RedisStore};
use oncely_store_sqlite::{SqliteOptions, SqliteStore};

#[derive(Debug, Clone, PartialEq, Eq)]
/// Where the idempotency records live, as a store URL names it.
pub enum StoreUrl {
    /// `sqlite://PATH` (relative) or `sqlite:///abs/PATH`; options `synchronous=full` (fsync on
    /// every commit) and `busy_timeout=DURATION` (how long a write waits for another process
    /// holding the file's write lock before the store counts as unavailable; default 5s).
    Sqlite {
        /// The file.
        path: PathBuf,
        /// `synchronous=full`: an fsync at every commit.
        synchronous_full: bool,
        /// `busy_timeout=`, if given.
        busy_timeout: Option<Duration>,
    },
    /// `postgres://user@host:port/db?schema=oncely&pool_size=16&timeout=5s`: many gateways on
    /// one database; leases and TTLs on the database's clock.
    Postgres(PgOptions),
    /// `redis://host:port/db?prefix=oncely&timeout=5s`: many gateways on one Redis (or Redis
    /// Cluster); leases and TTLs on the server's clock. Durable only as Redis is configured.
    Redis(RedisOptions),
    /// `memory://`: nothing survives a restart; for trials only.
    Memory,
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite {
                path,
                synchronous_full,
                busy_timeout,
            } => {
                write!(f, "sqlite://{}", path.display())?;
                let mut options = Vec::new();
                if *synchronous_full {
                    options.push("synchronous=full".to_owned());
                }
                if let Some(t) = busy_timeout {
                    options.push(format!("busy_timeout={}ms", t.as_millis()));
                }
                if !options.is_empty() {
                    write!(f, "?{}", options.join("&"))?;
                }
                Ok(())
            }
            StoreUrl::Postgres(opts) => write!(f, "{opts}"),
            StoreUrl::Redis(opts) => write!(f, "{opts}"),
            StoreUrl::Memory => f.write_str("memory://"),
        }
    }
}

impl StoreUrl {
    /// A SQLite file with the default options.
    pub fn sqlite(path: impl Into<PathBuf>) -> StoreUrl {
        StoreUrl::Sqlite {
            path: path.into(),
            synchronous_full: false,
            busy_timeout: None,
        }
    }

    /// Reads a store URL; the error is one line naming the URL and what is wrong with it.
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        if let Some(rest) = url.strip_prefix("sqlite://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(format!(
                    "`{url}`: the SQLite URL needs a file path, e.g. sqlite://oncely.db"
                ));
            }
            let mut synchronous_full = false;
            let mut busy_timeout = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("synchronous", "full")) => synchronous_full = true,
                    Some(("synchronous", "normal")) => synchronous_full = false,
                    Some(("busy_timeout", v)) => {
                        busy_timeout = Some(
                            oncely_core::parse_duration(v)
                                .map_err(|e| format!("`{url}`: busy_timeout: {e}"))?,
                        )
                    }
                    _ => {
                        return Err(format!(
                            "`{url}`: unknown option `{pair}` (known: synchronous=full|normal, busy_timeout=DURATION)"
                        ))
                    }
                }
            }
            return Ok(StoreUrl::Sqlite {
                path: PathBuf::from(path),
                synchronous_full,
                busy_timeout,
            });
        }
        if url == "memory://" || url == "memory" {
            return Ok(StoreUrl::Memory);
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return PgOptions::from_url(url).map(StoreUrl::Postgres);
        }
        if url.starts_with("redis://") || url.starts_with("rediss://") {
            return RedisOptions::from_url(url).map(StoreUrl::Redis);
        }
        Err(format!(
            "`{url}` is not a store URL; use sqlite://PATH, postgres://HOST/DB, redis://HOST or memory://"
        ))
    }

    /// Whether several gateways may share this store (it decides time itself).
    pub fn is_shared(&self) -> bool {
        matches!(self, StoreUrl::Postgres(_) | StoreUrl::Redis(_))
    }

    /// Opens the store; a shared store also applies its migrations. `clock` is the gateway's
    /// clock, used by the stores that live on this host (SQLite, memory); shared stores run on
    /// their server's clock so that replicas agree.
    pub async fn open(&self, clock: Arc<dyn Clock>) -> Result<Arc<dyn StoreAdmin>, StoreError> {
        Ok(match self {
            StoreUrl::Sqlite {
                path,
                synchronous_full,
                busy_timeout,
            } => Arc::new(SqliteStore::open(
                sqlite_options(path, *synchronous_full, *busy_timeout),
                clock,
            )?),
            StoreUrl::Postgres(opts) => {
                Arc::new(PgStore::connect(opts.clone(), TimeSource::Server).await?)
            }
            StoreUrl::Redis(opts) => {
                Arc::new(RedisStore::connect(opts.clone(), TimeSource::Server).await?)
            }
            StoreUrl::Memory => Arc::new(MemoryStore::new(clock)),
        })
    }
}

impl StoreUrl {
    /// Brings the store's schema up to date without opening a store, and reports each
    /// concern's version. Redis needs no schema: it is only reached, and nothing is reported.
    pub async fn migrate(&self) -> Result<Vec<MigrationReport>, StoreError> {
        Ok(match self {
            StoreUrl::Sqlite {
                path,
                synchronous_full,
                busy_timeout,
            } => vec![oncely_store_sqlite::migrate(&sqlite_options(
                path,
                *synchronous_full,
                *busy_timeout,
            ))?],
            StoreUrl::Postgres(opts) => vec![oncely_store_postgres::migrate(opts).await?],
            StoreUrl::Redis(opts) => {
                RedisStore::connect(opts.clone(), TimeSource::Server).await?;
                Vec::new()
            }
            StoreUrl::Memory => {
                return Err(StoreError::Unavailable(
                    "memory:// keeps nothing, so there is nothing to migrate".into(),
                ))
            }
        })
    }
}

/// A SQLite store's options as its URL gives them (the defaults where it says nothing).
fn sqlite_options(
    path: &Path,
    synchronous_full: bool,
    busy_timeout: Option<Duration>,
) -> SqliteOptions {
    let mut opts = SqliteOptions::new(path);
    opts.synchronous_full = synchronous_full;
    if let Some(t) = busy_timeout {
        opts.busy_timeout = t;
    }
    opts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        assert_eq!(
            StoreUrl::parse("sqlite://oncely.db").unwrap(),
            StoreUrl::sqlite("oncely.db")
        );
        let full =
            StoreUrl::parse("sqlite:///var/lib/o.db?synchronous=full&busy_timeout=250ms").unwrap();
        assert_eq!(
            full,
            StoreUrl::Sqlite {
                path: "/var/lib/o.db".into(),
                synchronous_full: true,
                busy_timeout: Some(Duration::from_millis(250)),
            }
        );
        assert_eq!(
            StoreUrl::parse(&full.to_string()).unwrap(),
            full,
            "Display round-trips"
        );
        assert!(StoreUrl::parse("sqlite://x?busy_timeout=soon")
            .unwrap_err()
            .contains("busy_timeout"));
        assert_eq!(StoreUrl::parse("memory://").unwrap(), StoreUrl::Memory);
        assert!(StoreUrl::parse("sqlite://").is_err());
        assert!(StoreUrl::parse("sqlite://x?y=z").is_err());
        let pg = StoreUrl::parse("postgres://gw:pw@db:5433/app?schema=edge&timeout=2s").unwrap();
        match &pg {
            StoreUrl::Postgres(o) => {
                assert_eq!(
                    (o.schema.as_str(), o.timeout),
                    ("edge", Duration::from_secs(2))
                )
            }
            other => panic!("expected postgres, got {other:?}"),
        }
        assert!(
            !pg.to_string().contains("pw"),
            "the password is never shown"
        );
        assert!(pg.is_shared());
        assert!(StoreUrl::parse("postgres://h/db?schema=Bad-Name").is_err());
        let redis = StoreUrl::parse("redis://:pw@cache:6380/1?prefix=edge&timeout=1s").unwrap();
        match &redis {
            StoreUrl::Redis(o) => assert_eq!(
                (o.prefix.as_str(), o.timeout),
                ("edge", Duration::from_secs(1))
            ),
            other => panic!("expected redis, got {other:?}"),
        }
        assert!(!redis.to_string().contains("pw"), "{redis}");
        assert!(redis.is_shared());
        assert!(StoreUrl::parse("redis://h/?frob=1")
            .unwrap_err()
            .contains("unknown option"));
        assert!(StoreUrl::parse("/tmp/x.db").is_err());
    }
}
