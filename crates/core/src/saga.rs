//! The saga state machine, sans I/O: what a saga does next, given its plan, where it stands,
//! and what just happened. The runner (with its log, leases and timers) lives above; it asks
//! [`decide`] after every outcome and timer, performs the [`Action`] it gets, and persists
//! the new [`SagaState`] together with the action's outcome.
//!
//! A saga is steps, each an action and (optionally) its compensation. It goes forward step
//! by step. A business failure before the **pivot** has completed turns it around: the steps
//! that completed are compensated in reverse order, and the saga ends `Compensated`. Once the
//! pivot has completed it only goes forward: later steps are retried until they succeed. A
//! compensation never fails for good: it is retried, and one that keeps failing parks the
//! saga as `Stuck`, for a person. Retryable failures (a timeout, a 503) are retried with full
//! jitter under the same idempotency key until the step's deadline.
//!
//! The property tests at the bottom drive random plans through random outcomes, timers and
//! cancels, and check that a saga only ever ends `Completed`, `Compensated` or `Stuck`, and
//! that exactly the completed steps before the pivot are compensated, each once, in reverse
//! order.

use std::time::Duration;

use crate::backoff::full_jitter;
use crate::clock::Timestamp;

/// One step of a saga's plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPlan {
    /// The step's name, unique in its saga: part of its idempotency keys.
    pub name: String,
    /// Whether the step has a compensation (a read-only step needs none).
    pub compensable: bool,
    /// How long the step may be retried after its first attempt began, before a retryable
    /// failure counts as a failure (before the pivot: compensate; at or after it: stuck).
    pub deadline: Duration,
}

/// A saga's plan: its steps in order and which one is the pivot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaPlan {
    /// The steps, in the order they run.
    pub steps: Vec<StepPlan>,
    /// The index of the pivot step: once it has completed, the saga only goes forward.
    /// `None`: every completed step can be compensated until the last one completes.
    pub pivot: Option<usize>,
    /// The whole saga's deadline from its start: past it, a saga that can still turn back
    /// compensates; one past its pivot goes on.
    pub deadline: Option<Duration>,
    /// The first retry waits up to this long; each later one up to twice as long...
    pub backoff_base: Duration,
    /// ...but never longer than this.
    pub backoff_cap: Duration,
    /// A compensation that failed this many times parks the saga as stuck.
    pub compensation_attempts: u32,
}

impl SagaPlan {
    /// Whether the step at `index` may be compensated: it has a compensation and comes
    /// before the pivot (the pivot and what follows are never compensated).
    pub fn compensates(&self, index: usize) -> bool {
        self.steps.get(index).is_some_and(|s| s.compensable) && self.pivot.is_none_or(|p| index < p)
    }
}

/// Where a saga stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Running step `step` (the steps before it have completed).
    Forward {
        /// The step running.
        step: usize,
    },
    /// Compensating step `step` (the completed steps after it are compensated).
    Compensating {
        /// The step being compensated.
        step: usize,
    },
    /// Every step completed.
    Completed,
    /// Turned back: every completed step before the pivot was compensated.
    Compensated,
    /// Parked for a person: a compensation kept failing, or a step past the pivot failed
    /// for good. A person who fixed the cause reopens it at the same step and direction.
    Stuck {
        /// Why.
        reason: String,
        /// The step it stopped at.
        step: usize,
        /// Whether it stopped compensating that step (else running it).
        undoing: bool,
    },
}

impl Phase {
    /// Whether the saga has ended.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Phase::Completed | Phase::Compensated | Phase::Stuck { .. }
        )
    }
}

/// A saga's state, persisted after every decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaState {
    /// Where it stands.
    pub phase: Phase,
    /// The attempt of the current step or compensation (1 for the first).
    pub attempt: u32,
    /// When the saga started.
    pub started_at: Timestamp,
    /// When the current step's first attempt began (its deadline counts from here).
    pub step_started_at: Timestamp,
    /// A cancel was asked for: it takes effect at the next decision, if the saga can still
    /// turn back.
    pub cancel_requested: bool,
    /// Why it is turning back, once it is.
    pub failure: Option<String>,
}

impl SagaState {
    /// A saga starting at `now` with its first step.
    pub fn start(now: Timestamp) -> SagaState {
        SagaState {
            phase: Phase::Forward { step: 0 },
            attempt: 1,
            started_at: now,
            step_started_at: now,
            cancel_requested: false,
            failure: None,
        }
    }
}

/// What the current step or compensation attempt answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It succeeded.
    Done,
    /// It may succeed if tried again (a timeout, a 503, a connection reset). Safe to retry:
    /// every attempt carries the same idempotency key.
    Retryable(String),
    /// It failed for good (a declined card, out of stock).
    Failed(String),
}

/// What happened since the last decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The current attempt answered.
    Outcome(Outcome),
    /// A timer the runner set (an [`Action::Wait`]) is due, or the runner restarted: act on
    /// the state as it is.
    Resume,
    /// A person asked to cancel.
    Cancel,
}

/// What the runner does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run step `step`'s action, attempt `attempt`, with idempotency key `key`.
    Run {
        /// The step.
        step: usize,
        /// The attempt, from 1.
        attempt: u32,
        /// `{saga id}/{step name}/do`, the same for every attempt.
        key: String,
    },
    /// Run step `step`'s compensation.
    Undo {
        /// The step.
        step: usize,
        /// The attempt, from 1.
        attempt: u32,
        /// `{saga id}/{step name}/undo`, the same for every attempt.
        key: String,
    },
    /// Wait until `until` (a durable timer), then decide again with [`Input::Resume`].
    Wait {
        /// When to go on.
        until: Timestamp,
    },
    /// Nothing more: the saga has ended.
    Finish,
}

/// A stuck saga reopened by a person who fixed the cause: back to the step it stopped at, in
/// the same direction, from attempt 1 with a fresh step deadline. Any other phase is
/// returned unchanged.
pub fn reopen(mut state: SagaState, now: Timestamp) -> SagaState {
    if let Phase::Stuck { step, undoing, .. } = state.phase {
        state.phase = if undoing {
            Phase::Compensating { step }
        } else {
            Phase::Forward { step }
        };
        state.attempt = 1;
        state.step_started_at = now;
    }
    state
}

/// The idempotency key of a step's action (`do`) or compensation (`undo`).
pub fn step_key(saga_id: &str, step: &str, undo: bool) -> String {
    format!("{saga_id}/{step}/{}", if undo { "undo" } else { "do" })
}

/// The decision: the state after `input` at `now`, and what to do next. `jitter` is a uniform
/// sample in `[0, 1)` for a retry's wait (the runner draws it; tests fix it).
///
/// An [`Input::Outcome`] is for the attempt the state says is current; the runner must have
/// checked (with its lease's fencing token) that it is not a stale answer.
pub fn decide(
    plan: &SagaPlan,
    saga_id: &str,
    mut state: SagaState,
    input: Input,
    now: Timestamp,
    jitter: f64,
) -> (SagaState, Action) {
    if state.phase.is_final() {
        return (state, Action::Finish);
    }
    if plan.steps.is_empty() {
        state.phase = Phase::Completed;
        return (state, Action::Finish);
    }
    let past = |since: Timestamp, limit: Duration| {
        now.0.saturating_sub(since.0) >= i64::try_from(limit.as_millis()).unwrap_or(i64::MAX)
    };
    match (&state.phase, input) {
        (_, Input::Cancel) => {
            // The runner gives a cancel only between attempts: it is taken as a resume
            // with the flag set, so it turns the saga back now where it may.
            state.cancel_requested = true;
            decide(plan, saga_id, state, Input::Resume, now, jitter)
        }
        (&Phase::Forward { step }, Input::Outcome(Outcome::Done)) => {
            let next = step + 1;
            if next == plan.steps.len() {
                state.phase = Phase::Completed;
                return (state, Action::Finish);
            }
            if let Some(reason) = turn_back_reason(plan, &state, next, now) {
                return turn_back(plan, saga_id, state, next, reason, now);
            }
            state.phase = Phase::Forward { step: next };
            state.attempt = 1;
            state.step_started_at = now;
            let action = current_action(plan, saga_id, &state);
            (state, action)
        }
        (&Phase::Forward { step }, Input::Outcome(Outcome::Failed(why))) => {
            if past_pivot(plan, step) {
                state.phase = Phase::Stuck {
                    reason: format!(
                        "step {} failed after the pivot: {why}",
                        plan.steps[step].name
                    ),
                    step,
                    undoing: false,
                };
                return (state, Action::Finish);
            }
            turn_back(plan, saga_id, state, step, why, now)
        }
        (&Phase::Forward { step }, Input::Outcome(Outcome::Retryable(why))) => {
            let deadline = plan.steps[step].deadline;
            if past(state.step_started_at, deadline) {
                let why = format!("still failing after its deadline: {why}");
                if past_pivot(plan, step) || plan.pivot == Some(step) {
                    // The pivot (or a step after it) may have acted: turning back could undo
                    // work that the pivot made final. A person decides.
                    state.phase = Phase::Stuck {
                        reason: format!("step {} {why}", plan.steps[step].name),
                        step,
                        undoing: false,
                    };
                    return (state, Action::Finish);
                }
                // Its attempts may have acted (a timeout is no answer): it is compensated too.
                return turn_back(plan, saga_id, state, step + 1, why, now);
            }
            let wait = full_jitter(state.attempt, plan.backoff_base, plan.backoff_cap, jitter);
            state.attempt += 1;
            (
                state,
                Action::Wait {
                    until: later(now, wait),
                },
            )
        }
        (&Phase::Compensating { step }, Input::Outcome(Outcome::Done)) => {
            match previous_compensable(plan, step) {
                Some(prev) => {
                    state.phase = Phase::Compensating { step: prev };
                    state.attempt = 1;
                    state.step_started_at = now;
                    let action = current_action(plan, saga_id, &state);
                    (state, action)
                }
                None => {
                    state.phase = Phase::Compensated;
                    (state, Action::Finish)
                }
            }
        }
        (
            &Phase::Compensating { step },
            Input::Outcome(Outcome::Failed(why) | Outcome::Retryable(why)),
        ) => {
            if state.attempt >= plan.compensation_attempts {
                state.phase = Phase::Stuck {
                    reason: format!(
                        "compensation of {} failed {} times: {why}",
                        plan.steps[step].name, state.attempt
                    ),
                    step,
                    undoing: true,
                };
                return (state, Action::Finish);
            }
            let wait = full_jitter(state.attempt, plan.backoff_base, plan.backoff_cap, jitter);
            state.attempt += 1;
            (
                state,
                Action::Wait {
                    until: later(now, wait),
                },
            )
        }
        (&Phase::Forward { step }, Input::Resume) => {
            // Between attempts: a cancel or the saga's deadline may turn it back before the
            // next attempt begins. The current step may have acted already (its last attempt
            // had no answer), so it is compensated too. Not at the pivot: if it acted, the
            // saga may not turn back, and only another attempt (same key) can tell.
            if plan.pivot != Some(step) {
                if let Some(reason) = turn_back_reason(plan, &state, step, now) {
                    return turn_back(plan, saga_id, state, step + 1, reason, now);
                }
            }
            let action = current_action(plan, saga_id, &state);
            (state, action)
        }
        (Phase::Compensating { .. }, Input::Resume) => {
            let action = current_action(plan, saga_id, &state);
            (state, action)
        }
        (Phase::Completed | Phase::Compensated | Phase::Stuck { .. }, _) => (state, Action::Finish),
    }
}

/// Whether step `step` comes after the pivot (the pivot has completed).
fn past_pivot(plan: &SagaPlan, step: usize) -> bool {
    plan.pivot.is_some_and(|p| step > p)
}

/// Why the saga must turn back before running step `next` (whose predecessors completed),
/// if it must: a cancel or the saga's deadline, while the pivot has not completed.
fn turn_back_reason(
    plan: &SagaPlan,
    state: &SagaState,
    next: usize,
    now: Timestamp,
) -> Option<String> {
    if past_pivot(plan, next) {
        return None;
    }
    if state.cancel_requested {
        return Some("cancelled".to_owned());
    }
    let limit = plan.deadline?;
    let elapsed = now.0.saturating_sub(state.started_at.0);
    (elapsed >= i64::try_from(limit.as_millis()).unwrap_or(i64::MAX))
        .then(|| "the saga's deadline passed".to_owned())
}

/// Turns back: compensates the steps before `undo_before` (those that completed, and one
/// whose attempts may have acted), the last first.
fn turn_back(
    plan: &SagaPlan,
    saga_id: &str,
    mut state: SagaState,
    undo_before: usize,
    reason: String,
    now: Timestamp,
) -> (SagaState, Action) {
    state.failure = Some(reason);
    state.attempt = 1;
    state.step_started_at = now;
    match previous_compensable(plan, undo_before) {
        Some(step) => {
            state.phase = Phase::Compensating { step };
            let action = current_action(plan, saga_id, &state);
            (state, action)
        }
        None => {
            state.phase = Phase::Compensated;
            (state, Action::Finish)
        }
    }
}

/// The nearest step before `step` that has a compensation to run.
fn previous_compensable(plan: &SagaPlan, step: usize) -> Option<usize> {
    (0..step).rev().find(|&i| plan.compensates(i))
}

/// The attempt the state says is current.
fn current_action(plan: &SagaPlan, saga_id: &str, state: &SagaState) -> Action {
    match state.phase {
        Phase::Forward { step } => Action::Run {
            step,
            attempt: state.attempt,
            key: step_key(saga_id, &plan.steps[step].name, false),
        },
        Phase::Compensating { step } => Action::Undo {
            step,
            attempt: state.attempt,
            key: step_key(saga_id, &plan.steps[step].name, true),
        },
        _ => Action::Finish,
    }
}

fn later(now: Timestamp, wait: Duration) -> Timestamp {
    Timestamp(
        now.0
            .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(n: usize, pivot: Option<usize>, compensable: &[bool]) -> SagaPlan {
        SagaPlan {
            steps: (0..n)
                .map(|i| StepPlan {
                    name: format!("s{i}"),
                    compensable: compensable.get(i).copied().unwrap_or(true),
                    deadline: Duration::from_secs(10),
                })
                .collect(),
            pivot,
            deadline: Some(Duration::from_secs(60)),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(2),
            compensation_attempts: 5,
        }
    }

    /// A saga of `p` whose first step has completed.
    fn first_step_done(p: &SagaPlan) -> SagaState {
        run(
            p,
            SagaState::start(Timestamp(0)),
            Input::Outcome(Outcome::Done),
            0,
        )
        .0
    }

    /// The seed's checkout: reserve stock, capture payment (the pivot), confirm.
    fn checkout() -> SagaPlan {
        plan(3, Some(1), &[true, true, true])
    }

    fn run(plan: &SagaPlan, state: SagaState, input: Input, now: i64) -> (SagaState, Action) {
        decide(plan, "saga-1", state, input, Timestamp(now), 0.5)
    }

    #[test]
    fn a_declined_card_releases_the_stock() {
        let p = checkout();
        let s = SagaState::start(Timestamp(0));
        let (s, a) = run(&p, s, Input::Outcome(Outcome::Done), 10);
        assert_eq!(
            a,
            Action::Run {
                step: 1,
                attempt: 1,
                key: "saga-1/s1/do".into()
            }
        );
        let (s, a) = run(
            &p,
            s,
            Input::Outcome(Outcome::Failed("declined".into())),
            20,
        );
        assert_eq!(
            a,
            Action::Undo {
                step: 0,
                attempt: 1,
                key: "saga-1/s0/undo".into()
            }
        );
        let (s, a) = run(&p, s, Input::Outcome(Outcome::Done), 30);
        assert_eq!((s.phase, a), (Phase::Compensated, Action::Finish));
        assert_eq!(s.failure.as_deref(), Some("declined"));
    }

    #[test]
    fn a_payment_timeout_is_retried_with_the_same_key_then_parks_past_its_deadline() {
        let p = checkout();
        let s = first_step_done(&p);
        let (s, a) = run(
            &p,
            s,
            Input::Outcome(Outcome::Retryable("timeout".into())),
            100,
        );
        let Action::Wait { until } = a else {
            panic!("{a:?}")
        };
        assert!(until.0 >= 100 && until.0 <= 200);
        let (s, a) = run(&p, s, Input::Resume, until.0);
        assert_eq!(
            a,
            Action::Run {
                step: 1,
                attempt: 2,
                key: "saga-1/s1/do".into()
            }
        );
        // Past the pivot's deadline the charge may have happened: a person decides.
        let (s, a) = run(
            &p,
            s,
            Input::Outcome(Outcome::Retryable("timeout".into())),
            10_001,
        );
        assert_eq!(a, Action::Finish);
        assert!(matches!(s.phase, Phase::Stuck { .. }), "{s:?}");
    }

    #[test]
    fn after_the_pivot_a_cancel_changes_nothing() {
        let p = checkout();
        let s = first_step_done(&p);
        let (s, _) = run(&p, s, Input::Outcome(Outcome::Done), 0);
        let (s, a) = run(&p, s, Input::Cancel, 0);
        assert!(matches!(a, Action::Run { step: 2, .. }), "{a:?}");
        let (s, a) = run(&p, s, Input::Outcome(Outcome::Done), 0);
        assert_eq!((s.phase, a), (Phase::Completed, Action::Finish));
    }

    #[test]
    fn a_compensation_failing_twice_then_succeeding_compensates() {
        let p = plan(3, None, &[true, true, true]);
        let s = first_step_done(&p);
        let (s, a) = run(&p, s, Input::Outcome(Outcome::Failed("no".into())), 0);
        assert!(matches!(
            a,
            Action::Undo {
                step: 0,
                attempt: 1,
                ..
            }
        ));
        let (s, _) = run(&p, s, Input::Outcome(Outcome::Retryable("503".into())), 0);
        let (s, a) = run(&p, s, Input::Resume, 1_000);
        assert!(matches!(
            a,
            Action::Undo {
                step: 0,
                attempt: 2,
                ..
            }
        ));
        let (s, _) = run(&p, s, Input::Outcome(Outcome::Failed("503".into())), 1_000);
        let (s, a) = run(&p, s, Input::Resume, 2_000);
        assert!(matches!(
            a,
            Action::Undo {
                step: 0,
                attempt: 3,
                ..
            }
        ));
        let (s, a) = run(&p, s, Input::Outcome(Outcome::Done), 2_000);
        assert_eq!((s.phase, a), (Phase::Compensated, Action::Finish));
    }

    #[test]
    fn the_saga_deadline_turns_it_back_between_attempts_undoing_the_step_that_may_have_acted() {
        let p = plan(3, Some(2), &[true, true, true]);
        let s = first_step_done(&p);
        let (s, _) = run(
            &p,
            s,
            Input::Outcome(Outcome::Retryable("slow".into())),
            5_000,
        );
        let (s, a) = run(&p, s, Input::Resume, 61_000);
        assert!(matches!(a, Action::Undo { step: 1, .. }), "{a:?}");
        assert_eq!(s.failure.as_deref(), Some("the saga's deadline passed"));
        let (_, a) = run(&p, s, Input::Outcome(Outcome::Done), 61_000);
        assert!(matches!(a, Action::Undo { step: 0, .. }), "{a:?}");
    }

    #[test]
    fn a_cancel_while_the_pivot_is_retried_waits_for_its_answer() {
        let p = checkout();
        let s = first_step_done(&p);
        let (s, _) = run(
            &p,
            s,
            Input::Outcome(Outcome::Retryable("timeout".into())),
            10,
        );
        let (s, _) = run(&p, s, Input::Cancel, 20);
        let (s, a) = run(&p, s, Input::Resume, 500);
        assert!(
            matches!(
                a,
                Action::Run {
                    step: 1,
                    attempt: 2,
                    ..
                }
            ),
            "{a:?}"
        );
        // The pivot says it did not charge: now the cancel can turn the saga back.
        let (s, a) = run(
            &p,
            s,
            Input::Outcome(Outcome::Failed("declined".into())),
            600,
        );
        assert!(matches!(a, Action::Undo { step: 0, .. }), "{a:?}");
        assert!(s.cancel_requested);
    }

    #[test]
    fn a_stuck_compensation_reopened_goes_on_compensating() {
        let p = plan(2, None, &[true, true]);
        let s = first_step_done(&p);
        let (mut s, _) = run(&p, s, Input::Outcome(Outcome::Failed("no".into())), 0);
        for _ in 0..5 {
            let (next, _) = run(&p, s, Input::Outcome(Outcome::Failed("503".into())), 0);
            s = next;
        }
        assert!(
            matches!(
                s.phase,
                Phase::Stuck {
                    step: 0,
                    undoing: true,
                    ..
                }
            ),
            "{s:?}"
        );
        let s = reopen(s, Timestamp(9));
        assert_eq!(
            (s.phase.clone(), s.attempt),
            (Phase::Compensating { step: 0 }, 1)
        );
        let (s, a) = run(&p, s, Input::Resume, 10);
        assert!(
            matches!(
                a,
                Action::Undo {
                    step: 0,
                    attempt: 1,
                    ..
                }
            ),
            "{a:?}"
        );
        let (s, _) = run(&p, s, Input::Outcome(Outcome::Done), 10);
        assert_eq!(s.phase, Phase::Compensated);
    }

    #[test]
    fn keys_name_the_saga_the_step_and_the_direction() {
        assert_eq!(step_key("o-9", "charge", false), "o-9/charge/do");
        assert_eq!(step_key("o-9", "charge", true), "o-9/charge/undo");
    }

    #[derive(Debug, Clone)]
    enum Event {
        Done,
        Retryable,
        Failed,
        Cancel,
        /// The runner restarts (or a timer fires): it resumes, and the attempt under way is
        /// tried again with the same key.
        Crash,
        /// Time passes.
        Sleep(u32),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            5 => Just(Event::Done),
            2 => Just(Event::Retryable),
            1 => Just(Event::Failed),
            1 => Just(Event::Cancel),
            1 => Just(Event::Crash),
            1 => (0u32..30_000).prop_map(Event::Sleep),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn sagas_end_completed_compensated_or_stuck_and_undo_exactly_what_ran(
            n in 1usize..6,
            pivot in proptest::option::of(0usize..6),
            compensable in proptest::collection::vec(any::<bool>(), 6),
            events in proptest::collection::vec(event(), 0..80),
            jitter in 0.0f64..1.0,
        ) {
            let pivot = pivot.filter(|p| *p < n);
            let p = plan(n, pivot, &compensable);
            let mut now = 0i64;
            let mut state = SagaState::start(Timestamp(now));
            let mut action = current_action(&p, "s", &state);
            let mut done_steps: Vec<usize> = Vec::new();
            let mut undone: Vec<usize> = Vec::new();
            // Steps whose attempt got no definite answer: they may have acted.
            let mut attempted: Vec<usize> = Vec::new();
            // The pivot's last answer: a saga may turn back past a pivot it tried only on a
            // definite failure.
            let mut pivot_last = "not tried";
            // After the random events, every attempt succeeds: the saga must then end.
            let tail = std::iter::repeat_n(Event::Done, 4 * n + 40);
            for e in events.into_iter().chain(tail) {
                if state.phase.is_final() {
                    break;
                }
                let input = match (&action, e) {
                    (Action::Run { step, .. }, Event::Cancel) => { attempted.push(*step); if Some(*step) == pivot { pivot_last = "no answer"; } Input::Cancel }
                    (_, Event::Cancel) => Input::Cancel,
                    (Action::Run { step, .. }, Event::Crash) => { attempted.push(*step); if Some(*step) == pivot { pivot_last = "no answer"; } Input::Resume }
                    (_, Event::Crash) => Input::Resume,
                    (_, Event::Sleep(ms)) => { now += i64::from(ms); continue; }
                    (Action::Wait { until }, _) => { now = now.max(until.0); Input::Resume }
                    (Action::Run { step, .. }, Event::Done) => { if Some(*step) == pivot { pivot_last = "done"; } done_steps.push(*step); Input::Outcome(Outcome::Done) }
                    (Action::Run { step, .. }, Event::Retryable) => { if Some(*step) == pivot { pivot_last = "no answer"; } attempted.push(*step); Input::Outcome(Outcome::Retryable("r".into())) }
                    (Action::Run { step, .. }, Event::Failed) => { if Some(*step) == pivot { pivot_last = "failed"; } Input::Outcome(Outcome::Failed("f".into())) }
                    (Action::Undo { step, .. }, Event::Done) => { undone.push(*step); Input::Outcome(Outcome::Done) }
                    (_, Event::Retryable) => Input::Outcome(Outcome::Retryable("r".into())),
                    (_, Event::Failed) => Input::Outcome(Outcome::Failed("f".into())),
                    (Action::Finish, _) => break,
                };
                // A crash makes the runner resume: it repeats the current attempt.
                let (s, a) = decide(&p, "s", state, input, Timestamp(now), jitter);
                state = s;
                action = a;
                now += 1;
            }
            prop_assert!(state.phase.is_final(), "ended in {:?}", state.phase);
            // Forward steps ran in order, each once (a repeat after a crash is the same
            // attempt's key, not a new step).
            let mut sorted = done_steps.clone();
            sorted.dedup();
            prop_assert_eq!(&sorted, &(0..sorted.len()).collect::<Vec<_>>());
            match &state.phase {
                Phase::Completed => {
                    prop_assert_eq!(sorted.len(), n);
                    prop_assert!(undone.is_empty());
                }
                Phase::Compensated => {
                    let expected: Vec<usize> =
                        sorted.iter().rev().copied().filter(|&i| p.compensates(i)).collect();
                    // The step it turned back at is undone too when it may have acted.
                    let turned_at = sorted.len();
                    let mut with_current = vec![turned_at];
                    with_current.extend(&expected);
                    prop_assert!(
                        undone == expected
                            || (p.compensates(turned_at) && attempted.contains(&turned_at) && undone == with_current),
                        "undone {:?}, completed {:?}", undone, sorted
                    );
                    prop_assert!(pivot.is_none_or(|pv| !sorted.contains(&pv)), "the pivot never completed");
                    prop_assert!(
                        pivot_last == "not tried" || pivot_last == "failed",
                        "turned back after the pivot's last answer was {}", pivot_last
                    );
                }
                Phase::Stuck { reason, .. } => {
                    // Stuck only for a compensation that kept failing, or at or after the pivot.
                    let at_or_after_pivot = reason
                        .strip_prefix("step s")
                        .and_then(|r| r.split(' ').next())
                        .and_then(|k| k.parse::<usize>().ok())
                        .is_some_and(|k| pivot.is_some_and(|pv| k >= pv));
                    prop_assert!(
                        reason.starts_with("compensation of") || at_or_after_pivot,
                        "stuck for {}", reason
                    );
                    // Whatever was undone was compensable, in reverse order, each once.
                    for w in undone.windows(2) {
                        prop_assert!(w[0] > w[1]);
                    }
                    prop_assert!(undone.iter().all(|&i| p.compensates(i)
                        && (sorted.contains(&i) || (i == sorted.len() && attempted.contains(&i)))));
                }
                _ => unreachable!(),
            }
        }
    }
}
