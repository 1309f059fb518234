//! The suite every saga store backend must pass (feature `conformance`). A backend's test
//! gives a [`Fixture`]: a fresh, empty store on a [`ManualClock`] the suite moves.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::saga::{Phase, SagaState};
use oncely_core::{Clock, ManualClock, Timestamp};

use crate::{Created, Direction, LogEntry, NewSaga, Recorded, SagaError, SagaStore, Transition};

/// A fresh store and the clock it reads.
pub trait Fixture {
    /// The store.
    fn store(&self) -> Arc<dyn SagaStore>;
    /// Its clock.
    fn clock(&self) -> &ManualClock;
}

const LEASE: Duration = Duration::from_secs(30);

fn kinds() -> Vec<String> {
    vec!["checkout".into()]
}

fn saga(id: &str) -> NewSaga {
    NewSaga {
        id: id.into(),
        kind: "checkout".into(),
        input: serde_json::json!({ "order": id, "total": 1999 }),
    }
}

fn step_done(state: SagaState, next: usize, now: Timestamp, keep: bool) -> Transition {
    Transition {
        state: SagaState {
            phase: Phase::Forward { step: next },
            attempt: 1,
            step_started_at: now,
            ..state
        },
        due_at: now,
        output: Some((format!("s{}", next - 1), serde_json::json!({ "ref": next }))),
        log: LogEntry {
            step: Some(format!("s{}", next - 1)),
            direction: Direction::Do,
            attempt: 1,
            outcome: "done".into(),
            at: now,
        },
        keep_lease: keep,
    }
}

/// Starting a saga twice is a no-op; with another input it is a conflict; bad ids are
/// refused.
pub async fn create_is_idempotent(f: &impl Fixture) {
    let s = f.store();
    assert_eq!(s.create(&saga("o-1")).await.unwrap(), Created::New);
    match s.create(&saga("o-1")).await.unwrap() {
        Created::Exists(existing) => {
            assert_eq!(existing.state.phase, Phase::Forward { step: 0 });
            assert_eq!(existing.input["total"], 1999);
        }
        other => panic!("{other:?}"),
    }
    let mut other = saga("o-1");
    other.input["total"] = 1.into();
    assert_eq!(
        s.create(&other).await,
        Err(SagaError::Conflict("o-1".into()))
    );
    let mut bad = saga("o 2");
    bad.id = "has space".into();
    assert!(matches!(s.create(&bad).await, Err(SagaError::Invalid(_))));
    let (_, log) = s.get("o-1").await.unwrap().unwrap();
    assert_eq!(log.len(), 1, "started once: {log:?}");
}

/// A due saga is claimed once; its runner records transitions with its token, keeping the
/// lease or handing the saga back; a stale token is refused; an expired lease is taken over.
pub async fn claims_are_leased_and_fenced(f: &impl Fixture) {
    let s = f.store();
    s.create(&saga("o-1")).await.unwrap();
    s.create(&saga("o-2")).await.unwrap();
    let first = s.claim_due(&kinds(), 10, LEASE).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(
        s.claim_due(&kinds(), 10, LEASE).await.unwrap().is_empty(),
        "leased"
    );

    let mut other = saga("r-1");
    other.kind = "refund".into();
    s.create(&other).await.unwrap();
    assert!(
        s.claim_due(&kinds(), 10, LEASE).await.unwrap().is_empty(),
        "a kind this runner does not know is left to another"
    );
    let c = first.iter().find(|c| c.saga.id == "o-1").unwrap();
    let now = f.clock().now();
    let t = step_done(c.saga.state.clone(), 1, now, true);
    assert_eq!(
        s.record("o-1", c.token, &t, LEASE).await.unwrap(),
        Recorded::Recorded {
            cancel_requested: false
        }
    );
    assert_eq!(
        s.record("o-1", c.token ^ 1, &t, LEASE).await.unwrap(),
        Recorded::LeaseLost,
        "another token"
    );
    assert!(
        s.claim_due(&kinds(), 10, LEASE).await.unwrap().is_empty(),
        "the lease was kept"
    );
    // A cancel asked meanwhile is told to the runner at its next record (one that takes
    // it); outputs add up.
    assert!(s.request_cancel("o-1").await.unwrap());
    let mut second = Transition {
        output: Some(("s1".into(), serde_json::json!({ "ref": 2 }))),
        ..step_done(t.state.clone(), 2, now, true)
    };
    second.state.cancel_requested = true;
    assert_eq!(
        s.record("o-1", c.token, &second, LEASE).await.unwrap(),
        Recorded::Recorded {
            cancel_requested: true
        }
    );
    let (o1, log) = s.get("o-1").await.unwrap().unwrap();
    assert_eq!(
        (
            o1.outputs["s0"]["ref"].clone(),
            o1.outputs["s1"]["ref"].clone()
        ),
        (1.into(), 2.into())
    );
    let seqs: Vec<&str> = log.iter().map(|l| l.outcome.as_str()).collect();
    assert_eq!(seqs, ["started", "done", "cancel requested", "done"]);

    // The lease runs out: another runner takes the saga over, the first one is fenced off.
    f.clock().advance(LEASE + Duration::from_secs(1));
    let taken = s.claim_due(&kinds(), 10, LEASE).await.unwrap();
    assert_eq!(taken.len(), 2, "both leases ran out");
    let again = taken.iter().find(|c| c.saga.id == "o-1").unwrap();
    assert_ne!(again.token, c.token);
    assert_eq!(again.saga.state.phase, Phase::Forward { step: 2 });
    assert_eq!(again.saga.outputs["s0"]["ref"], 1);
    assert_eq!(
        s.record("o-1", c.token, &t, LEASE).await.unwrap(),
        Recorded::LeaseLost,
        "the stale runner's late record"
    );
}

/// A wait hands the saga back until its due time (a durable timer); an ended saga is never
/// claimed; the log keeps every transition in order.
pub async fn waits_are_durable_timers_and_ended_sagas_rest(f: &impl Fixture) {
    let s = f.store();
    s.create(&saga("o-1")).await.unwrap();
    let c = s.claim_due(&kinds(), 1, LEASE).await.unwrap().remove(0);
    let now = f.clock().now();
    let wait = Transition {
        state: SagaState {
            attempt: 2,
            ..c.saga.state.clone()
        },
        due_at: now.plus(Duration::from_secs(5)),
        output: None,
        log: LogEntry {
            step: Some("s0".into()),
            direction: Direction::Do,
            attempt: 1,
            outcome: "retryable: 503".into(),
            at: now,
        },
        keep_lease: false,
    };
    assert_eq!(
        s.record("o-1", c.token, &wait, LEASE).await.unwrap(),
        Recorded::Recorded {
            cancel_requested: false
        }
    );
    assert!(
        s.claim_due(&kinds(), 1, LEASE).await.unwrap().is_empty(),
        "not due yet"
    );
    f.clock().advance(Duration::from_secs(5));
    let c = s.claim_due(&kinds(), 1, LEASE).await.unwrap().remove(0);
    assert_eq!(c.saga.state.attempt, 2);

    let done = Transition {
        state: SagaState {
            phase: Phase::Compensated,
            failure: Some("declined".into()),
            ..c.saga.state.clone()
        },
        due_at: f.clock().now(),
        output: None,
        log: LogEntry {
            step: Some("s0".into()),
            direction: Direction::Undo,
            attempt: 1,
            outcome: "done".into(),
            at: f.clock().now(),
        },
        keep_lease: true,
    };
    s.record("o-1", c.token, &done, LEASE).await.unwrap();
    f.clock().advance(LEASE * 2);
    assert!(
        s.claim_due(&kinds(), 1, LEASE).await.unwrap().is_empty(),
        "ended"
    );
    let (record, log) = s.get("o-1").await.unwrap().unwrap();
    assert_eq!(record.state.phase, Phase::Compensated);
    assert_eq!(record.state.failure.as_deref(), Some("declined"));
    let outcomes: Vec<(&str, &str)> = log
        .iter()
        .map(|l| (l.direction.as_str(), l.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("saga", "started"),
            ("do", "retryable: 503"),
            ("undo", "done")
        ]
    );
    assert!(s.get("nope").await.unwrap().is_none());
}

/// A cancel request flags an active saga and makes it due now; an ended or unknown one
/// says no. Listing filters by phase; stats count per phase.
pub async fn cancel_list_and_stats(f: &impl Fixture) {
    let s = f.store();
    for id in ["o-1", "o-2", "o-3"] {
        s.create(&saga(id)).await.unwrap();
        f.clock().advance(Duration::from_millis(10));
    }
    let claimed = s.claim_due(&kinds(), 10, LEASE).await.unwrap();
    let c3 = claimed.iter().find(|c| c.saga.id == "o-3").unwrap();
    let stuck = Transition {
        state: SagaState {
            phase: Phase::Stuck {
                reason: "refund refused".into(),
                step: 0,
                undoing: true,
            },
            ..c3.saga.state.clone()
        },
        due_at: f.clock().now(),
        output: None,
        log: LogEntry {
            step: Some("s0".into()),
            direction: Direction::Undo,
            attempt: 5,
            outcome: "failed: refund refused".into(),
            at: f.clock().now(),
        },
        keep_lease: false,
    };
    s.record("o-3", c3.token, &stuck, LEASE).await.unwrap();

    assert!(s.request_cancel("o-1").await.unwrap());
    assert!(!s.request_cancel("o-3").await.unwrap(), "ended");
    assert!(!s.request_cancel("nope").await.unwrap());
    let (o1, log) = s.get("o-1").await.unwrap().unwrap();
    assert!(o1.cancel_requested);
    assert!(
        !o1.state.cancel_requested,
        "the machine has not seen it yet"
    );
    assert_eq!(log.last().unwrap().outcome, "cancel requested");

    let ids = |v: Vec<crate::SagaRecord>| v.into_iter().map(|r| r.id).collect::<Vec<_>>();
    assert_eq!(ids(s.list(None, 10).await.unwrap()), ["o-3", "o-2", "o-1"]);
    assert_eq!(ids(s.list(Some("stuck"), 10).await.unwrap()), ["o-3"]);
    assert_eq!(ids(s.list(Some("running"), 1).await.unwrap()), ["o-2"]);
    let stats = s.stats().await.unwrap();
    assert_eq!((stats.running, stats.stuck, stats.completed), (2, 1, 0));
    assert_eq!(stats.oldest_active, Some(o1.created_at));

    // A person fixed the cause: the stuck saga goes on compensating where it stopped.
    assert!(!s.reopen("o-1").await.unwrap(), "not stuck");
    assert!(s.reopen("o-3").await.unwrap());
    assert!(!s.reopen("o-3").await.unwrap(), "no longer stuck");
    let (o3, log) = s.get("o-3").await.unwrap().unwrap();
    assert_eq!(
        (o3.state.phase, o3.state.attempt),
        (Phase::Compensating { step: 0 }, 1)
    );
    assert_eq!(log.last().unwrap().outcome, "reopened");
    f.clock().advance(LEASE * 2);
    let due: Vec<String> = s
        .claim_due(&kinds(), 10, LEASE)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.saga.id)
        .collect();
    assert!(due.contains(&"o-3".to_owned()), "{due:?}");
}

/// Runners claiming at the same time never get the same saga.
pub async fn concurrent_claims_never_share_a_saga(f: &impl Fixture) {
    let s = f.store();
    for n in 0..60 {
        s.create(&saga(&format!("o-{n}"))).await.unwrap();
    }
    let claims = (0..4).map(|_| {
        let s = s.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s.claim_due(&kinds(), 7, LEASE).await.unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|c| c.saga.id));
            }
        })
    });
    let mut all = Vec::new();
    for c in claims {
        all.extend(c.await.unwrap());
    }
    all.sort();
    let claimed = all.len();
    all.dedup();
    assert_eq!((claimed, all.len()), (60, 60), "each saga claimed once");
}

/// While a cancel is requested, a transition that would start an attempt without having
/// taken it is refused and nothing is written; one that took it, or that hands the saga
/// back, is recorded.
pub async fn a_pending_cancel_refuses_attempts_that_did_not_take_it(f: &impl Fixture) {
    let s = f.store();
    s.create(&saga("o-1")).await.unwrap();
    let c = s.claim_due(&kinds(), 1, LEASE).await.unwrap().remove(0);
    assert!(s.request_cancel("o-1").await.unwrap());
    let now = f.clock().now();
    let next = step_done(c.saga.state.clone(), 1, now, true);
    assert_eq!(
        s.record("o-1", c.token, &next, LEASE).await.unwrap(),
        Recorded::CancelRequested
    );
    let (saga, log) = s.get("o-1").await.unwrap().unwrap();
    assert_eq!(saga.state, c.saga.state, "nothing written");
    assert!(saga.outputs.is_empty());
    assert_eq!(log.last().unwrap().outcome, "cancel requested");
    // With the cancel taken, the same transition goes through.
    let mut taken = next.clone();
    taken.state.cancel_requested = true;
    assert_eq!(
        s.record("o-1", c.token, &taken, LEASE).await.unwrap(),
        Recorded::Recorded {
            cancel_requested: true
        }
    );
    // A transition that hands the saga back (a wait) is recorded whatever the flag says:
    // the next claim takes the cancel.
    let mut wait = step_done(taken.state.clone(), 2, now, false);
    wait.state.cancel_requested = false;
    assert!(matches!(
        s.record("o-1", c.token, &wait, LEASE).await.unwrap(),
        Recorded::Recorded { .. }
    ));
    // A stale runner still gets LeaseLost, not a cancel.
    assert_eq!(
        s.record("o-1", c.token + 1000, &next, LEASE).await.unwrap(),
        Recorded::LeaseLost
    );
}

/// Starts `id`, claims it and records it as ended in `phase`, then lets a second pass.
async fn end_saga(f: &impl Fixture, id: &str, phase: Phase) {
    let s = f.store();
    s.create(&saga(id)).await.unwrap();
    let c = s
        .claim_due(&kinds(), 10, LEASE)
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.saga.id == id)
        .unwrap();
    let now = f.clock().now();
    let t = Transition {
        state: SagaState {
            phase,
            ..c.saga.state.clone()
        },
        due_at: now,
        output: None,
        log: LogEntry {
            step: None,
            direction: Direction::Saga,
            attempt: 1,
            outcome: "ended".into(),
            at: now,
        },
        keep_lease: false,
    };
    s.record(id, c.token, &t, LEASE).await.unwrap();
    f.clock().advance(Duration::from_secs(1));
}

/// Purging deletes ended sagas (with their logs) that ended before the bound, the longest
/// ended first, up to the limit; active and stuck sagas stay.
pub async fn purge_removes_only_long_ended_sagas(f: &impl Fixture) {
    let s = f.store();
    end_saga(f, "o-1", Phase::Completed).await;
    end_saga(f, "o-2", Phase::Compensated).await;
    let stuck = Phase::Stuck {
        reason: "refund refused".into(),
        step: 0,
        undoing: true,
    };
    end_saga(f, "o-3", stuck).await;
    end_saga(f, "o-4", Phase::Completed).await;
    s.create(&saga("o-5")).await.unwrap();
    // o-5 is still running. Everything but o-4 ended more than a second ago.
    let bound = Timestamp(f.clock().now().0 - 1500);
    assert_eq!(s.purge(bound, 1).await.unwrap(), 1, "the limit");
    assert!(
        s.get("o-1").await.unwrap().is_none(),
        "the longest ended first"
    );
    assert!(s.get("o-2").await.unwrap().is_some());
    assert_eq!(s.purge(bound, 100).await.unwrap(), 1);
    assert!(s.get("o-2").await.unwrap().is_none());
    assert_eq!(
        s.purge(bound, 100).await.unwrap(),
        0,
        "nothing more before the bound"
    );
    for id in ["o-3", "o-4", "o-5"] {
        let (_, log) = s
            .get(id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{id} stays"));
        assert!(!log.is_empty());
    }
    assert_eq!(
        s.purge(f.clock().now().plus(LEASE), 100).await.unwrap(),
        1,
        "o-4 now"
    );
    let ids: Vec<String> = s
        .list(None, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids.len(), 2, "the stuck and the running saga stay: {ids:?}");
    // A purged id is free again.
    assert_eq!(s.create(&saga("o-1")).await.unwrap(), Created::New);
    let (_, log) = s.get("o-1").await.unwrap().unwrap();
    assert_eq!(log.len(), 1, "a fresh log: {log:?}");
}

/// Runs the whole suite, each case on a fresh fixture.
pub async fn run_all<F: Fixture, Fut: std::future::Future<Output = F>>(make: impl Fn() -> Fut) {
    create_is_idempotent(&make().await).await;
    claims_are_leased_and_fenced(&make().await).await;
    waits_are_durable_timers_and_ended_sagas_rest(&make().await).await;
    cancel_list_and_stats(&make().await).await;
    concurrent_claims_never_share_a_saga(&make().await).await;
    purge_removes_only_long_ended_sagas(&make().await).await;
    a_pending_cancel_refuses_attempts_that_did_not_take_it(&make().await).await;
}
