//! The reconciler: one run of a job. It claims the job, plans the windows from its
//! checkpoint, reads both sides of each window page by page, groups and compares them
//! (`oncely_core::reconcile`), applies the heals the job's rules allow, records every other
//! drift as a finding, checks the job's invariant, and ends the run with its report and the
//! new checkpoint. A source that fails ends the run as failed: the checkpoint stays, and the
//! next run covers the same windows again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::reconcile::{
    classify, group, heal_key, plan_windows, Entry, Group, Rule, Verdict, Window, WindowPlan,
};
use oncely_core::{Clock, Timestamp};

use crate::{
    JobClaim, NewFinding, ReconcileError, ReconcileStore, Recorded, RunEnd, RunOutcome, RunReport,
};

/// A record one side could not read (a provider row without an amount): a finding, not a
/// crash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed {
    /// The row's id, as far as it reads.
    pub id: String,
    /// What is wrong with it.
    pub reason: String,
}

/// One page of a side's records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// The records, each read or malformed.
    pub records: Vec<Result<Entry, Malformed>>,
    /// Where the next page starts; `None` on the last.
    pub next: Option<String>,
}

/// Why a source gave no page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SourceError(pub String);

/// One side of a job: its records with `at` in `[from, to)`, page by page.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// The page after `cursor` (the first when `None`), of at most `limit` records.
    async fn page(
        &self,
        from: Timestamp,
        to: Timestamp,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page, SourceError>;
}

/// Applies a job's heals: safe, idempotent fixes on our side.
#[async_trait]
pub trait Healer: Send + Sync + 'static {
    /// Applies `action` to `group` under `key` (the same for every run that applies it), so
    /// that applying it twice changes nothing twice.
    async fn heal(&self, action: &str, group: &Group, key: &str) -> Result<(), SourceError>;
}

/// The job's invariant, checked on every group of every run: a group that breaks it and is
/// not healed is counted, and the run ends as `drift` with the groups named.
#[derive(Clone)]
pub struct Invariant {
    /// What it says, in words (`every paid charge has exactly one paid order of its
    /// amount`), for the report and the alert.
    pub description: String,
    /// Whether a group keeps it.
    pub holds: Arc<dyn Fn(&Group) -> bool + Send + Sync>,
}

/// A reconciliation job.
#[derive(Clone)]
pub struct Job {
    /// Its name: the lease, the checkpoint and the findings are kept under it.
    pub name: String,
    /// Our side.
    pub ours: Arc<dyn Source>,
    /// Theirs.
    pub theirs: Arc<dyn Source>,
    /// Heal, alert or accept, first match (a drift no rule names is an alert).
    pub rules: Vec<Rule>,
    /// Applies the heals.
    pub healer: Arc<dyn Healer>,
    /// Its invariant.
    pub invariant: Invariant,
    /// How it cuts time.
    pub windows: WindowPlan,
    /// Records per page asked of a source.
    pub page_size: usize,
}

/// How one run went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run's id.
    pub run: i64,
    /// Its outcome.
    pub outcome: RunOutcome,
    /// Its report.
    pub report: RunReport,
    /// Why it failed.
    pub error: Option<String>,
}

/// Why a run could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// Another run holds the job: this one did nothing.
    #[error("job {0} is being run by another run")]
    Busy(String),
    /// The job was taken over (this run's lease ran out): it stopped writing.
    #[error("job {0}: the run lost its lease and stopped")]
    LeaseLost(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] ReconcileError),
}

/// Sample keys kept per class in a report.
const SAMPLES: usize = 5;

/// Runs jobs against one store.
pub struct Reconciler {
    store: Arc<dyn ReconcileStore>,
    clock: Arc<dyn Clock>,
    lease: Duration,
}

/// The counts and samples of a run as it goes.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<String, u64>,
    samples: BTreeMap<String, Vec<String>>,
    /// Malformed rows already recorded by this run (neighbouring windows read the same
    /// margin).
    malformed: std::collections::HashSet<String>,
    /// The earliest group whose heal failed: the checkpoint may not pass it.
    retry_from: Option<Timestamp>,
}

impl Tally {
    fn add(&mut self, name: &str, n: u64) {
        *self.counts.entry(name.to_owned()).or_default() += n;
    }
    fn sample(&mut self, class: &str, key: &str) {
        let s = self.samples.entry(class.to_owned()).or_default();
        if s.len() < SAMPLES && !s.iter().any(|k| k == key) {
            s.push(key.to_owned());
        }
    }
    fn report(self, covered: Option<(Timestamp, Timestamp)>) -> RunReport {
        RunReport {
            counts: self.counts,
            samples: self.samples,
            covered,
        }
    }
}

impl Reconciler {
    /// A reconciler over `store`; a run holds its job for `lease` at a time, renewed at
    /// every window.
    pub fn new(store: Arc<dyn ReconcileStore>, clock: Arc<dyn Clock>, lease: Duration) -> Self {
        Reconciler {
            store,
            clock,
            lease,
        }
    }

    /// One run of `job`.
    pub async fn run(&self, job: &Job) -> Result<RunSummary, RunError> {
        let Some(claim) = self.store.claim(&job.name, self.lease).await? else {
            return Err(RunError::Busy(job.name.clone()));
        };
        let (windows, reached) = plan_windows(&job.windows, claim.checkpoint, self.clock.now());
        let covered = windows
            .first()
            .zip(windows.last())
            .map(|(a, b)| (a.start, b.end));
        let mut tally = Tally::default();
        tally.add("windows", windows.len() as u64);
        for window in &windows {
            if !self.store.renew(&job.name, claim.token, self.lease).await? {
                return Err(RunError::LeaseLost(job.name.clone()));
            }
            if let Err(e) = self.window(job, &claim, window, &mut tally).await {
                return match e {
                    WindowError::Source(e) => {
                        let end = RunEnd {
                            outcome: RunOutcome::Failed,
                            report: tally.report(covered),
                            checkpoint: None,
                            error: Some(e.clone()),
                        };
                        self.end(job, &claim, end).await
                    }
                    WindowError::Run(e) => Err(e),
                };
            }
        }
        let drift = tally.counts.get("alerts").copied().unwrap_or(0) > 0
            || tally
                .counts
                .get("invariant_violations")
                .copied()
                .unwrap_or(0)
                > 0;
        // A failed heal keeps the checkpoint at its group (the next run starts an overlap
        // before it), never past it.
        let reached = match (reached, tally.retry_from) {
            (Some(r), Some(f)) => Some(r.min(f)),
            (r, _) => r,
        };
        let end = RunEnd {
            outcome: if drift {
                RunOutcome::Drift
            } else {
                RunOutcome::Clean
            },
            report: tally.report(covered),
            checkpoint: reached,
            error: None,
        };
        self.end(job, &claim, end).await
    }

    async fn end(&self, job: &Job, claim: &JobClaim, end: RunEnd) -> Result<RunSummary, RunError> {
        if !self.store.finish(&job.name, claim, &end).await? {
            return Err(RunError::LeaseLost(job.name.clone()));
        }
        Ok(RunSummary {
            run: claim.run,
            outcome: end.outcome,
            report: end.report,
            error: end.error,
        })
    }

    /// Reads, compares and settles one window.
    async fn window(
        &self,
        job: &Job,
        claim: &JobClaim,
        window: &Window,
        tally: &mut Tally,
    ) -> Result<(), WindowError> {
        let (from, to) = window.reads(job.windows.overlap);
        let (ours, bad_ours) = read_all(job.ours.as_ref(), from, to, job.page_size).await?;
        let (theirs, bad_theirs) = read_all(job.theirs.as_ref(), from, to, job.page_size).await?;
        tally.add("ours_read", ours.len() as u64);
        tally.add("theirs_read", theirs.len() as u64);
        for (side, bad) in [("ours", bad_ours), ("theirs", bad_theirs)] {
            for m in bad {
                let key = format!("{side}:{}", m.id);
                if !tally.malformed.insert(key.clone()) {
                    continue;
                }
                let finding = NewFinding {
                    key: key.clone(),
                    class: "malformed".into(),
                    kind: "malformed".into(),
                    healed: false,
                    ours: if side == "ours" {
                        vec![m.id.clone()]
                    } else {
                        vec![]
                    },
                    theirs: if side == "theirs" {
                        vec![m.id.clone()]
                    } else {
                        vec![]
                    },
                    detail: serde_json::json!({ "side": side, "reason": m.reason }),
                };
                self.record(job, claim, &finding, tally).await?;
                tally.add("malformed", 1);
                tally.add("alerts", 1);
                tally.sample("malformed", &key);
            }
        }
        for g in group(ours, theirs, window) {
            tally.add("groups", 1);
            let holds = (job.invariant.holds)(&g);
            let Some(drift) = g.compare() else {
                tally.add("agree", 1);
                if !holds {
                    self.violation(job, claim, &g, "agrees", tally).await?;
                }
                continue;
            };
            let (ours_ids, theirs_ids) = g.ids();
            let detail = serde_json::json!({
                "ours_amount": drift.ours_amount,
                "theirs_amount": drift.theirs_amount,
                "ours_status": drift.ours_status,
                "theirs_status": drift.theirs_status,
            });
            let finding = |class: &str, healed: bool| NewFinding {
                key: g.key.clone(),
                class: class.to_owned(),
                kind: drift.kind.as_str().to_owned(),
                healed,
                ours: ours_ids.clone(),
                theirs: theirs_ids.clone(),
                detail: detail.clone(),
            };
            match classify(&job.rules, &drift) {
                Verdict::Heal(action) => {
                    let key = heal_key(&job.name, &g.key, &action);
                    match job.healer.heal(&action, &g, &key).await {
                        Ok(()) => {
                            self.record(job, claim, &finding(&action, true), tally)
                                .await?;
                            tally.add("healed", 1);
                            tally.sample(&action, &g.key);
                        }
                        // A heal that failed is an alert, and the checkpoint stays before
                        // its group, so the next run sees the drift again and retries.
                        Err(e) => {
                            if let Some(anchor) = g.anchor() {
                                tally.retry_from =
                                    Some(tally.retry_from.map_or(anchor, |r| r.min(anchor)));
                            }
                            let mut f = finding(&format!("heal_failed_{action}"), false);
                            f.detail["error"] = serde_json::Value::String(e.0);
                            self.record(job, claim, &f, tally).await?;
                            tally.add("alerts", 1);
                            tally.sample(&f.class, &g.key);
                        }
                    }
                }
                Verdict::Alert(class) => {
                    self.record(job, claim, &finding(&class, false), tally)
                        .await?;
                    tally.add("alerts", 1);
                    tally.sample(&class, &g.key);
                    if !holds {
                        tally.add("invariant_violations", 1);
                        tally.sample("invariant", &g.key);
                    }
                }
                Verdict::Accept => {
                    tally.add("accepted", 1);
                    if !holds {
                        // A rule accepted what the invariant forbids: the rules are wrong,
                        // and the run says so loudly.
                        self.violation(job, claim, &g, "accepted", tally).await?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A group the comparison let through although the invariant forbids it: a finding of
    /// class `invariant`.
    async fn violation(
        &self,
        job: &Job,
        claim: &JobClaim,
        g: &Group,
        how: &str,
        tally: &mut Tally,
    ) -> Result<(), WindowError> {
        let (ours, theirs) = g.ids();
        let finding = NewFinding {
            key: g.key.clone(),
            class: "invariant".into(),
            kind: format!("invariant_{how}"),
            healed: false,
            ours,
            theirs,
            detail: serde_json::json!({ "invariant": job.invariant.description }),
        };
        self.record(job, claim, &finding, tally).await?;
        tally.add("alerts", 1);
        tally.add("invariant_violations", 1);
        tally.sample("invariant", &g.key);
        Ok(())
    }

    async fn record(
        &self,
        job: &Job,
        claim: &JobClaim,
        finding: &NewFinding,
        tally: &mut Tally,
    ) -> Result<(), WindowError> {
        let recorded = self
            .store
            .record(&job.name, claim.token, finding)
            .await
            .map_err(|e| WindowError::Run(e.into()))?;
        // `new_alerts`: what a person has not seen (or saw fixed) before: the alert hook's
        // measure.
        match recorded {
            Recorded::New(_) => {
                tally.add("new_findings", 1);
                if !finding.healed {
                    tally.add("new_alerts", 1);
                }
                Ok(())
            }
            Recorded::Reopened(_) => {
                tally.add("reopened", 1);
                tally.add("new_alerts", 1);
                Ok(())
            }
            Recorded::Again(_) => Ok(()),
            Recorded::LeaseLost => Err(WindowError::Run(RunError::LeaseLost(job.name.clone()))),
        }
    }
}

enum WindowError {
    /// A source failed: the run ends as failed.
    Source(String),
    /// The run cannot go on.
    Run(RunError),
}

impl From<SourceError> for WindowError {
    fn from(e: SourceError) -> Self {
        WindowError::Source(e.0)
    }
}

/// Every page of `source` over `[from, to)`.
async fn read_all(
    source: &dyn Source,
    from: Timestamp,
    to: Timestamp,
    limit: usize,
) -> Result<(Vec<Entry>, Vec<Malformed>), SourceError> {
    let (mut good, mut bad) = (Vec::new(), Vec::new());
    let mut cursor = None;
    loop {
        let page = source.page(from, to, cursor.take(), limit.max(1)).await?;
        for r in page.records {
            match r {
                // A source that hands out records outside what was asked is not trusted
                // with them: they would be classified by the wrong window.
                Ok(e) if e.at < from || e.at >= to => bad.push(Malformed {
                    id: e.id,
                    reason: format!(
                        "outside the window asked for ({} not in [{}, {}))",
                        e.at.0, from.0, to.0
                    ),
                }),
                Ok(e) => good.push(e),
                Err(m) => bad.push(m),
            }
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok((good, bad)),
        }
    }
}
