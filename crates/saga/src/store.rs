//! The storage concern of sagas, and the row codec every backend shares.

use std::time::Duration;

use async_trait::async_trait;
use oncely_core::saga::{Phase, SagaState};
use oncely_core::Timestamp;

/// A saga as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct SagaRecord {
    /// The saga's id: 1 to 128 visible ASCII characters, chosen by the caller (the order
    /// id, say): part of every step's idempotency key.
    pub id: String,
    /// Which saga definition runs it (`checkout`).
    pub kind: String,
    /// Its input, as JSON.
    pub input: serde_json::Value,
    /// Where it stands.
    pub state: SagaState,
    /// The outputs of its completed steps, by step name.
    pub outputs: serde_json::Map<String, serde_json::Value>,
    /// When a runner should next act on it (a durable timer).
    pub due_at: Timestamp,
    /// A person asked to cancel it; the runner feeds that to the state machine.
    pub cancel_requested: bool,
    /// When it was created.
    pub created_at: Timestamp,
    /// Its last transition.
    pub updated_at: Timestamp,
}

/// A saga to start.
#[derive(Debug, Clone, PartialEq)]
pub struct NewSaga {
    /// [`SagaRecord::id`].
    pub id: String,
    /// [`SagaRecord::kind`].
    pub kind: String,
    /// [`SagaRecord::input`].
    pub input: serde_json::Value,
}

/// What `create` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Created {
    /// A new saga, due now.
    New,
    /// A saga with this id existed already, with the same kind and input: starting it
    /// again is a no-op (a retried request).
    Exists(Box<SagaRecord>),
}

/// A saga a runner holds until its lease ends, and settles with the token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claimed {
    /// The saga.
    pub saga: SagaRecord,
    /// The lease's fencing token: [`SagaStore::record`] refuses any other.
    pub token: i64,
}

/// Which way a logged transition went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// A step's action.
    Do,
    /// A step's compensation.
    Undo,
    /// The saga as a whole (started, cancel asked, a deadline).
    Saga,
}

impl Direction {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Do => "do",
            Direction::Undo => "undo",
            Direction::Saga => "saga",
        }
    }

    fn parse(s: &str) -> Option<Direction> {
        match s {
            "do" => Some(Direction::Do),
            "undo" => Some(Direction::Undo),
            "saga" => Some(Direction::Saga),
            _ => None,
        }
    }
}

/// One line of a saga's log: what ran, when, which attempt, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// The step, if the entry is about one.
    pub step: Option<String>,
    /// Its direction.
    pub direction: Direction,
    /// The attempt, from 1.
    pub attempt: u32,
    /// How it ended (`done`, `retryable: 503`, `failed: declined`) or what happened.
    pub outcome: String,
    /// When.
    pub at: Timestamp,
}

/// One transition to record: the new state, when to act next, a step's output, the log line.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The state `decide` returned.
    pub state: SagaState,
    /// When a runner should act next: now to go on at once, later for a wait.
    pub due_at: Timestamp,
    /// A completed step's output, kept for the later steps and the compensations.
    pub output: Option<(String, serde_json::Value)>,
    /// The log line.
    pub log: LogEntry,
    /// Keep the lease (the runner goes on at once) instead of handing the saga back.
    pub keep_lease: bool,
}

/// How recording went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded; whether a person has asked the saga to cancel (the runner takes it before
    /// its next action).
    Recorded {
        /// [`SagaRecord::cancel_requested`] as it stands.
        cancel_requested: bool,
    },
    /// The lease was no longer this runner's: nothing was recorded. Another runner holds
    /// the saga (or will), and repeats the attempt under the same key.
    LeaseLost,
    /// Nothing was recorded: a person asked to cancel, and the transition would start an
    /// attempt without having taken the cancel. The runner decides it again with the
    /// cancel taken, so that no attempt begins that the cancel could still prevent (the
    /// pivot, above all), whatever happens to the runner in between.
    CancelRequested,
}

/// Counts, for metrics and an operator's first look.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SagaStats {
    /// Sagas going forward.
    pub running: u64,
    /// Sagas compensating.
    pub compensating: u64,
    /// Completed.
    pub completed: u64,
    /// Compensated.
    pub compensated: u64,
    /// Parked for a person.
    pub stuck: u64,
    /// When the oldest saga still running or compensating started.
    pub oldest_active: Option<Timestamp>,
}

/// Errors of the saga store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaError {
    /// The database failed; nothing is known to be recorded.
    #[error("the saga store is unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read: reported, never panicked on.
    #[error("corrupt saga row {id}: {reason}")]
    Corrupt {
        /// The saga's id.
        id: String,
        /// What is wrong.
        reason: String,
    },
    /// A saga with this id exists with another kind or input.
    #[error("saga {0} exists with another kind or input")]
    Conflict(String),
    /// An argument the store cannot take.
    #[error("{0}")]
    Invalid(String),
}

/// Sagas on one database: what runners and operators do with them.
#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// Starts a saga, due now, unless one with its id exists (then the same kind and input
    /// are a no-op, anything else a [`SagaError::Conflict`]).
    async fn create(&self, saga: &NewSaga) -> Result<Created, SagaError>;

    /// Claims up to `limit` sagas of the given `kinds` (those the runner has definitions
    /// for) for `lease`: not ended, due, and held by no live lease; the most overdue first.
    /// A row that cannot be read is left out (and stays leased until its lease ends), so
    /// one bad row never stops the others.
    async fn claim_due(
        &self,
        kinds: &[String],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<Claimed>, SagaError>;

    /// Records a transition of a claimed saga, if `token` is still its lease's; renews the
    /// lease by `lease` when the transition keeps it, else hands the saga back. A
    /// transition that keeps the lease (it starts an attempt) without the cancel taken
    /// (`state.cancel_requested` false) is refused while a cancel is requested
    /// ([`Recorded::CancelRequested`]).
    async fn record(
        &self,
        id: &str,
        token: i64,
        transition: &Transition,
        lease: Duration,
    ) -> Result<Recorded, SagaError>;

    /// A saga and its log, oldest line first.
    async fn get(&self, id: &str) -> Result<Option<(SagaRecord, Vec<LogEntry>)>, SagaError>;

    /// Up to `limit` sagas, the newest first; only those in `phase` ([`phase_name`]) if given.
    async fn list(&self, phase: Option<&str>, limit: usize) -> Result<Vec<SagaRecord>, SagaError>;

    /// Reopens a stuck saga (a person fixed the cause): back to the step and direction it
    /// stopped at, attempt 1, due now. `false` when it is not stuck.
    async fn reopen(&self, id: &str) -> Result<bool, SagaError>;

    /// Asks a saga to cancel and makes it due now; `false` when it does not exist or has
    /// ended. The runner decides what the cancel means (after the pivot, nothing).
    async fn request_cancel(&self, id: &str) -> Result<bool, SagaError>;

    /// Counts per phase and the oldest active saga.
    async fn stats(&self) -> Result<SagaStats, SagaError>;

    /// Deletes up to `limit` sagas that ended (`completed` or `compensated`) before
    /// `ended_before`, with their logs, the longest ended first; the number deleted. Stuck
    /// sagas are never purged: they wait for a person. A saga's id is free again once it
    /// is gone, so keep sagas at least as long as the requests that start them can be
    /// retried (the idempotency layer's TTL).
    async fn purge(&self, ended_before: Timestamp, limit: usize) -> Result<u64, SagaError>;
}

/// The stored name of a phase: `running`, `compensating`, `completed`, `compensated`,
/// `stuck`.
pub fn phase_name(phase: &Phase) -> &'static str {
    match phase {
        Phase::Forward { .. } => "running",
        Phase::Compensating { .. } => "compensating",
        Phase::Completed => "completed",
        Phase::Compensated => "compensated",
        Phase::Stuck { .. } => "stuck",
    }
}

/// The columns a phase is stored in: its name, step, stuck reason, and whether it stopped
/// while undoing.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn phase_columns(phase: &Phase) -> (&'static str, Option<i64>, Option<&str>, bool) {
    let step = match phase {
        Phase::Forward { step } | Phase::Compensating { step } | Phase::Stuck { step, .. } => {
            i64::try_from(*step).ok()
        }
        _ => None,
    };
    let (reason, undoing) = match phase {
        Phase::Stuck {
            reason, undoing, ..
        } => (Some(reason.as_str()), *undoing),
        _ => (None, false),
    };
    (phase_name(phase), step, reason, undoing)
}

/// A phase from its columns.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn phase_from(
    id: &str,
    name: &str,
    step: Option<i64>,
    reason: Option<String>,
    undoing: bool,
) -> Result<Phase, SagaError> {
    let corrupt = |reason: &str| SagaError::Corrupt {
        id: id.to_owned(),
        reason: reason.to_owned(),
    };
    let step = || {
        step.and_then(|s| usize::try_from(s).ok())
            .ok_or_else(|| corrupt("no step for an active phase"))
    };
    Ok(match name {
        "running" => Phase::Forward { step: step()? },
        "compensating" => Phase::Compensating { step: step()? },
        "completed" => Phase::Completed,
        "compensated" => Phase::Compensated,
        "stuck" => Phase::Stuck {
            reason: reason.unwrap_or_default(),
            step: step()?,
            undoing,
        },
        _ => return Err(corrupt(&format!("unknown phase {name}"))),
    })
}

/// A direction from its stored name.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn direction_from(id: &str, s: &str) -> Result<Direction, SagaError> {
    Direction::parse(s).ok_or_else(|| SagaError::Corrupt {
        id: id.to_owned(),
        reason: format!("unknown direction {s}"),
    })
}

/// Adds `n` sagas in `phase`, the oldest of them started at `oldest`, to `stats`.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn count_phase(stats: &mut SagaStats, phase: &str, n: i64, oldest: Option<i64>) {
    let n = u64::try_from(n).unwrap_or(0);
    let slot = match phase {
        "running" => &mut stats.running,
        "compensating" => &mut stats.compensating,
        "completed" => &mut stats.completed,
        "compensated" => &mut stats.compensated,
        _ => &mut stats.stuck,
    };
    *slot += n;
    if matches!(phase, "running" | "compensating") {
        if let Some(t) = oldest.map(Timestamp) {
            stats.oldest_active = Some(stats.oldest_active.map_or(t, |o| o.min(t)));
        }
    }
}

/// Checks a new saga's id and kind.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) fn validate(saga: &NewSaga) -> Result<(), SagaError> {
    let ok = |s: &str| !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_graphic());
    if !ok(&saga.id) || !ok(&saga.kind) {
        return Err(SagaError::Invalid(
            "a saga's id and kind must be 1 to 128 visible ASCII characters".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_through_their_columns() {
        for phase in [
            Phase::Forward { step: 2 },
            Phase::Compensating { step: 0 },
            Phase::Completed,
            Phase::Compensated,
            Phase::Stuck {
                reason: "refund refused".into(),
                step: 1,
                undoing: true,
            },
        ] {
            let (name, step, reason, undoing) = phase_columns(&phase);
            assert_eq!(
                phase_from("s", name, step, reason.map(str::to_owned), undoing).unwrap(),
                phase
            );
        }
        assert!(matches!(
            phase_from("s", "running", None, None, false),
            Err(SagaError::Corrupt { .. })
        ));
        assert!(matches!(
            phase_from("s", "sleeping", Some(1), None, false),
            Err(SagaError::Corrupt { .. })
        ));
    }
}
