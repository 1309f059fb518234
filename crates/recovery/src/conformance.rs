//! The suite every journal runs (feature `conformance`): each phase commits once under
//! crashes at every boundary and under racing runs, a failed phase leaves no trace, inputs
//! are bound to their id, the completer and the reaper do their jobs.
//!
//! A backend provides a [`Harness`]: its journal, and atomic phases that write one row per
//! (operation, phase) into an effects table of the same database, then behave as told.
//! `recovery_conformance_tests!` turns the suite into tests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use oncely_core::{Clock, ManualClock, StoredResponse, Timestamp};
use serde::{Deserialize, Serialize};

use crate::{
    Completer, Flow, Hooks, Journal, Operation, PhaseError, Reaper, Recovery, RecoveryError,
};
use oncely_core::sync::LockIgnoringPoison;

/// The state of the suite's operations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestState {
    /// The operation id, so phases can tag the effects they write.
    pub id: String,
    /// A value of the input: runs of one id with different amounts are different inputs.
    pub amount: u64,
    /// The charge id the provider answered, once the `charge` phase ran.
    pub charge: Option<String>,
    /// The phases that ran, in order, each appending its name.
    pub steps: Vec<String>,
}

impl TestState {
    /// An input tagged `id` with `amount`: nothing charged, no phase run.
    pub fn new(id: &str, amount: u64) -> Self {
        TestState {
            id: id.to_owned(),
            amount,
            charge: None,
            steps: Vec::new(),
        }
    }
}

/// What a harness phase does after writing its effect row.
#[derive(Debug, Clone)]
pub enum Behaviour {
    /// Goes on with the next phase.
    Continue,
    /// Responds with the state as JSON.
    Respond,
    /// Fails while the counter is above zero (decrementing it), then continues.
    FailTimes(Arc<AtomicUsize>),
}

/// The shared part of every harness phase, after its effect row is written.
pub fn behave(
    behaviour: &Behaviour,
    phase: &str,
    state: &mut TestState,
) -> Result<Flow, PhaseError> {
    state.steps.push(phase.to_owned());
    match behaviour {
        Behaviour::Continue => Ok(Flow::Continue),
        Behaviour::Respond => Ok(Flow::Respond(response_for(state))),
        Behaviour::FailTimes(left) => {
            let failing = left
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if failing {
                Err(PhaseError::new(format!("{phase}: injected failure")))
            } else {
                Ok(Flow::Continue)
            }
        }
    }
}

/// The response of a phase that behaves [`Behaviour::Respond`]: 201, JSON, the state as the
/// body.
pub fn response_for(state: &TestState) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: Bytes::from(serde_json::to_vec(state).unwrap_or_default()),
    }
}

/// A backend under test.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The backend's journal.
    type J: Journal;
    /// The journal under test, migrated. Cases tag their ids uniquely, so other cases'
    /// operations may share its table.
    fn journal(&self) -> Arc<Self::J>;
    /// An atomic phase that inserts (state.id, `name`) into the effects table, then calls
    /// [`behave`]; all in the phase's transaction.
    fn phase(&self, name: &str, behaviour: Behaviour) -> <Self::J as Journal>::Phase<TestState>;
    /// The phases whose effects are committed for operation `id`, in insertion order.
    async fn effects(&self, id: &str) -> Vec<String>;
    /// Runs one SQL statement as a person with a database console would, `{ops}` standing for
    /// the operations table.
    async fn sql(&self, statement: &str);
}

/// A fake provider that dedupes by idempotency key, as a real one does, and counts calls.
#[derive(Default)]
pub struct Provider {
    calls: Mutex<Vec<String>>,
    charges: Mutex<HashMap<String, String>>,
    /// How many of the next calls fail (as a provider answering 503 would) before charges
    /// succeed again; each failure counts one down.
    pub fail_next: AtomicUsize,
}

impl Provider {
    /// The idempotency key of every call so far, failed ones included, in order.
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock_ignoring_poison().clone()
    }
    /// How many charges the provider made: one per distinct key, however often it was called.
    pub fn charges(&self) -> usize {
        self.charges.lock_ignoring_poison().len()
    }
    fn charge(&self, key: &str) -> Result<String, PhaseError> {
        self.calls.lock_ignoring_poison().push(key.to_owned());
        if self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(PhaseError::new("provider unavailable"));
        }
        let mut charges = self.charges.lock_ignoring_poison();
        let next = format!("ch_{}", charges.len() + 1);
        Ok(charges.entry(key.to_owned()).or_insert(next).clone())
    }
}

/// `order` (atomic) -> `charge` (foreign, deduped by key) -> `receipt` (atomic, responds).
pub fn checkout<H: Harness>(h: &H, provider: &Arc<Provider>) -> Operation<H::J, TestState> {
    with_charge(
        Operation::new("checkout").atomic_phase("order", h.phase("order", Behaviour::Continue)),
        provider,
    )
    .atomic_phase("receipt", h.phase("receipt", Behaviour::Respond))
}

/// `charge` (foreign) -> `receipt` (atomic, responds): a plan whose first phase acts outside.
pub fn foreign_first<H: Harness>(h: &H, provider: &Arc<Provider>) -> Operation<H::J, TestState> {
    with_charge(Operation::new("foreign-first"), provider)
        .atomic_phase("receipt", h.phase("receipt", Behaviour::Respond))
}

/// Appends the foreign phase `charge`: one charge at `provider` under the derived key.
fn with_charge<J: Journal>(
    op: Operation<J, TestState>,
    provider: &Arc<Provider>,
) -> Operation<J, TestState> {
    let p = provider.clone();
    op.foreign("charge", move |call: crate::ForeignCall<TestState>| {
        let p = p.clone();
        async move {
            let mut state = call.state;
            state.charge = Some(p.charge(&call.idempotency_key)?);
            state.steps.push("charge".into());
            Ok((state, Flow::Continue))
        }
    })
}

fn recovery<H: Harness>(h: &H, clock: &ManualClock) -> Recovery<H::J> {
    Recovery::new(h.journal(), Arc::new(clock.clone()))
}

fn clock() -> ManualClock {
    ManualClock::new(Timestamp(1_700_000_000_000))
}

/// Stops every run at one boundary.
struct StopAt(String);
impl Hooks for StopAt {
    fn reached(&self, _op: &str, boundary: &str) -> bool {
        boundary != self.0
    }
}

fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::SeqCst))
}

/// A run goes through every phase once and stores its response; every later run of the id
/// answers that response without running anything.
pub async fn runs_every_phase_once_and_replays_the_response<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    let op = checkout(&h, &provider);
    let rec = recovery(&h, &clock());
    let id = unique("op");
    let first = rec.run(&op, &id, TestState::new(&id, 100)).await.unwrap();
    let state: TestState = serde_json::from_slice(&first.body).unwrap();
    assert_eq!(state.steps, ["order", "charge", "receipt"]);
    assert_eq!(state.charge.as_deref(), Some("ch_1"));
    assert_eq!(h.effects(&id).await, ["order", "receipt"]);
    assert_eq!(provider.calls(), [format!("{id}/charge")]);
    for _ in 0..3 {
        let again = rec.run(&op, &id, TestState::new(&id, 100)).await.unwrap();
        assert_eq!(
            again, first,
            "a finished operation answers its stored response"
        );
    }
    assert_eq!(h.effects(&id).await, ["order", "receipt"]);
    assert_eq!(provider.calls().len(), 1);
    let row = h.journal().load(&id).await.unwrap().unwrap();
    assert_eq!(row.point, crate::FINISHED);
    assert_eq!(row.response.as_ref(), Some(&first));
}

/// A crash at any boundary, then a retry: one effect per phase, one charge, and the response
/// of a run that never crashed.
pub async fn resumes_after_a_crash_at_every_boundary<H: Harness>(h: H) {
    let tag = unique("same");
    let baseline_provider = Arc::new(Provider::default());
    let baseline_id = unique("base");
    let baseline = recovery(&h, &clock())
        .run(
            &checkout(&h, &baseline_provider),
            &baseline_id,
            TestState::new(&tag, 100),
        )
        .await;
    let baseline = baseline.unwrap();
    let op_for_names = checkout(&h, &baseline_provider);
    for boundary in op_for_names.boundaries() {
        let provider = Arc::new(Provider::default());
        let op = checkout(&h, &provider);
        let id = unique("crash");
        let input = TestState::new(&tag, 100);
        let before = h.effects(&tag).await.len();
        let crashing = recovery(&h, &clock()).with_hooks(Arc::new(StopAt(boundary.clone())));
        let err = crashing.run(&op, &id, input.clone()).await.unwrap_err();
        assert_eq!(
            err,
            RecoveryError::Stopped {
                boundary: boundary.clone()
            }
        );
        let resumed = recovery(&h, &clock()).run(&op, &id, input).await.unwrap();
        assert_eq!(resumed, baseline, "after a crash at {boundary}");
        assert_eq!(
            h.journal().load(&id).await.unwrap().map(|r| r.point),
            Some(crate::FINISHED.to_owned())
        );
        // The crashed run and its retry together committed each phase's effect once.
        assert_eq!(
            h.effects(&tag).await[before..],
            ["order", "receipt"],
            "effects of the run crashed at {boundary}"
        );
        assert_eq!(
            provider.charges(),
            1,
            "one charge after a crash at {boundary}"
        );
        let calls = provider.calls();
        let expected_calls = if boundary == "after-call:charge" {
            2
        } else {
            1
        };
        assert_eq!(
            calls.len(),
            expected_calls,
            "calls after a crash at {boundary}"
        );
        assert!(calls.iter().all(|k| k == &format!("{id}/charge")));
    }
    // Every run has the same input, so responses compare; all wrote their effects under the
    // input's tag: the baseline plus one run per
    // boundary, each exactly once per phase.
    let runs = op_for_names.boundaries().len() + 1;
    let effects = h.effects(&tag).await;
    assert_eq!(effects.iter().filter(|e| *e == "order").count(), runs);
    assert_eq!(effects.iter().filter(|e| *e == "receipt").count(), runs);
}

/// Eight runs of one id at once: one response for all, each phase's effect committed once,
/// one charge.
pub async fn concurrent_runs_commit_each_phase_once<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    let op = Arc::new(checkout(&h, &provider));
    let rec = Arc::new(recovery(&h, &clock()));
    let id = unique("race");
    let mut runs = Vec::new();
    for _ in 0..8 {
        let (op, rec, id) = (op.clone(), rec.clone(), id.clone());
        runs.push(tokio::spawn(async move {
            rec.run(&op, &id, TestState::new(&id, 7)).await
        }));
    }
    let mut answers = Vec::new();
    for r in runs {
        answers.push(r.await.unwrap().unwrap());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "one response");
    assert_eq!(h.effects(&id).await, ["order", "receipt"]);
    assert_eq!(provider.charges(), 1);
    assert!(provider
        .calls()
        .iter()
        .all(|k| k == &format!("{id}/charge")));
}

/// A finished id run again with another input, or by another operation, is
/// [`RecoveryError::InputMismatch`], and nothing runs.
pub async fn another_input_is_refused<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    let op = checkout(&h, &provider);
    let rec = recovery(&h, &clock());
    let id = unique("mismatch");
    rec.run(&op, &id, TestState::new(&id, 100)).await.unwrap();
    let err = rec
        .run(&op, &id, TestState::new(&id, 999))
        .await
        .unwrap_err();
    assert_eq!(err, RecoveryError::InputMismatch { id: id.clone() });
    let other = Operation::<H::J, TestState>::new("refund")
        .atomic_phase("undo", h.phase("undo", Behaviour::Respond));
    let err = rec
        .run(&other, &id, TestState::new(&id, 100))
        .await
        .unwrap_err();
    assert_eq!(err, RecoveryError::InputMismatch { id: id.clone() });
    assert_eq!(h.effects(&id).await, ["order", "receipt"]);
    assert_eq!(provider.calls().len(), 1);
}

/// A failing atomic phase rolls back its effect and keeps the point, with a transient
/// [`RecoveryError::Interrupted`]; once it stops failing, a retry goes on from there.
pub async fn a_failed_phase_leaves_no_trace_and_a_retry_resumes<H: Harness>(h: H) {
    let failures = Arc::new(AtomicUsize::new(2));
    let op = Operation::<H::J, TestState>::new("flaky")
        .atomic_phase("first", h.phase("first", Behaviour::Continue))
        .atomic_phase("flaky", h.phase("flaky", Behaviour::FailTimes(failures)))
        .atomic_phase("last", h.phase("last", Behaviour::Respond));
    let rec = recovery(&h, &clock());
    let id = unique("flaky");
    for _ in 0..2 {
        let err = rec.run(&op, &id, TestState::new(&id, 1)).await.unwrap_err();
        assert!(matches!(&err, RecoveryError::Interrupted { phase, .. } if phase == "flaky"));
        assert!(err.is_transient());
        assert_eq!(
            h.effects(&id).await,
            ["first"],
            "the failed phase's row rolled back"
        );
        let row = h.journal().load(&id).await.unwrap().unwrap();
        assert_eq!(row.point, "first");
    }
    let done = rec.run(&op, &id, TestState::new(&id, 1)).await.unwrap();
    let state: TestState = serde_json::from_slice(&done.body).unwrap();
    assert_eq!(state.steps, ["first", "flaky", "last"]);
    assert_eq!(h.effects(&id).await, ["first", "flaky", "last"]);
}

/// A failed foreign call records nothing; the retry calls again with the same derived key,
/// and the provider charges once.
pub async fn a_failed_foreign_call_records_nothing_and_is_repeated_with_its_key<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    provider.fail_next.store(1, Ordering::SeqCst);
    let op = checkout(&h, &provider);
    let rec = recovery(&h, &clock());
    let id = unique("foreign");
    let err = rec.run(&op, &id, TestState::new(&id, 5)).await.unwrap_err();
    assert!(matches!(&err, RecoveryError::Interrupted { phase, .. } if phase == "charge"));
    assert_eq!(h.journal().load(&id).await.unwrap().unwrap().point, "order");
    rec.run(&op, &id, TestState::new(&id, 5)).await.unwrap();
    assert_eq!(
        provider.calls(),
        [format!("{id}/charge"), format!("{id}/charge")]
    );
    assert_eq!(provider.charges(), 1);
    assert_eq!(h.effects(&id).await, ["order", "receipt"]);
}

/// A phase that responds ends the operation: the phases after it never run.
pub async fn an_early_response_ends_the_operation<H: Harness>(h: H) {
    let op = Operation::<H::J, TestState>::new("early")
        .atomic_phase("decline", h.phase("decline", Behaviour::Respond))
        .atomic_phase("never", h.phase("never", Behaviour::Respond));
    let rec = recovery(&h, &clock());
    let id = unique("early");
    let r = rec.run(&op, &id, TestState::new(&id, 1)).await.unwrap();
    let state: TestState = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(state.steps, ["decline"]);
    assert_eq!(h.effects(&id).await, ["decline"]);
}

/// A last phase that continues instead of responding is [`RecoveryError::NoResponse`], and
/// its work is rolled back.
pub async fn the_last_phase_must_respond<H: Harness>(h: H) {
    let op = Operation::<H::J, TestState>::new("open-ended")
        .atomic_phase("one", h.phase("one", Behaviour::Continue))
        .atomic_phase("two", h.phase("two", Behaviour::Continue));
    let rec = recovery(&h, &clock());
    let id = unique("open");
    let err = rec.run(&op, &id, TestState::new(&id, 1)).await.unwrap_err();
    assert_eq!(
        err,
        RecoveryError::NoResponse {
            phase: "two".into()
        }
    );
    assert_eq!(
        h.effects(&id).await,
        ["one"],
        "the last phase was rolled back"
    );
    assert_eq!(h.journal().load(&id).await.unwrap().unwrap().point, "one");
}

/// A run standing at a phase the code no longer has is [`RecoveryError::UnknownPoint`] and
/// is left as it is; the code that knows the phase still finishes it.
pub async fn an_unknown_point_is_reported_not_run<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    let op = checkout(&h, &provider);
    let id = unique("renamed");
    let stopping = recovery(&h, &clock()).with_hooks(Arc::new(StopAt("after:order".into())));
    stopping
        .run(&op, &id, TestState::new(&id, 1))
        .await
        .unwrap_err();
    // A deploy renamed the phases under the unfinished run.
    let renamed = Operation::<H::J, TestState>::new("checkout")
        .atomic_phase("create", h.phase("create", Behaviour::Continue))
        .atomic_phase("finish", h.phase("finish", Behaviour::Respond));
    let err = recovery(&h, &clock())
        .resume(&renamed, &id)
        .await
        .unwrap_err();
    assert!(matches!(&err, RecoveryError::UnknownPoint { point, .. } if point == "order"));
    assert_eq!(h.effects(&id).await, ["order"]);
    // The original code still finishes it.
    recovery(&h, &clock()).resume(&op, &id).await.unwrap();
    assert_eq!(h.effects(&id).await, ["order", "receipt"]);
}

/// The completer leaves recent runs alone, finishes idle ones of registered operations
/// (a late retry then gets the stored response), and reports those it cannot finish.
pub async fn the_completer_finishes_abandoned_operations<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    let op = Arc::new(checkout(&h, &provider));
    let clock = clock();
    let id = unique("abandoned");
    recovery(&h, &clock)
        .with_hooks(Arc::new(StopAt("after-call:charge".into())))
        .run(&op, &id, TestState::new(&id, 3))
        .await
        .unwrap_err();
    let orphan = unique("orphan");
    let unregistered = Operation::<H::J, TestState>::new(format!("gone-{orphan}"))
        .atomic_phase("a", h.phase("a", Behaviour::Continue))
        .atomic_phase("b", h.phase("b", Behaviour::Respond));
    recovery(&h, &clock)
        .with_hooks(Arc::new(StopAt("before:b".into())))
        .run(&unregistered, &orphan, TestState::new(&orphan, 1))
        .await
        .unwrap_err();
    let rec = Arc::new(recovery(&h, &clock));
    let completer = Completer::new(rec.clone())
        .register(op.clone())
        .idle_after(Duration::from_secs(60));
    let report = completer.run_once().await.unwrap();
    assert_eq!(
        report.found, 0,
        "recent runs may still be alive: {report:?}"
    );
    clock.advance(Duration::from_secs(61));
    let report = completer.run_once().await.unwrap();
    // Other tests share the journal; count only ours.
    assert!(report.finished >= 1, "{report:?}");
    assert!(report
        .failed
        .iter()
        .any(|(i, why)| i == &orphan && why.contains("not registered")));
    assert!(!report.failed.iter().any(|(i, _)| i == &id));
    assert_eq!(h.effects(&id).await, ["order", "receipt"]);
    assert_eq!(provider.charges(), 1);
    // The client comes back: the stored response, no new work.
    let r = rec.run(&op, &id, TestState::new(&id, 3)).await.unwrap();
    let state: TestState = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(state.steps, ["order", "charge", "receipt"]);
    assert_eq!(
        provider.calls().len(),
        2,
        "the crashed call and the completer's"
    );
    assert_eq!(h.effects(&id).await, ["order", "receipt"]);
}

/// The reaper deletes finished operations older than the retention, never newer ones, and
/// never unfinished ones.
pub async fn the_reaper_removes_only_old_finished_operations<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    let op = checkout(&h, &provider);
    let clock = clock();
    let rec = Arc::new(recovery(&h, &clock));
    let done = unique("done");
    rec.run(&op, &done, TestState::new(&done, 1)).await.unwrap();
    let open = unique("open");
    recovery(&h, &clock)
        .with_hooks(Arc::new(StopAt("before:receipt".into())))
        .run(&op, &open, TestState::new(&open, 1))
        .await
        .unwrap_err();
    let reaper = Reaper::new(rec.clone(), Duration::from_secs(3600));
    reaper.run_once().await.unwrap();
    assert!(
        h.journal().load(&done).await.unwrap().is_some(),
        "not old yet"
    );
    clock.advance(Duration::from_secs(3601));
    assert!(reaper.run_once().await.unwrap() >= 1);
    assert!(h.journal().load(&done).await.unwrap().is_none());
    assert!(
        h.journal().load(&open).await.unwrap().is_some(),
        "unfinished operations are the completer's, never reaped"
    );
}

/// A clock stepped backwards between phases changes nothing but timestamps.
pub async fn a_clock_stepped_back_changes_nothing<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    let op = checkout(&h, &provider);
    let clock = clock();
    let id = unique("clock");
    recovery(&h, &clock)
        .with_hooks(Arc::new(StopAt("before:receipt".into())))
        .run(&op, &id, TestState::new(&id, 1))
        .await
        .unwrap_err();
    clock.rewind(Duration::from_secs(7200));
    let r = recovery(&h, &clock)
        .run(&op, &id, TestState::new(&id, 1))
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(h.effects(&id).await, ["order", "receipt"]);
    let row = h.journal().load(&id).await.unwrap().unwrap();
    assert_eq!(row.updated_at, clock.now());
}

/// Rows edited by hand into nonsense are reported as corrupt, never panicked on nor run.
pub async fn corrupt_rows_are_errors_not_panics<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    let op = checkout(&h, &provider);
    let rec = recovery(&h, &clock());
    // Edits the row of `id` with `set` (an SQL SET list) and runs it again: a corrupt-row
    // error, not a panic nor a run.
    let corrupt_then_run = |id: String, set: &'static str| {
        let (h, op, rec) = (&h, &op, &rec);
        async move {
            h.sql(&format!("UPDATE {{ops}} SET {set} WHERE id = '{id}'"))
                .await;
            let err = rec.run(op, &id, TestState::new(&id, 1)).await.unwrap_err();
            assert!(
                matches!(err, RecoveryError::Journal(crate::JournalError::Corrupt(_))),
                "{set}: {err:?}"
            );
        }
    };
    let open = unique("bad-state");
    recovery(&h, &clock())
        .with_hooks(Arc::new(StopAt("before:receipt".into())))
        .run(&op, &open, TestState::new(&open, 1))
        .await
        .unwrap_err();
    corrupt_then_run(open.clone(), "state = 'not json'").await;
    assert_eq!(
        h.effects(&open).await,
        ["order"],
        "nothing ran on a corrupt state"
    );

    let done = unique("bad-response");
    rec.run(&op, &done, TestState::new(&done, 1)).await.unwrap();
    corrupt_then_run(done.clone(), "response_status = NULL").await;
    corrupt_then_run(done, "response_status = 70000, point = 'finished'").await;
    assert_eq!(provider.charges(), 2);
}

/// The first atomic phase creates the operation's row: a crash before its commit leaves
/// nothing behind. A foreign first phase commits the row before its call, so that the
/// completer knows of a call whose client never came back.
pub async fn the_row_appears_with_the_first_commit<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    let op = checkout(&h, &provider);
    for boundary in ["before:order", "before-commit:order"] {
        let id = unique("first");
        recovery(&h, &clock())
            .with_hooks(Arc::new(StopAt(boundary.into())))
            .run(&op, &id, TestState::new(&id, 1))
            .await
            .unwrap_err();
        assert_eq!(
            h.journal().load(&id).await.unwrap(),
            None,
            "nothing at {boundary}"
        );
        assert!(h.effects(&id).await.is_empty());
    }
    let foreign_first = foreign_first(&h, &provider);
    let id = unique("foreign-first");
    recovery(&h, &clock())
        .with_hooks(Arc::new(StopAt("after-call:charge".into())))
        .run(&foreign_first, &id, TestState::new(&id, 1))
        .await
        .unwrap_err();
    let row = h
        .journal()
        .load(&id)
        .await
        .unwrap()
        .expect("committed before the call");
    assert_eq!(row.point, crate::STARTED);
    let r = recovery(&h, &clock())
        .resume(&foreign_first, &id)
        .await
        .unwrap();
    assert_eq!(r.status, 201);
    assert_eq!(provider.charges(), 1);
}

/// Two runs of one id with different inputs racing to create it: one runs, the other is
/// refused and leaves no trace.
pub async fn racing_creators_with_other_inputs_one_wins<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    let op = Arc::new(checkout(&h, &provider));
    let rec = Arc::new(recovery(&h, &clock()));
    for _ in 0..5 {
        let id = unique("contested");
        let mut runs = Vec::new();
        for amount in [1u64, 2, 3, 4] {
            let (op, rec, id) = (op.clone(), rec.clone(), id.clone());
            runs.push(tokio::spawn(async move {
                (amount, rec.run(&op, &id, TestState::new(&id, amount)).await)
            }));
        }
        let mut winners = Vec::new();
        for r in runs {
            match r.await.unwrap() {
                (amount, Ok(resp)) => winners.push((amount, resp)),
                (_, Err(RecoveryError::InputMismatch { .. })) => {}
                (_, Err(e)) => panic!("unexpected {e:?}"),
            }
        }
        assert_eq!(winners.len(), 1, "exactly one input runs");
        let state: TestState = serde_json::from_slice(&winners[0].1.body).unwrap();
        assert_eq!(state.amount, winners[0].0);
        assert_eq!(h.effects(&id).await, ["order", "receipt"]);
    }
}

/// Operations that can never finish (unregistered here) go to the back of the queue after
/// each failed try, so a batch full of them never holds up one that can finish.
pub async fn stuck_operations_do_not_hold_up_the_completer<H: Harness>(h: H) {
    let clock = clock();
    let gone = Operation::<H::J, TestState>::new("gone")
        .atomic_phase("a", h.phase("a", Behaviour::Continue))
        .atomic_phase("b", h.phase("b", Behaviour::Respond));
    let stopping = recovery(&h, &clock).with_hooks(Arc::new(StopAt("before:b".into())));
    for _ in 0..3 {
        let id = unique("stuck");
        stopping
            .run(&gone, &id, TestState::new(&id, 1))
            .await
            .unwrap_err();
        clock.advance(Duration::from_millis(10));
    }
    let provider = Arc::new(Provider::default());
    let op = Arc::new(checkout(&h, &provider));
    let late = unique("late");
    recovery(&h, &clock)
        .with_hooks(Arc::new(StopAt("before:receipt".into())))
        .run(&op, &late, TestState::new(&late, 1))
        .await
        .unwrap_err();
    clock.advance(Duration::from_secs(120));
    let completer = Completer::new(Arc::new(recovery(&h, &clock)))
        .register(op)
        .idle_after(Duration::from_secs(60))
        .batch(2);
    let mut passes = 0;
    while h.journal().load(&late).await.unwrap().unwrap().point != crate::FINISHED {
        passes += 1;
        assert!(
            passes <= 3,
            "the finishable operation waited behind stuck ones"
        );
        completer.run_once().await.unwrap();
        clock.advance(Duration::from_secs(61));
    }
    assert_eq!(h.effects(&late).await, ["order", "receipt"]);
}

/// Another input for an unfinished operation (and for one whose first phase is foreign) is
/// refused too, before anything runs; a bad id is refused before anything is stored.
pub async fn mismatches_and_bad_ids_are_refused_before_anything_runs<H: Harness>(h: H) {
    let provider = Arc::new(Provider::default());
    let op = checkout(&h, &provider);
    let id = unique("half");
    recovery(&h, &clock())
        .with_hooks(Arc::new(StopAt("after:order".into())))
        .run(&op, &id, TestState::new(&id, 1))
        .await
        .unwrap_err();
    let err = recovery(&h, &clock())
        .run(&op, &id, TestState::new(&id, 2))
        .await
        .unwrap_err();
    assert_eq!(err, RecoveryError::InputMismatch { id: id.clone() });
    assert!(
        provider.calls().is_empty(),
        "no call for a mismatched input"
    );
    assert_eq!(h.effects(&id).await, ["order"]);

    let foreign_first = foreign_first(&h, &provider);
    let ff = unique("ff");
    recovery(&h, &clock())
        .run(&foreign_first, &ff, TestState::new(&ff, 1))
        .await
        .unwrap();
    let err = recovery(&h, &clock())
        .run(&foreign_first, &ff, TestState::new(&ff, 9))
        .await
        .unwrap_err();
    assert_eq!(err, RecoveryError::InputMismatch { id: ff.clone() });
    assert_eq!(provider.calls().len(), 1);

    for bad in ["", "a b", "\u{0}", &"x".repeat(129)] {
        let err = recovery(&h, &clock())
            .run(&op, bad, TestState::new(bad, 1))
            .await
            .unwrap_err();
        assert_eq!(err, RecoveryError::InvalidId { id: bad.to_owned() });
        assert_eq!(h.journal().load(bad).await.ok().flatten(), None);
    }
}

/// Runs the suite against a harness: `recovery_conformance_tests!(async_factory)` where the
/// factory returns `Option<H>` (`None` when the backend's service is absent: skipped).
#[macro_export]
macro_rules! recovery_conformance_tests {
    ($factory:expr) => {
        $crate::recovery_conformance_tests!(@tests $factory;
            runs_every_phase_once_and_replays_the_response,
            resumes_after_a_crash_at_every_boundary,
            concurrent_runs_commit_each_phase_once,
            another_input_is_refused,
            a_failed_phase_leaves_no_trace_and_a_retry_resumes,
            a_failed_foreign_call_records_nothing_and_is_repeated_with_its_key,
            an_early_response_ends_the_operation,
            the_last_phase_must_respond,
            an_unknown_point_is_reported_not_run,
            the_completer_finishes_abandoned_operations,
            the_reaper_removes_only_old_finished_operations,
            a_clock_stepped_back_changes_nothing,
            corrupt_rows_are_errors_not_panics,
            the_row_appears_with_the_first_commit,
            racing_creators_with_other_inputs_one_wins,
            stuck_operations_do_not_hold_up_the_completer,
            mismatches_and_bad_ids_are_refused_before_anything_runs,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(h) = ($factory)(stringify!($name)).await {
                    $crate::conformance::$name(h).await;
                }
            }
        )*
    };
}
