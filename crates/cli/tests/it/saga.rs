//! `oncely saga` against a SQLite file holding a running saga and a stuck one: list (all
//! and by phase), show with the log, cancel a running saga (logged, due now), retry (reopen)
//! the stuck one, and clear one-line errors with a non-zero exit for an ended saga, an
//! unknown id and a bad phase.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::saga::{Phase, SagaState};
use oncely_core::{Clock, SystemClock};
use oncely_saga::sqlite::SqliteSagas;
use oncely_saga::{Direction, LogEntry, NewSaga, SagaStore, Transition};

use crate::common::oncely_output;

fn saga_cli(db: &str, args: &[&str]) -> (bool, String) {
    oncely_output(&[&["saga", "--db", db][..], args].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sagas_are_listed_shown_and_cancelled_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = SqliteSagas::open(&path, Duration::from_secs(5), Arc::new(SystemClock)).unwrap();
    for id in ["o-running", "o-stuck"] {
        store
            .create(&NewSaga {
                id: id.into(),
                kind: "checkout".into(),
                input: serde_json::json!({ "total": 1999 }),
            })
            .await
            .unwrap();
    }
    let claimed = store
        .claim_due(&["checkout".into()], 10, Duration::from_secs(30))
        .await
        .unwrap();
    let stuck = claimed.iter().find(|c| c.saga.id == "o-stuck").unwrap();
    let now = SystemClock.now();
    store
        .record(
            "o-stuck",
            stuck.token,
            &Transition {
                state: SagaState {
                    phase: Phase::Stuck {
                        reason: "compensation of reserve failed 10 times".into(),
                        step: 0,
                        undoing: true,
                    },
                    ..stuck.saga.state.clone()
                },
                due_at: now,
                output: None,
                log: LogEntry {
                    step: Some("reserve".into()),
                    direction: Direction::Undo,
                    attempt: 10,
                    outcome: "failed: 503".into(),
                    at: now,
                },
                keep_lease: false,
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let db = format!("sqlite://{}", path.display());

    let (ok, out) = saga_cli(&db, &["list"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("o-running  checkout  running  step 0 attempt 1"),
        "{out}"
    );
    assert!(
        out.contains("o-stuck  checkout  stuck  stuck at step 0 (undoing): compensation of reserve failed 10 times"),
        "{out}"
    );
    let (ok, out) = saga_cli(&db, &["list", "--phase", "stuck"]);
    assert!(
        ok && out.contains("o-stuck") && !out.contains("o-running"),
        "{out}"
    );

    let (ok, out) = saga_cli(&db, &["show", "o-stuck"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("undo  reserve      attempt 10  failed: 503"),
        "{out}"
    );
    assert!(
        out.contains("saga  -            attempt 1  started"),
        "{out}"
    );

    let (ok, out) = saga_cli(&db, &["cancel", "o-running"]);
    assert!(ok, "{out}");
    let (saga, log) = store.get("o-running").await.unwrap().unwrap();
    assert!(saga.cancel_requested);
    assert_eq!(log.last().unwrap().outcome, "cancel requested");

    let (ok, status) = saga_cli(&db, &["status"]);
    assert!(
        ok && status.contains("running       1") && status.contains("stuck         1"),
        "{status}"
    );

    for (args, says) in [
        (&["cancel", "o-stuck"][..], "no running saga"),
        (&["show", "nope"][..], "no saga nope"),
        (&["list", "--phase", "sleeping"][..], "expected one of"),
    ] {
        let (ok, out) = saga_cli(&db, args);
        assert!(!ok, "{args:?}: {out}");
        assert!(out.contains(says), "{args:?}: {out}");
        assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
    }

    let (ok, out) = saga_cli(&db, &["retry", "o-stuck"]);
    assert!(ok, "{out}");
    let (saga, _) = store.get("o-stuck").await.unwrap().unwrap();
    assert_eq!(saga.state.phase, Phase::Compensating { step: 0 });
    let (ok, out) = saga_cli(&db, &["retry", "o-stuck"]);
    assert!(!ok && out.contains("no stuck saga"), "{out}");

    // Purge: nothing has ended yet; an ended saga goes once it is old enough.
    let (ok, out) = saga_cli(&db, &["purge", "--older-than", "1ms"]);
    assert!(ok && out.contains("purged 0 ended saga(s)"), "{out}");
    let c = store
        .claim_due(&["checkout".into()], 10, Duration::from_secs(30))
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.saga.id == "o-stuck")
        .unwrap();
    let now = SystemClock.now();
    store
        .record(
            "o-stuck",
            c.token,
            &Transition {
                state: SagaState {
                    phase: Phase::Compensated,
                    ..c.saga.state.clone()
                },
                due_at: now,
                output: None,
                log: LogEntry {
                    step: Some("reserve".into()),
                    direction: Direction::Undo,
                    attempt: 1,
                    outcome: "done".into(),
                    at: now,
                },
                keep_lease: false,
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let (ok, out) = saga_cli(&db, &["purge", "--older-than", "1h"]);
    assert!(ok && out.contains("purged 0 ended saga(s)"), "{out}");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (ok, out) = saga_cli(&db, &["purge", "--older-than", "10ms"]);
    assert!(ok && out.contains("purged 1 ended saga(s)"), "{out}");
    assert!(store.get("o-stuck").await.unwrap().is_none());
    assert!(
        store.get("o-running").await.unwrap().is_some(),
        "active sagas stay"
    );
    let (ok, out) = saga_cli(&db, &["purge", "--older-than", "soon"]);
    assert!(!ok && out.contains("unknown unit"), "{out}");
}
