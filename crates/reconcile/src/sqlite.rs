//! The reconciliation store on SQLite: in the application's own file, or one of its own.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::{Clock, Timestamp};
use oncely_db::migrate::{Migration, Migrations};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

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
CREATE TABLE IF NOT EXISTS oncely_reconcile_jobs (
    job         TEXT PRIMARY KEY,
    lease_token INTEGER NOT NULL DEFAULT 0,
    lease_until INTEGER,
    run         INTEGER,
    checkpoint  INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS oncely_reconcile_runs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    job               TEXT NOT NULL,
    outcome           TEXT NOT NULL,
    started_at        INTEGER NOT NULL,
    finished_at       INTEGER,
    checkpoint_before INTEGER,
    checkpoint_after  INTEGER,
    report            TEXT NOT NULL DEFAULT '{}',
    error             TEXT
) STRICT;
CREATE INDEX IF NOT EXISTS oncely_reconcile_runs_job ON oncely_reconcile_runs (job, id);
CREATE TABLE IF NOT EXISTS oncely_reconcile_findings (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job        TEXT NOT NULL,
    key        TEXT NOT NULL,
    class      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    state      TEXT NOT NULL,
    ours       TEXT NOT NULL,
    theirs     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    seen       INTEGER NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    first_run  INTEGER NOT NULL,
    last_run   INTEGER NOT NULL,
    reviewer   TEXT,
    UNIQUE (job, key, class)
) STRICT;
CREATE INDEX IF NOT EXISTS oncely_reconcile_findings_state
    ON oncely_reconcile_findings (state, last_seen);
",
    }],
};

const RUN_COLUMNS: &str = "id, job, outcome, started_at, finished_at, checkpoint_before, \
                           checkpoint_after, report, error";
const FINDING_COLUMNS: &str = "id, job, key, class, kind, state, ours, theirs, detail, seen, \
                               first_seen, last_seen, reviewer";

/// Runs and findings on one SQLite file.
pub struct SqliteReconcile {
    conn: Arc<Mutex<Connection>>,
    clock: Arc<dyn Clock>,
}

fn unavailable(e: rusqlite::Error) -> ReconcileError {
    ReconcileError::Unavailable(oncely_db::describe(&e))
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn read_run(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<RunRecord, ReconcileError>> {
    let outcome: String = r.get(2)?;
    let report: String = r.get(7)?;
    let id: i64 = r.get(0)?;
    Ok((|| {
        Ok(RunRecord {
            id,
            job: r
                .get(1)
                .map_err(|e| ReconcileError::Corrupt(e.to_string()))?,
            outcome: RunOutcome::parse(&outcome)
                .ok_or_else(|| ReconcileError::Corrupt(format!("run {id}: outcome {outcome}")))?,
            started_at: Timestamp(
                r.get(3)
                    .map_err(|e| ReconcileError::Corrupt(e.to_string()))?,
            ),
            finished_at: r
                .get::<_, Option<i64>>(4)
                .map_err(|e| ReconcileError::Corrupt(e.to_string()))?
                .map(Timestamp),
            checkpoint_before: r
                .get::<_, Option<i64>>(5)
                .map_err(|e| ReconcileError::Corrupt(e.to_string()))?
                .map(Timestamp),
            checkpoint_after: r
                .get::<_, Option<i64>>(6)
                .map_err(|e| ReconcileError::Corrupt(e.to_string()))?
                .map(Timestamp),
            report: report_from(&report)?,
            error: r
                .get(8)
                .map_err(|e| ReconcileError::Corrupt(e.to_string()))?,
        })
    })())
}

fn read_finding(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Finding, ReconcileError>> {
    let id: i64 = r.get(0)?;
    let state: String = r.get(5)?;
    let (ours, theirs, detail): (String, String, String) = (r.get(6)?, r.get(7)?, r.get(8)?);
    let seen: i64 = r.get(9)?;
    let (job, key, class, kind) = (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let (first_seen, last_seen, by) = (r.get(10)?, r.get(11)?, r.get(12)?);
    Ok((|| {
        Ok(Finding {
            id,
            job,
            key,
            class,
            kind,
            state: FindingState::parse(&state)
                .ok_or_else(|| ReconcileError::Corrupt(format!("finding {id}: state {state}")))?,
            ours: ids_from(&ours)?,
            theirs: ids_from(&theirs)?,
            detail: serde_json::from_str(&detail)
                .map_err(|e| ReconcileError::Corrupt(format!("finding {id}: detail: {e}")))?,
            seen: u64::try_from(seen).unwrap_or(0),
            first_seen: Timestamp(first_seen),
            last_seen: Timestamp(last_seen),
            by,
        })
    })())
}

/// The claim the job row holds, if `token` is still its.
fn held(
    tx: &rusqlite::Transaction<'_>,
    job: &str,
    token: i64,
) -> Result<Option<i64>, ReconcileError> {
    tx.query_row(
        "SELECT run FROM oncely_reconcile_jobs \
         WHERE job = ?1 AND lease_token = ?2 AND lease_until IS NOT NULL",
        params![job, token],
        |r| r.get::<_, Option<i64>>(0),
    )
    .optional()
    .map(Option::flatten)
    .map_err(unavailable)
}

impl SqliteReconcile {
    /// Opens (or creates) the tables in the database at `path`; `busy_timeout` bounds how
    /// long a write waits for other writers of the file.
    pub fn open(
        path: impl AsRef<Path>,
        busy_timeout: Duration,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ReconcileError> {
        let mut conn = oncely_db::sqlite::open(
            path.as_ref(),
            oncely_db::sqlite::OpenOptions::new(busy_timeout),
        )
        .map_err(ReconcileError::Unavailable)?;
        oncely_db::sqlite::migrate(&mut conn, &MIGRATIONS)
            .map_err(|e| ReconcileError::Unavailable(e.to_string()))?;
        Ok(SqliteReconcile {
            conn: Arc::new(Mutex::new(conn)),
            clock,
        })
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, Timestamp) -> Result<T, ReconcileError> + Send + 'static,
    ) -> Result<T, ReconcileError> {
        let conn = self.conn.clone();
        let now = self.clock.now();
        tokio::task::spawn_blocking(move || f(&mut conn.lock_ignoring_poison(), now))
            .await
            .map_err(|e| ReconcileError::Unavailable(format!("the store's thread failed: {e}")))?
    }
}

#[async_trait]
impl ReconcileStore for SqliteReconcile {
    async fn claim(&self, job: &str, lease: Duration) -> Result<Option<JobClaim>, ReconcileError> {
        validate_job(job)?;
        let job = job.to_owned();
        let lease = millis(lease);
        self.run(move |conn, now| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            tx.execute(
                "INSERT INTO oncely_reconcile_jobs (job) VALUES (?1) ON CONFLICT (job) DO NOTHING",
                [&job],
            )
            .map_err(unavailable)?;
            let (token, until, previous, checkpoint): (i64, Option<i64>, Option<i64>, Option<i64>) =
                tx.query_row(
                    "SELECT lease_token, lease_until, run, checkpoint FROM oncely_reconcile_jobs \
                     WHERE job = ?1",
                    [&job],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .map_err(unavailable)?;
            if until.is_some_and(|u| u > now.0) {
                return Ok(None);
            }
            // A run whose lease ran out without finishing (its process died) is failed now.
            if until.is_some() {
                tx.execute(
                    "UPDATE oncely_reconcile_runs SET outcome = 'failed', finished_at = ?2, \
                     error = 'its lease ran out before it finished' \
                     WHERE id = ?1 AND outcome = 'running'",
                    params![previous, now.0],
                )
                .map_err(unavailable)?;
            }
            tx.execute(
                "INSERT INTO oncely_reconcile_runs (job, outcome, started_at, checkpoint_before) \
                 VALUES (?1, 'running', ?2, ?3)",
                params![job, now.0, checkpoint],
            )
            .map_err(unavailable)?;
            let run = tx.last_insert_rowid();
            let token = token + 1;
            tx.execute(
                "UPDATE oncely_reconcile_jobs SET lease_token = ?2, lease_until = ?3, run = ?4 \
                 WHERE job = ?1",
                params![job, token, now.0.saturating_add(lease), run],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(Some(JobClaim {
                token,
                run,
                checkpoint: checkpoint.map(Timestamp),
            }))
        })
        .await
    }

    async fn renew(&self, job: &str, token: i64, lease: Duration) -> Result<bool, ReconcileError> {
        let job = job.to_owned();
        let lease = millis(lease);
        self.run(move |conn, now| {
            conn.execute(
                "UPDATE oncely_reconcile_jobs SET lease_until = ?3 \
                 WHERE job = ?1 AND lease_token = ?2 AND lease_until IS NOT NULL",
                params![job, token, now.0.saturating_add(lease)],
            )
            .map(|n| n == 1)
            .map_err(unavailable)
        })
        .await
    }

    async fn record(
        &self,
        job: &str,
        token: i64,
        f: &NewFinding,
    ) -> Result<Recorded, ReconcileError> {
        let (job, f) = (job.to_owned(), f.clone());
        self.run(move |conn, now| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            let Some(run) = held(&tx, &job, token)? else {
                return Ok(Recorded::LeaseLost);
            };
            let existing: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, state FROM oncely_reconcile_findings WHERE job = ?1 AND key = ?2 AND class = ?3",
                    params![job, f.key, f.class],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(unavailable)?;
            let state = if f.healed { "healed" } else { "open" };
            let (ours, theirs, detail) = (ids_json(&f.ours), ids_json(&f.theirs), f.detail.to_string());
            let recorded = match existing {
                Some((id, was)) => {
                    tx.execute(
                        "UPDATE oncely_reconcile_findings SET kind = ?2, ours = ?3, theirs = ?4, \
                         detail = ?5, last_seen = ?6, \
                         seen = seen + CASE WHEN last_run = ?7 THEN 0 ELSE 1 END, last_run = ?7, \
                         state = CASE WHEN state = 'resolved' THEN ?8 ELSE state END \
                         WHERE id = ?1",
                        params![id, f.kind, ours, theirs, detail, now.0, run, state],
                    )
                    .map_err(unavailable)?;
                    if was == "resolved" && !f.healed {
                        Recorded::Reopened(id)
                    } else {
                        Recorded::Again(id)
                    }
                }
                None => {
                    tx.execute(
                        "INSERT INTO oncely_reconcile_findings (job, key, class, kind, state, ours, \
                         theirs, detail, seen, first_seen, last_seen, first_run, last_run) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 1, ?9, ?9, ?10, ?10)",
                        params![job, f.key, f.class, f.kind, state, ours, theirs, detail, now.0, run],
                    )
                    .map_err(unavailable)?;
                    Recorded::New(tx.last_insert_rowid())
                }
            };
            tx.commit().map_err(unavailable)?;
            Ok(recorded)
        })
        .await
    }

    async fn finish(
        &self,
        job: &str,
        claim: &JobClaim,
        end: &RunEnd,
    ) -> Result<bool, ReconcileError> {
        let (job, token, run) = (job.to_owned(), claim.token, claim.run);
        let (outcome, report, error) = (end.outcome, report_json(&end.report), end.error.clone());
        let moved = end.moves_checkpoint_to().map(|c| c.0);
        self.run(move |conn, now| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(unavailable)?;
            if held(&tx, &job, token)? != Some(run) {
                return Ok(false);
            }
            tx.execute(
                "UPDATE oncely_reconcile_runs SET outcome = ?2, finished_at = ?3, report = ?4, \
                 error = ?5, checkpoint_after = ?6 WHERE id = ?1",
                params![run, outcome.as_str(), now.0, report, error, moved],
            )
            .map_err(unavailable)?;
            // Never back: a run that covered less than the last (a clock stepped back) keeps it.
            tx.execute(
                "UPDATE oncely_reconcile_jobs SET lease_until = NULL, \
                 checkpoint = CASE WHEN ?2 IS NULL THEN checkpoint \
                   WHEN checkpoint IS NULL OR ?2 > checkpoint THEN ?2 ELSE checkpoint END \
                 WHERE job = ?1",
                params![job, moved],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(true)
        })
        .await
    }

    async fn runs(
        &self,
        job: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRecord>, ReconcileError> {
        let job = job.map(str::to_owned);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn, _| {
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT {RUN_COLUMNS} FROM oncely_reconcile_runs \
                     WHERE ?1 IS NULL OR job = ?1 ORDER BY id DESC LIMIT ?2"
                ))
                .map_err(unavailable)?;
            let rows = st
                .query_map(params![job, limit], read_run)
                .map_err(unavailable)?;
            rows.map(|r| r.map_err(unavailable)?).collect()
        })
        .await
    }

    async fn findings(
        &self,
        filter: &FindingFilter,
        limit: usize,
    ) -> Result<Vec<Finding>, ReconcileError> {
        let (job, class) = (filter.job.clone(), filter.class.clone());
        let state = filter.state.map(FindingState::as_str);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |conn, _| {
            let mut st = conn
                .prepare_cached(&format!(
                    "SELECT {FINDING_COLUMNS} FROM oncely_reconcile_findings \
                     WHERE (?1 IS NULL OR job = ?1) AND (?2 IS NULL OR state = ?2) \
                     AND (?3 IS NULL OR class = ?3) ORDER BY last_seen DESC, id DESC LIMIT ?4"
                ))
                .map_err(unavailable)?;
            let rows = st
                .query_map(params![job, state, class, limit], read_finding)
                .map_err(unavailable)?;
            rows.map(|r| r.map_err(unavailable)?).collect()
        })
        .await
    }

    async fn finding(&self, id: i64) -> Result<Option<Finding>, ReconcileError> {
        self.run(move |conn, _| {
            conn.query_row(
                &format!("SELECT {FINDING_COLUMNS} FROM oncely_reconcile_findings WHERE id = ?1"),
                [id],
                read_finding,
            )
            .optional()
            .map_err(unavailable)?
            .transpose()
        })
        .await
    }

    async fn review(&self, id: i64, to: FindingState, by: &str) -> Result<bool, ReconcileError> {
        check_review(to)?;
        let by = by.to_owned();
        self.run(move |conn, _| {
            // Acknowledged from open; resolved from open or acknowledged; healed never.
            conn.execute(
                "UPDATE oncely_reconcile_findings SET state = ?2, reviewer = ?3 \
                 WHERE id = ?1 AND (state = 'open' OR (state = 'acknowledged' AND ?2 = 'resolved'))",
                params![id, to.as_str(), by],
            )
            .map(|n| n == 1)
            .map_err(unavailable)
        })
        .await
    }

    async fn stats(&self) -> Result<ReconcileStats, ReconcileError> {
        self.run(|conn, _| {
            let mut stats = ReconcileStats::default();
            let mut st = conn
                .prepare_cached(
                    "SELECT job, class, state, count(*) FROM oncely_reconcile_findings \
                     GROUP BY job, class, state",
                )
                .map_err(unavailable)?;
            let rows = st
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)?))
                })
                .map_err(unavailable)?;
            for row in rows {
                let (job, class, state, n) = row.map_err(unavailable)?;
                stats
                    .findings
                    .insert((job, class, state), u64::try_from(n).unwrap_or(0));
            }
            let mut st = conn
                .prepare_cached(
                    "SELECT j.job, j.checkpoint, \
                     (SELECT finished_at FROM oncely_reconcile_runs r WHERE r.job = j.job \
                      AND finished_at IS NOT NULL ORDER BY id DESC LIMIT 1), \
                     (SELECT outcome FROM oncely_reconcile_runs r WHERE r.job = j.job \
                      AND finished_at IS NOT NULL ORDER BY id DESC LIMIT 1), \
                     (SELECT max(finished_at) FROM oncely_reconcile_runs r WHERE r.job = j.job \
                      AND outcome IN ('clean', 'drift')) \
                     FROM oncely_reconcile_jobs j",
                )
                .map_err(unavailable)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<i64>>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                })
                .map_err(unavailable)?;
            for row in rows {
                let (job, checkpoint, at, outcome, success) = row.map_err(unavailable)?;
                let last_run = match (at, outcome.as_deref().and_then(RunOutcome::parse)) {
                    (Some(at), Some(o)) => Some((Timestamp(at), o)),
                    _ => None,
                };
                stats.jobs.insert(
                    job,
                    JobStatus {
                        checkpoint: checkpoint.map(Timestamp),
                        last_run,
                        last_success: success.map(Timestamp),
                    },
                );
            }
            Ok(stats)
        })
        .await
    }
}
