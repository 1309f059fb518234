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
//!
//! The parts by job: `observe` (what observers are told), `upstream` (the inner call and its
//! failure classes), `execution` (running a claimed request to a decision), and here the
//! decision flow itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use oncely_core::conditional::Preconditions;
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

mod execution;
mod observe;
mod upstream;

use execution::{ClaimGuard, RunToCompletion};
pub use observe::{Answer, Observers, Outcome, OutcomeObserver, RequestFacts};
use upstream::Upstream;
pub use upstream::{Forward, ForwardFuture, UpstreamError, UpstreamErrorKind};

/// The idempotency engine: answers every request as the contract says (docs/contract.md),
/// calls the inner service at most once per request, and never forwards a keyed request it
/// has not claimed. One engine is shared, behind an `Arc`, by every connection;
/// [`IdempotencyLayer`](crate::IdempotencyLayer) carries it as a tower layer.
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
    /// An engine claiming records in `store` for the requests `routes` key. `clock` serves
    /// only the engine's own decisions (when a replay cache entry expires, when a waiting
    /// duplicate claims again); leases and retention are decided on the store's clock. The
    /// replay cache holds [`DEFAULT_REPLAY_CACHE_BYTES`] and the body timeout is
    /// [`DEFAULT_BODY_TIMEOUT`] until changed.
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

    /// Reports every outcome to `observer` (use [`Observers`] for several). Without one,
    /// nothing is reported.
    pub fn with_observer(mut self, observer: Arc<dyn OutcomeObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The store as a trait object: calling through `Arc<dyn ...>` directly would pick the
    /// forwarding impl for `Arc<S>`, one more boxed future per store call.
    fn records(&self) -> &dyn IdempotencyStore {
        &*self.store
    }

    /// The store this engine claims records in.
    pub fn store(&self) -> &Arc<dyn IdempotencyStore> {
        &self.store
    }

    /// Drops `key` from this engine's replay cache. Called after an operator evicted the key
    /// from the store ([`oncely_store::StoreAdmin::evict`]), so that its next request here
    /// executes again. Other gateways sharing the store may still replay a completed key from
    /// their own caches until those entries expire.
    pub fn forget(&self, key: &RecordKey) {
        self.cache.remove(key);
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

    /// The one way observers are told anything about a request: its outcome, and for a
    /// keyed request that reached the claim, how it was answered.
    fn observe(&self, outcome: Outcome, answered: Option<Answered<'_>>) {
        tracing::debug!(?outcome, "idempotency outcome");
        let Some(o) = &self.observer else {
            return;
        };
        o.observe(outcome);
        if let Some(Answered {
            key,
            facts: Some(request),
            status,
        }) = answered
        {
            o.answered(&Answer {
                outcome,
                key,
                status,
                request,
            });
        }
    }

    /// Observes how `job` was answered and hands `resp` on.
    fn answer(&self, job: &Job, outcome: Outcome, resp: Response<BoxBody>) -> Response<BoxBody> {
        let answered = Answered {
            key: &job.record_key,
            facts: job.facts.as_ref(),
            status: resp.status().as_u16(),
        };
        self.observe(outcome, Some(answered));
        resp
    }

    /// 428 for a write without a precondition, 400 for a malformed one; `None` when the
    /// request may go on.
    fn refuse_unconditional(&self, req: &Request<BoxBody>) -> Option<Response<BoxBody>> {
        match Preconditions::from_headers(req.headers()) {
            Err(e) => {
                self.observe(Outcome::InvalidPrecondition, None);
                Some(problem_default(
                    ProblemKind::InvalidPrecondition,
                    &e.to_string(),
                ))
            }
            Ok(p) if !p.guards_a_write() => {
                self.observe(Outcome::PreconditionRequired, None);
                Some(problem_default(
                    ProblemKind::PreconditionRequired,
                    &format!(
                        "{} {} changes a resource only with If-Match naming the version it \
                         was based on (its ETag); read it first",
                        req.method(),
                        req.uri().path()
                    ),
                ))
            }
            Ok(_) => None,
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
            .route_for(req.method(), req.uri().path())
            .cloned()
        else {
            return self.pass_through(inner, req).await;
        };
        // Before the key: a write that names no version is refused whether or not it is a
        // retry, so the answer is the same on every attempt and nothing is claimed for it.
        if policy.precondition.applies_to(req.method()) {
            if let Some(refusal) = self.refuse_unconditional(&req) {
                return refusal;
            }
        }
        if policy.key == KeyRequirement::Ignored {
            return self.pass_through(inner, req).await;
        }
        let key = match key_of(req.headers()) {
            None if policy.key == KeyRequirement::Required => {
                self.observe(Outcome::MissingKey, None);
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
                self.observe(Outcome::InvalidKey, None);
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
                self.observe(Outcome::BodyTooLarge, None);
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
                self.observe(Outcome::BodyUnreadable, None);
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
            return self.answer(&job, Outcome::Replayed, replay(hit.response));
        }
        let mut waited = false;
        loop {
            let claim = self
                .records()
                .claim(&job.record_key, job.fingerprint, p.lease, p.ttl)
                .await;
            let existing = match claim {
                Err(e) => return self.store_failed(inner, job, e, !waited).await,
                Ok(ClaimOutcome::Claimed {
                    token, takeover, ..
                }) => {
                    if takeover {
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
                    return self.answer(&job, outcome, replay(stored));
                }
                ExistingDecision::KeyReused => return self.mismatch(&job),
                ExistingDecision::InProgress { .. } => {
                    let Some(deadline) = wait_deadline else {
                        return self.in_flight(&job);
                    };
                    waited = true;
                    match self.wait_for_holder(&job, deadline).await {
                        WaitEnd::Replay(stored) => {
                            return self.answer(&job, Outcome::WaitedThenReplayed, replay(stored));
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
            let record = match self.records().get(&job.record_key).await {
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
        let answered = Answered {
            key: &record_key,
            facts: facts.as_ref(),
            status: response.status().as_u16(),
        };
        self.observe(outcome, Some(answered));
        response
    }

    /// Keeps the lease alive while the upstream works, so a live holder is never taken over.
    /// Never returns while renewals succeed; after a refusal (the key was taken over or
    /// evicted) it stops renewing and waits forever.
    async fn renew_lease(&self, key: &RecordKey, token: LeaseToken, policy: &RoutePolicy) {
        if policy.renew_lease {
            let every = (policy.lease / 3).max(Duration::from_millis(10));
            loop {
                tokio::time::sleep(every).await;
                match self.records().renew(key, token, policy.lease).await {
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
                .records()
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
        if let Err(e) = self.records().release(key, token).await {
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
        // A record that does not read (a sealed one whose key is missing, say) is there:
        // forwarding unprotected would execute the request again.
        let mode = if may_fail_open && !matches!(err, StoreError::Corrupt(_)) {
            job.policy.store_failure
        } else {
            StoreFailureMode::FailClosed
        };
        match mode {
            StoreFailureMode::FailClosed => self.answer(
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
                let Job {
                    parts,
                    body,
                    record_key,
                    facts,
                    ..
                } = job;
                let resp = self
                    .forward_unprotected(inner, Request::from_parts(parts, full(body)))
                    .await;
                let answered = Answered {
                    key: &record_key,
                    facts: facts.as_ref(),
                    status: resp.status().as_u16(),
                };
                self.observe(Outcome::PassedThrough, Some(answered));
                resp
            }
        }
    }

    async fn pass_through(&self, inner: Forward, req: Request<BoxBody>) -> Response<BoxBody> {
        self.observe(Outcome::PassedThrough, None);
        self.forward_unprotected(inner, req).await
    }

    /// Forwards without a claim, problems for the upstream's failures.
    async fn forward_unprotected(
        &self,
        inner: Forward,
        req: Request<BoxBody>,
    ) -> Response<BoxBody> {
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
        self.observe(Outcome::BodyTimedOut, None);
        request_timeout(&format!(
            "the request body did not arrive in time ({timeout}); nothing was executed, send it again"
        ))
    }

    fn mismatch(&self, job: &Job) -> Response<BoxBody> {
        let resp = problem(
            ProblemKind::KeyReused,
            job.policy.mismatch_status,
            "this key was first used with a different request (method, path, content type or body); use a new key for a new request",
        );
        self.answer(job, Outcome::Mismatch, resp)
    }

    fn in_flight(&self, job: &Job) -> Response<BoxBody> {
        let resp = with_retry_after(
            problem_default(
                ProblemKind::RequestInProgress,
                "the first request with this key has not finished; retry after the delay",
            ),
            job.policy.retry_after.as_secs(),
        );
        self.answer(job, Outcome::InFlightRejected, resp)
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

/// Put in the extensions of every request the engine forwards under a claimed key.
///
/// The gateway's forwarder ignores it; an application behind [`crate::IdempotencyLayer`]
/// reads it to tie work of its own (multi-step operations with recovery points) to the same
/// (tenant, method, route, key) and request fingerprint that the layer judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The record the request runs under: tenant, method, path and key.
    pub record_key: RecordKey,
    /// The fingerprint the request was judged by; a retry with another one never reaches
    /// the service.
    pub fingerprint: Fingerprint,
}

/// How a keyed request was answered, for [`Engine::observe`].
struct Answered<'a> {
    key: &'a RecordKey,
    /// Present when an observer asked for each answer with its request.
    facts: Option<&'a RequestFacts>,
    status: u16,
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
