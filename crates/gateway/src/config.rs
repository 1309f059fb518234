//! `oncely.toml`: the gateway's settings and its routes. See docs/configuration.md.
//!
//! Parsing is strict (unknown fields are errors, so a typo never silently disables
//! protection) and every error names the field and the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode};
use oncely_core::StatusPolicy;
use oncely_http::{
    InFlightMode, KeyRequirement, PathPattern, PreconditionRequirement, Route, RoutePolicy, Routes,
    StoreFailureMode, TenantSource, UnknownOutcomePolicy,
};
use serde::Deserialize;

use crate::audit::{AuditConfig, AuditUrl, RedactionKey, RedactionKeyError};
use oncely_open::StoreUrl;

/// Why a configuration could not be loaded, or does not hold together.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read (missing, unreadable, not UTF-8).
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file, as it was given.
        path: String,
        /// Why the system could not read it.
        source: std::io::Error,
    },
    /// An error in a config file's text, prefixed with the file's path
    /// (`oncely.toml: routes[1].lease: ...`).
    #[error("{path}: {source}")]
    InFile {
        /// The file, as it was given.
        path: String,
        /// What is wrong with its text: [`ConfigError::Syntax`] or [`ConfigError::Setting`].
        source: Box<ConfigError>,
    },
    /// The text is not TOML, or names a field that does not exist (parsing is strict so that a
    /// typo never silently turns protection off), or gives one a value of the wrong type.
    #[error(transparent)]
    Syntax(#[from] toml::de::Error),
    /// One setting has a value that is refused.
    #[error(transparent)]
    Setting(#[from] SettingError),
    /// Settings that are each valid but contradict one another, such as a route whose `ttl`
    /// is shorter than its `lease`.
    #[error("{0}")]
    Invalid(String),
}

/// A setting whose value is refused, displayed as `setting: reason`
/// (`routes[0].ttl: `5 parsecs`: unknown unit ...`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct SettingError {
    /// Where the setting is, spelled as in the file: `server.listen`, `defaults.ttl`,
    /// `routes[0].methods`.
    pub setting: String,
    /// What is wrong with the value, usually with what would be accepted.
    pub reason: String,
}

impl SettingError {
    fn new(setting: impl Into<String>, reason: impl std::fmt::Display) -> SettingError {
        SettingError {
            setting: setting.into(),
            reason: reason.to_string(),
        }
    }

    /// The same error for a setting inside `section`: `routes[0]` and `ttl` give
    /// `routes[0].ttl`.
    fn within(self, section: &str) -> SettingError {
        SettingError {
            setting: format!("{section}.{}", self.setting),
            reason: self.reason,
        }
    }
}

/// Why a redaction key file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file, as it was given.
        path: PathBuf,
        /// Why the system could not read it.
        source: std::io::Error,
    },
    /// The file was read, but what it holds is not a usable key.
    #[error("{}: {source}", path.display())]
    Invalid {
        /// The file, as it was given.
        path: PathBuf,
        /// What is wrong with the key.
        source: RedactionKeyError,
    },
}

/// Why an upstream URL is refused by [`parse_upstream`]. Each variant carries the URL as it
/// was given.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamUrlError {
    /// Not a URL at all.
    #[error("`{url}` is not a URL: {source}")]
    NotAUrl {
        /// The text that was given.
        url: String,
        /// What the URL parser objected to.
        source: http::uri::InvalidUri,
    },
    /// An `https://` URL: the gateway speaks plain HTTP to its upstream, so TLS has to end in
    /// front of the upstream (a sidecar) or the link has to be a private network.
    #[error("`{url}`: https upstreams are not supported yet; use http (for example on a private network or a sidecar)")]
    Https {
        /// The URL that was given.
        url: String,
    },
    /// A scheme other than `http://`, or none.
    #[error("`{url}` must start with http://")]
    NotHttp {
        /// The URL that was given.
        url: String,
    },
    /// No host to connect to.
    #[error("`{url}` has no host")]
    NoHost {
        /// The URL that was given.
        url: String,
    },
    /// A query string, which would have to be merged with every request's own.
    #[error("`{url}`: an upstream URL cannot carry a query")]
    Query {
        /// The URL that was given.
        url: String,
    },
}

/// An admin address that is neither `HOST:PORT` nor `off`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{value}` is not an address like {DEFAULT_ADMIN_LISTEN} (or `off`)")]
pub struct AdminListenError {
    /// The text that was given.
    pub value: String,
}

/// A method name in `methods` that is not an HTTP method token.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not an HTTP method")]
struct NotAMethod(String);

/// The shortest lease accepted: renewals run every third of it (at least every 10 ms).
pub const MIN_LEASE: Duration = Duration::from_millis(50);

/// Everything the gateway needs to run, after defaults and command-line overrides.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where clients connect (`server.listen`, `--listen`; `oncely serve` defaults to
    /// `127.0.0.1:8080`). Port 0 picks a free port; [`RunningGateway::addr`] tells which.
    ///
    /// [`RunningGateway::addr`]: crate::RunningGateway::addr
    pub listen: SocketAddr,
    /// The protected service, `http://host:port[/prefix]` (see [`parse_upstream`]).
    /// Required before the gateway starts; from the file or the command line.
    pub upstream: Option<http::Uri>,
    /// Where idempotency records live: SQLite, PostgreSQL, Redis or memory
    /// (`server.store`, `--store`).
    pub store: StoreUrl,
    /// How long connecting to the upstream may take (default 2 s). A connect that fails or
    /// times out sent nothing, so the key is released and a retry executes.
    pub connect_timeout: Duration,
    /// How long the upstream may take to send its response headers once the request body is
    /// sent, and the longest silence inside its response body (default 30 s). Past it the
    /// outcome is unknown. Must be longer than `connect_timeout`.
    pub response_timeout: Duration,
    /// On shutdown, the time requests in flight, and executions whose client already left,
    /// get to finish (default 30 s); connections still open then are closed.
    pub shutdown_grace: Duration,
    /// How often expired records are deleted from the store (default 60 s).
    pub purge_interval: Duration,
    /// Records deleted per statement when purging (default 1000, at least 1): small batches
    /// keep each write short, so requests never wait long behind a purge.
    pub purge_batch: usize,
    /// Bytes of completed responses kept in memory to replay retries without the store
    /// (default 64 MiB; 0 turns the cache off). A bound on memory really held, not payload.
    pub replay_cache: usize,
    /// How long a client may take to send a request's headers (default 30 s); then the
    /// connection is closed.
    pub header_timeout: Duration,
    /// How long a request body may send nothing before the request is cut off with 408 and
    /// its connection closed (default 60 s), keyed or not.
    pub body_idle_timeout: Duration,
    /// How long a keyed request's whole body may take to arrive, however steadily it trickles
    /// (default 2 min); then 408, with nothing claimed.
    pub body_timeout: Duration,
    /// Client connections served at once; beyond it, new connections wait in the kernel's
    /// accept queue until one closes. `None`: [`Config::connection_limit`] picks one.
    pub max_connections: Option<usize>,
    /// Threads that accept and serve connections, each with a runtime and an upstream
    /// connection pool of its own, as nginx runs one worker per core: a request then never
    /// changes threads on its way through (measured: a quarter of a pass-through request's
    /// CPU went to moving tasks between the threads of one shared runtime). `None`: one per
    /// CPU the process may use. See [`Config::worker_count`].
    pub workers: Option<usize>,
    /// The policy of each `[[routes]]` entry, first match first, and the `[defaults]`
    /// policy for the keyed methods no route matches.
    pub routes: Routes,
    /// The admin listener (`/metrics`, ...); `None`: none. `oncely serve` enables it on
    /// [`DEFAULT_ADMIN_LISTEN`] unless told otherwise.
    pub admin: Option<AdminConfig>,
    /// The audit trail (one event per keyed answer); `None`: none.
    pub audit: Option<crate::audit::AuditConfig>,
    /// The keys stored responses are sealed with (AES-256-GCM; the first seals, all open:
    /// `[encryption] keys`); `None`: stored in clear.
    pub encryption: Option<oncely_store::Keyring>,
}

/// Where the admin listener binds, and the bearer token it requires (if any).
#[derive(Clone, PartialEq, Eq)]
pub struct AdminConfig {
    /// The admin listener's address; without a token only a loopback address is accepted.
    pub listen: SocketAddr,
    /// The bearer token every admin request must carry (`Authorization: Bearer ...`): at
    /// least 16 characters, no whitespace. Never logged.
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
pub fn parse_admin_listen(s: &str) -> Result<Option<SocketAddr>, AdminListenError> {
    if s.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| AdminListenError {
        value: s.to_owned(),
    })
}

/// Client connections served at once unless configured, where the open-files limit allows.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The most worker threads `workers` may ask for.
pub const MAX_WORKERS: usize = 256;

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

    /// The worker threads to start: as configured, or one per CPU this process may use.
    pub fn worker_count(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
            .clamp(1, MAX_WORKERS)
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
            workers: None,
            routes: Routes::keyed_post_and_patch(RoutePolicy::default()),
            admin: None,
            audit: None,
            encryption: None,
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
            .map_err(|source| ConfigError::InFile {
                path: path.display().to_string(),
                source: Box::new(source),
            })
    }

    /// Applies the text of a config file. Its errors are [`ConfigError::Syntax`] and
    /// [`ConfigError::Setting`], without the file's path.
    pub fn apply_toml(mut self, text: &str) -> Result<Config, ConfigError> {
        let file: FileConfig = toml::from_str(text)?;
        if let Some(s) = file.server {
            if let Some(v) = s.listen {
                self.listen = v.parse().map_err(|_| {
                    SettingError::new(
                        "server.listen",
                        format!("`{v}` is not an address like 127.0.0.1:8080"),
                    )
                })?;
            }
            if let Some(v) = s.upstream {
                self.upstream =
                    Some(parse_upstream(&v).map_err(|e| SettingError::new("server.upstream", e))?);
            }
            if let Some(v) = s.store {
                self.store =
                    StoreUrl::parse(&v).map_err(|e| SettingError::new("server.store", e))?;
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
                    *setting = parse_duration(&v)
                        .map_err(|e| SettingError::new(format!("server.{name}"), e))?;
                }
            }
            if let Some(v) = s.purge_batch {
                self.purge_batch = v.max(1);
            }
            if let Some(v) = s.replay_cache {
                self.replay_cache =
                    parse_size(&v).map_err(|e| SettingError::new("server.replay_cache", e))?;
            }
            if let Some(v) = s.max_connections {
                self.max_connections = Some(v);
            }
            if let Some(v) = s.workers {
                self.workers = Some(v);
            }
        }
        if let Some(a) = file.admin {
            let before = self.admin.take();
            let token = a.token.or(before.as_ref().and_then(|b| b.token.clone()));
            self.admin = match a.listen {
                Some(v) => parse_admin_listen(&v)
                    .map_err(|e| SettingError::new("admin.listen", e))?
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
            self.audit = Some(a.apply(self.audit.take()).map_err(|e| e.within("audit"))?);
        }
        if let Some(e) = file.encryption {
            self.encryption = Some(e.keyring()?);
        }
        if file.defaults.as_ref().is_some_and(|d| d.path.is_some()) {
            return Err(
                SettingError::new("defaults.path", "`path` belongs in a [[routes]] entry").into(),
            );
        }
        let defaults = match &file.defaults {
            Some(d) => d
                .apply(RoutePolicy::default())
                .map_err(|e| e.within("defaults"))?,
            None => RoutePolicy::default(),
        };
        let fallback_methods = match file.defaults.as_ref().and_then(|d| d.methods.clone()) {
            Some(ms) => parse_methods(&ms).map_err(|e| SettingError::new("defaults.methods", e))?,
            None => vec![Method::POST, Method::PATCH],
        };
        let mut routes = Vec::new();
        for (i, r) in file.routes.unwrap_or_default().into_iter().enumerate() {
            let section = format!("routes[{i}]");
            let at = |e: SettingError| e.within(&section);
            let Some(path) = &r.path else {
                return Err(at(SettingError::new(
                    "path",
                    "every route needs a path, e.g. path = \"/orders\"",
                ))
                .into());
            };
            let path = PathPattern::parse(path).map_err(|e| at(SettingError::new("path", e)))?;
            let methods = parse_methods(r.methods.as_deref().unwrap_or(&[]))
                .map_err(|e| at(SettingError::new("methods", e)))?;
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
                    return Err(SettingError::new(
                        "admin.token",
                        "use at least 16 characters and no whitespace \
                         (e.g. `openssl rand -hex 24`)",
                    )
                    .into());
                }
                None if !a.listen.ip().is_loopback() => {
                    return Err(SettingError::new(
                        "admin.listen",
                        format!(
                            "{} is reachable from other hosts, so the admin listener \
                             needs a token (admin.token, --admin-token or ONCELY_ADMIN_TOKEN)",
                            a.listen
                        ),
                    )
                    .into());
                }
                _ => {}
            }
        }
        if let Some(n) = self.workers {
            if !(1..=MAX_WORKERS).contains(&n) {
                return Err(SettingError::new(
                    "server.workers",
                    format!("{n} is not between 1 and {MAX_WORKERS}"),
                )
                .into());
            }
        }
        if let Some(n) = self.max_connections {
            if !(1..=MAX_CONNECTIONS_LIMIT).contains(&n) {
                return Err(SettingError::new(
                    "server.max_connections",
                    format!("{n} is not between 1 and {MAX_CONNECTIONS_LIMIT}"),
                )
                .into());
            }
        }
        for (name, d) in [
            ("server.header_timeout", self.header_timeout),
            ("server.body_idle_timeout", self.body_idle_timeout),
            ("server.body_timeout", self.body_timeout),
        ] {
            if d.is_zero() {
                return Err(SettingError::new(
                    name,
                    "must be longer than 0 (it cuts off clients that stall)",
                )
                .into());
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
pub fn parse_upstream(s: &str) -> Result<http::Uri, UpstreamUrlError> {
    let url = || s.to_owned();
    let uri: http::Uri = s
        .parse()
        .map_err(|source| UpstreamUrlError::NotAUrl { url: url(), source })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(UpstreamUrlError::Https { url: url() }),
        _ => return Err(UpstreamUrlError::NotHttp { url: url() }),
    }
    if uri.authority().is_none() {
        return Err(UpstreamUrlError::NoHost { url: url() });
    }
    if uri.query().is_some() {
        return Err(UpstreamUrlError::Query { url: url() });
    }
    Ok(uri)
}

fn parse_methods(ms: &[String]) -> Result<Vec<Method>, NotAMethod> {
    ms.iter()
        .map(|m| {
            let up = m.trim().to_ascii_uppercase();
            Method::from_bytes(up.as_bytes()).map_err(|_| NotAMethod(m.clone()))
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<ServerSection>,
    admin: Option<AdminSection>,
    audit: Option<AuditSection>,
    encryption: Option<EncryptionSection>,
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
    workers: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdminSection {
    listen: Option<String>,
    token: Option<String>,
}

/// `[encryption]`: `keys = [{ id = "2026-12", file = "/etc/oncely/2026-12.key" }, ...]`,
/// the first sealing; each file holds 64 hex digits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptionSection {
    keys: Vec<KeySource>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySource {
    id: String,
    file: String,
}

impl EncryptionSection {
    fn keyring(self) -> Result<oncely_store::Keyring, SettingError> {
        let mut keys = Vec::with_capacity(self.keys.len());
        for k in self.keys {
            let hex = std::fs::read_to_string(&k.file).map_err(|e| {
                SettingError::new(
                    "encryption.keys",
                    format!("key {:?}: {}: {e}", k.id, k.file),
                )
            })?;
            keys.push((k.id, hex.trim().to_owned()));
        }
        oncely_store::Keyring::from_hex(keys.iter().map(|(i, h)| (i.as_str(), h.as_str())))
            .map_err(|e| SettingError::new("encryption.keys", e))
    }
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
    /// The `[audit]` section over what is already configured. Errors name the setting within
    /// the section (`url`, not `audit.url`).
    fn apply(self, before: Option<AuditConfig>) -> Result<AuditConfig, SettingError> {
        let url = match (self.url, &before) {
            (Some(u), _) => AuditUrl::parse(&u).map_err(|e| SettingError::new("url", e))?,
            (None, Some(b)) => b.url.clone(),
            (None, None) => {
                return Err(SettingError::new(
                    "url",
                    "the [audit] section needs a url (sqlite://PATH or postgres://HOST/DB)",
                ))
            }
        };
        let chain = match self.chain {
            Some(c) => {
                oncely_audit::validate_chain(&c).map_err(|e| SettingError::new("chain", e))?;
                c
            }
            None => before
                .as_ref()
                .map_or_else(crate::audit::default_chain, |b| b.chain.clone()),
        };
        let key = match self.key_file {
            Some(f) => {
                Some(read_key_file(Path::new(&f)).map_err(|e| SettingError::new("key_file", e))?)
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
pub fn read_key_file(path: &Path) -> Result<RedactionKey, KeyFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    RedactionKey::parse(&text).map_err(|source| KeyFileError::Invalid {
        path: path.to_owned(),
        source,
    })
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
    precondition: Option<String>,
    precondition_methods: Option<Vec<String>>,
    /// In a route: the methods it matches (all if absent). In `[defaults]`: the methods keyed
    /// when no route matches.
    methods: Option<Vec<String>>,
}

impl PolicySection {
    /// This section's fields over `p`. Errors name the field alone (`ttl`); the caller says
    /// which section it is in.
    fn apply(&self, mut p: RoutePolicy) -> Result<RoutePolicy, SettingError> {
        if let Some(v) = &self.key {
            p.key = match v.as_str() {
                "required" => KeyRequirement::Required,
                "optional" => KeyRequirement::Optional,
                "ignored" | "off" => KeyRequirement::Ignored,
                _ => {
                    return Err(SettingError::new(
                        "key",
                        format!("`{v}` is not one of required, optional, ignored"),
                    ))
                }
            };
        }
        if let Some(v) = &self.ttl {
            p.ttl = parse_duration(v).map_err(|e| SettingError::new("ttl", e))?;
        }
        if let Some(v) = &self.lease {
            p.lease = parse_duration(v).map_err(|e| SettingError::new("lease", e))?;
        }
        if let Some(v) = self.renew_lease {
            p.renew_lease = v;
        }
        if let Some(v) = &self.tenant {
            p.tenant = match v.as_str() {
                "authorization" => TenantSource::Authorization,
                "anonymous" | "none" => TenantSource::Anonymous,
                other => match other.strip_prefix("header:") {
                    Some(h) => {
                        let name = HeaderName::from_bytes(h.trim().as_bytes()).map_err(|_| {
                            SettingError::new("tenant", format!("`{h}` is not a header name"))
                        })?;
                        TenantSource::Header(name)
                    }
                    None => {
                        return Err(SettingError::new(
                            "tenant",
                            format!("`{v}` is not one of authorization, anonymous, header:NAME"),
                        ))
                    }
                },
            };
        }
        let max_wait = match &self.max_wait {
            Some(v) => Some(parse_duration(v).map_err(|e| SettingError::new("max_wait", e))?),
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
                return Err(SettingError::new(
                    "in_flight",
                    format!("`{other}` is not one of reject, wait"),
                ))
            }
            (None, Some(w)) => match p.in_flight {
                InFlightMode::Wait { .. } => p.in_flight = InFlightMode::Wait { max_wait: w },
                InFlightMode::Reject => {
                    return Err(SettingError::new(
                        "max_wait",
                        "only meaningful with in_flight = \"wait\"; set that too",
                    ))
                }
            },
            (None, None) => {}
        }
        if let Some(v) = &self.retry_after {
            p.retry_after = parse_duration(v).map_err(|e| SettingError::new("retry_after", e))?;
        }
        if let Some(v) = self.mismatch_status {
            if v != 409 && v != 422 {
                return Err(SettingError::new(
                    "mismatch_status",
                    format!("{v} is not 422 or 409"),
                ));
            }
            p.mismatch_status =
                StatusCode::from_u16(v).map_err(|e| SettingError::new("mismatch_status", e))?;
        }
        if let Some(v) = &self.stored_statuses {
            p.stored_statuses =
                StatusPolicy::parse(v).map_err(|e| SettingError::new("stored_statuses", e))?;
        }
        if let Some(v) = &self.max_body {
            p.max_body = parse_size(v).map_err(|e| SettingError::new("max_body", e))?;
        }
        if let Some(v) = &self.max_response {
            p.max_response = parse_size(v).map_err(|e| SettingError::new("max_response", e))?;
        }
        if let Some(v) = &self.unknown_outcome {
            p.unknown_outcome = match v.as_str() {
                "hold" => UnknownOutcomePolicy::Hold,
                "release" => UnknownOutcomePolicy::Release,
                _ => {
                    return Err(SettingError::new(
                        "unknown_outcome",
                        format!("`{v}` is not one of hold, release"),
                    ))
                }
            };
        }
        if let Some(v) = &self.store_unavailable {
            p.store_failure = match v.as_str() {
                "fail-closed" => StoreFailureMode::FailClosed,
                "fail-open" => StoreFailureMode::FailOpen,
                _ => {
                    return Err(SettingError::new(
                        "store_unavailable",
                        format!("`{v}` is not one of fail-closed, fail-open"),
                    ))
                }
            };
        }
        let methods = match &self.precondition_methods {
            Some(ms) => {
                Some(parse_methods(ms).map_err(|e| SettingError::new("precondition_methods", e))?)
            }
            None => None,
        };
        match (self.precondition.as_deref(), methods) {
            (Some("required"), ms) => {
                p.precondition = match ms {
                    Some(ms) => PreconditionRequirement::Required(ms),
                    None => PreconditionRequirement::required_for_updates(),
                }
            }
            (Some("optional"), None) => p.precondition = PreconditionRequirement::Optional,
            (Some("optional"), Some(_)) => {
                return Err(SettingError::new(
                    "precondition_methods",
                    "only meaningful with precondition = \"required\"",
                ))
            }
            (Some(other), _) => {
                return Err(SettingError::new(
                    "precondition",
                    format!("`{other}` is not one of required, optional"),
                ))
            }
            (None, Some(ms)) => match p.precondition {
                PreconditionRequirement::Required(_) => {
                    p.precondition = PreconditionRequirement::Required(ms)
                }
                PreconditionRequirement::Optional => {
                    return Err(SettingError::new(
                        "precondition_methods",
                        "only meaningful with precondition = \"required\"; set that too",
                    ))
                }
            },
            (None, None) => {}
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
        let setting = |toml: &str| match base().apply_toml(toml) {
            Err(ConfigError::Setting(e)) => e,
            other => panic!("{toml}: {other:?}"),
        };
        let e = setting("[defaults]\nttl = \"5 parsecs\"");
        assert_eq!(e.setting, "defaults.ttl");
        assert!(
            e.to_string().starts_with("defaults.ttl: `5 parsecs`"),
            "{e}"
        );
        let e = setting("[[routes]]\npath = \"/a\"\n[[routes]]\npath = \"/b\"\nkey = \"maybe\"");
        assert_eq!(e.setting, "routes[1].key");
        assert_eq!(
            e.to_string(),
            "routes[1].key: `maybe` is not one of required, optional, ignored"
        );
        assert_eq!(setting("[audit]\nchain = \"a\"").setting, "audit.url");
        let e = base().apply_toml("[defaults]\ntll = \"1h\"").unwrap_err();
        assert!(
            matches!(e, ConfigError::Syntax(_)) && e.to_string().contains("tll"),
            "unknown fields are refused: {e}"
        );
        let e = setting("[server]\nupstream = \"https://x\"");
        assert_eq!(e.setting, "server.upstream");
        assert!(e.reason.contains("https"), "{e}");
    }

    #[test]
    fn preconditions_per_route() {
        let c = base()
            .apply_toml(
                "[[routes]]\npath = \"/docs/{id}\"\nprecondition = \"required\"\n\
                 [[routes]]\npath = \"/x\"\nprecondition = \"required\"\n\
                 precondition_methods = [\"post\"]",
            )
            .unwrap();
        let docs = c.routes.route_for(&Method::PUT, "/docs/1").unwrap();
        assert_eq!(
            docs.precondition,
            PreconditionRequirement::required_for_updates()
        );
        let x = c.routes.route_for(&Method::POST, "/x").unwrap();
        assert_eq!(
            x.precondition,
            PreconditionRequirement::Required(vec![Method::POST])
        );
        let setting = |toml: &str| match base().apply_toml(toml) {
            Err(ConfigError::Setting(e)) => e.to_string(),
            other => panic!("{toml}: {other:?}"),
        };
        assert_eq!(
            setting("[defaults]\nprecondition = \"always\""),
            "defaults.precondition: `always` is not one of required, optional"
        );
        assert!(setting("[defaults]\nprecondition_methods = [\"PUT\"]")
            .starts_with("defaults.precondition_methods: only meaningful"));
        assert!(setting(
            "[defaults]\nprecondition = \"required\"\nprecondition_methods = [\"P UT\"]"
        )
        .starts_with("defaults.precondition_methods:"));
    }

    #[test]
    fn errors_in_a_file_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("oncely.toml");
        std::fs::write(&path, "[[routes]]\npath = \"/a\"\nlease = \"q\"").unwrap();
        let e = base().load_file(&path).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: routes[0].lease: `q`: unknown unit `q` (use ms, s, m, min, h or d)",
                path.display()
            )
        );
        assert!(
            matches!(&e, ConfigError::InFile { source, .. } if matches!(**source, ConfigError::Setting(_))),
            "{e:?}"
        );
        let missing = dir.path().join("missing.toml");
        assert!(matches!(
            base().load_file(&missing),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn upstream_urls() {
        assert!(parse_upstream("http://127.0.0.1:3000/api").is_ok());
        assert!(matches!(
            parse_upstream("https://x"),
            Err(UpstreamUrlError::Https { .. })
        ));
        assert!(matches!(
            parse_upstream("ftp://x"),
            Err(UpstreamUrlError::NotHttp { .. })
        ));
        assert!(matches!(
            parse_upstream("ht tp://x"),
            Err(UpstreamUrlError::NotAUrl { .. })
        ));
        let e = parse_upstream("http://x/?a=b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`http://x/?a=b`: an upstream URL cannot carry a query"
        );
    }

    #[test]
    fn key_files() {
        let dir = tempfile::tempdir().unwrap();
        let short = dir.path().join("short.key");
        std::fs::write(&short, "abc\n").unwrap();
        let e = read_key_file(&short).unwrap_err();
        assert!(matches!(e, KeyFileError::Invalid { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: the audit redaction key needs at least 16 characters (e.g. `openssl rand -hex 32`)",
                short.display()
            )
        );
        let e = read_key_file(&dir.path().join("missing.key")).unwrap_err();
        assert!(matches!(e, KeyFileError::Read { .. }), "{e:?}");
        let good = dir.path().join("good.key");
        std::fs::write(&good, " 0123456789abcdef\n").unwrap();
        assert_eq!(read_key_file(&good).unwrap().0, b"0123456789abcdef");
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
        let c = base()
            .apply_toml("[server]\nbody_idle_timeout = \"0s\"")
            .unwrap();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Setting(SettingError { setting, .. })) if setting == "server.body_idle_timeout"
        ));
        let e = base()
            .apply_toml("[[routes]]\npath = \"/a\"\nmax_wait = \"2s\"")
            .unwrap_err();
        assert!(e.to_string().contains("max_wait"), "{e}");
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
    fn workers_default_to_the_cpus_and_are_bounded() {
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        assert_eq!(base().worker_count(), cpus.clamp(1, MAX_WORKERS));
        let four = base().apply_toml("[server]\nworkers = 4\n").unwrap();
        assert_eq!(four.worker_count(), 4);
        assert!(four.validate().is_ok());
        for bad in [0, MAX_WORKERS + 1] {
            let c = base()
                .apply_toml(&format!("[server]\nworkers = {bad}\n"))
                .unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with("server.workers: "), "{e}");
        }
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
