//! The conformance suite on SQLite files.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{ManualClock, Timestamp};
use oncely_saga::conformance::{run_all, Fixture};
use oncely_saga::sqlite::SqliteSagas;
use oncely_saga::SagaStore;

struct Sqlite {
    store: Arc<SqliteSagas>,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

impl Fixture for Sqlite {
    fn store(&self) -> Arc<dyn SagaStore> {
        self.store.clone()
    }
    fn clock(&self) -> &ManualClock {
        &self.clock
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_on_sqlite() {
    run_all(|| async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let store = SqliteSagas::open(
            dir.path().join("sagas.db"),
            Duration::from_secs(5),
            Arc::new(clock.clone()),
        )
        .unwrap();
        Sqlite {
            store: Arc::new(store),
            clock,
            _dir: dir,
        }
    })
    .await;
}

/// Two stores on one file (two processes, say), claiming at the same time: each saga is
/// claimed once. One store alone would serialise its claims behind its own connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_never_claim_one_saga_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sagas.db");
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let open = || -> Arc<dyn SagaStore> {
        Arc::new(
            SqliteSagas::open(&path, Duration::from_secs(10), Arc::new(clock.clone())).unwrap(),
        )
    };
    let (a, b) = (open(), open());
    for n in 0..200 {
        a.create(&oncely_saga::NewSaga {
            id: format!("o-{n}"),
            kind: "checkout".into(),
            input: serde_json::json!({}),
        })
        .await
        .unwrap();
    }
    let kinds = vec!["checkout".to_owned()];
    let claimers = [a.clone(), b.clone(), a, b].map(|s| {
        let kinds = kinds.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let batch = s
                    .claim_due(&kinds, 3, Duration::from_secs(30))
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return got;
                }
                got.extend(batch.into_iter().map(|c| c.saga.id));
                tokio::task::yield_now().await;
            }
        })
    });
    let mut all = Vec::new();
    for c in claimers {
        all.extend(c.await.unwrap());
    }
    let claimed = all.len();
    all.sort();
    all.dedup();
    assert_eq!((claimed, all.len()), (200, 200), "each saga claimed once");
}
