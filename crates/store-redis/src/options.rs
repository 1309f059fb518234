//! `redis://` URLs: the server, plus oncely's own options.
//!
//! `redis://[user:password@]host[:port][/db]?prefix=NAME&timeout=DURATION`: `prefix` names the
//! key space of oncely's records (default `oncely`, letters, digits, `_`, `-` and `.`), so one
//! Redis can serve several gateways' records or a test's; `timeout` bounds every command,
//! connecting included (default `5s`).

use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
/// A `redis://` URL with oncely's options taken out.
pub struct RedisOptions {
    /// The connection URL without oncely's options.
    pub url: String,
    /// The key space of this store's records (`prefix=`).
    pub prefix: String,
    /// The bound on every command, connecting included (`timeout=`).
    pub timeout: Duration,
}

/// The key space of oncely's records unless `prefix=` says otherwise.
pub const DEFAULT_PREFIX: &str = "oncely";
/// The bound on every command unless `timeout=` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

impl RedisOptions {
    /// Default options for a connection URL.
    pub fn new(url: impl Into<String>) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Parses a `redis://` URL, taking oncely's options out of its query.
    pub fn from_url(url: &str) -> Result<RedisOptions, String> {
        if !url.starts_with("redis://") {
            return Err(format!(
                "`{url}` is not a redis:// URL (TLS, rediss://, is not supported in this version)"
            ));
        }
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut opts = RedisOptions::new(base);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            match pair.split_once('=') {
                Some(("prefix", v)) => {
                    validate_prefix(v).map_err(|e| format!("`{url}`: prefix: {e}"))?;
                    opts.prefix = v.to_owned();
                }
                Some(("timeout", v)) => {
                    opts.timeout = oncely_core::parse_duration(v).ok().filter(|d| !d.is_zero()).ok_or_else(|| {
                        format!("`{url}`: timeout must be a duration longer than 0, like 500ms, 1.5s or 5s")
                    })?;
                }
                _ => {
                    return Err(format!(
                        "`{url}`: unknown option `{pair}` (known: prefix=NAME, timeout=DURATION)"
                    ))
                }
            }
        }
        redis::Client::open(opts.url.as_str()).map_err(|e| format!("`{url}`: {e}"))?;
        Ok(opts)
    }
}

impl std::fmt::Display for RedisOptions {
    /// The URL with oncely's options, the password hidden.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = match self.url.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((userinfo, host)) if userinfo.contains(':') => {
                    let user = userinfo.split(':').next().unwrap_or("");
                    format!("{scheme}://{user}:***@{host}")
                }
                _ => self.url.clone(),
            },
            None => self.url.clone(),
        };
        write!(
            f,
            "{shown}?prefix={}&timeout={}ms",
            self.prefix,
            self.timeout.as_millis()
        )
    }
}

fn validate_prefix(p: &str) -> Result<(), String> {
    let ok = !p.is_empty()
        && p.len() <= 64
        && p.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{p}` must be 1-64 letters, digits, `_`, `-` or `.`"
        ))
    }
}

/// `250ms`, `5s`, `2m`.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_options_and_hides_passwords() {
        let o = RedisOptions::from_url("redis://u:secret@cache:6380/2?prefix=gw-1&timeout=250ms")
            .unwrap();
        assert_eq!(o.url, "redis://u:secret@cache:6380/2");
        assert_eq!(
            (o.prefix.as_str(), o.timeout),
            ("gw-1", Duration::from_millis(250))
        );
        let o = RedisOptions::from_url("redis://cache/?timeout=1.5s").unwrap();
        assert_eq!(o.timeout, Duration::from_millis(1500));
        let shown = o.to_string();
        assert!(!shown.contains("secret"), "{shown}");
        let d = RedisOptions::from_url("redis://127.0.0.1:6379/").unwrap();
        assert_eq!(
            (d.prefix.as_str(), d.timeout),
            (DEFAULT_PREFIX, DEFAULT_TIMEOUT)
        );
    }

    #[test]
    fn refuses_bad_options_with_the_reason() {
        let err = |u: &str| RedisOptions::from_url(u).unwrap_err();
        assert!(err("redis://h/?prefix=a:b").contains("prefix"));
        assert!(err("redis://h/?prefix=").contains("prefix"));
        assert!(err("redis://h/?timeout=later").contains("timeout"));
        assert!(err("redis://h/?db=3").contains("unknown option"));
        assert!(err("rediss://h/").contains("TLS"));
    }
}
