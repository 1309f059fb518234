//! `--store` URLs: which backend, where.

use std::path::PathBuf;
use std::sync::Arc;

use oncely_core::Clock;
use oncely_store::{IdempotencyStore, MemoryStore, StoreError};
use oncely_store_sqlite::{SqliteOptions, SqliteStore};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH` (relative) or `sqlite:///abs/PATH`; `?synchronous=full` for fsync on
    /// every commit.
    Sqlite {
        path: PathBuf,
        synchronous_full: bool,
    },
    /// `memory://`: nothing survives a restart; for trials only.
    Memory,
}

impl std::fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreUrl::Sqlite {
                path,
                synchronous_full: false,
            } => write!(f, "sqlite://{}", path.display()),
            StoreUrl::Sqlite {
                path,
                synchronous_full: true,
            } => write!(f, "sqlite://{}?synchronous=full", path.display()),
            StoreUrl::Memory => f.write_str("memory://"),
        }
    }
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        if let Some(rest) = url.strip_prefix("sqlite://") {
            let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
            if path.is_empty() {
                return Err(format!(
                    "`{url}`: the SQLite URL needs a file path, e.g. sqlite://oncely.db"
                ));
            }
            let mut synchronous_full = false;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair {
                    "synchronous=full" => synchronous_full = true,
                    "synchronous=normal" => synchronous_full = false,
                    other => {
                        return Err(format!(
                            "`{url}`: unknown option `{other}` (known: synchronous=full|normal)"
                        ))
                    }
                }
            }
            return Ok(StoreUrl::Sqlite {
                path: PathBuf::from(path),
                synchronous_full,
            });
        }
        if url == "memory://" || url == "memory" {
            return Ok(StoreUrl::Memory);
        }
        let scheme = url.split("://").next().unwrap_or(url);
        match scheme {
            "postgres" | "postgresql" | "redis" => Err(format!(
                "`{url}`: the {scheme} store is not available in this version; use sqlite://PATH"
            )),
            _ => Err(format!(
                "`{url}` is not a store URL; use sqlite://PATH or memory://"
            )),
        }
    }

    pub fn open(&self, clock: Arc<dyn Clock>) -> Result<Arc<dyn IdempotencyStore>, StoreError> {
        Ok(match self {
            StoreUrl::Sqlite {
                path,
                synchronous_full,
            } => {
                let mut opts = SqliteOptions::new(path.clone());
                opts.synchronous_full = *synchronous_full;
                Arc::new(SqliteStore::open(opts, clock)?)
            }
            StoreUrl::Memory => Arc::new(MemoryStore::new(clock)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_store_urls() {
        assert_eq!(
            StoreUrl::parse("sqlite://oncely.db").unwrap(),
            StoreUrl::Sqlite {
                path: "oncely.db".into(),
                synchronous_full: false
            }
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///var/lib/o.db?synchronous=full").unwrap(),
            StoreUrl::Sqlite {
                path: "/var/lib/o.db".into(),
                synchronous_full: true
            }
        );
        assert_eq!(StoreUrl::parse("memory://").unwrap(), StoreUrl::Memory);
        assert!(StoreUrl::parse("sqlite://").is_err());
        assert!(StoreUrl::parse("sqlite://x?y=z").is_err());
        assert!(StoreUrl::parse("postgres://h/db")
            .unwrap_err()
            .contains("not available"));
        assert!(StoreUrl::parse("/tmp/x.db").is_err());
    }
}
