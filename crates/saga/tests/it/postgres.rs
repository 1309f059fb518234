//! The conformance suite on PostgreSQL, each fixture in a schema of its own (dropped at the
//! end).

use std::sync::Arc;

use oncely_core::{ManualClock, Timestamp};
use oncely_saga::conformance::{run_all, Fixture};
use oncely_saga::postgres::PgSagas;
use oncely_saga::SagaStore;
use oncely_testkit::services::{Service, TestSchema};

struct Pg {
    store: Arc<PgSagas>,
    clock: ManualClock,
    _schema: TestSchema,
}

impl Fixture for Pg {
    fn store(&self) -> Arc<dyn SagaStore> {
        self.store.clone()
    }
    fn clock(&self) -> &ManualClock {
        &self.clock
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_on_postgres() {
    let Some(url) = Service::Postgres.available("the_conformance_suite_on_postgres") else {
        return;
    };
    run_all(|| async {
        let schema = TestSchema::new(&url, "oncely_saga");
        let pool = oncely_db::postgres::pool(&oncely_db::postgres::PgOptions::new(&url)).unwrap();
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let store = PgSagas::open(pool, &schema.name, Arc::new(clock.clone()))
            .await
            .unwrap();
        Pg {
            store: Arc::new(store),
            clock,
            _schema: schema,
        }
    })
    .await;
}
