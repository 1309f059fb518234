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
