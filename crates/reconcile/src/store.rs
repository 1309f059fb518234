//! The storage concern of reconciliation: a lease and a checkpoint per job, each run's
//! report, and the findings (the review queue).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::Timestamp;

/// A job's lease, held by one run at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobClaim {
    /// The fencing token: every write of the run carries it, and is refused once another
    /// run holds the job.
    pub token: i64,
    /// The run this claim started.
    pub run: i64,
    /// Where the job's last successful run stopped (`None` before the first).
    pub checkpoint: Option<Timestamp>,
}

/// What a run found, as its report keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Counts by name (`ours`, `theirs`, `groups`, `agree`, `healed`, `accepted`,
    /// `alerts`, `new_findings`, `malformed`, `windows`, `invariant_violations`).
    pub counts: BTreeMap<String, u64>,
    /// Up to a few match keys per class, for the alert and the dashboard.
    pub samples: BTreeMap<String, Vec<String>>,
    /// The span the run covered.
    pub covered: Option<(Timestamp, Timestamp)>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunOutcome {
    /// Still going (or its process died: its lease ends and the next run covers it again).
    Running,
    /// Done, and the job's invariant held.
    Clean,
    /// Done, with drifts a person must look at (the invariant is violated until they do).
    Drift,
    /// A source or the store failed: the checkpoint did not move.
    Failed,
}

impl RunOutcome {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Running => "running",
            RunOutcome::Clean => "clean",
            RunOutcome::Drift => "drift",
            RunOutcome::Failed => "failed",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<RunOutcome> {
        Some(match s {
            "running" => RunOutcome::Running,
            "clean" => RunOutcome::Clean,
            "drift" => RunOutcome::Drift,
            "failed" => RunOutcome::Failed,
            _ => return None,
        })
    }
}

/// How a run ends: what [`ReconcileStore::finish`] records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEnd {
    /// Its outcome (not [`RunOutcome::Running`]).
    pub outcome: RunOutcome,
    /// Its report.
    pub report: RunReport,
    /// The checkpoint it reached; the job's moves there unless the run failed, and never
    /// back.
    pub checkpoint: Option<Timestamp>,
    /// Why it failed.
    pub error: Option<String>,
}

impl RunEnd {
    /// The checkpoint to move the job to: none for a failed run.
    pub fn moves_checkpoint_to(&self) -> Option<Timestamp> {
        if self.outcome == RunOutcome::Failed {
            None
        } else {
            self.checkpoint
        }
    }
}

/// One run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    /// Its id, increasing.
    pub id: i64,
    /// The job.
    pub job: String,
    /// How it ended.
    pub outcome: RunOutcome,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// The job's checkpoint before it.
    pub checkpoint_before: Option<Timestamp>,
    /// The checkpoint it moved to (only a clean or drift run moves it).
    pub checkpoint_after: Option<Timestamp>,
    /// Its report.
    pub report: RunReport,
    /// Why it failed.
    pub error: Option<String>,
}

/// A finding's place in the review queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindingState {
    /// For a person to look at.
    Open,
    /// A person is on it.
    Acknowledged,
    /// A person fixed it; seen again, it opens again.
    Resolved,
    /// The job fixed it itself (a heal).
    Healed,
}

impl FindingState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            FindingState::Open => "open",
            FindingState::Acknowledged => "acknowledged",
            FindingState::Resolved => "resolved",
            FindingState::Healed => "healed",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Option<FindingState> {
        Some(match s {
            "open" => FindingState::Open,
            "acknowledged" => FindingState::Acknowledged,
            "resolved" => FindingState::Resolved,
            "healed" => FindingState::Healed,
            _ => return None,
        })
    }
}

/// A drift a run records: an alert for a person, or a heal the run applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewFinding {
    /// The match key.
    pub key: String,
    /// Its class (`orphan_charge`, or the heal action `mark_paid`).
    pub class: String,
    /// The drift's kind (`only_theirs`...), or `malformed`.
    pub kind: String,
    /// Whether the run healed it (else it is an alert).
    pub healed: bool,
    /// Our records' ids.
    pub ours: Vec<String>,
    /// Theirs.
    pub theirs: Vec<String>,
    /// What differed (amounts, statuses, the malformed row's error), as JSON.
    pub detail: serde_json::Value,
}

/// A finding as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Its id.
    pub id: i64,
    /// The job.
    pub job: String,
    /// [`NewFinding::key`].
    pub key: String,
    /// [`NewFinding::class`].
    pub class: String,
    /// [`NewFinding::kind`].
    pub kind: String,
    /// Where it stands.
    pub state: FindingState,
    /// [`NewFinding::ours`], as last seen.
    pub ours: Vec<String>,
    /// [`NewFinding::theirs`], as last seen.
    pub theirs: Vec<String>,
    /// [`NewFinding::detail`], as last seen.
    pub detail: serde_json::Value,
    /// How many runs saw it.
    pub seen: u64,
    /// When it was first seen.
    pub first_seen: Timestamp,
    /// When it was last seen.
    pub last_seen: Timestamp,
    /// Who acknowledged or resolved it, last.
    pub by: Option<String>,
}

/// What recording a finding did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A drift not seen before: a new finding.
    New(i64),
    /// The same finding as before, seen again.
    Again(i64),
    /// A finding a person had resolved, seen again: open again (the fix did not hold).
    Reopened(i64),
    /// The run no longer holds the job: nothing recorded.
    LeaseLost,
}

/// Which findings to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FindingFilter {
    /// Of this job.
    pub job: Option<String>,
    /// In this state.
    pub state: Option<FindingState>,
    /// Of this class.
    pub class: Option<String>,
}

/// Counts for metrics and the dashboard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReconcileStats {
    /// Findings by (job, class, state).
    pub findings: BTreeMap<(String, String, String), u64>,
    /// Each job's last finished run, and its last clean or drift run.
    pub jobs: BTreeMap<String, JobStatus>,
}

/// A job's standing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobStatus {
    /// Its checkpoint.
    pub checkpoint: Option<Timestamp>,
    /// Its last finished run: when and how.
    pub last_run: Option<(Timestamp, RunOutcome)>,
    /// When its last run that was not a failure ended.
    pub last_success: Option<Timestamp>,
}

/// Errors of the reconciliation store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// The database failed; nothing is known to be recorded.
    #[error("the reconciliation store is unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read.
    #[error("corrupt reconciliation row: {0}")]
    Corrupt(String),
    /// An argument the store cannot take.
    #[error("{0}")]
    Invalid(String),
}

/// Runs and findings on one database.
#[async_trait]
pub trait ReconcileStore: Send + Sync + 'static {
    /// Claims `job` for `lease` and starts a run, or `None` when another run holds it.
    async fn claim(&self, job: &str, lease: Duration) -> Result<Option<JobClaim>, ReconcileError>;

    /// Extends the claim; `false` when the run no longer holds the job.
    async fn renew(&self, job: &str, token: i64, lease: Duration) -> Result<bool, ReconcileError>;

    /// Records a finding of the run holding `token`: a drift seen before (same job, key and
    /// class) is the same finding, seen again.
    async fn record(
        &self,
        job: &str,
        token: i64,
        finding: &NewFinding,
    ) -> Result<Recorded, ReconcileError>;

    /// Ends the run as `end` says, and releases the job. `false` (nothing written) when the
    /// run no longer holds the job.
    async fn finish(
        &self,
        job: &str,
        claim: &JobClaim,
        end: &RunEnd,
    ) -> Result<bool, ReconcileError>;

    /// The newest runs, of one job if given.
    async fn runs(&self, job: Option<&str>, limit: usize)
        -> Result<Vec<RunRecord>, ReconcileError>;

    /// Findings, the most recently seen first.
    async fn findings(
        &self,
        filter: &FindingFilter,
        limit: usize,
    ) -> Result<Vec<Finding>, ReconcileError>;

    /// One finding.
    async fn finding(&self, id: i64) -> Result<Option<Finding>, ReconcileError>;

    /// Moves an open finding to `acknowledged` or `resolved`, or an acknowledged one to
    /// `resolved`; `false` when it is not in a state that allows it (healed findings are
    /// closed).
    async fn review(&self, id: i64, to: FindingState, by: &str) -> Result<bool, ReconcileError>;

    /// Counts for metrics and the dashboard.
    async fn stats(&self) -> Result<ReconcileStats, ReconcileError>;
}

/// Refuses a review to a state a person cannot move a finding to (only `acknowledged` and
/// `resolved` are).
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn check_review(to: FindingState) -> Result<(), ReconcileError> {
    if review_allowed(FindingState::Open, to) {
        Ok(())
    } else {
        Err(ReconcileError::Invalid(format!(
            "a finding can be acknowledged or resolved, not made {}",
            to.as_str()
        )))
    }
}

/// Whether a review may move a finding from `from` to `to`.
pub fn review_allowed(from: FindingState, to: FindingState) -> bool {
    matches!(
        (from, to),
        (FindingState::Open, FindingState::Acknowledged)
            | (FindingState::Open, FindingState::Resolved)
            | (FindingState::Acknowledged, FindingState::Resolved)
    )
}

/// Checks a job's name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn validate_job(job: &str) -> Result<(), ReconcileError> {
    let ok = !job.is_empty()
        && job.len() <= 64
        && job
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ReconcileError::Invalid(format!(
            "job name {job:?}: 1 to 64 of A-Z a-z 0-9 . _ -"
        )))
    }
}

/// A report as stored JSON.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn report_json(r: &RunReport) -> String {
    serde_json::json!({
        "counts": r.counts,
        "samples": r.samples,
        "covered": r.covered.map(|(a, b)| [a.0, b.0]),
    })
    .to_string()
}

/// A report from its stored JSON.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn report_from(s: &str) -> Result<RunReport, ReconcileError> {
    let v: serde_json::Value =
        serde_json::from_str(s).map_err(|e| ReconcileError::Corrupt(format!("report: {e}")))?;
    let counts = v["counts"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default();
    let samples = v["samples"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, ids)| {
                    let ids = ids
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|i| i.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default();
                    (k.clone(), ids)
                })
                .collect()
        })
        .unwrap_or_default();
    let covered = v["covered"].as_array().and_then(|a| {
        Some((
            Timestamp(a.first()?.as_i64()?),
            Timestamp(a.get(1)?.as_i64()?),
        ))
    });
    Ok(RunReport {
        counts,
        samples,
        covered,
    })
}

/// Ids as stored JSON, and back.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn ids_json(ids: &[String]) -> String {
    serde_json::Value::from(ids.to_vec()).to_string()
}

#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn ids_from(s: &str) -> Result<Vec<String>, ReconcileError> {
    serde_json::from_str(s).map_err(|e| ReconcileError::Corrupt(format!("ids: {e}")))
}
