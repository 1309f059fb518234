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

/// A role that may only read and insert (no CREATE, no UPDATE, no DELETE) runs a gateway's
/// writer on a trail the owner prepared; reading the schema's migration table is all it
/// needs to know the trail is current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_without_ddl_rights_writes_a_prepared_trail() {
    let Some(pg) = harness("a_role_without_ddl_rights_writes_a_prepared_trail").await else {
        return;
    };
    let role = unique_name("oncely_writer");
    let admin = pg.shell().await;
    admin
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA {s} TO {role}; \
             GRANT SELECT, INSERT ON {s}.audit_events TO {role}; \
             GRANT SELECT ON {s}.oncely_migrations TO {role};",
            s = pg.schema
        ))
        .await
        .unwrap();
    let url = {
        // The same database, as that role.
        let (base, query) = pg.url.split_once('?').unwrap_or((&pg.url, ""));
        let rest = base.split_once('@').map_or(base, |(_, r)| r);
        let sep = if query.is_empty() { "" } else { "?" };
        format!("postgres://{role}@{rest}{sep}{query}")
    };
    let mut opts = PgOptions::new(url);
    opts.schema = pg.schema.clone();
    let log = Arc::new(PgAuditLog::new(&opts).unwrap());
    let result = async {
        log.migrate().await?;
        let w = oncely_audit::AuditWriter::open(
            log.clone(),
            "restricted",
            b"restricted role key".to_vec(),
            Arc::new(oncely_core::SystemClock),
            10,
        )
        .await?;
        assert!(w.record(oncely_audit::Draft {
            event_id: "restricted-1".into(),
            action: "executed".into(),
            ..Default::default()
        }));
        assert!(w.close(std::time::Duration::from_secs(10)).await);
        Ok::<_, oncely_audit::AuditError>(
            log.redact(
                &oncely_audit::Filter {
                    event_id: Some("restricted-1".into()),
                    ..Default::default()
                },
                &["actor"],
            )
            .await,
        )
    }
    .await;
    drop(log);
    admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await
        .unwrap();
    let redact = result.expect("migrate and write with SELECT and INSERT only");
    assert!(
        redact.is_err_and(|e| e.to_string().contains("permission denied")),
        "this role may not even redact"
    );
}
