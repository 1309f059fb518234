//! The conformance suite on PostgreSQL, each fixture in a schema of its own (dropped at the
//! end).

use std::sync::Arc;

use oncely_core::{ManualClock, Timestamp};
use oncely_reconcile::conformance::{run_all, Fixture};
use oncely_reconcile::postgres::PgReconcile;
use oncely_reconcile::ReconcileStore;
use oncely_testkit::services::{unique_name, Service};

struct Pg {
    store: Arc<PgReconcile>,
    clock: ManualClock,
    schema: String,
    url: String,
}

impl Drop for Pg {
    fn drop(&mut self) {
        oncely_testkit::services::drop_postgres_schemas(
            &self.url,
            std::slice::from_ref(&self.schema),
        );
    }
}

impl Fixture for Pg {
    fn store(&self) -> Arc<dyn ReconcileStore> {
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
        let schema = unique_name("oncely_reconcile");
        let pool = oncely_db::postgres::pool(&oncely_db::postgres::PgOptions::new(&url)).unwrap();
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let store = PgReconcile::open(pool, &schema, Arc::new(clock.clone()))
            .await
            .unwrap();
        Pg {
            store: Arc::new(store),
            clock,
            schema,
            url: url.clone(),
        }
    })
    .await;
}
