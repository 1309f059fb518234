//! Embedded migrations, applied when a gateway starts and by `oncely migrate`, through the
//! mechanism every oncely concern shares ([`oncely_db::migrate`]): versions recorded in
//! `{schema}.oncely_migrations` under the concern "idempotency records", applied once under
//! an advisory lock, a database migrated by a newer oncely refused.
//!
//! Step 1 creates only what is absent: schemas migrated by builds that kept their version in
//! `{schema}.oncely_schema_version` already hold it, and adopt version 1 without a change
//! (that older table is left as it was, so those builds still start against it).

use oncely_db::migrate::{Migration, Migrations};

/// The records table's history.
pub const MIGRATIONS: Migrations = Migrations {
    concern: "idempotency records",
    steps: &[Migration {
        version: 1,
        description: "idempotency records",
        // Times are milliseconds since the Unix epoch on the clock the store runs on (the
        // database's by default), the same integers the pure model computes with, so that SQL
        // and model agree to the millisecond.
        sql: r#"
CREATE TABLE IF NOT EXISTS {schema}.idempotency_records (
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
CREATE INDEX IF NOT EXISTS idempotency_records_expiry ON {schema}.idempotency_records (expires_at);
"#,
    }],
};

/// The newest schema version this build knows.
pub const LATEST: u32 = MIGRATIONS.latest();

pub(crate) fn quoted(schema: &str) -> String {
    // `validate_schema` allows only [a-z0-9_], so quoting cannot be escaped.
    format!("\"{schema}\"")
}
