//! Embedded migrations, applied when a gateway starts and by `oncely migrate`.
//!
//! Each migration runs once, in order, inside one transaction that first takes an advisory
//! lock on the schema: several gateways starting at once against a new database serialize
//! here and only the first applies anything. Applied versions are recorded in
//! `{schema}.oncely_schema_version`; a database migrated by a newer oncely is refused rather
//! than written with assumptions it no longer meets.

use tokio_postgres::Client;

use crate::codec::unavailable;
use oncely_store::{StoreError, StoreResult};

/// One migration: its version and its statements, `{schema}` standing for the quoted schema.
struct Migration {
    version: i32,
    description: &'static str,
    sql: &'static str,
}

const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "idempotency records",
    // Times are milliseconds since the Unix epoch on the clock the store runs on (the
    // database's by default), the same integers the pure model computes with, so that SQL
    // and model agree to the millisecond.
    sql: r#"
CREATE TABLE {schema}.idempotency_records (
    tenant           text     NOT NULL,
    method           text     NOT NULL,
    route            text     NOT NULL,
    idem_key         text     NOT NULL,
    fingerprint      bytea    NOT NULL,
    created_at       bigint   NOT NULL,
    expires_at       bigint   NOT NULL,
    state            smallint NOT NULL,
    lease_token      bytea,
    lease_expires_at bigint,
    taken_over_at    bigint,
    status           smallint,
    headers          bytea,
    body             bytea,
    PRIMARY KEY (tenant, method, route, idem_key),
    CONSTRAINT state_is_known CHECK (state IN (0, 1)),
    CONSTRAINT in_progress_has_a_lease
        CHECK (state <> 0 OR (lease_token IS NOT NULL AND lease_expires_at IS NOT NULL)),
    CONSTRAINT completed_has_a_response
        CHECK (state <> 1 OR (status IS NOT NULL AND headers IS NOT NULL AND body IS NOT NULL))
);
-- The purge walks this index in small batches.
CREATE INDEX idempotency_records_expiry ON {schema}.idempotency_records (expires_at);
"#,
}];

/// The newest schema version this build knows.
pub const LATEST: i32 = 1;

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The version found before migrating (0 for a new schema).
    pub from: i32,
    /// The version now.
    pub to: i32,
    /// `version: description` of each migration applied.
    pub applied: Vec<String>,
}

pub(crate) fn quoted(schema: &str) -> String {
    // `validate_schema` allows only [a-z0-9_], so quoting cannot be escaped.
    format!("\"{schema}\"")
}

pub(crate) async fn migrate(client: &mut Client, schema: &str) -> StoreResult<MigrationReport> {
    let q = quoted(schema);
    let tx = client.transaction().await.map_err(unavailable)?;
    // One lock per schema, held until commit: concurrent starters wait, then find the work done.
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext('oncely migrate ' || $1::text))",
        &[&schema],
    )
    .await
    .map_err(unavailable)?;
    tx.batch_execute(&format!(
        // Quiet the "already exists, skipping" notices every restart would log.
        "SET LOCAL client_min_messages = warning;
         CREATE SCHEMA IF NOT EXISTS {q};
         CREATE TABLE IF NOT EXISTS {q}.oncely_schema_version (
             version     integer     PRIMARY KEY,
             description text        NOT NULL,
             applied_at  timestamptz NOT NULL DEFAULT now()
         );"
    ))
    .await
    .map_err(unavailable)?;
    let row = tx
        .query_one(
            &format!("SELECT COALESCE(max(version), 0) FROM {q}.oncely_schema_version"),
            &[],
        )
        .await
        .map_err(unavailable)?;
    let from: i32 = row.try_get(0).map_err(unavailable)?;
    if from > LATEST {
        return Err(StoreError::Unavailable(format!(
            "schema {schema} is at version {from}, newer than this oncely knows ({LATEST}); upgrade oncely"
        )));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > from) {
        tx.batch_execute(&m.sql.replace("{schema}", &q))
            .await
            .map_err(|e| StoreError::Unavailable(format!("migration {} failed: {e}", m.version)))?;
        tx.execute(
            &format!(
                "INSERT INTO {q}.oncely_schema_version (version, description) VALUES ($1, $2)"
            ),
            &[&m.version, &m.description],
        )
        .await
        .map_err(unavailable)?;
        applied.push(format!("{}: {}", m.version, m.description));
    }
    tx.commit().await.map_err(unavailable)?;
    Ok(MigrationReport {
        from,
        to: LATEST,
        applied,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_ordered_and_end_at_latest() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let expected: Vec<i32> = (1..=LATEST).collect();
        assert_eq!(versions, expected);
    }
}
