//! The I/O edge: drives [`crate::policy`], [`crate::budget`] and [`crate::store`] over reqwest.
//!
//! TLS is rustls with the webpki root certificates, so the client works the same on every
//! machine, with no system OpenSSL.

use std::fmt;
#[cfg(feature = "state")]
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
#[cfg(feature = "state")]
use std::time::UNIX_EPOCH;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, StatusCode};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use crate::backoff::Backoff;
use crate::budget::{BudgetConfig, RetryBudget};
use crate::key;
use crate::policy::{self, Decision, Outcome, Policy, StopReason, TransportKind};
#[cfg(feature = "state")]
use crate::store::KeyStore;
use oncely_core::sync::LockIgnoringPoison;

/// The header that carries the key (draft-ietf-httpapi-idempotency-key-header).
pub const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// One logical request. Its attempts all carry the same `Idempotency-Key`.
#[derive(Debug, Clone)]
pub struct Request {
    method: Method,
    url: String,
    headers: HeaderMap,
    body: Bytes,
    key: Option<String>,
    operation: Option<String>,
}

impl Request {
    /// A request of `method` to `url` (checked when sent).
    pub fn new(method: Method, url: impl Into<String>) -> Self {
        Self {
            method,
            url: url.into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            key: None,
            operation: None,
        }
    }

    /// A POST to `url`.
    pub fn post(url: impl Into<String>) -> Self {
        Self::new(Method::POST, url)
    }

    /// Adds a header. An `Idempotency-Key` header is taken as the key.
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Uses this key instead of generating one.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Names the logical request, so that with a state file a restarted process finds its key
    /// again. Unnamed requests are named by a hash of method, URL and body.
    pub fn operation(mut self, name: impl Into<String>) -> Self {
        self.operation = Some(name.into());
        self
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// The URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

/// Where the key of a request came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// Given by the caller.
    Given,
    /// Generated for this request.
    New,
    /// Found in the state file: an earlier run used it.
    Resumed,
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeySource::Given => "given",
            KeySource::New => "new",
            KeySource::Resumed => "resumed from state file",
        })
    }
}

/// A final HTTP answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
    /// Attempts made in this run.
    pub attempts: u32,
    /// The key every attempt carried.
    pub key: String,
    /// Where the key came from.
    pub key_source: KeySource,
}

/// The last thing seen before giving up.
#[derive(Debug, Clone)]
pub enum LastOutcome {
    /// An HTTP answer that was worth retrying (503, 429...).
    Response(Box<Response>),
    /// No answer.
    Transport {
        /// The kind of failure.
        kind: TransportKind,
        /// The error's own message.
        message: String,
    },
}

impl fmt::Display for LastOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LastOutcome::Response(r) => write!(f, "{}", r.status),
            LastOutcome::Transport { kind, message } => write!(f, "{kind} ({message})"),
        }
    }
}

/// Why [`Client::send`] returned no final answer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every allowed attempt failed in a retryable way, or a limit stopped the retries.
    #[error("gave up after {attempts} attempt(s): {stop}; last: {last}")]
    GaveUp {
        /// Which limit.
        stop: StopReason,
        /// Attempts made in this run.
        attempts: u32,
        /// The key, to retry later with the same one.
        key: String,
        /// The last outcome.
        last: LastOutcome,
    },
    /// A failure that retrying cannot fix (an invalid request, a redirect loop...).
    #[error("request failed: {message}")]
    Transport {
        /// The error's message.
        message: String,
        /// Attempts made.
        attempts: u32,
        /// The key.
        key: String,
    },
    /// The request cannot be sent (bad URL, bad key).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The state file failed.
    #[cfg(feature = "state")]
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The client cannot be built.
    #[error("cannot build the client: {0}")]
    Build(String),
}

/// What the hook sees after each attempt.
#[derive(Debug, Clone)]
pub struct AttemptEvent<'a> {
    /// 1 for the first attempt of this run.
    pub attempt: u32,
    /// The method.
    pub method: &'a Method,
    /// The URL.
    pub url: &'a str,
    /// The key the attempt carried.
    pub key: &'a str,
    /// Where the key came from.
    pub key_source: KeySource,
    /// The outcome.
    pub outcome: &'a Outcome,
    /// The transport error's message, if any.
    pub error: Option<&'a str>,
    /// What the client does next.
    pub decision: &'a Decision,
    /// When this attempt started, since the first attempt started (zero for the first).
    pub started: Duration,
    /// When this attempt ended, since the first attempt started.
    pub elapsed: Duration,
}

/// Observes attempts (logs, metrics). Any `Fn(&AttemptEvent)` is a hook.
pub trait AttemptHook: Send + Sync {
    /// Called after each attempt, before any wait.
    fn on_attempt(&self, event: &AttemptEvent<'_>);
}

impl<F: Fn(&AttemptEvent<'_>) + Send + Sync> AttemptHook for F {
    fn on_attempt(&self, event: &AttemptEvent<'_>) {
        self(event)
    }
}

/// Counters over the client's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Logical requests.
    pub requests: u64,
    /// Attempts, the first ones included.
    pub attempts: u64,
    /// Attempts after the first.
    pub retries: u64,
    /// Requests that ended in a final HTTP answer (any status).
    pub answered: u64,
    /// Requests that gave up.
    pub gave_up: u64,
    /// Of those, the ones stopped by the retry budget.
    pub budget_exhausted: u64,
}

#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    attempts: AtomicU64,
    retries: AtomicU64,
    answered: AtomicU64,
    gave_up: AtomicU64,
    budget_exhausted: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Configures a [`Client`].
pub struct ClientBuilder {
    policy: Policy,
    attempt_timeout: Option<Duration>,
    connect_timeout: Duration,
    budget: BudgetConfig,
    rng: Option<Box<dyn RngCore + Send>>,
    #[cfg(feature = "state")]
    state_file: Option<PathBuf>,
    #[cfg(feature = "state")]
    store: Option<Arc<KeyStore>>,
    hook: Option<Arc<dyn AttemptHook>>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            attempt_timeout: Some(Duration::from_secs(10)),
            connect_timeout: Duration::from_secs(5),
            budget: BudgetConfig::default(),
            rng: None,
            #[cfg(feature = "state")]
            state_file: None,
            #[cfg(feature = "state")]
            store: None,
            hook: None,
        }
    }
}

impl ClientBuilder {
    /// The ceiling of the first wait (default 100 ms).
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.policy.backoff.base = d;
        self
    }

    /// The longest wait (default 10 s).
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.policy.backoff.cap = d;
        self
    }

    /// The backoff schedule.
    pub fn backoff(mut self, b: Backoff) -> Self {
        self.policy.backoff = b;
        self
    }

    /// Attempts in all, the first included (default 5; 0 is taken as 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.policy.max_attempts = n.max(1);
        self
    }

    /// No attempt starts later than this after the first (default 30 s; `None`: no deadline).
    pub fn deadline(mut self, d: Option<Duration>) -> Self {
        self.policy.deadline = d;
        self
    }

    /// With a deadline, no retry starts with less than this left before it (default 50 ms): the
    /// client gives up with [`StopReason::Deadline`] instead.
    pub fn min_attempt_time(mut self, d: Duration) -> Self {
        self.policy.min_attempt_time = d;
        self
    }

    /// The longest `Retry-After` honoured (default 60 s; `None`: only the deadline limits it).
    /// A server asking for more makes the client give up at once with
    /// [`StopReason::RetryAfterTooLong`].
    pub fn max_retry_after(mut self, d: Option<Duration>) -> Self {
        self.policy.max_retry_after = d;
        self
    }

    /// The longest one attempt may take, body included (default 10 s).
    pub fn attempt_timeout(mut self, d: Option<Duration>) -> Self {
        self.attempt_timeout = d;
        self
    }

    /// The longest a connection may take (default 5 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// The retry budget (default: 10% of requests, 1 per second floor, burst 10).
    pub fn budget(mut self, b: BudgetConfig) -> Self {
        self.budget = b;
        self
    }

    /// Seeds the jitter, for reproducible delays. Keys stay random.
    pub fn seed(mut self, seed: u64) -> Self {
        self.rng = Some(Box::new(StdRng::seed_from_u64(seed)));
        self
    }

    /// The random source of the jitter.
    pub fn rng(mut self, rng: impl RngCore + Send + 'static) -> Self {
        self.rng = Some(Box::new(rng));
        self
    }

    /// Persists pending keys in this SQLite file.
    #[cfg(feature = "state")]
    pub fn state_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.state_file = Some(path.into());
        self
    }

    /// Persists pending keys in this store.
    #[cfg(feature = "state")]
    pub fn store(mut self, store: Arc<KeyStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Calls `hook` after every attempt.
    pub fn hook(mut self, hook: impl AttemptHook + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client, Error> {
        let http = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            // Redirects would re-send a write to another URL under the same key; let the
            // caller see them instead.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Build(e.to_string()))?;
        #[cfg(feature = "state")]
        let store = match (self.store, self.state_file) {
            (Some(s), _) => Some(s),
            (None, Some(path)) => Some(Arc::new(KeyStore::open(path)?)),
            (None, None) => None,
        };
        let origin = Instant::now();
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                policy: self.policy,
                attempt_timeout: self.attempt_timeout,
                budget: Mutex::new(RetryBudget::new(self.budget, Duration::ZERO)),
                rng: Mutex::new(self.rng.unwrap_or_else(|| Box::new(StdRng::from_os_rng()))),
                #[cfg(feature = "state")]
                store,
                hook: self.hook,
                counters: Counters::default(),
                origin,
            }),
        })
    }
}

/// The retry client. Cheap to clone; clones share the budget, the counters and the state file.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    policy: Policy,
    attempt_timeout: Option<Duration>,
    // Both locked ignoring poison: a budget or an RNG stays valid if a holder panicked.
    budget: Mutex<RetryBudget>,
    rng: Mutex<Box<dyn RngCore + Send>>,
    #[cfg(feature = "state")]
    store: Option<Arc<KeyStore>>,
    hook: Option<Arc<dyn AttemptHook>>,
    counters: Counters,
    origin: Instant,
}

/// What one attempt produced.
enum Attempt {
    Answer(Box<Response>, Outcome),
    Failed(TransportKind, String),
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("policy", &self.inner.policy)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A builder with the defaults.
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            requests: get(&c.requests),
            attempts: get(&c.attempts),
            retries: get(&c.retries),
            answered: get(&c.answered),
            gave_up: get(&c.gave_up),
            budget_exhausted: get(&c.budget_exhausted),
        }
    }

    /// The state file's store, if any.
    #[cfg(feature = "state")]
    pub fn store(&self) -> Option<&Arc<KeyStore>> {
        self.inner.store.as_ref()
    }

    /// The retry tokens left now.
    pub fn budget_available(&self) -> f64 {
        let now = self.inner.origin.elapsed();
        self.inner.budget.lock_ignoring_poison().available(now)
    }

    /// Resolves the key of a request: given, resumed from the state file, or new.
    async fn resolve_key(
        &self,
        req: &Request,
    ) -> Result<(String, KeySource, Option<String>), Error> {
        let given = match &req.key {
            Some(k) => Some(k.clone()),
            None => match req.headers.get(&IDEMPOTENCY_KEY) {
                Some(v) => Some(
                    v.to_str()
                        .map_err(|_| {
                            Error::InvalidRequest("Idempotency-Key is not visible ASCII".into())
                        })?
                        .to_owned(),
                ),
                None => None,
            },
        };
        if let Some(k) = given {
            // Reject what the gateway would reject before the first attempt, not on every one.
            key::validate_key(&k).map_err(Error::InvalidRequest)?;
            return Ok((k, KeySource::Given, None));
        }
        self.pending_key(req, key::new_key()).await
    }

    /// Without a state file, `fresh`.
    #[cfg(not(feature = "state"))]
    async fn pending_key(
        &self,
        _req: &Request,
        fresh: String,
    ) -> Result<(String, KeySource, Option<String>), Error> {
        Ok((fresh, KeySource::New, None))
    }

    /// With a state file, the key a crashed run left pending for the request's operation, or
    /// `fresh`, recorded as pending.
    #[cfg(feature = "state")]
    async fn pending_key(
        &self,
        req: &Request,
        fresh: String,
    ) -> Result<(String, KeySource, Option<String>), Error> {
        let Some(store) = self.inner.store.clone() else {
            return Ok((fresh, KeySource::New, None));
        };
        let operation = req
            .operation
            .clone()
            .unwrap_or_else(|| key::derive_operation(req.method.as_str(), &req.url, &req.body));
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let op = operation.clone();
        let pending = tokio::task::spawn_blocking(move || store.claim(&op, &fresh, now_ms))
            .await
            .map_err(|e| Error::Build(format!("state file task failed: {e}")))??;
        let source = if pending.resumed {
            KeySource::Resumed
        } else {
            KeySource::New
        };
        Ok((pending.key, source, Some(operation)))
    }

    /// Runs a blocking state-file operation off the async threads. Failures after the key is
    /// claimed are reported through the result but never change the request's outcome.
    #[cfg(feature = "state")]
    async fn store_op(
        &self,
        operation: &Option<String>,
        key: &str,
        f: impl FnOnce(&KeyStore, &str, &str) -> Result<(), crate::store::StoreError> + Send + 'static,
    ) -> Result<(), Error> {
        let (Some(store), Some(op)) = (self.inner.store.clone(), operation.clone()) else {
            return Ok(());
        };
        let key = key.to_owned();
        tokio::task::spawn_blocking(move || f(&store, &op, &key))
            .await
            .map_err(|e| Error::Build(format!("state file task failed: {e}")))??;
        Ok(())
    }

    /// Sends a logical request, retrying as the policy allows, with one key on every attempt.
    ///
    /// `Ok` carries the final HTTP answer, whatever its status (a 400 is an answer, not an
    /// error); `Err` means no final answer was obtained.
    pub async fn send(&self, req: Request) -> Result<Response, Error> {
        let url = reqwest::Url::parse(&req.url)
            .map_err(|e| Error::InvalidRequest(format!("bad URL {:?}: {e}", req.url)))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::InvalidRequest(format!(
                "unsupported URL scheme {:?}",
                url.scheme()
            )));
        }
        #[cfg_attr(not(feature = "state"), allow(unused_variables))]
        let (key, key_source, operation) = self.resolve_key(&req).await?;
        let key_value = HeaderValue::from_str(&key)
            .map_err(|_| Error::InvalidRequest(format!("invalid Idempotency-Key {key:?}")))?;
        let inner = &self.inner;
        bump(&inner.counters.requests);
        inner
            .budget
            .lock_ignoring_poison()
            .deposit(inner.origin.elapsed());

        let start = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let started = start.elapsed();
            bump(&inner.counters.attempts);
            if attempt > 1 {
                bump(&inner.counters.retries);
            }
            // The attempt count in the state file is informational: losing one increment must
            // not fail a request whose key is already safely stored.
            #[cfg(feature = "state")]
            let _ = self
                .store_op(&operation, &key, |s, op, k| s.record_attempt(op, k))
                .await;

            let mut timeout = inner.attempt_timeout;
            if let Some(deadline) = inner.policy.deadline {
                let left = deadline.saturating_sub(start.elapsed());
                timeout = Some(timeout.map_or(left, |t| t.min(left)));
            }
            let mut headers = req.headers.clone();
            headers.insert(IDEMPOTENCY_KEY, key_value.clone());
            let mut builder = inner
                .http
                .request(req.method.clone(), url.clone())
                .headers(headers)
                .body(req.body.clone());
            if let Some(t) = timeout {
                builder = builder.timeout(t);
            }
            let result = match builder.send().await {
                Ok(resp) => read_answer(resp, attempt, &key, key_source).await,
                Err(e) => Attempt::Failed(transport_kind(&e), error_chain(&e)),
            };
            let (outcome, error) = match &result {
                Attempt::Answer(_, o) => (o.clone(), None),
                Attempt::Failed(kind, msg) => (Outcome::Transport(*kind), Some(msg.as_str())),
            };
            let elapsed = start.elapsed();
            let decision = {
                let mut rng = inner.rng.lock_ignoring_poison();
                policy::decide(
                    &inner.policy,
                    attempt,
                    &outcome,
                    elapsed,
                    &mut **rng,
                    || {
                        inner
                            .budget
                            .lock_ignoring_poison()
                            .try_withdraw(inner.origin.elapsed())
                    },
                )
            };
            if let Some(hook) = &inner.hook {
                hook.on_attempt(&AttemptEvent {
                    attempt,
                    method: &req.method,
                    url: &req.url,
                    key: &key,
                    key_source,
                    outcome: &outcome,
                    error,
                    decision: &decision,
                    started,
                    elapsed,
                });
            }
            match decision {
                Decision::Retry { delay, .. } => {
                    tokio::time::sleep(delay).await;
                    // The wait was chosen to leave the next attempt `min_attempt_time`, but a
                    // loaded machine may oversleep: never start an attempt the deadline would
                    // cut off at once.
                    if let Some(deadline) = inner.policy.deadline {
                        let left = deadline.saturating_sub(start.elapsed());
                        if left < inner.policy.min_attempt_time {
                            return Err(self.give_up(StopReason::Deadline, attempt, key, result));
                        }
                    }
                }
                Decision::Finish => {
                    return match result {
                        Attempt::Answer(resp, _) => {
                            bump(&inner.counters.answered);
                            // A final answer ends the logical request: the next one is new. A
                            // failure to forget it only means the next identical request
                            // resumes this key and gets the stored replay.
                            #[cfg(feature = "state")]
                            let _ = self
                                .store_op(&operation, &key, |s, op, k| s.complete(op, k))
                                .await;
                            Ok(*resp)
                        }
                        Attempt::Failed(_, message) => Err(Error::Transport {
                            message,
                            attempts: attempt,
                            key,
                        }),
                    };
                }
                Decision::GiveUp { stop, .. } => {
                    return Err(self.give_up(stop, attempt, key, result));
                }
            }
        }
    }

    /// Counts a request that gave up and builds its error.
    fn give_up(&self, stop: StopReason, attempts: u32, key: String, result: Attempt) -> Error {
        let counters = &self.inner.counters;
        bump(&counters.gave_up);
        if stop == StopReason::Budget {
            bump(&counters.budget_exhausted);
        }
        let last = match result {
            Attempt::Answer(resp, _) => LastOutcome::Response(resp),
            Attempt::Failed(kind, message) => LastOutcome::Transport { kind, message },
        };
        Error::GaveUp {
            stop,
            attempts,
            key,
            last,
        }
    }
}

async fn read_answer(
    resp: reqwest::Response,
    attempt: u32,
    key: &str,
    key_source: KeySource,
) -> Attempt {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = match resp.bytes().await {
        Ok(b) => b,
        // The head arrived but the body did not: the server may have acted, and we cannot show
        // its answer. Treat it as a lost connection so the same key is retried.
        Err(e) => return Attempt::Failed(transport_kind(&e), error_chain(&e)),
    };
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| policy::parse_retry_after(v, SystemTime::now()));
    let in_progress = status == StatusCode::CONFLICT
        && policy::is_request_in_progress(
            headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            &body,
        );
    let outcome = Outcome::Status {
        status: status.as_u16(),
        retry_after,
        in_progress,
    };
    Attempt::Answer(
        Box::new(Response {
            status,
            headers,
            body,
            attempts: attempt,
            key: key.to_owned(),
            key_source,
        }),
        outcome,
    )
}

fn transport_kind(e: &reqwest::Error) -> TransportKind {
    if e.is_builder() || e.is_redirect() {
        TransportKind::Other
    } else if e.is_timeout() {
        TransportKind::Timeout
    } else if e.is_connect() {
        TransportKind::Connect
    } else {
        // A request, body or decode error after connecting: the request may have reached the
        // server. Retrying with the same key is exactly the safe move.
        TransportKind::Closed
    }
}

/// reqwest's top-level message ("error sending request for url (...)") repeats what the caller
/// knows; the innermost cause says what happened ("Connection refused (os error 111)"). One line.
fn error_chain(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg = s.to_string();
        source = s.source();
    }
    msg.replace('\n', " ")
}
