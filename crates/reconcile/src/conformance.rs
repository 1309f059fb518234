//! The suite every reconciliation store backend must pass (feature `conformance`). A
//! backend's test gives a [`Fixture`]: a fresh, empty store on a [`ManualClock`].

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{Clock, ManualClock, Timestamp};

use crate::{
    FindingFilter, FindingState, NewFinding, ReconcileError, ReconcileStore, Recorded, RunEnd,
    RunOutcome, RunReport,
};

/// A fresh store and the clock it reads.
pub trait Fixture {
    /// The store.
    fn store(&self) -> Arc<dyn ReconcileStore>;
    /// Its clock.
    fn clock(&self) -> &ManualClock;
}

const LEASE: Duration = Duration::from_secs(60);

fn finding(key: &str, class: &str, healed: bool) -> NewFinding {
    NewFinding {
        key: key.into(),
        class: class.into(),
        kind: "only_theirs".into(),
        healed,
        ours: vec![],
        theirs: vec![format!("ch_{key}")],
        detail: serde_json::json!({ "theirs_amount": 1999 }),
    }
}

fn end(
    outcome: RunOutcome,
    report: RunReport,
    checkpoint: Option<Timestamp>,
    error: Option<String>,
) -> RunEnd {
    RunEnd {
        outcome,
        report,
        checkpoint,
        error,
    }
}

fn report(n: u64) -> RunReport {
    let mut r = RunReport::default();
    r.counts.insert("groups".into(), n);
    r.samples.insert("orphan_charge".into(), vec!["o-1".into()]);
    r.covered = Some((Timestamp(1), Timestamp(2)));
    r
}

/// One run at a time per job: a second claim is refused while the first holds it, a run
/// whose lease ran out is failed and taken over, and its late writes are refused.
pub async fn one_run_at_a_time_and_stale_runs_are_fenced(f: &impl Fixture) {
    let s = f.store();
    let first = s.claim("payments", LEASE).await.unwrap().unwrap();
    assert_eq!(first.checkpoint, None);
    assert!(s.claim("payments", LEASE).await.unwrap().is_none(), "held");
    assert!(
        s.claim("refunds", LEASE).await.unwrap().is_some(),
        "jobs are apart"
    );
    assert!(s.renew("payments", first.token, LEASE).await.unwrap());
    f.clock().advance(LEASE + Duration::from_secs(1));
    let second = s.claim("payments", LEASE).await.unwrap().unwrap();
    assert!(second.token > first.token);
    assert_eq!(
        s.record(
            "payments",
            first.token,
            &finding("o-1", "orphan_charge", false)
        )
        .await
        .unwrap(),
        Recorded::LeaseLost
    );
    assert!(!s.renew("payments", first.token, LEASE).await.unwrap());
    assert!(
        !s.finish(
            "payments",
            &first,
            &end(RunOutcome::Clean, report(1), Some(Timestamp(5)), None)
        )
        .await
        .unwrap(),
        "the stale run cannot finish"
    );
    let runs = s.runs(Some("payments"), 10).await.unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].id, second.run, "newest first");
    assert_eq!(runs[0].outcome, RunOutcome::Running);
    assert_eq!(
        runs[1].outcome,
        RunOutcome::Failed,
        "the abandoned run is failed"
    );
    assert!(runs[1].error.as_deref().unwrap().contains("lease"));
    assert!(matches!(
        s.claim("no spaces", LEASE).await,
        Err(ReconcileError::Invalid(_))
    ));
}

/// Finishing records the report and moves the checkpoint, only forward, and not for a
/// failed run; the job is free again.
pub async fn checkpoints_move_forward_on_success_only(f: &impl Fixture) {
    let s = f.store();
    let c = s.claim("payments", LEASE).await.unwrap().unwrap();
    assert!(s
        .finish(
            "payments",
            &c,
            &end(RunOutcome::Clean, report(3), Some(Timestamp(1000)), None)
        )
        .await
        .unwrap());
    let c = s.claim("payments", LEASE).await.unwrap().unwrap();
    assert_eq!(c.checkpoint, Some(Timestamp(1000)));
    assert!(s
        .finish(
            "payments",
            &c,
            &end(
                RunOutcome::Failed,
                RunReport::default(),
                Some(Timestamp(5000)),
                Some("the provider answered 502".into())
            )
        )
        .await
        .unwrap());
    let c = s.claim("payments", LEASE).await.unwrap().unwrap();
    assert_eq!(
        c.checkpoint,
        Some(Timestamp(1000)),
        "a failed run moves nothing"
    );
    s.finish(
        "payments",
        &c,
        &end(RunOutcome::Drift, report(1), Some(Timestamp(400)), None),
    )
    .await
    .unwrap();
    let c = s.claim("payments", LEASE).await.unwrap().unwrap();
    assert_eq!(c.checkpoint, Some(Timestamp(1000)), "never back");
    let runs = s.runs(None, 10).await.unwrap();
    assert_eq!(runs.len(), 4);
    assert_eq!(runs[3].report, report(3), "reports round-trip");
    assert_eq!(runs[3].checkpoint_after, Some(Timestamp(1000)));
    assert_eq!(runs[2].outcome, RunOutcome::Failed);
    assert_eq!(runs[2].error.as_deref(), Some("the provider answered 502"));
    assert_eq!(runs[2].checkpoint_after, None);
    assert_eq!(runs[1].outcome, RunOutcome::Drift);
    let stats = s.stats().await.unwrap();
    let job = &stats.jobs["payments"];
    assert_eq!(job.checkpoint, Some(Timestamp(1000)));
    assert_eq!(job.last_run.map(|(_, o)| o), Some(RunOutcome::Drift));
    assert!(job.last_success.is_some());
}

/// A drift seen again is the same finding (seen by one more run); a resolved one opens
/// again; heals are recorded as healed; the review moves open -> acknowledged -> resolved.
pub async fn findings_are_deduplicated_and_reviewed(f: &impl Fixture) {
    let s = f.store();
    let c = s.claim("payments", LEASE).await.unwrap().unwrap();
    let Recorded::New(orphan) = s
        .record("payments", c.token, &finding("o-9", "orphan_charge", false))
        .await
        .unwrap()
    else {
        panic!("a new finding");
    };
    assert_eq!(
        s.record("payments", c.token, &finding("o-9", "orphan_charge", false))
            .await
            .unwrap(),
        Recorded::Again(orphan)
    );
    let Recorded::New(healed) = s
        .record("payments", c.token, &finding("o-2", "mark_paid", true))
        .await
        .unwrap()
    else {
        panic!("a new heal");
    };
    assert!(matches!(
        s.record(
            "payments",
            c.token,
            &finding("o-9", "amount_mismatch", false)
        )
        .await
        .unwrap(),
        Recorded::New(_)
    ));
    s.finish(
        "payments",
        &c,
        &end(RunOutcome::Drift, report(3), Some(Timestamp(10)), None),
    )
    .await
    .unwrap();
    let one = s.finding(orphan).await.unwrap().unwrap();
    assert_eq!(
        (one.state, one.seen),
        (FindingState::Open, 1),
        "one run saw it"
    );
    assert_eq!(one.theirs, ["ch_o-9"]);
    assert_eq!(one.detail["theirs_amount"], 1999);
    assert_eq!(
        s.finding(healed).await.unwrap().unwrap().state,
        FindingState::Healed
    );

    f.clock().advance(Duration::from_secs(1));
    let c = s.claim("payments", LEASE).await.unwrap().unwrap();
    assert_eq!(
        s.record("payments", c.token, &finding("o-9", "orphan_charge", false))
            .await
            .unwrap(),
        Recorded::Again(orphan)
    );
    let one = s.finding(orphan).await.unwrap().unwrap();
    assert_eq!(one.seen, 2, "a second run saw it");
    assert!(one.last_seen > one.first_seen);

    assert!(s
        .review(orphan, FindingState::Acknowledged, "ada")
        .await
        .unwrap());
    assert!(!s
        .review(orphan, FindingState::Acknowledged, "ada")
        .await
        .unwrap());
    assert!(s
        .review(orphan, FindingState::Resolved, "bob")
        .await
        .unwrap());
    let one = s.finding(orphan).await.unwrap().unwrap();
    assert_eq!(
        (one.state, one.by.as_deref()),
        (FindingState::Resolved, Some("bob"))
    );
    assert!(
        !s.review(healed, FindingState::Resolved, "ada")
            .await
            .unwrap(),
        "heals are closed"
    );
    assert!(matches!(
        s.review(orphan, FindingState::Open, "ada").await,
        Err(ReconcileError::Invalid(_))
    ));
    // Resolved, yet seen again: it was not fixed, and it is open again.
    assert_eq!(
        s.record("payments", c.token, &finding("o-9", "orphan_charge", false))
            .await
            .unwrap(),
        Recorded::Reopened(orphan)
    );
    assert_eq!(
        s.finding(orphan).await.unwrap().unwrap().state,
        FindingState::Open
    );

    let open = s
        .findings(
            &FindingFilter {
                state: Some(FindingState::Open),
                ..FindingFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(open.len(), 2, "{open:?}");
    let of_class = s
        .findings(
            &FindingFilter {
                job: Some("payments".into()),
                class: Some("mark_paid".into()),
                ..FindingFilter::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(of_class.len(), 1);
    assert!(s.finding(999_999).await.unwrap().is_none());
    let stats = s.stats().await.unwrap();
    assert_eq!(
        stats
            .findings
            .get(&("payments".into(), "orphan_charge".into(), "open".into())),
        Some(&1)
    );
    assert_eq!(
        stats
            .findings
            .get(&("payments".into(), "mark_paid".into(), "healed".into())),
        Some(&1)
    );
}

/// Many runs claiming one job at once: exactly one gets it.
pub async fn concurrent_claims_give_one_run(f: &impl Fixture) {
    let s = f.store();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let s = s.clone();
        tasks.spawn(async move { s.claim("payments", LEASE).await.unwrap().is_some() });
    }
    let mut won = 0;
    while let Some(got) = tasks.join_next().await {
        won += usize::from(got.unwrap());
    }
    assert_eq!(won, 1);
    let _ = f.clock().now();
}

/// Runs the whole suite, each case on a fresh fixture.
pub async fn run_all<F: Fixture, Fut: std::future::Future<Output = F>>(make: impl Fn() -> Fut) {
    one_run_at_a_time_and_stale_runs_are_fenced(&make().await).await;
    checkpoints_move_forward_on_success_only(&make().await).await;
    findings_are_deduplicated_and_reviewed(&make().await).await;
    concurrent_claims_give_one_run(&make().await).await;
}
