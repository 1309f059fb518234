//! The audit log in PostgreSQL: `{schema}.audit_events`, append-only by trigger.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use oncely_db::migrate::{MigrationReport, Migrations};
pub use oncely_db::postgres::PgOptions;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::chain::{Event, Head};
use crate::log::{
    check_redaction, migrations, redaction_sql, step_1, stored_hash, stored_seq, stored_value,
    AuditError, AuditLog, Filter, Row, COLUMNS,
};

/// The trail's history: the table and its guards. One function refuses deletes, truncation
/// and any update but a redaction (every column but the three personal values unchanged, and
/// those unchanged or emptied). The shared mechanism runs it under an advisory lock: two
/// gateways starting together would otherwise race on `CREATE OR REPLACE`.
const MIGRATIONS: Migrations = migrations(&step_1(SCHEMA_V1));

const SCHEMA_V1: &str = "
CREATE TABLE IF NOT EXISTS {schema}.audit_events (
    event_id TEXT NOT NULL UNIQUE,
    timestamp BIGINT NOT NULL,
    actor TEXT,
    actor_type TEXT NOT NULL,
    action TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    old_value TEXT,
    new_value TEXT,
    correlation_id TEXT,
    ip_address TEXT,
    user_agent TEXT,
    chain TEXT NOT NULL,
    seq BIGINT NOT NULL,
    actor_commitment BYTEA,
    ip_address_commitment BYTEA,
    user_agent_commitment BYTEA,
    prev_hash BYTEA NOT NULL,
    hash BYTEA NOT NULL,
    mac BYTEA NOT NULL,
    PRIMARY KEY (chain, seq)
);
CREATE INDEX IF NOT EXISTS audit_events_by_time ON {schema}.audit_events (timestamp);
CREATE INDEX IF NOT EXISTS audit_events_by_correlation ON {schema}.audit_events (correlation_id);
CREATE OR REPLACE FUNCTION {schema}.audit_events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF (NEW.event_id, NEW.timestamp, NEW.actor_type, NEW.action, NEW.resource_type,
            NEW.resource_id, NEW.old_value, NEW.new_value, NEW.correlation_id, NEW.chain,
            NEW.seq, NEW.actor_commitment, NEW.ip_address_commitment,
            NEW.user_agent_commitment, NEW.prev_hash, NEW.hash, NEW.mac)
           IS NOT DISTINCT FROM
           (OLD.event_id, OLD.timestamp, OLD.actor_type, OLD.action, OLD.resource_type,
            OLD.resource_id, OLD.old_value, OLD.new_value, OLD.correlation_id, OLD.chain,
            OLD.seq, OLD.actor_commitment, OLD.ip_address_commitment,
            OLD.user_agent_commitment, OLD.prev_hash, OLD.hash, OLD.mac)
           AND (NEW.actor IS NULL OR NEW.actor IS NOT DISTINCT FROM OLD.actor)
           AND (NEW.ip_address IS NULL OR NEW.ip_address IS NOT DISTINCT FROM OLD.ip_address)
           AND (NEW.user_agent IS NULL OR NEW.user_agent IS NOT DISTINCT FROM OLD.user_agent)
        THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'audit_events is append-only: an update may only redact personal fields';
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP;
END
$$;
CREATE OR REPLACE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON {schema}.audit_events
    FOR EACH ROW EXECUTE FUNCTION {schema}.audit_events_append_only();
CREATE OR REPLACE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON {schema}.audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}.audit_events_append_only();
";

/// An audit log in one schema of a PostgreSQL database.
#[derive(Clone)]
pub struct PgAuditLog {
    pool: Pool,
    table: String,
    schema: String,
    timeout: Duration,
}

impl PgAuditLog {
    /// A log on the database `opts` names (`postgres://...?schema=&pool_size=&timeout=`,
    /// as for the store). Connects lazily; does not create the table (see
    /// [`AuditLog::migrate`]).
    pub fn new(opts: &PgOptions) -> Result<Self, AuditError> {
        let pool = oncely_db::postgres::pool(opts).map_err(unavailable)?;
        Ok(PgAuditLog {
            pool,
            table: format!("{}.audit_events", opts.schema),
            schema: opts.schema.clone(),
            timeout: opts.timeout,
        })
    }

    /// The schema that holds `audit_events`, as the options named it.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    async fn bounded<T>(
        &self,
        op: impl Future<Output = Result<T, AuditError>>,
    ) -> Result<T, AuditError> {
        tokio::time::timeout(self.timeout, op)
            .await
            .unwrap_or_else(|_| {
                Err(AuditError::Unavailable(format!(
                    "postgres: no answer within {}ms",
                    self.timeout.as_millis()
                )))
            })
    }

    async fn events(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Event>, AuditError> {
        self.bounded(async {
            let client = self.pool.get().await.map_err(db_unavailable)?;
            let stmt = client.prepare_cached(sql).await.map_err(db_unavailable)?;
            let rows = client.query(&stmt, params).await.map_err(db_unavailable)?;
            rows.iter().map(read_row).collect()
        })
        .await
    }
}

fn unavailable(e: impl std::fmt::Display) -> AuditError {
    AuditError::Unavailable(format!("postgres: {e}"))
}

/// A driver or pool error with its causes (the server's message is in them), on one line.
fn db_unavailable(e: impl std::error::Error) -> AuditError {
    unavailable(oncely_db::describe(&e))
}

fn read_row(r: &tokio_postgres::Row) -> Result<Event, AuditError> {
    let get = |e: tokio_postgres::Error| {
        unavailable(format!("reading an audit row: {}", oncely_db::describe(&e)))
    };
    Ok(Row {
        chain: r.try_get(0).map_err(get)?,
        seq: r.try_get(1).map_err(get)?,
        event_id: r.try_get(2).map_err(get)?,
        timestamp: r.try_get(3).map_err(get)?,
        actor: (r.try_get(4).map_err(get)?, r.try_get(5).map_err(get)?),
        actor_type: r.try_get(6).map_err(get)?,
        action: r.try_get(7).map_err(get)?,
        resource_type: r.try_get(8).map_err(get)?,
        resource_id: r.try_get(9).map_err(get)?,
        old_value: r.try_get(10).map_err(get)?,
        new_value: r.try_get(11).map_err(get)?,
        correlation_id: r.try_get(12).map_err(get)?,
        ip_address: (r.try_get(13).map_err(get)?, r.try_get(14).map_err(get)?),
        user_agent: (r.try_get(15).map_err(get)?, r.try_get(16).map_err(get)?),
        prev_hash: r.try_get(17).map_err(get)?,
        hash: r.try_get(18).map_err(get)?,
        mac: r.try_get(19).map_err(get)?,
    }
    .into_event())
}

fn head_of(r: &tokio_postgres::Row) -> Result<Head, AuditError> {
    let chain: String = r.try_get(0).map_err(db_unavailable)?;
    let seq: i64 = r.try_get(1).map_err(db_unavailable)?;
    let hash: Vec<u8> = r.try_get(2).map_err(db_unavailable)?;
    Ok(Head {
        chain,
        next_seq: u64::try_from(seq).map_or(0, |s| s + 1),
        last_hash: stored_hash(&hash),
    })
}

#[async_trait]
impl AuditLog for PgAuditLog {
    async fn migrate(&self) -> Result<MigrationReport, AuditError> {
        self.bounded(async {
            let mut client = self.pool.get().await.map_err(db_unavailable)?;
            let report = oncely_db::postgres::migrate(&mut client, &self.schema, &MIGRATIONS)
                .await
                .map_err(|e| AuditError::Unavailable(e.to_string()))?;
            // The guards are put back whenever they are found missing, not only when step 1
            // first runs: whoever dropped one to edit the trail does not get to keep it
            // dropped past the next start (`verify` still names what was edited meanwhile).
            // Only reads when they are in place, so a role without DDL rights can start.
            let guarded: bool = client
                .query_one(
                    "SELECT (SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass($1) \
                     AND tgname IN ('audit_events_append_only', 'audit_events_no_truncate')) = 2",
                    &[&self.table],
                )
                .await
                .and_then(|r| r.try_get(0))
                .map_err(db_unavailable)?;
            if !guarded {
                let tx = client.transaction().await.map_err(db_unavailable)?;
                oncely_db::postgres::lock_schema(&tx, &self.schema)
                    .await
                    .map_err(db_unavailable)?;
                tx.batch_execute(&SCHEMA_V1.replace("{schema}", &self.schema))
                    .await
                    .map_err(db_unavailable)?;
                tx.commit().await.map_err(db_unavailable)?;
            }
            Ok(report)
        })
        .await
    }

    async fn append(&self, events: &[Event]) -> Result<(), AuditError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        // One statement for the whole batch, each column an array: one round trip instead
        // of one per event (4 times the events per second).
        let sql = format!(
            "INSERT INTO {} ({COLUMNS}) SELECT * FROM UNNEST(\
             $1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::text[], $6::bytea[], \
             $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
             $13::text[], $14::text[], $15::bytea[], $16::text[], $17::bytea[], $18::bytea[], \
             $19::bytea[], $20::bytea[])",
            self.table
        );
        let text = |f: fn(&Event) -> Option<&str>| -> Vec<Option<String>> {
            events.iter().map(|e| f(e).map(str::to_owned)).collect()
        };
        let owned = |f: fn(&Event) -> &str| -> Vec<String> {
            events.iter().map(|e| f(e).to_owned()).collect()
        };
        let bytes = |f: fn(&Event) -> Option<&[u8]>| -> Vec<Option<Vec<u8>>> {
            events.iter().map(|e| f(e).map(<[u8]>::to_vec)).collect()
        };
        let seqs = events
            .iter()
            .map(stored_seq)
            .collect::<Result<Vec<i64>, _>>()?;
        let timestamps: Vec<i64> = events.iter().map(|e| e.timestamp_ms).collect();
        let chain = owned(|e| &e.chain);
        let event_id = owned(|e| &e.event_id);
        let actor = text(|e| stored_value(&e.actor));
        let actor_c = bytes(|e| e.commitments[0].as_ref().map(|c| &c[..]));
        let actor_type = owned(|e| &e.actor_type);
        let action = owned(|e| &e.action);
        let resource_type = owned(|e| &e.resource_type);
        let resource_id = owned(|e| &e.resource_id);
        let old = text(|e| e.old_value.as_deref());
        let new = text(|e| e.new_value.as_deref());
        let correlation = text(|e| e.correlation_id.as_deref());
        let ip = text(|e| stored_value(&e.ip_address));
        let ip_c = bytes(|e| e.commitments[1].as_ref().map(|c| &c[..]));
        let ua = text(|e| stored_value(&e.user_agent));
        let ua_c = bytes(|e| e.commitments[2].as_ref().map(|c| &c[..]));
        let prev = bytes(|e| Some(&e.prev_hash[..]));
        let hash = bytes(|e| Some(&e.hash[..]));
        let mac = bytes(|e| Some(&e.mac[..]));
        self.bounded(async {
            let client = self.pool.get().await.map_err(db_unavailable)?;
            let stmt = client.prepare_cached(&sql).await.map_err(db_unavailable)?;
            let inserted = client
                .execute(
                    &stmt,
                    &[
                        &chain,
                        &seqs,
                        &event_id,
                        &timestamps,
                        &actor,
                        &actor_c,
                        &actor_type,
                        &action,
                        &resource_type,
                        &resource_id,
                        &old,
                        &new,
                        &correlation,
                        &ip,
                        &ip_c,
                        &ua,
                        &ua_c,
                        &prev,
                        &hash,
                        &mac,
                    ],
                )
                .await;
            match inserted {
                Ok(_) => Ok(()),
                // Which unique index PostgreSQL reports first is not defined (an event of ours
                // already stored violates both), so every one is a conflict; the writer tells
                // ours, another writer's and a bad batch apart by the chain's head.
                Err(err) if err.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    Err(AuditError::Conflict {
                        chain: first.chain.clone(),
                        seq: first.seq,
                    })
                }
                Err(err) => Err(db_unavailable(err)),
            }
        })
        .await
    }

    async fn head(&self, chain: &str) -> Result<Option<Head>, AuditError> {
        let sql = format!(
            "SELECT chain, seq, hash FROM {} WHERE chain = $1 ORDER BY seq DESC LIMIT 1",
            self.table
        );
        self.bounded(async {
            let client = self.pool.get().await.map_err(db_unavailable)?;
            let rows = client
                .query(&sql, &[&chain])
                .await
                .map_err(db_unavailable)?;
            rows.first().map(head_of).transpose()
        })
        .await
    }

    async fn heads(&self) -> Result<Vec<Head>, AuditError> {
        let sql = format!(
            "SELECT DISTINCT ON (chain) chain, seq, hash FROM {} ORDER BY chain, seq DESC",
            self.table
        );
        self.bounded(async {
            let client = self.pool.get().await.map_err(db_unavailable)?;
            let rows = client.query(&sql, &[]).await.map_err(db_unavailable)?;
            rows.iter().map(head_of).collect()
        })
        .await
    }

    async fn scan(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<Event>, AuditError> {
        let (chain, seq) =
            after.map_or(("", -1), |(c, s)| (c, i64::try_from(s).unwrap_or(i64::MAX)));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE (chain, seq) > ($1, $2) \
             ORDER BY chain, seq LIMIT $3",
            self.table
        );
        self.events(&sql, &[&chain, &seq, &limit]).await
    }

    async fn find(&self, filter: &Filter, limit: usize) -> Result<Vec<Event>, AuditError> {
        let (clause, values) = filter.where_clause(|n| format!("${n}"));
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = format!(
            "SELECT {COLUMNS} FROM {} WHERE {clause} \
             ORDER BY timestamp DESC, chain, seq DESC LIMIT {limit}",
            self.table
        );
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as _).collect();
        self.events(&sql, &params).await
    }

    async fn redact(&self, filter: &Filter, fields: &[&str]) -> Result<u64, AuditError> {
        check_redaction(filter, fields)?;
        let (clause, values) = filter.where_clause(|n| format!("${n}"));
        let (set, any) = redaction_sql(fields);
        let sql = format!("UPDATE {} SET {set} WHERE {clause} AND {any}", self.table);
        self.bounded(async {
            let client = self.pool.get().await.map_err(db_unavailable)?;
            let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v as _).collect();
            client.execute(&sql, &params).await.map_err(db_unavailable)
        })
        .await
    }
}
