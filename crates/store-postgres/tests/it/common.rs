//! A store in a schema of its own, dropped when the test ends, on the PostgreSQL named by
//! `ONCELY_TEST_POSTGRES` (tests run in parallel against one server).

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{Clock, ManualClock};
use oncely_store::conformance::Guarded;
use oncely_store::TimeSource;
use oncely_store_postgres::{PgOptions, PgStore};
use oncely_testkit::services::{unique_name, Service};

/// Whether PostgreSQL is there for `test` (skips, or fails under ONCELY_REQUIRE_SERVICES=1).
pub(crate) fn available(test: &str) -> bool {
    Service::Postgres.available(test).is_some()
}

pub(crate) fn options(schema: &str) -> PgOptions {
    let mut o = PgOptions::from_url(&Service::Postgres.url()).expect("test URL parses");
    o.schema = schema.to_owned();
    o.pool_size = 8;
    o.timeout = Duration::from_secs(10);
    o
}

/// Drops its schema on drop.
pub(crate) struct Schema {
    pub name: String,
}

impl Schema {
    pub(crate) fn new() -> Schema {
        Schema {
            name: unique_name("oncely_test"),
        }
    }
    pub(crate) async fn store(&self, time: TimeSource) -> PgStore {
        PgStore::connect(options(&self.name), time)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        oncely_testkit::services::drop_postgres_schemas(
            &Service::Postgres.url(),
            std::slice::from_ref(&self.name),
        );
    }
}

/// A store on a manual clock, in a schema of its own that is dropped with it.
pub(crate) async fn temp_store(clock: ManualClock) -> Guarded<PgStore, Schema> {
    let schema = Schema::new();
    let clock: Arc<dyn Clock> = Arc::new(clock);
    Guarded {
        store: schema.store(TimeSource::Local(clock)).await,
        guard: schema,
    }
}

/// The server's clock, in milliseconds since the epoch.
pub(crate) async fn server_now_ms() -> i64 {
    let url = oncely_testkit::services::Service::Postgres.url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_one("SELECT floor(extract(epoch FROM now()) * 1000)::int8", &[])
        .await
        .unwrap()
        .get(0)
}
