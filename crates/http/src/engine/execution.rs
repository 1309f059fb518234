//! Running a claimed request: inline, but never cancelled half way when its client leaves,
//! and never ending without a decision about its key.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use oncely_core::{LeaseToken, RecordKey};

use super::{Answered, Engine, Outcome, RequestFacts};
use crate::policy::{RoutePolicy, UnknownOutcomePolicy};

/// Polls its future inline; if dropped before the future finished, spawns the rest of it so
/// it still completes (and stores or releases its key) after the caller went away.
pub(super) struct RunToCompletion<F: Future + Send + 'static>
where
    F::Output: Send + 'static,
{
    pub(super) fut: Option<Pin<Box<F>>>,
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
pub(super) struct ClaimGuard {
    pub(super) engine: Arc<Engine>,
    pub(super) key: RecordKey,
    pub(super) token: LeaseToken,
    pub(super) policy: Arc<RoutePolicy>,
    pub(super) armed: bool,
    /// For the report of an execution that ended without deciding.
    pub(super) facts: Option<RequestFacts>,
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // No answer reached the client; 500 is what it would have been.
        let answered = Answered {
            key: &self.key,
            facts: self.facts.as_ref(),
            status: 500,
        };
        self.engine.observe(Outcome::UnknownOutcome, Some(answered));
        if self.policy.unknown_outcome == UnknownOutcomePolicy::Release {
            let (engine, key, token) = (self.engine.clone(), self.key.clone(), self.token);
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { engine.release(&key, token).await });
            }
        }
    }
}
