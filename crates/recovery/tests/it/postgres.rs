//! The conformance suite on PostgreSQL, each test in a schema of its own (dropped at the end).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oncely_recovery::conformance::{behave, Behaviour, Harness, TestState};
use oncely_recovery::postgres::{pool, PgJournal, PgPhase};
use oncely_recovery::{recovery_conformance_tests, Journal};
use oncely_testkit::services::{unique_name, Service};

struct Pg {
    journal: Arc<PgJournal>,
    schema: String,
    url: String,
}

async fn harness(test: &str) -> Option<Pg> {
    let url = Service::Postgres.available(test)?;
    let schema = unique_name("oncely_rec");
    let pool = pool(&url, 8, Duration::from_secs(10)).unwrap();
    let journal = PgJournal::new(pool, &schema, Duration::from_secs(10)).unwrap();
    journal.migrate().await.unwrap();
    journal
        .pool()
        .get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE \"{schema}\".effects (seq bigserial PRIMARY KEY, op text NOT NULL, phase text NOT NULL)"
        ))
        .await
        .unwrap();
    Some(Pg {
        journal: Arc::new(journal),
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

#[async_trait]
impl Harness for Pg {
    type J = PgJournal;
    fn journal(&self) -> Arc<PgJournal> {
        self.journal.clone()
    }
    fn phase(&self, name: &str, behaviour: Behaviour) -> PgPhase<TestState> {
        let name = name.to_owned();
        let sql = format!(
            "INSERT INTO \"{}\".effects (op, phase) VALUES ($1, $2)",
            self.schema
        );
        Arc::new(move |tx, state| {
            let (name, sql, behaviour) = (name.clone(), sql.clone(), behaviour.clone());
            Box::pin(async move {
                tx.execute(&sql, &[&state.id, &name]).await?;
                behave(&behaviour, &name, state)
            })
        })
    }
    async fn effects(&self, id: &str) -> Vec<String> {
        let client = self.journal.pool().get().await.unwrap();
        client
            .query(
                &format!(
                    "SELECT phase FROM \"{}\".effects WHERE op = $1 ORDER BY seq",
                    self.schema
                ),
                &[&id],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }
    async fn sql(&self, statement: &str) {
        let statement = statement.replace("{ops}", &format!("\"{}\".operations", self.schema));
        let client = self.journal.pool().get().await.unwrap();
        client.batch_execute(&statement).await.unwrap();
    }
}

recovery_conformance_tests!(harness);

/// An unreachable database is an error within the timeout, never a hang.
#[tokio::test]
async fn an_absent_database_fails_in_bounded_time() {
    // Nothing listens on port 1.
    let pool = pool(
        "postgres://postgres@127.0.0.1:1/none",
        2,
        Duration::from_millis(500),
    )
    .unwrap();
    let journal = PgJournal::new(pool, "absent", Duration::from_millis(500)).unwrap();
    let started = std::time::Instant::now();
    let err = journal.load("x").await.unwrap_err();
    assert!(
        matches!(err, oncely_recovery::JournalError::Unavailable(_)),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn bad_schema_names_are_refused() {
    let pool = pool(
        "postgres://postgres@127.0.0.1:5432/test",
        1,
        Duration::from_secs(1),
    )
    .unwrap();
    for bad in ["", "1abc", "a-b", "a\"b", &"x".repeat(64)] {
        assert!(
            PgJournal::new(pool.clone(), bad, Duration::from_secs(1)).is_err(),
            "{bad:?}"
        );
    }
}
