//! The runner: claims due sagas and carries out what `oncely_core::saga::decide` says, one
//! transition at a time, each recorded (with the lease's fencing token) before the next
//! action begins. A runner that dies anywhere leaves the saga to another after its lease;
//! that one resumes with the same attempt and the same idempotency key, so a step whose
//! answer was lost is repeated safely, never doubled.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oncely_audit::{AuditWriter, Draft};
use oncely_core::saga::{decide, Action, Input, Outcome, Phase, SagaPlan, SagaState};
use oncely_core::Clock;

use crate::metrics::SagaMetrics;
use crate::{
    Claimed, Created, Direction, LogEntry, NewSaga, Recorded, SagaError, SagaStore, Transition,
};

/// What a step's action or compensation is given.
#[derive(Debug, Clone)]
pub struct StepContext {
    /// The saga's id.
    pub saga_id: String,
    /// The saga's input.
    pub input: serde_json::Value,
    /// The outputs of the steps completed so far, by step name.
    pub outputs: serde_json::Map<String, serde_json::Value>,
    /// The idempotency key to send: `{saga id}/{step}/do` or `/undo`, the same on every
    /// attempt.
    pub key: String,
    /// The attempt, from 1.
    pub attempt: u32,
    /// Why the saga turned back, while compensating (a declined card, a cancel, a deadline).
    pub failure: Option<String>,
}

/// Why a step's action or compensation did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// It may succeed if tried again (a timeout, a 503): retried with the same key.
    #[error("retryable: {0}")]
    Retryable(String),
    /// It failed for good (a declined card): before the pivot, the saga turns back.
    #[error("failed: {0}")]
    Failed(String),
}

/// One step of a saga: an action, and the compensation that undoes it.
#[async_trait]
pub trait Step: Send + Sync + 'static {
    /// Does the step; its output is kept for the later steps and the compensations.
    async fn run(&self, cx: &StepContext) -> Result<serde_json::Value, StepError>;
    /// Undoes it. Must succeed when there is nothing to undo (the action's answer may have
    /// been lost before it acted).
    async fn undo(&self, cx: &StepContext) -> Result<(), StepError>;
}

/// A saga definition: its plan and a [`Step`] for each of the plan's steps.
pub struct SagaDefinition {
    /// The kind of saga it runs ([`NewSaga::kind`]).
    pub kind: String,
    /// The plan the state machine follows.
    pub plan: SagaPlan,
    /// The steps, in the plan's order.
    pub steps: Vec<Arc<dyn Step>>,
}

/// How a runner works.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// How long a claim holds a saga (default 30 s); each step attempt is given at most half
    /// of it, so the transition is recorded before the lease ends.
    pub lease: Duration,
    /// Sagas claimed at once (default 16).
    pub batch: usize,
    /// How often an idle runner looks for due sagas (default 1 s).
    pub poll: Duration,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            lease: Duration::from_secs(30),
            batch: 16,
            poll: Duration::from_secs(1),
        }
    }
}

/// Runs sagas of the kinds it knows from one store. Several may share a store, in one
/// process or many.
pub struct Runner {
    store: Arc<dyn SagaStore>,
    definitions: HashMap<String, Arc<SagaDefinition>>,
    clock: Arc<dyn Clock>,
    config: RunnerConfig,
    metrics: Arc<SagaMetrics>,
    audit: Option<Arc<AuditWriter>>,
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunnerPass {
    /// Sagas claimed.
    pub claimed: usize,
    /// Transitions recorded.
    pub transitions: usize,
    /// Sagas found taken over by another runner.
    pub lease_lost: usize,
}

impl Runner {
    /// A runner of `definitions` over `store`; a definition whose steps do not match its
    /// plan (their number, the pivot) is refused.
    pub fn new(
        store: Arc<dyn SagaStore>,
        definitions: Vec<SagaDefinition>,
        clock: Arc<dyn Clock>,
        config: RunnerConfig,
    ) -> Result<Self, SagaError> {
        for d in &definitions {
            if d.steps.len() != d.plan.steps.len() || d.steps.is_empty() {
                return Err(SagaError::Invalid(format!(
                    "saga {} has {} steps for a plan of {}",
                    d.kind,
                    d.steps.len(),
                    d.plan.steps.len()
                )));
            }
            if d.plan.pivot.is_some_and(|p| p >= d.steps.len()) {
                return Err(SagaError::Invalid(format!(
                    "saga {}: the pivot is not one of its steps",
                    d.kind
                )));
            }
        }
        Ok(Runner {
            store,
            definitions: definitions
                .into_iter()
                .map(|d| (d.kind.clone(), Arc::new(d)))
                .collect(),
            clock,
            config,
            metrics: Arc::default(),
            audit: None,
        })
    }

    /// Writes every recorded transition to the audit trail too: action `saga.transition`
    /// on resource `saga` / its id, the phase before and after, and the log line. The trail
    /// is written after the store (a transition is never audited that did not happen); one
    /// lost to a crash in between, or to a full queue (counted by the writer), is missing
    /// from the trail but never from the saga's own log.
    #[must_use]
    pub fn with_audit(mut self, writer: Arc<AuditWriter>) -> Self {
        self.audit = Some(writer);
        self
    }

    /// This runner's counts, for `/metrics` ([`SagaMetrics::render`]).
    pub fn metrics(&self) -> Arc<SagaMetrics> {
        self.metrics.clone()
    }

    /// Starts a saga (a no-op when one with its id exists with the same kind and input).
    pub async fn start(&self, saga: &NewSaga) -> Result<Created, SagaError> {
        if !self.definitions.contains_key(&saga.kind) {
            return Err(SagaError::Invalid(format!(
                "no saga definition for kind {}",
                saga.kind
            )));
        }
        let created = self.store.create(saga).await?;
        if created == Created::New {
            self.metrics.started.inc();
        }
        Ok(created)
    }

    /// One pass: claims due sagas and drives each until it waits, ends, or is lost.
    pub async fn pass(&self) -> Result<RunnerPass, SagaError> {
        let kinds: Vec<String> = self.definitions.keys().cloned().collect();
        let claims = self
            .store
            .claim_due(&kinds, self.config.batch, self.config.lease)
            .await?;
        let mut pass = RunnerPass {
            claimed: claims.len(),
            ..RunnerPass::default()
        };
        let mut tasks = tokio::task::JoinSet::new();
        for claim in claims {
            let Some(def) = self.definitions.get(&claim.saga.kind).cloned() else {
                continue;
            };
            let (store, clock, lease) = (self.store.clone(), self.clock.clone(), self.config.lease);
            let see = Seen {
                metrics: self.metrics.clone(),
                audit: self.audit.clone(),
            };
            tasks.spawn(async move { drive(store, clock, lease, def, claim, see).await });
        }
        let mut error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok((transitions, lost))) => {
                    pass.transitions += transitions;
                    pass.lease_lost += usize::from(lost);
                }
                Ok(Err(e)) => {
                    error.get_or_insert(e);
                }
                // Steps run as tasks of their own (a panic there is a retryable outcome); a
                // panic in the runner's own code leaves the saga to its lease, like a crash.
                Err(_) => {}
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(pass),
        }
    }

    /// Runs passes until `stop` completes: again at once while passes find sagas, else after
    /// the poll interval. A pass under way finishes first (its sagas recorded).
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        use futures_util::FutureExt as _;
        tokio::pin!(stop);
        loop {
            if (&mut stop).now_or_never().is_some() {
                return;
            }
            let busy = matches!(self.pass().await, Ok(p) if p.claimed > 0);
            if busy {
                continue;
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(self.config.poll) => {}
            }
        }
    }
}

/// The step index the state names when the plan has no such step.
fn step_outside(plan: &SagaPlan, state: &SagaState) -> Option<usize> {
    match state.phase {
        Phase::Forward { step } | Phase::Compensating { step } if step >= plan.steps.len() => {
            Some(step)
        }
        _ => None,
    }
}

/// Counts a recorded transition: the attempt's outcome, and the saga's end if it ended.
fn count(metrics: &SagaMetrics, last: Option<&Action>, input: &Input, phase: &Phase) {
    let direction = match last {
        Some(Action::Run { .. }) => Some(0),
        Some(Action::Undo { .. }) => Some(1),
        _ => None,
    };
    let outcome = match input {
        Input::Outcome(Outcome::Done) => Some(0),
        Input::Outcome(Outcome::Retryable(_)) => Some(1),
        Input::Outcome(Outcome::Failed(_)) => Some(2),
        _ => None,
    };
    if let (Some(d), Some(o)) = (direction, outcome) {
        metrics.steps[d][o].inc();
    }
    match phase {
        Phase::Completed => metrics.completed.inc(),
        Phase::Compensated => metrics.compensated.inc(),
        Phase::Stuck { .. } => metrics.stuck.inc(),
        _ => {}
    }
}

/// The log line for what the last action produced.
fn log_line(
    def: &SagaDefinition,
    last: Option<&Action>,
    input: &Input,
    at: oncely_core::Timestamp,
) -> LogEntry {
    let (step, direction, attempt) = match last {
        Some(Action::Run { step, attempt, .. }) => (Some(*step), Direction::Do, *attempt),
        Some(Action::Undo { step, attempt, .. }) => (Some(*step), Direction::Undo, *attempt),
        _ => (None, Direction::Saga, 1),
    };
    let outcome = match input {
        Input::Outcome(Outcome::Done) => "done".to_owned(),
        Input::Outcome(Outcome::Retryable(e)) => format!("retryable: {e}"),
        Input::Outcome(Outcome::Failed(e)) => format!("failed: {e}"),
        Input::Resume => "resumed".to_owned(),
        Input::Cancel => "cancel taken".to_owned(),
    };
    LogEntry {
        step: step
            .and_then(|i| def.plan.steps.get(i))
            .map(|s| s.name.clone()),
        direction: if matches!(input, Input::Outcome(_)) {
            direction
        } else {
            Direction::Saga
        },
        attempt,
        outcome,
        at,
    }
}

/// Where a runner reports what it recorded.
struct Seen {
    metrics: Arc<SagaMetrics>,
    audit: Option<Arc<AuditWriter>>,
}

impl Seen {
    fn audit(&self, id: &str, before: &SagaState, after: &SagaState, log: &LogEntry) {
        let Some(writer) = &self.audit else { return };
        let draft = Draft {
            event_id: oncely_audit::writer::new_event_id(),
            timestamp_ms: log.at.as_millis(),
            actor: Some("saga-runner".into()),
            actor_type: "system".into(),
            action: "saga.transition".into(),
            resource_type: "saga".into(),
            resource_id: id.to_owned(),
            old_value: Some(state_json(before).to_string()),
            new_value: Some(
                serde_json::json!({
                    "state": state_json(after),
                    "step": log.step,
                    "direction": log.direction.as_str(),
                    "attempt": log.attempt,
                    "outcome": log.outcome,
                })
                .to_string(),
            ),
            correlation_id: Some(id.to_owned()),
            ..Draft::default()
        };
        if !writer.record(draft) {
            tracing::warn!(
                saga = id,
                "audit queue full: a saga transition was not audited"
            );
        }
    }
}

/// A state as the audit trail shows it: the phase, its step and attempt.
fn state_json(s: &SagaState) -> serde_json::Value {
    let step = match &s.phase {
        Phase::Forward { step } | Phase::Compensating { step } | Phase::Stuck { step, .. } => {
            Some(*step)
        }
        _ => None,
    };
    serde_json::json!({
        "phase": crate::phase_name(&s.phase),
        "step": step,
        "attempt": s.attempt,
    })
}

/// Drives one claimed saga: decide, record, act, until it waits, ends, or its lease is
/// lost. The number of transitions recorded, and whether the lease was lost.
async fn drive(
    store: Arc<dyn SagaStore>,
    clock: Arc<dyn Clock>,
    lease: Duration,
    def: Arc<SagaDefinition>,
    claim: Claimed,
    seen: Seen,
) -> Result<(usize, bool), SagaError> {
    let Claimed { saga, token } = claim;
    let mut state: SagaState = saga.state;
    let mut outputs = saga.outputs;
    let mut input = if saga.cancel_requested && !state.cancel_requested {
        Input::Cancel
    } else {
        Input::Resume
    };
    let mut last: Option<Action> = None;
    let mut output: Option<(String, serde_json::Value)> = None;
    let mut transitions = 0;
    // Set while deciding again a transition the store refused for a pending cancel.
    let mut retaking = false;
    loop {
        let now = clock.now();
        if let Some(missing) = step_outside(&def.plan, &state) {
            // A saga of an older plan with more steps (a deploy shrank it): parked for a
            // person instead of failing on every claim.
            input = Input::Resume;
            state.phase = oncely_core::saga::Phase::Stuck {
                reason: format!("the plan of {} has no step {missing}", def.kind),
                step: missing,
                undoing: matches!(state.phase, Phase::Compensating { .. }),
            };
        }
        let mut log = log_line(&def, last.as_ref(), &input, now);
        if retaking {
            log.outcome.push_str("; cancel taken");
        }
        let before = state.clone();
        let (next, action) = decide(
            &def.plan,
            &saga.id,
            state,
            input.clone(),
            now,
            rand::random(),
        );
        let due_at = match &action {
            Action::Wait { until } => *until,
            _ => now,
        };
        let transition = Transition {
            state: next.clone(),
            due_at,
            output: output.take(),
            log,
            keep_lease: matches!(action, Action::Run { .. } | Action::Undo { .. }),
        };
        match store.record(&saga.id, token, &transition, lease).await? {
            Recorded::LeaseLost => return Ok((transitions, true)),
            Recorded::Recorded { .. } => {}
            Recorded::CancelRequested => {
                // A person asked to cancel (while the last attempt ran, say), and this
                // transition would start an attempt without taking it: nothing was recorded.
                // Decided again from the same state and outcome with the cancel taken, so a
                // saga whose next step is its pivot turns back instead of starting it.
                state = before;
                state.cancel_requested = true;
                output = transition.output;
                retaking = true;
                continue;
            }
        }
        transitions += 1;
        count(&seen.metrics, last.as_ref(), &input, &next.phase);
        seen.audit(&saga.id, &before, &next, &transition.log);
        if let Some((step, value)) = transition.output {
            outputs.insert(step, value);
        }
        retaking = false;
        state = next;
        let (step, key, attempt, undo) = match &action {
            Action::Run { step, key, attempt } => (*step, key.clone(), *attempt, false),
            Action::Undo { step, key, attempt } => (*step, key.clone(), *attempt, true),
            Action::Wait { .. } | Action::Finish => return Ok((transitions, false)),
        };
        let cx = StepContext {
            saga_id: saga.id.clone(),
            input: saga.input.clone(),
            outputs: outputs.clone(),
            key,
            attempt,
            failure: state.failure.clone(),
        };
        let Some(body) = def.steps.get(step).cloned() else {
            return Err(SagaError::Invalid(format!(
                "saga {} has no step {step}",
                def.kind
            )));
        };
        // Each attempt gets half the lease, so its outcome is recorded before the lease ends.
        // It runs as a task of its own so that a step that panics is an attempt without an
        // answer (retried under the same key), not a runner that stalls until its lease ends.
        let bound = lease / 2;
        let mut attempt = tokio::spawn(async move {
            if undo {
                body.undo(&cx).await.map(|()| None)
            } else {
                body.run(&cx).await.map(Some)
            }
        });
        let result = match tokio::time::timeout(bound, &mut attempt).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) if e.is_panic() => Err(StepError::Retryable("the step panicked".into())),
            Ok(Err(e)) => Err(StepError::Retryable(format!(
                "the step did not finish: {e}"
            ))),
            Err(_) => {
                // Stopped, as a dropped future would be: the attempt has no answer.
                attempt.abort();
                Err(StepError::Retryable(format!("no answer within {bound:?}")))
            }
        };
        input = Input::Outcome(match result {
            Ok(value) => {
                if let Some(value) = value {
                    output = Some((def.plan.steps[step].name.clone(), value));
                }
                Outcome::Done
            }
            Err(StepError::Retryable(e)) => Outcome::Retryable(e),
            Err(StepError::Failed(e)) => Outcome::Failed(e),
        });
        last = Some(action);
    }
}
