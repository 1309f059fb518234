//! The engine: one request through the contract.
//!
//! ```text
//! route? --no--> pass through (streamed)
//!   key? --absent--> 400 (required) / pass through (optional)
//!   key valid? --no--> 400 invalid-idempotency-key
//!   body within limit? --no--> 413
//!   claim(scope, key, fingerprint)
//!     store down          -> 503 (fail closed) / pass through (fail open)
//!     claimed             -> execute (renewing the lease), then complete or release
//!     exists, other fp    -> 422 (or 409)
//!     exists, completed   -> replay + Idempotent-Replayed: true
//!     exists, in flight   -> 409 + Retry-After, or wait (bounded) and replay
//! ```
//!
//! An execution runs inline, but if its client hangs up mid-request the rest of it is spawned
//! (`RunToCompletion`), so the upstream call is never cancelled half way: the outcome is
//! still stored and the client's retry replays it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use oncely_core::record::{decide_existing, ExistingDecision};
use oncely_core::{
    parse_idempotency_key, ClaimOutcome, Clock, Fingerprint, IdempotencyKey, KeyError, LeaseToken,
    ProblemKind, RecordKey, Refusal, StoredResponse,
};
use oncely_store::{IdempotencyStore, StoreError};
use tokio_util::task::TaskTracker;

use crate::body::{buffer, full, BodyTimedOut, BoxBody, BoxError, Buffered, Prefixed};
use crate::cache::{Entry as CacheEntry, ReplayCache};
use crate::policy::{
    InFlightMode, KeyRequirement, RoutePolicy, Routes, StoreFailureMode, UnknownOutcomePolicy,
};
use crate::problem::{problem, problem_default, with_retry_after};
use crate::wait::Waiters;
use crate::{headers, IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED};

/// The one call to the wrapped service, boxed so the engine is not generic over it.
pub type Forward = Box<dyn FnOnce(Request<BoxBody>) -> ForwardFuture + Send>;
pub type ForwardFuture =
    Pin<Box<dyn Future<Output = Result<Response<BoxBody>, BoxError>> + Send + 'static>>;

/// What happened to one request; reported to the [`OutcomeObserver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Claimed, forwarded, and the response stored.
    Executed,
    /// Answered from the store.
    Replayed,
    /// A duplicate that waited for the first request and was then replayed.
    WaitedThenReplayed,
    /// 409 `request-in-progress`.
    InFlightRejected,
    /// 422/409 `idempotency-key-reused`.
    Mismatch,
    MissingKey,
    InvalidKey,
    BodyTooLarge,
    /// The request body broke off before it was read whole.
    BodyUnreadable,
    /// 408: the request body stalled, or took longer than allowed in all.
    BodyTimedOut,
    /// The upstream answered a status that is not stored (5xx, 408, 429...): key released.
    Released,
    /// The upstream may or may not have acted (timeout or reset after sending).
    UnknownOutcome,
    /// The upstream could not be reached before anything was sent: key released.
    UpstreamUnreachable,
    StoreUnavailable,
    /// Not a keyed request (or fail-open): forwarded untouched.
    PassedThrough,
    /// A claim took over a key whose holder's lease had expired.
    Takeover,
    /// A holder's completion was refused because its lease had been taken over.
    StaleCompletionRefused,
}

impl Outcome {
    /// The outcome's name, as metrics label it and audit events record it.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Executed => "executed",
            Outcome::Replayed => "replayed",
            Outcome::WaitedThenReplayed => "waited",
            Outcome::InFlightRejected => "in_flight_rejected",
            Outcome::Mismatch => "mismatch",
            Outcome::MissingKey => "missing_key",
            Outcome::InvalidKey => "invalid_key",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::BodyUnreadable => "body_unreadable",
            Outcome::BodyTimedOut => "body_timeout",
            Outcome::Released => "released",
            Outcome::UnknownOutcome => "unknown_outcome",
            Outcome::UpstreamUnreachable => "upstream_unreachable",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::PassedThrough => "passed_through",
            Outcome::Takeover => "takeover",
            Outcome::StaleCompletionRefused => "stale_completion_refused",
        }
    }
}

pub trait OutcomeObserver: Send + Sync + 'static {
    fn observe(&self, outcome: Outcome);
    /// How long the wrapped service took to its response head, and whether it answered.
    fn upstream(&self, _elapsed: Duration, _answered: bool) {}
    /// Which key a takeover was of (besides `observe(Outcome::Takeover)`).
    fn takeover(&self, _key: &RecordKey) {}
    /// Whether this observer wants [`OutcomeObserver::answered`] calls: the engine keeps a
    /// copy of each keyed request's headers for them, so it asks first.
    fn wants_answers(&self) -> bool {
        false
    }
    /// How a request with a valid key was answered, with the request it came with. Called
    /// once per request that reached the claim (a valid key and a body within the limit),
    /// also when the client hung up and the execution finished without it, and when an
    /// execution ended without deciding (a panic: `UnknownOutcome`, status 500). Requests
    /// refused before (missing or invalid key, body too large or unreadable) are only
    /// observed.
    fn answered(&self, _answer: &Answer<'_>) {}
}

/// A keyed request as the engine received it, kept for observers that record every answer
/// (the audit trail): its headers and its extensions (the gateway's client address, the
/// correlation ids).
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    pub headers: http::HeaderMap,
    pub extensions: http::Extensions,
}

/// One keyed request's answer, as [`OutcomeObserver::answered`] learns it.
#[derive(Debug)]
pub struct Answer<'a> {
    pub outcome: Outcome,
    pub key: &'a RecordKey,
    /// The status the client was answered (or would have been, had it waited).
    pub status: u16,
    pub request: &'a RequestFacts,
}

/// Several observers as one: the gateway's metrics and its audit trail.
pub struct Observers(pub Vec<Arc<dyn OutcomeObserver>>);

impl OutcomeObserver for Observers {
    fn observe(&self, outcome: Outcome) {
        self.0.iter().for_each(|o| o.observe(outcome));
    }
    fn upstream(&self, elapsed: Duration, answered: bool) {
        self.0.iter().for_each(|o| o.upstream(elapsed, answered));
    }
    fn takeover(&self, key: &RecordKey) {
        self.0.iter().for_each(|o| o.takeover(key));
    }
    fn wants_answers(&self) -> bool {
        self.0.iter().any(|o| o.wants_answers())
    }
    fn answered(&self, answer: &Answer<'_>) {
        self.0
            .iter()
            .filter(|o| o.wants_answers())
            .for_each(|o| o.answered(answer));
    }
}

/// How an upstream call failed, as far as idempotency cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// Nothing reached the upstream (connect refused, DNS...): safe to release the key.
    NotSent,
    /// The request may have been received: the outcome is unknown.
    Unknown,
    /// No answer within the response timeout: the outcome is unknown.
    Timeout,
    /// The client's request body stalled while it was being streamed on; the upstream saw
    /// the request aborted. Only a request passed through can meet it: a keyed body is
    /// buffered before anything is forwarded.
    ClientBodyTimedOut,
}

/// The error a forwarding service returns so the engine can tell the cases apart. Any other
/// error type from an inner service is treated as [`UpstreamErrorKind::Unknown`].
#[derive(Debug)]
pub struct UpstreamError {
    pub kind: UpstreamErrorKind,
    pub message: String,
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UpstreamError {}

impl UpstreamError {
    pub fn new(kind: UpstreamErrorKind, message: impl Into<String>) -> Self {
        UpstreamError {
            kind,
            message: message.into(),
        }
    }

    fn classify(err: BoxError) -> UpstreamError {
        match err.downcast::<UpstreamError>() {
            Ok(e) => *e,
            Err(other) => UpstreamError::new(UpstreamErrorKind::Unknown, other.to_string()),
        }
    }
}

pub struct Engine {
    store: Arc<dyn IdempotencyStore>,
    clock: Arc<dyn Clock>,
    routes: Routes,
    waiters: Waiters,
    tasks: TaskTracker,
    observer: Option<Arc<dyn OutcomeObserver>>,
    cache: ReplayCache,
    body_timeout: Duration,
}

/// Default size of the replay cache of completed records.
pub const DEFAULT_REPLAY_CACHE_BYTES: usize = 64 << 20;

/// Default time allowed for a keyed request's whole body to arrive.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(120);

impl Engine {
    pub fn new(store: Arc<dyn IdempotencyStore>, clock: Arc<dyn Clock>, routes: Routes) -> Self {
        Engine {
            store,
            clock,
            routes,
            waiters: Waiters::new(),
            tasks: TaskTracker::new(),
            observer: None,
            cache: ReplayCache::new(DEFAULT_REPLAY_CACHE_BYTES),
            body_timeout: DEFAULT_BODY_TIMEOUT,
        }
    }

    /// How long a keyed request's body may take to arrive in all before it is answered 408
    /// (nothing is claimed for it). Stalls between chunks are the server's to cut: the
    /// gateway wraps every body in [`crate::body::IdleTimeout`].
    pub fn with_body_timeout(mut self, total: Duration) -> Self {
        self.body_timeout = total;
        self
    }

    /// Sizes the in-process cache of completed records (0 turns it off): retries of finished
    /// requests are then replayed without a store round trip.
    pub fn with_replay_cache(mut self, max_bytes: usize) -> Self {
        self.cache = ReplayCache::new(max_bytes);
        self
    }

    fn remember(&self, key: &RecordKey, record: &oncely_core::Record, ttl: Duration) {
        if let oncely_core::RecordState::Completed { response } = &record.state {
            let now = self.clock.now();
            let entry = CacheEntry {
                fingerprint: record.fingerprint,
                // `expires_at` is on the store's clock, which for a shared store is not ours:
                // a gateway whose clock runs behind the database's would otherwise replay
                // from memory long after the record expired. Capping at our now + TTL bounds
                // that: the entry never outlives the record by more than the record's age.
                expires_at: record.expires_at.min(now.plus(ttl)),
                response: response.clone(),
            };
            self.cache.insert(key.clone(), entry, now);
        }
    }

    pub fn with_observer(mut self, observer: Arc<dyn OutcomeObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    pub fn store(&self) -> &Arc<dyn IdempotencyStore> {
        &self.store
    }

    /// An operator's eviction: deletes the key's record from the store and from this engine's
    /// replay cache, so that its next request executes again. Other gateways sharing the store
    /// may still replay a completed key from their own caches until those entries expire.
    pub async fn evict(&self, key: &RecordKey) -> Result<bool, StoreError> {
        let evicted = self.store.evict(key).await;
        self.cache.remove(key);
        evicted
    }

    /// Waits up to `grace` for executions in flight to complete or release their keys.
    /// Returns false if some were still running when the grace period ended; their keys stay
    /// held until their leases expire, as for any unknown outcome.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(grace, self.tasks.wait()).await.is_ok()
    }

    /// Executions currently running.
    pub fn executions_in_flight(&self) -> usize {
        self.tasks.len()
    }

    /// The one call to the inner service, timed for the observer. The problem marker an
    /// in-process inner service's response may carry is dropped: only the engine's own
    /// answers are rewritten by the correlation layer, never a response that may be stored
    /// and replayed.
    async fn call_inner(&self, call: ForwardFuture) -> Result<Response<BoxBody>, BoxError> {
        let started = std::time::Instant::now();
        let r = call.await.map(|mut resp| {
            resp.extensions_mut()
                .remove::<crate::problem::ProblemDetail>();
            resp
        });
        if let Some(o) = &self.observer {
            o.upstream(started.elapsed(), r.is_ok());
        }
        r
    }

    fn observe(&self, outcome: Outcome) {
        tracing::debug!(?outcome, "idempotency outcome");
        if let Some(o) = &self.observer {
            o.observe(outcome);
        }
    }

    /// Observes how a keyed request was answered and hands `resp` on.
    fn answer(
        &self,
        key: &RecordKey,
        facts: Option<&RequestFacts>,
        outcome: Outcome,
        resp: Response<BoxBody>,
    ) -> Response<BoxBody> {
        self.observe(outcome);
        self.report(key, facts, outcome, resp.status().as_u16());
        resp
    }

    /// Tells an observer that wants them of a keyed request's answer.
    fn report(&self, key: &RecordKey, facts: Option<&RequestFacts>, outcome: Outcome, status: u16) {
        if let (Some(o), Some(request)) = (&self.observer, facts) {
            o.answered(&Answer {
                outcome,
                key,
                status,
                request,
            });
        }
    }

    /// Answers one request, calling `inner` at most once.
    pub async fn handle(
        self: Arc<Self>,
        inner: Forward,
        req: Request<BoxBody>,
    ) -> Response<BoxBody> {
        let Some(policy) = self
            .routes
            .policy_for(req.method(), req.uri().path())
            .cloned()
        else {
            return self.pass_through(inner, req).await;
        };
        let key = match key_of(req.headers()) {
            None if policy.key == KeyRequirement::Required => {
                self.observe(Outcome::MissingKey);
                return problem_default(
                    ProblemKind::MissingKey,
                    &format!(
                        "{} {} requires an Idempotency-Key header",
                        req.method(),
                        req.uri().path()
                    ),
                );
            }
            None => return self.pass_through(inner, req).await,
            Some(Err(e)) => {
                self.observe(Outcome::InvalidKey);
                return problem_default(ProblemKind::InvalidKey, &e.to_string());
            }
            Some(Ok(k)) => k,
        };
        let (parts, body) = req.into_parts();
        let buffered = tokio::time::timeout(self.body_timeout, buffer(body, policy.max_body));
        let body = match buffered.await {
            Err(_) => return self.body_timed_out(BodyTimedOut::Total(self.body_timeout)),
            Ok(Ok(Buffered::Complete(b))) => b,
            Ok(Ok(Buffered::TooLarge { .. })) => {
                self.observe(Outcome::BodyTooLarge);
                return problem_default(
                    ProblemKind::BodyTooLarge,
                    &format!(
                        "keyed request bodies are limited to {} bytes on this route",
                        policy.max_body
                    ),
                );
            }
            Ok(Err(e)) => {
                if let Some(timeout) = BodyTimedOut::find(e.as_ref()) {
                    return self.body_timed_out(timeout);
                }
                self.observe(Outcome::BodyUnreadable);
                return problem_default(ProblemKind::BodyUnreadable, &e.to_string());
            }
        };
        let tenant = policy.tenant.tenant_of(&parts.headers);
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let content_type = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        let fingerprint =
            Fingerprint::compute(parts.method.as_str(), path_and_query, content_type, &body);
        let record_key = RecordKey::new(tenant, parts.method.as_str(), parts.uri.path(), key);
        let facts = self
            .observer
            .as_ref()
            .is_some_and(|o| o.wants_answers())
            .then(|| RequestFacts {
                headers: parts.headers.clone(),
                extensions: parts.extensions.clone(),
            });
        let job = Job {
            parts,
            body,
            record_key,
            fingerprint,
            policy,
            facts,
        };
        self.claim_and_run(inner, job).await
    }

    async fn claim_and_run(self: Arc<Self>, inner: Forward, job: Job) -> Response<BoxBody> {
        let p = job.policy.clone();
        let wait_deadline = match p.in_flight {
            InFlightMode::Wait { max_wait } => Some(tokio::time::Instant::now() + max_wait),
            InFlightMode::Reject => None,
        };
        if let Some(hit) = self.cache.get(&job.record_key, self.clock.now()) {
            if hit.fingerprint != job.fingerprint {
                return self.mismatch(&job);
            }
            return self.answer_job(&job, Outcome::Replayed, replay(hit.response));
        }
        let mut waited = false;
        loop {
            let claim = self
                .store
                .claim(&job.record_key, job.fingerprint, p.lease, p.ttl)
                .await;
            let existing = match claim {
                Err(e) => return self.store_failed(inner, job, e, !waited).await,
                Ok(ClaimOutcome::Claimed {
                    token, takeover, ..
                }) => {
                    if takeover {
                        self.observe(Outcome::Takeover);
                        if let Some(o) = &self.observer {
                            o.takeover(&job.record_key);
                        }
                        tracing::info!(key = %job.record_key, "took over a key whose lease had expired");
                    }
                    return self.execute(inner, job, token).await;
                }
                Ok(ClaimOutcome::Exists(record)) => record,
            };
            self.remember(&job.record_key, &existing, p.ttl);
            match decide_existing(&existing, job.fingerprint) {
                ExistingDecision::Replay(stored) => {
                    let outcome = if waited {
                        Outcome::WaitedThenReplayed
                    } else {
                        Outcome::Replayed
                    };
                    return self.answer_job(&job, outcome, replay(stored));
                }
                ExistingDecision::KeyReused => return self.mismatch(&job),
                ExistingDecision::InProgress { .. } => {
                    let Some(deadline) = wait_deadline else {
                        return self.in_flight(&job);
                    };
                    waited = true;
                    match self.wait_for_holder(&job, deadline).await {
                        WaitEnd::Replay(stored) => {
                            return self.answer_job(
                                &job,
                                Outcome::WaitedThenReplayed,
                                replay(stored),
                            );
                        }
                        WaitEnd::Mismatch => return self.mismatch(&job),
                        WaitEnd::ClaimAgain => continue,
                        WaitEnd::TimedOut => return self.in_flight(&job),
                        WaitEnd::StoreFailed(e) => {
                            return self.store_failed(inner, job, e, false).await
                        }
                    }
                }
            }
        }
    }

    /// Holds a duplicate until the holder finishes, its lease lapses, or `deadline` passes.
    async fn wait_for_holder(&self, job: &Job, deadline: tokio::time::Instant) -> WaitEnd {
        let notify = self.waiters.shard(&job.record_key);
        let mut poll = Duration::from_millis(5);
        loop {
            // Register for the wake-up before reading, so a completion between the read and
            // the sleep is not missed.
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let record = match self.store.get(&job.record_key).await {
                Ok(Some(r)) => r,
                Ok(None) => return WaitEnd::ClaimAgain,
                Err(e) => return WaitEnd::StoreFailed(e),
            };
            let mut sleep_for = poll;
            match decide_existing(&record, job.fingerprint) {
                ExistingDecision::Replay(stored) => return WaitEnd::Replay(stored),
                ExistingDecision::KeyReused => return WaitEnd::Mismatch,
                ExistingDecision::InProgress { lease_expires_at } => {
                    let now = self.clock.now();
                    if lease_expires_at <= now {
                        // Pause before claiming: if the store's clock disagrees with ours, the
                        // claim finds the lease still live and we come back here, so this
                        // pause is what keeps that loop from spinning.
                        tokio::time::sleep(
                            poll.min(
                                deadline.saturating_duration_since(tokio::time::Instant::now()),
                            ),
                        )
                        .await;
                        return WaitEnd::ClaimAgain;
                    }
                    sleep_for = sleep_for.min(now.until(lease_expires_at));
                }
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return WaitEnd::TimedOut;
            }
            let wake_at = (now + sleep_for).min(deadline);
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(wake_at) => {}
            }
            // Another gateway may hold the key: poll, backing off to bound the store load.
            poll = (poll * 2).min(Duration::from_millis(100));
        }
    }

    async fn execute(
        self: Arc<Self>,
        inner: Forward,
        job: Job,
        token: LeaseToken,
    ) -> Response<BoxBody> {
        // Run inline (no task hand-off on the hot path), but never let a client that hangs up
        // cancel the execution half way: if this future is dropped, the rest runs detached.
        let run = self
            .tasks
            .track_future(self.clone().run_claimed(inner, job, token));
        RunToCompletion {
            fut: Some(Box::pin(run)),
        }
        .await
    }

    async fn run_claimed(
        self: Arc<Self>,
        inner: Forward,
        job: Job,
        token: LeaseToken,
    ) -> Response<BoxBody> {
        let Job {
            parts,
            body,
            record_key,
            policy,
            fingerprint,
            facts,
        } = job;
        let mut guard = ClaimGuard {
            engine: self.clone(),
            key: record_key.clone(),
            token,
            policy: policy.clone(),
            armed: true,
            facts,
        };
        let mut request = Request::from_parts(parts, full(body));
        // The inner service learns which key it runs under: an in-process handler builds its
        // own durable state (recovery points) on the very scope and fingerprint judged here.
        request.extensions_mut().insert(Claimed {
            record_key: record_key.clone(),
            fingerprint,
        });
        // The lease is renewed for as long as the upstream works: until its response headers
        // and, for a response to store, its whole body have arrived.
        let work = async {
            let response = self.call_inner(inner(request)).await?;
            if !policy.stored_statuses.is_stored(response.status().as_u16()) {
                return Ok(Upstream::NotStored(response));
            }
            let (rparts, rbody) = response.into_parts();
            match buffer(rbody, policy.max_response).await {
                Ok(Buffered::Complete(bytes)) => Ok(Upstream::Whole(rparts, bytes)),
                Ok(Buffered::TooLarge { read, rest }) => Ok(Upstream::TooLarge(
                    rparts,
                    crate::body::boxed(Prefixed::new(read, rest)),
                )),
                Err(e) => Err(UpstreamError::new(
                    UpstreamErrorKind::Unknown,
                    format!("the upstream response broke off: {e}"),
                )
                .into()),
            }
        };
        let result: Result<Upstream, BoxError> = tokio::select! {
            r = work => r,
            _ = self.renew_lease(&record_key, token, &policy) => Err("lease heartbeat ended unexpectedly".into()),
        };
        guard.armed = false;
        let facts = guard.facts.take();
        let (outcome, response) = match result {
            Err(err) => {
                let err = UpstreamError::classify(err);
                self.upstream_failed(&record_key, token, &policy, err).await
            }
            Ok(Upstream::NotStored(response)) => {
                self.release(&record_key, token).await;
                (Outcome::Released, response)
            }
            Ok(Upstream::Whole(rparts, bytes)) => {
                let stored = StoredResponse {
                    status: rparts.status.as_u16(),
                    headers: headers::stored_headers(&rparts.headers),
                    body: bytes.clone(),
                };
                let outcome = self
                    .complete(&record_key, fingerprint, token, stored, &policy)
                    .await;
                (outcome, Response::from_parts(rparts, full(bytes)))
            }
            Ok(Upstream::TooLarge(rparts, body)) => {
                tracing::warn!(key = %record_key, limit = policy.max_response, "response too large to store; passed on unstored");
                let outcome = self.unknown_outcome(&record_key, token, &policy).await;
                (outcome, Response::from_parts(rparts, body))
            }
        };
        self.answer(&record_key, facts.as_ref(), outcome, response)
    }

    /// Keeps the lease alive while the upstream works, so a live holder is never taken over.
    /// Never returns while renewals succeed; after a refusal (the key was taken over or
    /// evicted) it stops renewing and waits forever.
    async fn renew_lease(&self, key: &RecordKey, token: LeaseToken, policy: &RoutePolicy) {
        if policy.renew_lease {
            let every = (policy.lease / 3).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(every).await;
                match self.store.renew(key, token, policy.lease).await {
                    Ok(_) => {}
                    Err(StoreError::Refused(r)) => {
                        tracing::warn!(key = %key, reason = %r, "lease lost while the upstream was working");
                        break;
                    }
                    // A store blip: keep trying; the lease still has time left.
                    Err(e) => tracing::warn!(key = %key, error = %e, "lease renewal failed"),
                }
            }
        }
        std::future::pending::<()>().await
    }

    async fn complete(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        token: LeaseToken,
        stored: StoredResponse,
        policy: &RoutePolicy,
    ) -> Outcome {
        let mut attempt = 0;
        let result = loop {
            match self
                .store
                .complete(key, token, stored.clone(), policy.ttl)
                .await
            {
                Err(StoreError::Unavailable(e)) if attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(key = %key, error = %e, attempt, "storing the response failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
                }
                other => break other,
            }
        };
        let outcome = match result {
            Ok(()) => {
                // The store keeps the record at least this long (it may keep it longer).
                let now = self.clock.now();
                let entry = CacheEntry {
                    fingerprint,
                    expires_at: now.plus(policy.ttl),
                    response: stored,
                };
                self.cache.insert(key.clone(), entry, now);
                Outcome::Executed
            }
            Err(StoreError::Refused(Refusal::StaleToken)) => {
                // Our lease was taken over: the successor's outcome stands. The client still
                // gets the answer its own request produced.
                tracing::warn!(key = %key, "completion refused: the lease had been taken over");
                Outcome::StaleCompletionRefused
            }
            Err(StoreError::Refused(Refusal::Missing)) => {
                // An operator evicted the key while it ran: nothing is held any more, and the
                // next request with the key executes again.
                tracing::warn!(key = %key, "completion refused: the key was evicted meanwhile");
                Outcome::Executed
            }
            Err(e) => {
                tracing::error!(key = %key, error = %e, "the response could not be stored; the key stays held until its lease ends");
                Outcome::Executed
            }
        };
        self.waiters.wake(key);
        outcome
    }

    async fn release(&self, key: &RecordKey, token: LeaseToken) {
        if let Err(e) = self.store.release(key, token).await {
            // A refused release means someone else holds the key now; an unavailable store
            // means the lease will free it. Neither needs more from us.
            tracing::warn!(key = %key, error = %e, "releasing the key failed");
        }
        self.waiters.wake(key);
    }

    async fn unknown_outcome(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        policy: &RoutePolicy,
    ) -> Outcome {
        match policy.unknown_outcome {
            UnknownOutcomePolicy::Hold => self.waiters.wake(key),
            UnknownOutcomePolicy::Release => self.release(key, token).await,
        }
        Outcome::UnknownOutcome
    }

    async fn upstream_failed(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        policy: &RoutePolicy,
        err: UpstreamError,
    ) -> (Outcome, Response<BoxBody>) {
        match err.kind {
            UpstreamErrorKind::NotSent => {
                self.release(key, token).await;
                (
                    Outcome::UpstreamUnreachable,
                    problem_default(ProblemKind::UpstreamUnavailable, &err.message),
                )
            }
            UpstreamErrorKind::Unknown | UpstreamErrorKind::ClientBodyTimedOut => (
                self.unknown_outcome(key, token, policy).await,
                problem_default(
                    ProblemKind::UpstreamUnavailable,
                    &unknown_detail(&err, policy),
                ),
            ),
            UpstreamErrorKind::Timeout => (
                self.unknown_outcome(key, token, policy).await,
                problem_default(ProblemKind::UpstreamTimeout, &unknown_detail(&err, policy)),
            ),
        }
    }

    /// `may_fail_open` is false once this request has seen a live holder of its key: forwarding
    /// it then would run it beside the first execution, so it fails closed whatever the policy.
    async fn store_failed(
        &self,
        inner: Forward,
        job: Job,
        err: StoreError,
        may_fail_open: bool,
    ) -> Response<BoxBody> {
        tracing::error!(key = %job.record_key, error = %err, "idempotency store failed");
        let mode = if may_fail_open {
            job.policy.store_failure
        } else {
            StoreFailureMode::FailClosed
        };
        match mode {
            StoreFailureMode::FailClosed => self.answer_job(
                &job,
                Outcome::StoreUnavailable,
                with_retry_after(
                    problem_default(
                        ProblemKind::StoreUnavailable,
                        "the request was not forwarded; retry with the same key",
                    ),
                    1,
                ),
            ),
            StoreFailureMode::FailOpen => {
                // Forwarded unprotected: counted as passed through, and reported as such
                // with its key, so the audit trail shows which keyed requests were.
                let req = Request::from_parts(job.parts, full(job.body));
                let resp = self.pass_through(inner, req).await;
                let status = resp.status().as_u16();
                self.report(
                    &job.record_key,
                    job.facts.as_ref(),
                    Outcome::PassedThrough,
                    status,
                );
                resp
            }
        }
    }

    async fn pass_through(&self, inner: Forward, req: Request<BoxBody>) -> Response<BoxBody> {
        self.observe(Outcome::PassedThrough);
        match self.call_inner(inner(req)).await {
            Ok(resp) => resp,
            Err(e) => match UpstreamError::classify(e) {
                e if e.kind == UpstreamErrorKind::Timeout => {
                    problem_default(ProblemKind::UpstreamTimeout, &e.message)
                }
                e if e.kind == UpstreamErrorKind::ClientBodyTimedOut => request_timeout(&e.message),
                e => problem_default(ProblemKind::UpstreamUnavailable, &e.message),
            },
        }
    }

    /// A keyed body that did not arrive in time: nothing was claimed, so nothing is held.
    fn body_timed_out(&self, timeout: BodyTimedOut) -> Response<BoxBody> {
        self.observe(Outcome::BodyTimedOut);
        request_timeout(&format!(
            "the request body did not arrive in time ({timeout}); nothing was executed, send it again"
        ))
    }

    fn answer_job(
        &self,
        job: &Job,
        outcome: Outcome,
        resp: Response<BoxBody>,
    ) -> Response<BoxBody> {
        self.answer(&job.record_key, job.facts.as_ref(), outcome, resp)
    }

    fn mismatch(&self, job: &Job) -> Response<BoxBody> {
        let resp = problem(
            ProblemKind::KeyReused,
            job.policy.mismatch_status,
            "this key was first used with a different request (method, path, content type or body); use a new key for a new request",
        );
        self.answer_job(job, Outcome::Mismatch, resp)
    }

    fn in_flight(&self, job: &Job) -> Response<BoxBody> {
        let resp = with_retry_after(
            problem_default(
                ProblemKind::RequestInProgress,
                "the first request with this key has not finished; retry after the delay",
            ),
            job.policy.retry_after.as_secs(),
        );
        self.answer_job(job, Outcome::InFlightRejected, resp)
    }
}

/// 408, and the connection closed after it: what is left of the body is never read.
fn request_timeout(detail: &str) -> Response<BoxBody> {
    let mut resp = problem_default(ProblemKind::RequestTimeout, detail);
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

fn unknown_detail(err: &UpstreamError, policy: &RoutePolicy) -> String {
    match policy.unknown_outcome {
        UnknownOutcomePolicy::Hold => format!(
            "{}; the request may have been processed. The key stays reserved for up to {} s, then a retry with the same key is forwarded again",
            err.message,
            policy.lease.as_secs()
        ),
        UnknownOutcomePolicy::Release => {
            format!("{}; the request may have been processed. A retry with the same key is forwarded again", err.message)
        }
    }
}

/// What the upstream produced, once the engine has read what it needs of it.
enum Upstream {
    /// A status that is not stored: passed on (streamed), and the key released.
    NotStored(Response<BoxBody>),
    /// A stored status with its whole body.
    Whole(http::response::Parts, Bytes),
    /// A stored status whose body is larger than `max_response`: passed on unstored.
    TooLarge(http::response::Parts, BoxBody),
}

/// Put in the extensions of every request the engine forwards under a claimed key.
///
/// The gateway's forwarder ignores it; an application behind [`crate::IdempotencyLayer`]
/// reads it to tie work of its own (multi-step operations with recovery points) to the same
/// (tenant, method, route, key) and request fingerprint that the layer judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub record_key: RecordKey,
    pub fingerprint: Fingerprint,
}

struct Job {
    parts: http::request::Parts,
    body: Bytes,
    record_key: RecordKey,
    fingerprint: Fingerprint,
    policy: Arc<RoutePolicy>,
    /// The request's headers and extensions, when an observer wants each answer.
    facts: Option<RequestFacts>,
}

enum WaitEnd {
    Replay(StoredResponse),
    Mismatch,
    ClaimAgain,
    TimedOut,
    StoreFailed(StoreError),
}

/// Polls its future inline; if dropped before the future finished, spawns the rest of it so
/// it still completes (and stores or releases its key) after the caller went away.
struct RunToCompletion<F: Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    fut: Option<Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> Future for RunToCompletion<F>
where
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let Some(fut) = self.fut.as_mut() else {
            // Polled after completion: a caller bug; never complete twice.
            return std::task::Poll::Pending;
        };
        let out = fut.as_mut().poll(cx);
        if out.is_ready() {
            self.fut = None;
        }
        out
    }
}

impl<F: Future + Send + 'static> Drop for RunToCompletion<F>
where
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        if let Some(fut) = self.fut.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                // In the request's span, so the rest of its log lines still carry its ids.
                rt.spawn(tracing::Instrument::in_current_span(fut));
            }
        }
    }
}

/// Applies the unknown-outcome policy if an execution ends without deciding (it panicked, or
/// the runtime shut down under it).
struct ClaimGuard {
    engine: Arc<Engine>,
    key: RecordKey,
    token: LeaseToken,
    policy: Arc<RoutePolicy>,
    armed: bool,
    /// For the report of an execution that ended without deciding.
    facts: Option<RequestFacts>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.engine.observe(Outcome::UnknownOutcome);
        // No answer reached the client; 500 is what it would have been.
        self.engine
            .report(&self.key, self.facts.as_ref(), Outcome::UnknownOutcome, 500);
        if self.policy.unknown_outcome == UnknownOutcomePolicy::Release {
            let (engine, key, token) = (self.engine.clone(), self.key.clone(), self.token);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { engine.release(&key, token).await });
            }
        }
    }
}

fn key_of(headers: &http::HeaderMap) -> Option<Result<IdempotencyKey, KeyError>> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let first = values.next()?;
    if values.next().is_some() {
        return Some(Err(KeyError::Multiple));
    }
    Some(parse_idempotency_key(first.as_bytes()))
}

fn replay(stored: StoredResponse) -> Response<BoxBody> {
    let mut resp = Response::new(full(stored.body));
    *resp.status_mut() =
        StatusCode::from_u16(stored.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    for (name, value) in stored.headers {
        if let (Ok(n), Ok(v)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(&value),
        ) {
            h.append(n, v);
        }
    }
    h.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    resp
}
