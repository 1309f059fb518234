//! `oncely.toml`: the gateway's settings and its routes. See docs/configuration.md.
//!
//! Parsing is strict (unknown fields are errors, so a typo never silently disables
//! protection) and every error names the field and the file.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use oncely_core::StatusPolicy;
use oncely_http::{
    InFlightMode, KeyRequirement, PathPattern, Route, RoutePolicy, Routes, StoreFailureMode,
    TenantSource, UnknownOutcomePolicy,
};
use serde::Deserialize;

use crate::audit::{AuditConfig, AuditUrl, RedactionKey};
use oncely_open::StoreUrl;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The shortest lease accepted: renewals run every third of it (at least every 10 ms).
pub const MIN_LEASE: Duration = Duration::from_millis(50);

/// Everything the gateway needs to run, after defaults and command-line overrides.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// Required before the gateway starts; from the file or the command line.
    pub upstream: Option<http::Uri>,
    pub store: StoreUrl,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub shutdown_grace: Duration,
    pub purge_interval: Duration,
    pub purge_batch: usize,
    /// Bytes of completed responses kept in memory to replay retries without the store.
    pub replay_cache: usize,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a request body may send nothing before the request is cut off with 408.
    pub body_idle_timeout: Duration,
    /// How long a keyed request's whole body may take to arrive.
    pub body_timeout: Duration,
    /// Client connections served at once; beyond it, new connections wait in the kernel's
    /// accept queue until one closes. `None`: [`Config::connection_limit`] picks one.
    pub max_connections: Option<usize>,
    pub routes: Routes,
    /// The admin listener (`/metrics`, ...); `None`: none. `oncely serve` enables it on
    /// [`DEFAULT_ADMIN_LISTEN`] unless told otherwise.
    pub admin: Option<AdminConfig>,
    /// The audit trail (one event per keyed answer); `None`: none.
    pub audit: Option<crate::audit::AuditConfig>,
}

/// Where the admin listener binds, and the bearer token it requires (if any).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<String>,
    /// The address is the default, not one asked for: if it is taken (another gateway on
    /// this host), the gateway warns and runs without an admin listener instead of exiting.
    pub is_default: bool,
}

impl AdminConfig {
    /// The admin listener on [`DEFAULT_ADMIN_LISTEN`], without a token.
    pub fn default_listener() -> AdminConfig {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_ADMIN_PORT)),
            token: None,
            is_default: true,
        }
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token never reaches a log line.
        f.debug_struct("AdminConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("is_default", &self.is_default)
            .finish()
    }
}

/// The admin listener's address when none is configured. Outside 9100-9999 (Prometheus'
/// exporters) and off 9091 (its Pushgateway).
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:7979";
const DEFAULT_ADMIN_PORT: u16 = 7979;

/// Parses an admin address: `HOST:PORT`, or `off` for no admin listener.
pub fn parse_admin_listen(s: &str) -> Result<Option<SocketAddr>, String> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse()
        .map(Some)
        .map_err(|_| format!("`{s}` is not an address like {DEFAULT_ADMIN_LISTEN} (or `off`)"))
}

/// Client connections served at once unless configured, where the open-files limit allows.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The most `max_connections` may be set to.
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
/// Descriptors kept back from client connections: the listeners, the stores' pools, logs.
const RESERVED_FILES: usize = 64;

/// Descriptors `n` client connections may need: one each, one upstream connection each, and
/// the reserve.
fn files_for(n: usize) -> u64 {
    n.saturating_mul(2).saturating_add(RESERVED_FILES) as u64
}

impl Config {
    /// The connections served at once: as configured, or else [`DEFAULT_MAX_CONNECTIONS`]
    /// lowered to what the open-files limit (`ulimit -n`) can hold, so that the limit is met
    /// here, with waiting connections, rather than by failing accepts.
    pub fn connection_limit(&self) -> usize {
        self.max_connections.unwrap_or_else(|| {
            let fits = crate::server::open_files_limit().map_or(DEFAULT_MAX_CONNECTIONS, |limit| {
                (limit as usize).saturating_sub(RESERVED_FILES) / 2
            });
            DEFAULT_MAX_CONNECTIONS.min(fits).max(1)
        })
    }

    /// The defaults without a config file: POST and PATCH are keyed when a key is sent.
    pub fn new(listen: SocketAddr, upstream: Option<http::Uri>, store: StoreUrl) -> Self {
        Config {
            listen,
            upstream,
            store,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            purge_interval: Duration::from_secs(60),
            purge_batch: 1000,
            replay_cache: oncely_http::DEFAULT_REPLAY_CACHE_BYTES,
            header_timeout: Duration::from_secs(30),
            body_idle_timeout: Duration::from_secs(60),
            body_timeout: oncely_http::DEFAULT_BODY_TIMEOUT,
            max_connections: None,
            routes: Routes::keyed_post_and_patch(RoutePolicy::default()),
            admin: None,
            audit: None,
        }
    }

    /// Reads a config file. Server settings missing from the file keep the values already
    /// in `self`.
    pub fn load_file(self, path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        self.apply_toml(&text)
            .map_err(|message| ConfigError::Parse {
                path: path.display().to_string(),
                message,
            })
    }

    /// Applies the text of a config file.
    pub fn apply_toml(mut self, text: &str) -> Result<Config, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(s) = file.server {
            if let Some(v) = s.listen {
                self.listen = v.parse().map_err(|_| {
                    format!("server.listen: `{v}` is not an address like 127.0.0.1:8080")
                })?;
            }
            if let Some(v) = s.upstream {
                self.upstream =
                    Some(parse_upstream(&v).map_err(|e| format!("server.upstream: {e}"))?);
            }
            if let Some(v) = s.store {
                self.store = StoreUrl::parse(&v).map_err(|e| format!("server.store: {e}"))?;
            }
            for (name, value, setting) in [
                (
                    "connect_timeout",
                    s.connect_timeout,
                    &mut self.connect_timeout,
                ),
                (
                    "response_timeout",
                    s.response_timeout,
                    &mut self.response_timeout,
                ),
                ("shutdown_grace", s.shutdown_grace, &mut self.shutdown_grace),
                ("purge_interval", s.purge_interval, &mut self.purge_interval),
                ("header_timeout", s.header_timeout, &mut self.header_timeout),
                (
                    "body_idle_timeout",
                    s.body_idle_timeout,
                    &mut self.body_idle_timeout,
                ),
                ("body_timeout", s.body_timeout, &mut self.body_timeout),
            ] {
                if let Some(v) = value {
                    *setting = parse_duration(&v).map_err(|e| format!("server.{name}: {e}"))?;
                }
            }
            if let Some(v) = s.purge_batch {
                self.purge_batch = v.max(1);
            }
            if let Some(v) = s.replay_cache {
                self.replay_cache =
                    parse_size(&v).map_err(|e| format!("server.replay_cache: {e}"))?;
            }
            if let Some(v) = s.max_connections {
                self.max_connections = Some(v);
            }
        }
        if let Some(a) = file.admin {
            let before = self.admin.take();
            let token = a.token.or(before.as_ref().and_then(|b| b.token.clone()));
            self.admin = match a.listen {
                Some(v) => parse_admin_listen(&v)
                    .map_err(|e| format!("admin.listen: {e}"))?
                    .map(|listen| AdminConfig {
                        listen,
                        token,
                        is_default: false,
                    }),
                None => Some(AdminConfig {
                    token,
                    ..before.unwrap_or_else(AdminConfig::default_listener)
                }),
            };
        }
        if let Some(a) = file.audit {
            self.audit = Some(a.apply(self.audit.take())?);
        }
        if file.defaults.as_ref().is_some_and(|d| d.path.is_some()) {
            return Err("defaults.path: `path` belongs in a [[routes]] entry".into());
        }
        let defaults = match &file.defaults {
            Some(d) => d
                .apply(RoutePolicy::default())
                .map_err(|e| format!("defaults.{e}"))?,
            None => RoutePolicy::default(),
        };
        let fallback_methods = match file.defaults.as_ref().and_then(|d| d.methods.clone()) {
            Some(ms) => parse_methods(&ms).map_err(|e| format!("defaults.methods: {e}"))?,
            None => vec![Method::POST, Method::PATCH],
        };
        let mut routes = Vec::new();
        for (i, r) in file.routes.unwrap_or_default().into_iter().enumerate() {
            let at = |e: String| format!("routes[{i}].{e}");
            let Some(path) = &r.path else {
                return Err(at(
                    "path: every route needs a path, e.g. path = \"/orders\"".into(),
                ));
            };
            let path = PathPattern::parse(path).map_err(|e| at(format!("path: {e}")))?;
            let methods = parse_methods(r.methods.as_deref().unwrap_or(&[]))
                .map_err(|e| at(format!("methods: {e}")))?;
            let policy = r.apply(defaults.clone()).map_err(at)?;
            routes.push(Route {
                methods,
                path,
                policy: Arc::new(policy),
            });
        }
        self.routes = Routes {
            routes,
            fallback: Some(Arc::new(defaults)),
            fallback_methods,
        };
        Ok(self)
    }

    /// Checks settings that only make sense together; returns warnings worth logging.
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        if let Some(a) = &self.admin {
            match &a.token {
                Some(t) if t.len() < 16 || t.chars().any(|c| c.is_whitespace()) => {
                    return Err(ConfigError::Invalid(
                        "admin.token: use at least 16 characters and no whitespace \
                         (e.g. `openssl rand -hex 24`)"
                            .into(),
                    ));
                }
                None if !a.listen.ip().is_loopback() => {
                    return Err(ConfigError::Invalid(format!(
                        "admin.listen: {} is reachable from other hosts, so the admin listener \
                         needs a token (admin.token, --admin-token or ONCELY_ADMIN_TOKEN)",
                        a.listen
                    )));
                }
                _ => {}
            }
        }
        if let Some(n) = self.max_connections {
            if !(1..=MAX_CONNECTIONS_LIMIT).contains(&n) {
                return Err(ConfigError::Invalid(format!(
                    "server.max_connections: {n} is not between 1 and {MAX_CONNECTIONS_LIMIT}"
                )));
            }
        }
        for (name, d) in [
            ("server.header_timeout", self.header_timeout),
            ("server.body_idle_timeout", self.body_idle_timeout),
            ("server.body_timeout", self.body_timeout),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Invalid(format!(
                    "{name}: must be longer than 0 (it cuts off clients that stall)"
                )));
            }
        }
        if let (Some(n), Some(limit)) = (self.max_connections, crate::server::open_files_limit()) {
            if limit < files_for(n) {
                warnings.push(format!(
                    "server.max_connections is {n} but this process may open only {limit} files \
                     (ulimit -n); raise the limit or lower max_connections, or accepting will \
                     fail before the limit is reached"
                ));
            }
        }
        if self.response_timeout <= self.connect_timeout {
            return Err(ConfigError::Invalid(format!(
                "server.response_timeout ({:?}) must be longer than server.connect_timeout ({:?}): \
                 otherwise a slow connect looks like an unknown outcome and holds the key",
                self.response_timeout, self.connect_timeout
            )));
        }
        let policies = self
            .routes
            .routes
            .iter()
            .map(|r| (r.path.as_str().to_owned(), r.policy.clone()))
            .chain(
                self.routes
                    .fallback
                    .iter()
                    .map(|p| ("defaults".to_owned(), p.clone())),
            );
        for (name, p) in policies {
            if p.lease < MIN_LEASE {
                return Err(ConfigError::Invalid(format!(
                    "{name}: lease ({:?}) is shorter than {MIN_LEASE:?}, too short to be renewed in time",
                    p.lease
                )));
            }
            if p.ttl < p.lease {
                return Err(ConfigError::Invalid(format!(
                    "{name}: ttl ({:?}) is shorter than the lease ({:?}); a record would vanish while held",
                    p.ttl, p.lease
                )));
            }
            if !p.renew_lease && p.lease < self.response_timeout {
                warnings.push(format!(
                    "{name}: the lease ({:?}) is shorter than the response timeout ({:?}) and is not renewed: \
                     a slow upstream call can be taken over and run twice",
                    p.lease, self.response_timeout
                ));
            }
        }
        Ok(warnings)
    }
}

/// The one duration and size grammar (`oncely_core::units`), re-exported for the CLI.
pub use oncely_core::units::{parse_duration, parse_size};

/// An upstream URL: `http://host:port` with an optional path prefix.
pub fn parse_upstream(s: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(format!("`{s}`: https upstreams are not supported yet; use http (for example on a private network or a sidecar)")),
        _ => return Err(format!("`{s}` must start with http://")),
    }
    if uri.authority().is_none() {
        return Err(format!("`{s}` has no host"));
    }
    if uri.query().is_some() {
        return Err(format!("`{s}`: an upstream URL cannot carry a query"));
    }
    Ok(uri)
}

fn parse_methods(ms: &[String]) -> Result<Vec<Method>, String> {
    ms.iter()
        .map(|m| {
            let up = m.trim().to_ascii_uppercase();
            Method::from_bytes(up.as_bytes()).map_err(|_| format!("`{m}` is not an HTTP method"))
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<ServerSection>,
    admin: Option<AdminSection>,
    audit: Option<AuditSection>,
    defaults: Option<PolicySection>,
    routes: Option<Vec<PolicySection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    listen: Option<String>,
    upstream: Option<String>,
    store: Option<String>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    shutdown_grace: Option<String>,
    purge_interval: Option<String>,
    purge_batch: Option<usize>,
    replay_cache: Option<String>,
    header_timeout: Option<String>,
    body_idle_timeout: Option<String>,
    body_timeout: Option<String>,
    max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    listen: Option<String>,
    token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditSection {
    url: Option<String>,
    chain: Option<String>,
    key_file: Option<String>,
    queue: Option<usize>,
}

impl AuditSection {
    /// The `[audit]` section over what is already configured.
    fn apply(self, before: Option<AuditConfig>) -> Result<AuditConfig, String> {
        let url = match (self.url, &before) {
            (Some(u), _) => AuditUrl::parse(&u).map_err(|e| format!("audit.url: {e}"))?,
            (None, Some(b)) => b.url.clone(),
            (None, None) => return Err(
                "audit.url: the [audit] section needs a url (sqlite://PATH or postgres://HOST/DB)"
                    .into(),
            ),
        };
        let chain = match self.chain {
            Some(c) => {
                oncely_audit::validate_chain(&c).map_err(|e| format!("audit.chain: {e}"))?;
                c
            }
            None => before
                .as_ref()
                .map_or_else(crate::audit::default_chain, |b| b.chain.clone()),
        };
        let key = match self.key_file {
            Some(f) => {
                Some(read_key_file(Path::new(&f)).map_err(|e| format!("audit.key_file: {e}"))?)
            }
            None => before.as_ref().and_then(|b| b.key.clone()),
        };
        Ok(AuditConfig {
            url,
            chain,
            key,
            queue: self
                .queue
                .or(before.map(|b| b.queue))
                .unwrap_or(oncely_audit::writer::DEFAULT_QUEUE)
                .max(1),
        })
    }
}

/// The redaction key kept in `path`.
pub fn read_key_file(path: &Path) -> Result<RedactionKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    RedactionKey::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `[defaults]` and each `[[routes]]` entry: the same policy fields, plus the route's path.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    /// Routes only: the path pattern.
    path: Option<String>,
    key: Option<String>,
    ttl: Option<String>,
    lease: Option<String>,
    renew_lease: Option<bool>,
    tenant: Option<String>,
    in_flight: Option<String>,
    max_wait: Option<String>,
    retry_after: Option<String>,
    mismatch_status: Option<u16>,
    stored_statuses: Option<Vec<String>>,
    max_body: Option<String>,
    max_response: Option<String>,
    unknown_outcome: Option<String>,
    store_unavailable: Option<String>,
    /// In a route: the methods it matches (all if absent). In `[defaults]`: the methods keyed
    /// when no route matches.
    methods: Option<Vec<String>>,
}

impl PolicySection {
    fn apply(&self, mut p: RoutePolicy) -> Result<RoutePolicy, String> {
        if let Some(v) = &self.key {
            p.key = match v.as_str() {
                "required" => KeyRequirement::Required,
                "optional" => KeyRequirement::Optional,
                "ignored" | "off" => KeyRequirement::Ignored,
                _ => {
                    return Err(format!(
                        "key: `{v}` is not one of required, optional, ignored"
                    ))
                }
            };
        }
        if let Some(v) = &self.ttl {
            p.ttl = parse_duration(v).map_err(|e| format!("ttl: {e}"))?;
        }
        if let Some(v) = &self.lease {
            p.lease = parse_duration(v).map_err(|e| format!("lease: {e}"))?;
        }
        if let Some(v) = self.renew_lease {
            p.renew_lease = v;
        }
        if let Some(v) = &self.tenant {
            p.tenant = match v.as_str() {
                "authorization" => TenantSource::Authorization,
                "anonymous" | "none" => TenantSource::Anonymous,
                other => match other.strip_prefix("header:") {
                    Some(h) => TenantSource::Header(
                        HeaderName::from_bytes(h.trim().as_bytes())
                            .map_err(|_| format!("tenant: `{h}` is not a header name"))?,
                    ),
                    None => {
                        return Err(format!(
                            "tenant: `{v}` is not one of authorization, anonymous, header:NAME"
                        ))
                    }
                },
            };
        }
        let max_wait = match &self.max_wait {
            Some(v) => Some(parse_duration(v).map_err(|e| format!("max_wait: {e}"))?),
            None => None,
        };
        match (self.in_flight.as_deref(), max_wait) {
            (Some("reject"), _) => p.in_flight = InFlightMode::Reject,
            (Some("wait"), w) => {
                p.in_flight = InFlightMode::Wait {
                    max_wait: w.unwrap_or(Duration::from_secs(10)),
                }
            }
            (Some(other), _) => {
                return Err(format!("in_flight: `{other}` is not one of reject, wait"))
            }
            (None, Some(w)) => match p.in_flight {
                InFlightMode::Wait { .. } => p.in_flight = InFlightMode::Wait { max_wait: w },
                InFlightMode::Reject => {
                    return Err(
                        "max_wait: only meaningful with in_flight = \"wait\"; set that too".into(),
                    )
                }
            },
            (None, None) => {}
        }
        if let Some(v) = &self.retry_after {
            p.retry_after = parse_duration(v).map_err(|e| format!("retry_after: {e}"))?;
        }
        if let Some(v) = self.mismatch_status {
            if v != 409 && v != 422 {
                return Err(format!("mismatch_status: {v} is not 422 or 409"));
            }
            p.mismatch_status =
                StatusCode::from_u16(v).map_err(|e| format!("mismatch_status: {e}"))?;
        }
        if let Some(v) = &self.stored_statuses {
            p.stored_statuses =
                StatusPolicy::parse(v).map_err(|e| format!("stored_statuses: {e}"))?;
        }
        if let Some(v) = &self.max_body {
            p.max_body = parse_size(v).map_err(|e| format!("max_body: {e}"))?;
        }
        if let Some(v) = &self.max_response {
            p.max_response = parse_size(v).map_err(|e| format!("max_response: {e}"))?;
        }
        if let Some(v) = &self.unknown_outcome {
            p.unknown_outcome = match v.as_str() {
                "hold" => UnknownOutcomePolicy::Hold,
                "release" => UnknownOutcomePolicy::Release,
                _ => {
                    return Err(format!(
                        "unknown_outcome: `{v}` is not one of hold, release"
                    ))
                }
            };
        }
        if let Some(v) = &self.store_unavailable {
            p.store_failure = match v.as_str() {
                "fail-closed" => StoreFailureMode::FailClosed,
                "fail-open" => StoreFailureMode::FailOpen,
                _ => {
                    return Err(format!(
                        "store_unavailable: `{v}` is not one of fail-closed, fail-open"
                    ))
                }
            };
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Config {
        Config::new(
            "127.0.0.1:0".parse().unwrap(),
            Some("http://127.0.0.1:1".parse().unwrap()),
            StoreUrl::Memory,
        )
    }

    #[test]
    fn parses_a_full_file() {
        let c = base()
            .apply_toml(
                r#"
                [server]
                listen = "127.0.0.1:9000"
                upstream = "http://127.0.0.1:3000"
                store = "sqlite://x.db"
                response_timeout = "5s"

                [defaults]
                ttl = "1h"
                tenant = "header:X-Tenant"
                methods = ["post"]

                [[routes]]
                path = "/orders"
                methods = ["POST"]
                key = "required"
                in_flight = "wait"
                max_wait = "2s"
                mismatch_status = 409
                stored_statuses = ["2xx"]
                max_body = "64KiB"

                [[routes]]
                path = "/health"
                key = "ignored"
                "#,
            )
            .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.response_timeout, Duration::from_secs(5));
        let p = c.routes.policy_for(&Method::POST, "/orders").unwrap();
        assert_eq!(p.key, KeyRequirement::Required);
        assert_eq!(
            p.in_flight,
            InFlightMode::Wait {
                max_wait: Duration::from_secs(2)
            }
        );
        assert_eq!(p.mismatch_status, StatusCode::CONFLICT);
        assert_eq!(p.max_body, 64 << 10);
        assert_eq!(
            p.ttl,
            Duration::from_secs(3600),
            "routes inherit the defaults"
        );
        assert!(!p.stored_statuses.is_stored(404));
        assert!(c.routes.policy_for(&Method::POST, "/health").is_none());
        assert!(
            c.routes.policy_for(&Method::PATCH, "/other").is_none(),
            "defaults.methods = [POST]"
        );
        assert_eq!(
            c.routes.policy_for(&Method::POST, "/other").unwrap().key,
            KeyRequirement::Optional
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = base()
            .apply_toml("[defaults]\nttl = \"5 parsecs\"")
            .unwrap_err();
        assert!(e.contains("defaults.ttl"), "{e}");
        let e = base()
            .apply_toml("[[routes]]\npath = \"/a\"\nkey = \"maybe\"")
            .unwrap_err();
        assert!(e.contains("routes[0].key"), "{e}");
        let e = base().apply_toml("[defaults]\ntll = \"1h\"").unwrap_err();
        assert!(e.contains("tll"), "unknown fields are refused: {e}");
        let e = base()
            .apply_toml("[server]\nupstream = \"https://x\"")
            .unwrap_err();
        assert!(e.contains("https"), "{e}");
    }

    #[test]
    fn validation_catches_contradictions() {
        let c = base()
            .apply_toml("[defaults]\nttl = \"1s\"\nlease = \"5s\"")
            .unwrap();
        assert!(c.validate().is_err());
        let c = base()
            .apply_toml("[defaults]\nlease = \"1s\"\nrenew_lease = false")
            .unwrap();
        assert_eq!(c.validate().unwrap().len(), 1);
        let c = base().apply_toml("[defaults]\nlease = \"10ms\"").unwrap();
        assert!(c.validate().is_err(), "too short to renew");
        let c = base()
            .apply_toml("[server]\nconnect_timeout = \"5s\"\nresponse_timeout = \"2s\"")
            .unwrap();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("connect_timeout"));
        let e = base()
            .apply_toml("[[routes]]\npath = \"/a\"\nmax_wait = \"2s\"")
            .unwrap_err();
        assert!(e.contains("max_wait"), "{e}");
        let c = base()
            .apply_toml(
                "[defaults]\nin_flight = \"wait\"\n[[routes]]\npath = \"/a\"\nmax_wait = \"2s\"",
            )
            .unwrap();
        assert_eq!(
            c.routes.policy_for(&Method::POST, "/a").unwrap().in_flight,
            InFlightMode::Wait {
                max_wait: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn the_default_admin_address_is_one_address() {
        let listener = AdminConfig::default_listener();
        assert_eq!(listener.listen.to_string(), DEFAULT_ADMIN_LISTEN);
        assert!(listener.is_default && listener.token.is_none());
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("300ms").unwrap(), Duration::from_millis(300));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert!(
            parse_duration("x").is_err()
                && parse_duration("5y").is_err()
                && parse_duration("").is_err()
        );
        assert_eq!(parse_size("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_size("2MB").unwrap(), 2_000_000);
        assert!(parse_size("1TiB").is_err() && parse_size("-1").is_err());
    }
}
