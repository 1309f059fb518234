//! The engine's own metrics: requests by outcome, lease takeovers, refused stale completions,
//! and how long the wrapped service took to answer. An [`OutcomeObserver`], so the gateway and
//! any service using the layer get the same counters.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use oncely_core::RecordKey;
use oncely_metrics::{Counter, Histogram, Text};

use crate::{Outcome, OutcomeObserver};
use oncely_core::sync::LockIgnoringPoison;

/// Outcomes that end a request, each counted under its name.
const REQUEST_OUTCOMES: [Outcome; 17] = [
    Outcome::Executed,
    Outcome::Replayed,
    Outcome::WaitedThenReplayed,
    Outcome::InFlightRejected,
    Outcome::Mismatch,
    Outcome::MissingKey,
    Outcome::InvalidKey,
    Outcome::PreconditionRequired,
    Outcome::InvalidPrecondition,
    Outcome::BodyTooLarge,
    Outcome::BodyUnreadable,
    Outcome::BodyTimedOut,
    Outcome::Released,
    Outcome::UnknownOutcome,
    Outcome::UpstreamUnreachable,
    Outcome::StoreUnavailable,
    Outcome::PassedThrough,
];

/// How many recent takeovers are kept for the admin API.
pub const RECENT_TAKEOVERS: usize = 100;

/// A takeover as the admin API lists it: which key, and when (ms since the epoch, this
/// host's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Takeover {
    /// The key that was taken over.
    pub key: RecordKey,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// The engine's series for `/metrics`: requests by outcome, lease takeovers (and the last
/// [`RECENT_TAKEOVERS`] of them for the admin API), refused stale completions, and the
/// wrapped service's latency. Install it with
/// [`Engine::with_observer`](crate::Engine::with_observer).
#[derive(Debug, Default)]
pub struct EngineMetrics {
    requests: [Counter; REQUEST_OUTCOMES.len()],
    takeovers: Counter,
    recent_takeovers: Mutex<VecDeque<Takeover>>,
    stale_completions: Counter,
    upstream: Histogram,
    upstream_failed: Counter,
}

impl EngineMetrics {
    /// Every series at zero.
    pub fn new() -> Self {
        EngineMetrics::default()
    }

    /// Requests counted under `label` (`"executed"`, `"replayed"`, ...).
    pub fn requests(&self, label: &str) -> u64 {
        REQUEST_OUTCOMES
            .iter()
            .position(|o| o.name() == label)
            .map(|i| self.requests[i].get())
            .unwrap_or(0)
    }

    /// Takeovers since this value was made.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.get()
    }

    /// The last takeovers, newest first.
    pub fn recent_takeovers(&self) -> Vec<Takeover> {
        let q = self.recent_takeovers.lock_ignoring_poison();
        q.iter().rev().cloned().collect()
    }

    /// Appends every series in the Prometheus text format, one `oncely_requests_total` per
    /// outcome, zeros included; a refused stale completion also counts as executed.
    pub fn render(&self, t: &mut Text) {
        t.family(
            "oncely_requests_total",
            "counter",
            "Requests by how the idempotency engine answered them.",
        );
        for (i, label) in REQUEST_OUTCOMES.iter().map(|o| o.name()).enumerate() {
            t.counter(
                "oncely_requests_total",
                &[("outcome", label)],
                &self.requests[i],
            );
        }
        t.family(
            "oncely_lease_takeovers_total",
            "counter",
            "Claims that took over a key whose holder's lease had expired (a crashed or frozen holder).",
        );
        t.counter("oncely_lease_takeovers_total", &[], &self.takeovers);
        t.family(
            "oncely_stale_completions_refused_total",
            "counter",
            "Completions refused because the holder's lease had been taken over meanwhile.",
        );
        t.counter(
            "oncely_stale_completions_refused_total",
            &[],
            &self.stale_completions,
        );
        t.family(
            "oncely_upstream_duration_seconds",
            "histogram",
            "Time from forwarding a request until the upstream's response head (or failure).",
        );
        t.histogram("oncely_upstream_duration_seconds", &[], &self.upstream);
        t.family(
            "oncely_upstream_failures_total",
            "counter",
            "Forwarded requests that got no response (unreachable, reset, timed out).",
        );
        t.counter("oncely_upstream_failures_total", &[], &self.upstream_failed);
    }
}

impl OutcomeObserver for EngineMetrics {
    fn observe(&self, outcome: Outcome) {
        let counted_as = match outcome {
            // The request did execute; only its record belongs to the successor.
            Outcome::StaleCompletionRefused => {
                self.stale_completions.inc();
                Outcome::Executed
            }
            other => other,
        };
        if let Some(i) = REQUEST_OUTCOMES.iter().position(|o| *o == counted_as) {
            self.requests[i].inc();
        }
    }

    fn takeover(&self, key: &RecordKey) {
        self.takeovers.inc();
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let mut q = self.recent_takeovers.lock_ignoring_poison();
        if q.len() == RECENT_TAKEOVERS {
            q.pop_front();
        }
        q.push_back(Takeover {
            key: key.clone(),
            at_ms,
        });
    }

    fn upstream(&self, elapsed: Duration, answered: bool) {
        self.upstream.observe(elapsed);
        if !answered {
            self.upstream_failed.inc();
        }
    }
}
