//! The conformance suite on PostgreSQL, each test in a schema of its own (dropped at the end).

use std::sync::Arc;

use async_trait::async_trait;
use oncely_audit::audit_conformance_tests;
use oncely_audit::conformance::Harness;
use oncely_audit::postgres::PgAuditLog;
use oncely_audit::postgres::PgOptions;
use oncely_audit::AuditLog;
use oncely_testkit::services::{unique_name, Service};

struct Pg {
    log: Arc<PgAuditLog>,
    schema: String,
    url: String,
}

async fn harness(test: &str) -> Option<Pg> {
    let url = Service::Postgres.available(test)?;
    let schema = unique_name("oncely_audit");
    let mut opts = PgOptions::new(url.clone());
    opts.schema = schema.clone();
    opts.pool_size = 8;
    let log = PgAuditLog::new(&opts).unwrap();
    log.migrate().await.unwrap();
    // Twice: a second gateway starting on a migrated database changes nothing.
    log.migrate().await.unwrap();
    Some(Pg {
        log: Arc::new(log),
        schema,
        url,
    })
}

impl Drop for Pg {
    fn drop(&mut self) {
        oncely_testkit::services::drop_postgres_schemas(
            &self.url,
            std::slice::from_ref(&self.schema),
        );
    }
}

impl Pg {
    /// A connection of its own, as `psql` would open, with the schema on the search path.
    async fn shell(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(&format!("SET search_path TO {}", self.schema))
            .await
            .unwrap();
        client
    }
}

#[async_trait]
impl Harness for Pg {
    type L = PgAuditLog;
    fn log(&self) -> Arc<PgAuditLog> {
        self.log.clone()
    }
    async fn sql(&self, sql: &str) -> Result<u64, String> {
        self.shell().await.execute(sql, &[]).await.map_err(|e| {
            e.as_db_error()
                .map_or_else(|| e.to_string(), |d| d.message().to_owned())
        })
    }
    fn overwriting_insert(&self) -> &'static str {
        "INSERT INTO audit_events SELECT * FROM audit_events WHERE chain = 'gw' AND seq = 1 \
         ON CONFLICT (chain, seq) DO UPDATE SET action = 'forged'"
    }
    async fn forge(&self, sql: &str) {
        self.shell()
            .await
            .batch_execute(&format!(
                "BEGIN; ALTER TABLE audit_events DISABLE TRIGGER USER; {sql}; \
                 ALTER TABLE audit_events ENABLE TRIGGER USER; COMMIT;"
            ))
            .await
            .unwrap();
    }
}

audit_conformance_tests!(harness);

/// TRUNCATE is refused as well.
#[tokio::test]
async fn truncate_is_refused() {
    let Some(pg) = harness("truncate_is_refused").await else {
        return;
    };
    let err = pg.sql("TRUNCATE audit_events").await.unwrap_err();
    assert!(err.contains("append-only"), "{err}");
}
