//! The reconciliation store on PostgreSQL, in a schema of the application's database. Each
//! operation is one statement, so a run's claim, findings and finish are atomic and several
//! reconciliation workers can share the database. Times are the store's injected clock.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::Pool;
use oncely_core::{Clock, Timestamp};
use oncely_db::migrate::{Migration, Migrations};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::store::{
    check_review, ids_from, ids_json, report_from, report_json, validate_job, Finding,
    FindingFilter, FindingState, JobClaim, JobStatus, NewFinding, ReconcileError, ReconcileStats,
    ReconcileStore, Recorded, RunEnd, RunOutcome, RunRecord,
};

const MIGRATIONS: Migrations = Migrations {
    concern: "reconciliation",
    steps: &[Migration {
        version: 1,
        description: "reconciliation jobs, runs and findings",
        sql: "
CREATE TABLE IF NOT EXISTS {schema}.reconcile_jobs (
    job         text PRIMARY KEY,
    lease_token int8 NOT NULL DEFAULT 0,
    lease_until int8,
    run         int8,
    checkpoint  int8
);
CREATE TABLE IF NOT EXISTS {schema}.reconcile_runs (
    id                bigserial PRIMARY KEY,
    job               text NOT NULL,
    outcome           text NOT NULL,
    started_at        int8 NOT NULL,
    finished_at       int8,
    checkpoint_before int8,
    checkpoint_after  int8,
    report            text NOT NULL DEFAULT '{}',
    error             text
);
CREATE INDEX IF NOT EXISTS reconcile_runs_job ON {schema}.reconcile_runs (job, id);
CREATE TABLE IF NOT EXISTS {schema}.reconcile_findings (
    id         bigserial PRIMARY KEY,
    job        text NOT NULL,
    key        text NOT NULL,
    class      text NOT NULL,
    kind       text NOT NULL,
    state      text NOT NULL,
    ours       text NOT NULL,
    theirs     text NOT NULL,
    detail     text NOT NULL,
    seen       int8 NOT NULL,
    first_seen int8 NOT NULL,
    last_seen  int8 NOT NULL,
    first_run  int8 NOT NULL,
    last_run   int8 NOT NULL,
    reviewer   text,
    UNIQUE (job, key, class)
);
CREATE INDEX IF NOT EXISTS reconcile_findings_state
    ON {schema}.reconcile_findings (state, last_seen);
",
    }],
};

/// A migration may build an index over many findings: it gets minutes.
const MIGRATION_TIMEOUT: Duration = Duration::from_secs(300);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

const RUN_COLUMNS: &str = "id, job, outcome, started_at, finished_at, checkpoint_before, \
                           checkpoint_after, report, error";
const FINDING_COLUMNS: &str = "id, job, key, class, kind, state, ours, theirs, detail, seen, \
                               first_seen, last_seen, reviewer";

struct Statements {
    ensure_job: String,
    claim: String,
    renew: String,
    record: String,
    finish: String,
    runs: String,
    findings: String,
    finding: String,
    review: String,
    finding_counts: String,
    jobs: String,
}

impl Statements {
    fn new(schema: &str) -> Statements {
        let (j, r, f) = (
            format!("\"{schema}\".reconcile_jobs"),
            format!("\"{schema}\".reconcile_runs"),
            format!("\"{schema}\".reconcile_findings"),
        );
        Statements {
            ensure_job: format!("INSERT INTO {j} (job) VALUES ($1) ON CONFLICT (job) DO NOTHING"),
            // The row lock orders concurrent claims: the second sees the first's lease.
            claim: format!(
                "WITH cur AS (SELECT job, lease_until, run, checkpoint FROM {j} \
                   WHERE job = $1 FOR UPDATE), \
                 free AS (SELECT * FROM cur WHERE lease_until IS NULL OR lease_until <= $2), \
                 abandoned AS (UPDATE {r} SET outcome = 'failed', finished_at = $2, \
                   error = 'its lease ran out before it finished' \
                   WHERE id = (SELECT run FROM free WHERE lease_until IS NOT NULL) \
                   AND outcome = 'running'), \
                 started AS (INSERT INTO {r} (job, outcome, started_at, checkpoint_before) \
                   SELECT job, 'running', $2, checkpoint FROM free RETURNING id) \
                 UPDATE {j} SET lease_token = lease_token + 1, lease_until = $3, \
                   run = (SELECT id FROM started) \
                 WHERE job = $1 AND EXISTS (SELECT 1 FROM started) \
                 RETURNING lease_token, run, checkpoint"
            ),
            renew: format!(
                "UPDATE {j} SET lease_until = $3 WHERE job = $1 AND lease_token = $2 \
                 AND lease_until IS NOT NULL RETURNING job"
            ),
            record: format!(
                "WITH held AS (SELECT run FROM {j} WHERE job = $1 AND lease_token = $2 \
                   AND lease_until IS NOT NULL FOR SHARE), \
                 prior AS (SELECT state FROM {f} WHERE job = $1 AND key = $3 AND class = $4) \
                 INSERT INTO {f} AS f (job, key, class, kind, state, ours, theirs, detail, seen, \
                   first_seen, last_seen, first_run, last_run) \
                 SELECT $1, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10, run, run FROM held \
                 ON CONFLICT (job, key, class) DO UPDATE SET kind = excluded.kind, \
                   ours = excluded.ours, theirs = excluded.theirs, detail = excluded.detail, \
                   last_seen = excluded.last_seen, \
                   seen = f.seen + CASE WHEN f.last_run = excluded.last_run THEN 0 ELSE 1 END, \
                   last_run = excluded.last_run, \
                   state = CASE WHEN f.state = 'resolved' THEN excluded.state ELSE f.state END \
                 RETURNING id, (xmax = 0) AS inserted, (SELECT state FROM prior) AS was"
            ),
            finish: format!(
                "WITH held AS (SELECT job FROM {j} WHERE job = $1 AND lease_token = $2 \
                   AND lease_until IS NOT NULL AND run = $3 FOR UPDATE), \
                 ended AS (UPDATE {r} SET outcome = $4, finished_at = $5, report = $6, \
                   error = $7, checkpoint_after = $8 \
                   WHERE id = $3 AND EXISTS (SELECT 1 FROM held) RETURNING id) \
                 UPDATE {j} SET lease_until = NULL, checkpoint = CASE \
                   WHEN $8::int8 IS NULL THEN checkpoint \
                   WHEN checkpoint IS NULL OR $8::int8 > checkpoint THEN $8::int8 \
                   ELSE checkpoint END \
                 WHERE job = $1 AND EXISTS (SELECT 1 FROM ended) RETURNING job"
            ),
            runs: format!(
                "SELECT {RUN_COLUMNS} FROM {r} WHERE $1::text IS NULL OR job = $1 \
                 ORDER BY id DESC LIMIT $2"
            ),
            findings: format!(
                "SELECT {FINDING_COLUMNS} FROM {f} WHERE ($1::text IS NULL OR job = $1) \
                 AND ($2::text IS NULL OR state = $2) AND ($3::text IS NULL OR class = $3) \
                 ORDER BY last_seen DESC, id DESC LIMIT $4"
            ),
            finding: format!("SELECT {FINDING_COLUMNS} FROM {f} WHERE id = $1"),
            review: format!(
                "UPDATE {f} SET state = $2, reviewer = $3 WHERE id = $1 \
                 AND (state = 'open' OR (state = 'acknowledged' AND $2 = 'resolved')) \
                 RETURNING id"
            ),
            finding_counts: format!(
                "SELECT job, class, state, count(*) FROM {f} GROUP BY job, class, state"
            ),
            jobs: format!(
                "SELECT j.job, j.checkpoint, \
                 (SELECT finished_at FROM {r} x WHERE x.job = j.job AND finished_at IS NOT NULL \
                  ORDER BY id DESC LIMIT 1), \
                 (SELECT outcome FROM {r} x WHERE x.job = j.job AND finished_at IS NOT NULL \
                  ORDER BY id DESC LIMIT 1), \
                 (SELECT max(finished_at) FROM {r} x WHERE x.job = j.job \
                  AND outcome IN ('clean', 'drift')) \
                 FROM {j} j"
            ),
        }
    }
}

/// Runs and findings in one schema of the database behind a pool.
pub struct PgReconcile {
    pool: Pool,
    clock: Arc<dyn Clock>,
    sql: Statements,
    timeout: Duration,
}

fn corrupt(e: tokio_postgres::Error) -> ReconcileError {
    ReconcileError::Corrupt(oncely_db::describe(&e))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn read_run(r: &Row) -> Result<RunRecord, ReconcileError> {
    let id: i64 = r.try_get(0).map_err(corrupt)?;
    let outcome: String = r.try_get(2).map_err(corrupt)?;
    let report: String = r.try_get(7).map_err(corrupt)?;
    let at = |i: usize| -> Result<Option<Timestamp>, ReconcileError> {
        Ok(r.try_get::<_, Option<i64>>(i)
            .map_err(corrupt)?
            .map(Timestamp))
    };
    Ok(RunRecord {
        id,
        job: r.try_get(1).map_err(corrupt)?,
        outcome: RunOutcome::parse(&outcome)
            .ok_or_else(|| ReconcileError::Corrupt(format!("run {id}: outcome {outcome}")))?,
        started_at: Timestamp(r.try_get(3).map_err(corrupt)?),
        finished_at: at(4)?,
        checkpoint_before: at(5)?,
        checkpoint_after: at(6)?,
        report: report_from(&report)?,
        error: r.try_get(8).map_err(corrupt)?,
    })
}

fn read_finding(r: &Row) -> Result<Finding, ReconcileError> {
    let id: i64 = r.try_get(0).map_err(corrupt)?;
    let state: String = r.try_get(5).map_err(corrupt)?;
    let detail: String = r.try_get(8).map_err(corrupt)?;
    let seen: i64 = r.try_get(9).map_err(corrupt)?;
    Ok(Finding {
        id,
        job: r.try_get(1).map_err(corrupt)?,
        key: r.try_get(2).map_err(corrupt)?,
        class: r.try_get(3).map_err(corrupt)?,
        kind: r.try_get(4).map_err(corrupt)?,
        state: FindingState::parse(&state)
            .ok_or_else(|| ReconcileError::Corrupt(format!("finding {id}: state {state}")))?,
        ours: ids_from(r.try_get(6).map_err(corrupt)?)?,
        theirs: ids_from(r.try_get(7).map_err(corrupt)?)?,
        detail: serde_json::from_str(&detail)
            .map_err(|e| ReconcileError::Corrupt(format!("finding {id}: detail: {e}")))?,
        seen: u64::try_from(seen).unwrap_or(0),
        first_seen: Timestamp(r.try_get(10).map_err(corrupt)?),
        last_seen: Timestamp(r.try_get(11).map_err(corrupt)?),
        by: r.try_get(12).map_err(corrupt)?,
    })
}

impl PgReconcile {
    /// The store in `schema`, created or brought up to date through `pool`.
    pub async fn open(
        pool: Pool,
        schema: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ReconcileError> {
        oncely_db::postgres::validate_schema(schema)
            .map_err(|e| ReconcileError::Invalid(format!("schema: {e}")))?;
        oncely_db::postgres::migrate_pooled(&pool, schema, &MIGRATIONS, MIGRATION_TIMEOUT)
            .await
            .map_err(ReconcileError::Unavailable)?;
        Ok(PgReconcile {
            pool,
            clock,
            sql: Statements::new(schema),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Bounds each call by `timeout` instead of 5 s.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, ReconcileError> {
        oncely_db::postgres::query_prepared(&self.pool, self.timeout, sql, params)
            .await
            .map_err(ReconcileError::Unavailable)
    }
}

#[async_trait]
impl ReconcileStore for PgReconcile {
    async fn claim(&self, job: &str, lease: Duration) -> Result<Option<JobClaim>, ReconcileError> {
        validate_job(job)?;
        let now = self.clock.now();
        self.query(&self.sql.ensure_job, &[&job]).await?;
        let until = now.0.saturating_add(millis(lease));
        let rows = self.query(&self.sql.claim, &[&job, &now.0, &until]).await?;
        rows.first()
            .map(|r| {
                Ok(JobClaim {
                    token: r.try_get(0).map_err(corrupt)?,
                    run: r.try_get(1).map_err(corrupt)?,
                    checkpoint: r
                        .try_get::<_, Option<i64>>(2)
                        .map_err(corrupt)?
                        .map(Timestamp),
                })
            })
            .transpose()
    }

    async fn renew(&self, job: &str, token: i64, lease: Duration) -> Result<bool, ReconcileError> {
        let until = self.clock.now().0.saturating_add(millis(lease));
        Ok(!self
            .query(&self.sql.renew, &[&job, &token, &until])
            .await?
            .is_empty())
    }

    async fn record(
        &self,
        job: &str,
        token: i64,
        f: &NewFinding,
    ) -> Result<Recorded, ReconcileError> {
        let now = self.clock.now();
        let state = if f.healed { "healed" } else { "open" };
        let (ours, theirs, detail) = (ids_json(&f.ours), ids_json(&f.theirs), f.detail.to_string());
        let rows = self
            .query(
                &self.sql.record,
                &[
                    &job, &token, &f.key, &f.class, &f.kind, &state, &ours, &theirs, &detail,
                    &now.0,
                ],
            )
            .await?;
        Ok(match rows.first() {
            None => Recorded::LeaseLost,
            Some(r) => {
                let id: i64 = r.try_get(0).map_err(corrupt)?;
                let was: Option<String> = r.try_get(2).map_err(corrupt)?;
                if r.try_get::<_, bool>(1).map_err(corrupt)? {
                    Recorded::New(id)
                } else if was.as_deref() == Some("resolved") && !f.healed {
                    Recorded::Reopened(id)
                } else {
                    Recorded::Again(id)
                }
            }
        })
    }

    async fn finish(
        &self,
        job: &str,
        claim: &JobClaim,
        end: &RunEnd,
    ) -> Result<bool, ReconcileError> {
        let now = self.clock.now();
        let moved = end.moves_checkpoint_to().map(|c| c.0);
        let report = report_json(&end.report);
        let rows = self
            .query(
                &self.sql.finish,
                &[
                    &job,
                    &claim.token,
                    &claim.run,
                    &end.outcome.as_str(),
                    &now.0,
                    &report,
                    &end.error,
                    &moved,
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn runs(
        &self,
        job: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, ReconcileError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query(&self.sql.runs, &[&job, &limit])
            .await?
            .iter()
            .map(read_run)
            .collect()
    }

    async fn findings(
        &self,
        filter: &FindingFilter,
        limit: usize,
    ) -> Result<Vec<Finding>, ReconcileError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let state = filter.state.map(FindingState::as_str);
        self.query(
            &self.sql.findings,
            &[&filter.job, &state, &filter.class, &limit],
        )
        .await?
        .iter()
        .map(read_finding)
        .collect()
    }

    async fn finding(&self, id: i64) -> Result<Option<Finding>, ReconcileError> {
        self.query(&self.sql.finding, &[&id])
            .await?
            .first()
            .map(read_finding)
            .transpose()
    }

    async fn review(&self, id: i64, to: FindingState, by: &str) -> Result<bool, ReconcileError> {
        check_review(to)?;
        Ok(!self
            .query(&self.sql.review, &[&id, &to.as_str(), &by])
            .await?
            .is_empty())
    }

    async fn stats(&self) -> Result<ReconcileStats, ReconcileError> {
        let mut stats = ReconcileStats::default();
        for r in self.query(&self.sql.finding_counts, &[]).await? {
            let n: i64 = r.try_get(3).map_err(corrupt)?;
            stats.findings.insert(
                (
                    r.try_get(0).map_err(corrupt)?,
                    r.try_get(1).map_err(corrupt)?,
                    r.try_get(2).map_err(corrupt)?,
                ),
                u64::try_from(n).unwrap_or(0),
            );
        }
        for r in self.query(&self.sql.jobs, &[]).await? {
            let job: String = r.try_get(0).map_err(corrupt)?;
            let at: Option<i64> = r.try_get(2).map_err(corrupt)?;
            let outcome: Option<String> = r.try_get(3).map_err(corrupt)?;
            let last_run = match (at, outcome.as_deref().and_then(RunOutcome::parse)) {
                (Some(at), Some(o)) => Some((Timestamp(at), o)),
                _ => None,
            };
            stats.jobs.insert(
                job,
                JobStatus {
                    checkpoint: r
                        .try_get::<_, Option<i64>>(1)
                        .map_err(corrupt)?
                        .map(Timestamp),
                    last_run,
                    last_success: r
                        .try_get::<_, Option<i64>>(4)
                        .map_err(corrupt)?
                        .map(Timestamp),
                },
            );
        }
        Ok(stats)
    }
}
