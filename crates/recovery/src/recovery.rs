//! The driver: runs an operation from its recovery point to its response, and the two
//! background jobs around it, the completer (abandoned runs) and the reaper (old rows).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use oncely_core::{Clock, StoredResponse};

use crate::journal::{
    Advance, Commit, Decide, Decision, Journal, JournalError, NewOperation, OperationRow, Work,
};
use crate::operation::{BoxFuture, ForeignCall, OpState, Operation, Phase};
use crate::plan::{self, Boundary, Next, PlanError};

/// Sees every crash boundary of a run. Tests stop a run there (as a crash would, but in
/// process) or kill the process; production runs have no hooks.
pub trait Hooks: Send + Sync + 'static {
    /// `boundary` is `before:P`, `after-call:P`, `before-commit:P` or `after:P`. Returning
    /// false stops the run there with [`RecoveryError::Stopped`].
    fn reached(&self, operation: &str, boundary: &str) -> bool;
}

/// Why a run gave no response. [`RecoveryError::is_transient`] tells the errors a retry can
/// cure from the others; which HTTP status each becomes is the handler's choice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecoveryError {
    /// The id exists for another operation or another input: it never runs nor answers.
    #[error("operation {id} exists with another input")]
    InputMismatch {
        /// The operation id asked for.
        id: String,
    },
    /// A phase failed; its work was rolled back and the recovery point kept. Retrying resumes.
    #[error("phase `{phase}` failed: {reason}")]
    Interrupted {
        /// The phase that failed.
        phase: String,
        /// What it failed with: the [`crate::PhaseError`]'s message.
        reason: String,
    },
    /// The stored point is not in this operation's plan (a phase renamed or removed while a
    /// run was unfinished). It stays as it is until code that knows the point resumes it.
    #[error("operation {id} is at `{point}`, which operation `{operation}` does not have")]
    UnknownPoint {
        /// The operation id.
        id: String,
        /// The name of the operation that was run on it.
        operation: String,
        /// The recovery point stored in the row.
        point: String,
    },
    /// The last phase continued instead of responding; rolled back.
    #[error("phase `{phase}` is the last and did not respond")]
    NoResponse {
        /// The last phase.
        phase: String,
    },
    /// No operation has this id: [`Recovery::resume`] of an id never run, or a row the
    /// reaper deleted while a run was reading it.
    #[error("no operation {id}")]
    NotFound {
        /// The operation id asked for.
        id: String,
    },
    /// Operation ids are 1-128 visible ASCII characters.
    #[error("`{id}` is not an operation id (1-128 visible ASCII characters)")]
    InvalidId {
        /// The id given.
        id: String,
    },
    /// A hook stopped the run at this boundary.
    #[error("stopped at {boundary}")]
    Stopped {
        /// The boundary's name: `before:P`, `after-call:P`, `before-commit:P` or `after:P`.
        boundary: String,
    },
    /// The operation itself cannot run (see [`Operation::validate`]); nothing ran, and
    /// fixing it needs a change of code.
    #[error("operation `{operation}` is not valid: {error}")]
    InvalidPlan {
        /// The operation's name.
        operation: String,
        /// What is wrong with it.
        error: PlanError,
    },
    /// The journal failed: [`JournalError::Unavailable`] is transient, the others are not.
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl RecoveryError {
    /// Whether retrying later can succeed (a phase or the database failed) rather than being
    /// refused for good (mismatch) or needing a fix (unknown point, plan errors).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RecoveryError::Interrupted { .. }
                | RecoveryError::Stopped { .. }
                | RecoveryError::Journal(JournalError::Unavailable(_))
        )
    }
}

/// Runs operations on one journal.
pub struct Recovery<J: Journal> {
    journal: Arc<J>,
    clock: Arc<dyn Clock>,
    hooks: Option<Arc<dyn Hooks>>,
}

impl<J: Journal> Recovery<J> {
    /// Runs operations on `journal`, with `clock` for the rows' `created_at` and `updated_at`
    /// (by which the completer and the reaper judge idle time and age).
    pub fn new(journal: Arc<J>, clock: Arc<dyn Clock>) -> Self {
        Recovery {
            journal,
            clock,
            hooks: None,
        }
    }

    /// Calls `hooks` at every crash boundary of every run (for tests; see [`Hooks`]).
    pub fn with_hooks(mut self, hooks: Arc<dyn Hooks>) -> Self {
        self.hooks = Some(hooks);
        self
    }

    /// The journal the operations run on.
    pub fn journal(&self) -> &Arc<J> {
        &self.journal
    }

    /// Runs operation `op` under `id` with `input` as its initial state, or, if `id` exists,
    /// resumes it from its recovery point (or answers its stored response). Any number of
    /// concurrent calls with one id produce one response: each phase commits once.
    pub async fn run<S: OpState>(
        &self,
        op: &Operation<J, S>,
        id: &str,
        input: S,
    ) -> Result<StoredResponse, RecoveryError> {
        validate(op)?;
        if !plan::valid_operation_id(id) {
            return Err(RecoveryError::InvalidId { id: id.to_owned() });
        }
        let state = encode(&input)?;
        // Through `Value`, whose maps are sorted: a state holding a `HashMap` digests the same
        // in every process even where RFC 8785 gives up and the bytes are hashed as they are.
        let canonical = serde_json::to_value(&input)
            .and_then(|v| serde_json::to_vec(&v))
            .map_err(|e| JournalError::Corrupt(format!("state does not encode: {e}")))?;
        let input_digest = plan::input_digest(&op.name, &canonical);
        let same_input =
            |row: &OperationRow| row.operation == op.name && row.input_digest == input_digest;
        let now = self.clock.now();
        let new = NewOperation {
            id: id.to_owned(),
            operation: op.name.clone(),
            input_digest: input_digest.clone(),
            state,
            now,
        };
        if matches!(op.phases.first(), Some((_, Phase::Atomic(_)))) {
            // Straight to the first phase, whose transaction creates the row: no read before
            // it, one commit fewer, and a crash before it leaves nothing (nothing happened
            // yet either). If the row exists, that transaction finds it (`Conflict` if it has
            // moved on, `Mismatch` if it holds another input) and writes nothing.
            let row = OperationRow {
                id: new.id,
                operation: new.operation,
                input_digest: new.input_digest,
                point: plan::STARTED.to_owned(),
                state: new.state,
                response: None,
                created_at: now,
                updated_at: now,
            };
            return self.drive(op, row, true, &input_digest).await;
        }
        // A foreign first phase acts outside before anything could be committed with it: the
        // row is committed first, so that the completer knows of the call if the client
        // never comes back.
        let row = self.journal.begin(new).await?;
        if !same_input(&row) {
            return Err(RecoveryError::InputMismatch { id: id.to_owned() });
        }
        self.drive(op, row, false, &input_digest).await
    }

    /// Resumes `id` from its recovery point, with the state stored there.
    pub async fn resume<S: OpState>(
        &self,
        op: &Operation<J, S>,
        id: &str,
    ) -> Result<StoredResponse, RecoveryError> {
        validate(op)?;
        let row = self
            .journal
            .load(id)
            .await?
            .ok_or_else(|| RecoveryError::NotFound { id: id.to_owned() })?;
        if row.operation != op.name {
            return Err(RecoveryError::InputMismatch { id: id.to_owned() });
        }
        let digest = row.input_digest.clone();
        self.drive(op, row, false, &digest).await
    }

    fn checkpoint(&self, op: &str, boundary: Boundary<'_>) -> Result<(), RecoveryError> {
        match &self.hooks {
            Some(h) if !h.reached(op, &boundary.to_string()) => Err(RecoveryError::Stopped {
                boundary: boundary.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// Runs `op` from `row`'s point to its response. With `create`, the row is not stored
    /// yet and the first commit inserts it. Every row read back must still be `op` with
    /// `input_digest`: between a conflict and the reload, the row may have been reaped and
    /// created anew by another input, whose response must not reach this run.
    async fn drive<S: OpState>(
        &self,
        op: &Operation<J, S>,
        mut row: OperationRow,
        mut create: bool,
        input_digest: &str,
    ) -> Result<StoredResponse, RecoveryError> {
        let plan = op.plan();
        // Every pass either commits a phase or finds that another run did: the point only
        // moves forward, so a run takes at most about twice as many passes as there are
        // phases. The bound only guards against a journal that breaks that rule.
        for _ in 0..(4 * plan.phases.len() + 8) {
            let (index, name) = match plan.next(&row.point) {
                Next::Finished => {
                    return row.response.ok_or_else(|| {
                        JournalError::Corrupt(format!("{} finished without a response", row.id))
                            .into()
                    })
                }
                Next::UnknownPoint => {
                    return Err(RecoveryError::UnknownPoint {
                        id: row.id,
                        operation: op.name.clone(),
                        point: row.point,
                    })
                }
                Next::Run { index, next_point } => (index, next_point),
            };
            self.checkpoint(&op.name, Boundary::Before(&name))?;
            let state: S = serde_json::from_str(&row.state).map_err(|e| {
                JournalError::Corrupt(format!("{}: state does not decode: {e}", row.id))
            })?;
            let advance = match &op.phases[index].1 {
                Phase::Atomic(phase) => {
                    let decide = self.decider(op, index, true);
                    self.journal
                        .advance(
                            &row,
                            create,
                            Work::Atomic(phase.clone()),
                            state,
                            decide,
                            self.clock.now(),
                        )
                        .await?
                }
                Phase::Foreign(call) => {
                    let idempotency_key = plan::derived_key(&row.id, &name);
                    let (state, flow) = call(ForeignCall {
                        idempotency_key,
                        state,
                    })
                    .await
                    .map_err(|e| RecoveryError::Interrupted {
                        phase: name.clone(),
                        reason: e.0,
                    })?;
                    self.checkpoint(&op.name, Boundary::AfterCall(&name))?;
                    let decide = self.decider(op, index, false);
                    self.journal
                        .advance(
                            &row,
                            create,
                            Work::Record(flow),
                            state,
                            decide,
                            self.clock.now(),
                        )
                        .await?
                }
            };
            create = false;
            match advance {
                Advance::Mismatch => {
                    return Err(RecoveryError::InputMismatch { id: row.id });
                }
                Advance::Committed(new_row) => {
                    row = new_row;
                    self.checkpoint(&op.name, Boundary::After(&name))?;
                }
                Advance::Conflict => {
                    tracing::debug!(id = %row.id, phase = %name, "another run moved the point");
                    row = self
                        .journal
                        .load(&row.id)
                        .await?
                        .ok_or_else(|| RecoveryError::NotFound { id: row.id.clone() })?;
                    if row.operation != op.name || row.input_digest != input_digest {
                        return Err(RecoveryError::InputMismatch { id: row.id });
                    }
                }
                Advance::Failed(e) => {
                    return Err(RecoveryError::Interrupted {
                        phase: name,
                        reason: e.0,
                    })
                }
                Advance::Stopped => {
                    return Err(RecoveryError::Stopped {
                        boundary: Boundary::BeforeCommit(&name).to_string(),
                    })
                }
                Advance::NoResponse => return Err(RecoveryError::NoResponse { phase: name }),
            }
        }
        Err(
            JournalError::Corrupt(format!("{}: the recovery point does not advance", row.id))
                .into(),
        )
    }

    /// What the journal asks inside the transaction: the point to commit, and for an atomic
    /// phase the `before-commit` boundary.
    fn decider<S: OpState>(&self, op: &Operation<J, S>, index: usize, atomic: bool) -> Decide {
        let plan = op.plan();
        let hooks = self.hooks.clone();
        let operation = op.name.clone();
        Box::new(move |flow| {
            let name = &plan.phases[index].0;
            if atomic {
                if let Some(h) = &hooks {
                    if !h.reached(&operation, &Boundary::BeforeCommit(name).to_string()) {
                        return Decision::Stop;
                    }
                }
            }
            match plan::commit_point(&plan, index, flow) {
                Some((point, response)) => Decision::Commit(Commit { point, response }),
                None => Decision::NoResponse,
            }
        })
    }

    /// Deletes up to `batch` finished operations last written more than `retention` ago.
    pub async fn reap(&self, retention: Duration, batch: usize) -> Result<u64, JournalError> {
        let before = oncely_core::Timestamp(
            self.clock
                .now()
                .as_millis()
                .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX)),
        );
        self.journal.reap(before, batch).await
    }
}

fn validate<J: Journal, S: OpState>(op: &Operation<J, S>) -> Result<(), RecoveryError> {
    op.validate().map_err(|error| RecoveryError::InvalidPlan {
        operation: op.name.clone(),
        error,
    })
}

fn encode<S: OpState>(state: &S) -> Result<String, RecoveryError> {
    serde_json::to_string(state)
        .map_err(|e| JournalError::Corrupt(format!("state does not encode: {e}")).into())
}

/// An operation of any state type, as the completer holds it.
trait Resumable<J: Journal>: Send + Sync {
    fn resume_id<'a>(
        &'a self,
        recovery: &'a Recovery<J>,
        id: &'a str,
    ) -> BoxFuture<'a, Result<StoredResponse, RecoveryError>>;
}

impl<J: Journal, S: OpState> Resumable<J> for Operation<J, S> {
    fn resume_id<'a>(
        &'a self,
        recovery: &'a Recovery<J>,
        id: &'a str,
    ) -> BoxFuture<'a, Result<StoredResponse, RecoveryError>> {
        // A fresh read: since the pass listed it, a live run may have moved the operation on
        // (or finished it), and a foreign phase should not be called again for nothing.
        Box::pin(recovery.resume(self, id))
    }
}

/// What one pass of the completer did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompleterReport {
    /// Abandoned operations found.
    pub found: usize,
    /// Of those, finished now (their response is stored for the client's retry).
    pub finished: usize,
    /// Ids that could not be finished this time, with why (they are tried again next pass).
    pub failed: Vec<(String, String)>,
}

/// Finishes operations whose client never came back: any unfinished operation idle for
/// longer than `idle` is resumed from its recovery point. Runs racing a live request are
/// safe (each phase commits once); `idle` should still exceed the longest phase so the
/// completer does not repeat a foreign call that is merely slow.
pub struct Completer<J: Journal> {
    recovery: Arc<Recovery<J>>,
    operations: HashMap<String, Arc<dyn Resumable<J>>>,
    idle: Duration,
    batch: usize,
}

/// How long an unfinished operation stays untouched before the completer takes it.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(300);

impl<J: Journal> Completer<J> {
    /// A completer for `recovery`'s journal with no operation registered yet, taking
    /// operations idle for [`DEFAULT_IDLE`], up to 100 per pass.
    pub fn new(recovery: Arc<Recovery<J>>) -> Self {
        Completer {
            recovery,
            operations: HashMap::new(),
            idle: DEFAULT_IDLE,
            batch: 100,
        }
    }

    /// Makes `op` resumable by the completer (by its name).
    pub fn register<S: OpState>(mut self, op: Arc<Operation<J, S>>) -> Self {
        self.operations.insert(op.name.clone(), op);
        self
    }

    /// How long an unfinished operation goes without a commit before the completer takes it
    /// (default [`DEFAULT_IDLE`]). Keep it above the longest phase, or a run still waiting
    /// in a slow foreign call has that call repeated.
    pub fn idle_after(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// How many operations one pass resumes at most (default 100, at least 1).
    pub fn batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// One pass: resumes up to `batch` abandoned operations, one after another.
    pub async fn run_once(&self) -> Result<CompleterReport, JournalError> {
        let now = self.recovery.clock.now();
        let idle_since = oncely_core::Timestamp(
            now.as_millis()
                .saturating_sub(i64::try_from(self.idle.as_millis()).unwrap_or(i64::MAX)),
        );
        let rows = self
            .recovery
            .journal
            .abandoned(idle_since, self.batch)
            .await?;
        let mut report = CompleterReport {
            found: rows.len(),
            ..CompleterReport::default()
        };
        for row in rows {
            let id = row.id.clone();
            let Some(op) = self.operations.get(&row.operation) else {
                self.postpone(&row).await;
                report.failed.push((
                    id,
                    format!("operation `{}` is not registered", row.operation),
                ));
                continue;
            };
            match op.resume_id(&self.recovery, &id).await {
                Ok(_) => report.finished += 1,
                Err(e) => {
                    tracing::warn!(%id, error = %e, "completer could not finish an operation");
                    self.postpone(&row).await;
                    report.failed.push((id, e.to_string()));
                }
            }
        }
        if report.found > 0 {
            tracing::info!(
                found = report.found,
                finished = report.finished,
                failed = report.failed.len(),
                "completer pass"
            );
        }
        Ok(report)
    }

    /// Sends an operation that could not be finished to the back of the queue (its idle time
    /// starts again), so that operations that can never finish (an unknown point, a phase
    /// that always fails) do not hold up the others batch after batch.
    async fn postpone(&self, row: &OperationRow) {
        let now = self.recovery.clock.now();
        if let Err(e) = self.recovery.journal.touch(&row.id, &row.point, now).await {
            tracing::warn!(id = %row.id, error = %e, "could not postpone an operation");
        }
    }

    /// Runs a pass every `every` until the returned handle is aborted.
    pub fn spawn(self, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if let Err(e) = self.run_once().await {
                    tracing::warn!(error = %e, "completer pass failed");
                }
            }
        })
    }
}

/// Deletes finished operations older than their retention, in batches.
pub struct Reaper<J: Journal> {
    recovery: Arc<Recovery<J>>,
    retention: Duration,
    batch: usize,
}

/// How long a finished operation is kept: as long as the layer keeps a completed key.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

impl<J: Journal> Reaper<J> {
    /// A reaper of finished operations last written more than `retention` ago, 500 per
    /// batch. Keep `retention` at least as long as the idempotency layer keeps a completed
    /// key: once both are gone, the same key starts a new operation.
    pub fn new(recovery: Arc<Recovery<J>>, retention: Duration) -> Self {
        Reaper {
            recovery,
            retention,
            batch: 500,
        }
    }

    /// Deletes batches until none is full; returns how many rows went.
    pub async fn run_once(&self) -> Result<u64, JournalError> {
        let mut total = 0;
        loop {
            let n = self.recovery.reap(self.retention, self.batch).await?;
            total += n;
            if n < self.batch as u64 {
                return Ok(total);
            }
        }
    }

    /// Runs a pass every `every` until the returned handle is aborted; a failed pass is
    /// logged, and the next one tried as usual.
    pub fn spawn(self, every: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                match self.run_once().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "reaper pass"),
                    Err(e) => tracing::warn!(error = %e, "reaper pass failed"),
                }
            }
        })
    }
}
