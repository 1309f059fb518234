//! The real services some tests need (PostgreSQL, Redis), and what happens when one is absent.
//!
//! On a developer's fresh machine without them, such tests print that they are skipped and
//! pass. CI sets `ONCELY_REQUIRE_SERVICES=1`, which turns every skip into a failure, so a
//! service that silently went away can never make the suite green.
//!
//! Where each service is comes from the environment, with the local defaults the development
//! machines run:
//! - `ONCELY_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/test`)
//! - `ONCELY_TEST_REDIS` (default `redis://127.0.0.1:6379/`)
//! - `ONCELY_TEST_NATS` (default `nats://127.0.0.1:4222`, with JetStream)
//! - `ONCELY_TEST_AMQP` (default `amqp://guest:guest@127.0.0.1:5672/%2f`, RabbitMQ)

use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The variable that turns a skipped service test into a failure.
pub const REQUIRE_VAR: &str = "ONCELY_REQUIRE_SERVICES";

/// A service tests can use, with its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// PostgreSQL at `ONCELY_TEST_POSTGRES`, by default
    /// `postgres://postgres@127.0.0.1:5432/test`.
    Postgres,
    /// Redis at `ONCELY_TEST_REDIS`, by default `redis://127.0.0.1:6379/`.
    Redis,
    /// NATS with JetStream at `ONCELY_TEST_NATS`, by default `nats://127.0.0.1:4222`.
    Nats,
    /// RabbitMQ at `ONCELY_TEST_AMQP`, by default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    Amqp,
}

impl Service {
    fn env_var(self) -> &'static str {
        match self {
            Service::Postgres => "ONCELY_TEST_POSTGRES",
            Service::Redis => "ONCELY_TEST_REDIS",
            Service::Nats => "ONCELY_TEST_NATS",
            Service::Amqp => "ONCELY_TEST_AMQP",
        }
    }
    fn default_url(self) -> &'static str {
        match self {
            Service::Postgres => "postgres://postgres@127.0.0.1:5432/test",
            Service::Redis => "redis://127.0.0.1:6379/",
            Service::Nats => "nats://127.0.0.1:4222",
            Service::Amqp => "amqp://guest:guest@127.0.0.1:5672/%2f",
        }
    }
    fn name(self) -> &'static str {
        match self {
            Service::Postgres => "PostgreSQL",
            Service::Redis => "Redis",
            Service::Nats => "NATS",
            Service::Amqp => "RabbitMQ",
        }
    }

    /// The configured URL, whether or not the service answers.
    pub fn url(self) -> String {
        std::env::var(self.env_var()).unwrap_or_else(|_| self.default_url().to_owned())
    }

    /// The URL if the service accepts TCP connections. Otherwise the test is skipped (`None`,
    /// with a line on stderr saying so), or, under `ONCELY_REQUIRE_SERVICES=1`, fails.
    pub fn available(self, test: &str) -> Option<String> {
        let url = self.url();
        match reachable(&url) {
            Ok(()) => Some(url),
            Err(why) => {
                let msg = format!(
                    "{test}: {} at {url} is not reachable ({why}); set {} to point at one",
                    self.name(),
                    self.env_var()
                );
                if required() {
                    panic!("{msg} ({REQUIRE_VAR}=1 turns this skip into a failure)");
                }
                // Straight to the process's stderr: the test harness captures `eprintln!` of passing
                // tests, and a skip must be seen.
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr(),
                    format!("SKIPPED {msg}\n").as_bytes(),
                );
                None
            }
        }
    }
}

/// Says that `test` is skipped because `why` (a tool or a browser missing), or, under
/// `ONCELY_REQUIRE_SERVICES=1`, fails it: the same rule as for services.
pub fn skip(test: &str, why: &str) {
    let msg = format!("{test}: {why}");
    if required() {
        panic!("{msg} ({REQUIRE_VAR}=1 turns this skip into a failure)");
    }
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED {msg}\n").as_bytes(),
    );
}

fn required() -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Host and port of a `scheme://[user[:pass]@]host[:port][/...]` URL.
fn host_port(url: &str) -> Result<(String, u16), String> {
    let (scheme, rest) = url.split_once("://").ok_or("not a URL")?;
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    let default_port = match scheme {
        "redis" | "rediss" => 6379,
        "nats" | "tls" => 4222,
        "amqp" => 5672,
        _ => 5432,
    };
    let (host, port) = match hostport.strip_prefix('[') {
        // An IPv6 literal: `[::1]` or `[::1]:6379`.
        Some(v6) => {
            let (h, rest) = v6.split_once(']').ok_or("unclosed `[` in the host")?;
            (h, rest.strip_prefix(':'))
        }
        None => match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("bad port `{p}`"))?,
        None => default_port,
    };
    Ok((host.to_owned(), port))
}

fn reachable(url: &str) -> Result<(), String> {
    let (host, port) = host_port(url)?;
    let addrs = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?;
    let mut last = "no address".to_owned();
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// A name unique to this process and call, for a schema, a key prefix or a database object
/// that one test owns (tests run in parallel against one shared server).
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{}_{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// A schema one test owns on a PostgreSQL server: a name of its own ([`unique_name`]),
/// dropped with everything in it when this is dropped.
pub struct TestSchema {
    /// The server's URL.
    pub url: String,
    /// The schema's name.
    pub name: String,
}

impl TestSchema {
    /// A fresh name starting with `prefix`, on the server at `url` (created by whoever
    /// migrates into it).
    pub fn new(url: &str, prefix: &str) -> TestSchema {
        TestSchema {
            url: url.to_owned(),
            name: unique_name(prefix),
        }
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        drop_postgres_schemas(&self.url, std::slice::from_ref(&self.name));
    }
}

/// Drops PostgreSQL schemas (and everything in them) that a test created, from any context:
/// it runs on a thread of its own, so `Drop` inside a test's runtime may call it. Failures
/// are ignored: a leftover schema in a test database is harmless, a panic in drop is not.
pub fn drop_postgres_schemas(url: &str, schemas: &[String]) {
    let url = url.to_owned();
    let sql: String = schemas
        .iter()
        .map(|s| format!("DROP SCHEMA IF EXISTS \"{s}\" CASCADE;"))
        .collect();
    let _ = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async move {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
                tokio::spawn(conn);
                let _ = client.batch_execute(&sql).await;
            }
        })
    })
    .join();
}

/// Skips the calling test unless `service` accepts connections: evaluates to its URL, or
/// returns from the test after saying it is skipped (a failure under
/// `ONCELY_REQUIRE_SERVICES=1`). The one way a test asks for a service:
///
/// ```ignore
/// let url = oncely_testkit::require_service!(Service::Postgres, "my_test");
/// ```
#[macro_export]
macro_rules! require_service {
    ($service:expr, $test:expr) => {
        match $service.available($test) {
            Some(url) => url,
            None => return,
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_from_urls() {
        let hp = |u| host_port(u).unwrap();
        assert_eq!(
            hp("postgres://postgres@127.0.0.1:5432/test"),
            ("127.0.0.1".into(), 5432)
        );
        assert_eq!(
            hp("postgres://u:p@db/x?sslmode=disable"),
            ("db".into(), 5432)
        );
        assert_eq!(hp("redis://127.0.0.1:6380/"), ("127.0.0.1".into(), 6380));
        assert_eq!(hp("redis://localhost"), ("localhost".into(), 6379));
        assert_eq!(hp("redis://[::1]:6379/0"), ("::1".into(), 6379));
        assert!(host_port("nonsense").is_err());
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("t"), unique_name("t"));
    }
}
