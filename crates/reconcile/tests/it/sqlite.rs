//! The conformance suite on SQLite files.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{ManualClock, Timestamp};
use oncely_reconcile::conformance::{run_all, Fixture};
use oncely_reconcile::sqlite::SqliteReconcile;
use oncely_reconcile::ReconcileStore;

struct Sqlite {
    store: Arc<SqliteReconcile>,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

impl Fixture for Sqlite {
    fn store(&self) -> Arc<dyn ReconcileStore> {
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
        let store = SqliteReconcile::open(
            dir.path().join("reconcile.db"),
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
