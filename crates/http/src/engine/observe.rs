//! What the engine tells observers: each request's outcome, the keyed answers with their
//! request (the audit trail's source), the upstream's latency and takeovers.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::RecordKey;

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
    /// 400 `missing-idempotency-key`: the route requires a key and none was sent.
    MissingKey,
    /// 400 `invalid-idempotency-key`: the key was malformed or sent twice.
    InvalidKey,
    /// 428 `precondition-required`: the route requires a precondition on this method and
    /// none was sent; nothing was claimed or forwarded.
    PreconditionRequired,
    /// 400 `invalid-precondition`: `If-Match` or `If-None-Match` is malformed on a route that
    /// requires a precondition.
    InvalidPrecondition,
    /// 413 `request-body-too-large`: the keyed body passed the route's `max_body`; nothing
    /// was claimed.
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
    /// 503 `idempotency-store-unavailable`: the store failed and the request was not
    /// forwarded (fail closed, or fail open after a live holder of the key was seen).
    StoreUnavailable,
    /// Not a keyed request (or fail-open): forwarded untouched.
    PassedThrough,
    /// The request executed, but its completion was refused because its lease had been
    /// taken over meanwhile (the successor's outcome stands). Counted as executed, and apart.
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
            Outcome::PreconditionRequired => "precondition_required",
            Outcome::InvalidPrecondition => "invalid_precondition",
            Outcome::BodyTooLarge => "body_too_large",
            Outcome::BodyUnreadable => "body_unreadable",
            Outcome::BodyTimedOut => "body_timeout",
            Outcome::Released => "released",
            Outcome::UnknownOutcome => "unknown_outcome",
            Outcome::UpstreamUnreachable => "upstream_unreachable",
            Outcome::StoreUnavailable => "store_unavailable",
            Outcome::PassedThrough => "passed_through",
            Outcome::StaleCompletionRefused => "stale_completion_refused",
        }
    }
}

/// Learns what the engine does with each request: the gateway's metrics and its audit trail
/// implement it. Calls are made on the request's task, so they must be quick and must never
/// block; only [`observe`](Self::observe) must be written, the rest default to nothing.
pub trait OutcomeObserver: Send + Sync + 'static {
    /// How one request ended; called once per request.
    fn observe(&self, outcome: Outcome);
    /// How long the wrapped service took to its response head, and whether it answered.
    fn upstream(&self, _elapsed: Duration, _answered: bool) {}
    /// A claim took over `key`, whose holder's lease had expired: an event, not how a
    /// request ended (the request that took over goes on to its own outcome).
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
    /// The request's headers as the engine received them, credentials included: an
    /// observer keeps only what it needs.
    pub headers: http::HeaderMap,
    /// The request's extensions, such as the [`Correlation`](crate::Correlation) ids.
    pub extensions: http::Extensions,
}

/// One keyed request's answer, as [`OutcomeObserver::answered`] learns it.
#[derive(Debug)]
pub struct Answer<'a> {
    /// How the request ended, as [`OutcomeObserver::observe`] is also told.
    pub outcome: Outcome,
    /// The record the request was judged under.
    pub key: &'a RecordKey,
    /// The status the client was answered (or would have been, had it waited).
    pub status: u16,
    /// The request's headers and extensions.
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
