//! The storage concern of recovery points: one row per operation in the application's own
//! database, moved forward only inside the transaction that does a phase's work.

use async_trait::async_trait;
use oncely_core::{StoredResponse, Timestamp};

use crate::operation::{OpState, PhaseError};

use crate::plan::Flow;

/// One operation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationRow {
    /// The operation id: 1 to 128 visible ASCII characters, chosen by the caller (behind the
    /// idempotency layer, [`crate::operation_id`] of the claimed key).
    pub id: String,
    /// The operation's name (`checkout`): the completer finds its phases by it.
    pub operation: String,
    /// [`crate::plan::input_digest`] of the initial state.
    pub input_digest: String,
    /// The last committed phase, [`crate::plan::STARTED`] or [`crate::plan::FINISHED`].
    pub point: String,
    /// The state as JSON, as the last committed phase left it.
    pub state: String,
    /// Set exactly when `point` is finished.
    pub response: Option<StoredResponse>,
    /// When the operation's first run started, on the clock given to [`crate::Recovery`]
    /// (milliseconds since the epoch).
    pub created_at: Timestamp,
    /// The last commit: the completer takes rows idle for long as abandoned.
    pub updated_at: Timestamp,
}

/// A new operation, inserted unless its id exists.
#[derive(Debug, Clone)]
pub struct NewOperation {
    /// The operation id ([`OperationRow::id`]).
    pub id: String,
    /// The operation's name ([`OperationRow::operation`]).
    pub operation: String,
    /// [`crate::plan::input_digest`] of the name and the input.
    pub input_digest: String,
    /// The input, the operation's initial state, as JSON.
    pub state: String,
    /// The time recorded as both `created_at` and `updated_at`.
    pub now: Timestamp,
}

/// What to commit after a phase, decided by [`crate::plan::commit_point`].
#[derive(Debug, Clone)]
pub struct Commit {
    /// The new recovery point: the committed phase's name, or [`crate::FINISHED`].
    pub point: String,
    /// The operation's response, set exactly when `point` is [`crate::FINISHED`].
    pub response: Option<StoredResponse>,
}

/// How one attempt to move an operation forward ended.
#[derive(Debug)]
pub enum Advance {
    /// Committed: the phase's work and the new point, in one transaction. The row as it is
    /// now stored.
    Committed(OperationRow),
    /// Another run moved the point first; nothing was written. Reload and go on from there.
    Conflict,
    /// The row belongs to another operation or input (found when the row was created by this
    /// very transaction's insert racing another's); nothing was written.
    Mismatch,
    /// The phase failed; its transaction was rolled back and the point is where it was.
    Failed(PhaseError),
    /// A hook stopped the run at `before-commit` (a simulated crash); rolled back.
    Stopped,
    /// The phase ran but the plan gave it nowhere to go (the last phase did not respond);
    /// rolled back.
    NoResponse,
}

/// Errors of the journal itself (the phase's own errors are [`PhaseError`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// The database failed or did not answer within the journal's timeout; the transaction
    /// did not commit, and a retry may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// A stored row cannot be used (a state that does not decode, a response without
    /// `finished` or the reverse), or a state does not encode. Such a row is never run;
    /// fixing it needs a person.
    #[error("corrupt operation row: {0}")]
    Corrupt(String),
    /// A setting is wrong (a bad schema name): fixing it needs a person, retrying does not.
    #[error("invalid journal setting: {0}")]
    Invalid(String),
}

/// What one transaction of [`Journal::advance`] does besides moving the point.
pub enum Work<P> {
    /// Run an atomic phase in the transaction; its `Flow` decides the point.
    Atomic(P),
    /// Record a foreign phase's result (its state is the one passed in).
    Record(Flow),
}

/// What the backend asks of the caller inside the transaction after the phase's work, before
/// it commits: which point to commit, or that the run stops here.
pub type Decide = Box<dyn FnOnce(Flow) -> Decision + Send>;

/// The caller's answer to [`Decide`], inside the phase's transaction.
#[derive(Debug)]
pub enum Decision {
    /// Commit the phase's work with this point (and response).
    Commit(Commit),
    /// The last phase continued instead of responding: roll back and report
    /// [`Advance::NoResponse`].
    NoResponse,
    /// A hook stopped the run at `before-commit`: roll back and report [`Advance::Stopped`].
    Stop,
}

/// Recovery points on one database engine. Every backend runs the shared conformance suite.
///
/// The one rule: the point moves only by [`Journal::advance`], inside the transaction that
/// holds the phase's work, and only from the point the caller read. A concurrent run that
/// read the same point gets [`Advance::Conflict`], so each phase commits once per operation,
/// however many processes race.
#[async_trait]
pub trait Journal: Send + Sync + 'static {
    /// An atomic phase on this database: a function of the application's transaction.
    type Phase<S: OpState>: Clone + Send + Sync + 'static;

    /// Brings the table up to date through the shared migration mechanism, and reports the
    /// journal's schema version.
    async fn migrate(&self) -> Result<oncely_db::migrate::MigrationReport, JournalError>;

    /// Inserts `new` unless a row with its id exists; returns the row as stored.
    async fn begin(&self, new: NewOperation) -> Result<OperationRow, JournalError>;

    /// The row of operation `id`, or None if there is none (never created, or reaped).
    async fn load(&self, id: &str) -> Result<Option<OperationRow>, JournalError>;

    /// In one transaction: with `create`, inserts `row` (at `started`) unless its id exists;
    /// locks the row and checks that its point is still `row.point` (else `Conflict`) and its
    /// operation and input are `row`'s (else `Mismatch`); does the `work` (an atomic phase on
    /// the application's transaction, or a foreign phase's result to record); asks `decide`;
    /// and commits the state and the point decided. Creating the row in the first phase's
    /// transaction saves a commit per operation, and a crash before it leaves nothing behind.
    async fn advance<S: OpState>(
        &self,
        row: &OperationRow,
        create: bool,
        work: Work<Self::Phase<S>>,
        state: S,
        decide: Decide,
        now: Timestamp,
    ) -> Result<Advance, JournalError>;

    /// Unfinished operations whose last commit is older than `idle_since`, oldest first.
    async fn abandoned(
        &self,
        idle_since: Timestamp,
        limit: usize,
    ) -> Result<Vec<OperationRow>, JournalError>;

    /// Sets `updated_at` of an unfinished operation still at `point`, so the completer, which
    /// takes the longest idle first, tries it again only after the others.
    async fn touch(&self, id: &str, point: &str, now: Timestamp) -> Result<(), JournalError>;

    /// Deletes up to `limit` finished operations whose last commit is older than `before`.
    async fn reap(&self, before: Timestamp, limit: usize) -> Result<u64, JournalError>;
}

/// The columns a phase's transaction reads when it locks the operation's row.
pub(crate) struct Locked {
    pub point: String,
    pub operation: String,
    pub input_digest: String,
}

/// Whether a run that read `row` may go on once the row is locked: `None` if so, else the
/// answer to give without writing anything. Another input wins over a moved point, so a
/// creator with another input hears `Mismatch`, never `Conflict`.
pub(crate) fn judge_locked(row: &OperationRow, locked: Option<Locked>) -> Option<Advance> {
    match locked {
        Some(l) if l.operation != row.operation || l.input_digest != row.input_digest => {
            Some(Advance::Mismatch)
        }
        Some(l) if l.point == row.point => None,
        _ => Some(Advance::Conflict),
    }
}

/// After the phase's work: the point `decide` commits and the state encoded for it, or the
/// answer to give without committing.
pub(crate) fn settle<S: OpState>(
    row: &OperationRow,
    decide: Decide,
    flow: Flow,
    state: &S,
) -> Result<Result<(Commit, String), Advance>, JournalError> {
    let commit = match decide(flow) {
        Decision::Commit(c) => c,
        Decision::Stop => return Ok(Err(Advance::Stopped)),
        Decision::NoResponse => return Ok(Err(Advance::NoResponse)),
    };
    let encoded = serde_json::to_string(state)
        .map_err(|e| JournalError::Corrupt(format!("{}: state does not encode: {e}", row.id)))?;
    Ok(Ok((commit, encoded)))
}

/// The row as a committed phase left it.
pub(crate) fn committed(
    row: &OperationRow,
    commit: Commit,
    state: String,
    now: Timestamp,
) -> Advance {
    Advance::Committed(OperationRow {
        point: commit.point,
        state,
        response: commit.response,
        updated_at: now,
        ..row.clone()
    })
}

/// A response as the journals store it: three nullable columns (status, headers, body).
pub(crate) type ResponseColumns = (Option<u16>, Option<Vec<u8>>, Option<Vec<u8>>);

pub(crate) fn response_columns(response: &Option<StoredResponse>) -> ResponseColumns {
    match response {
        Some(r) => (
            Some(r.status),
            Some(r.encode_headers()),
            Some(r.body.to_vec()),
        ),
        None => (None, None, None),
    }
}

/// Rebuilds a row's response from its columns, and checks the one rule of a row: it has a
/// response exactly when its point is finished.
pub(crate) fn response_from_columns(
    id: &str,
    point: &str,
    status: Option<i64>,
    headers: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
) -> Result<Option<StoredResponse>, JournalError> {
    let response = match status {
        None => None,
        Some(status) => {
            let status = u16::try_from(status)
                .ok()
                .filter(|s| (100..=999).contains(s))
                .ok_or_else(|| JournalError::Corrupt(format!("{id}: status {status}")))?;
            let headers = StoredResponse::decode_headers(headers.as_deref().unwrap_or(&[]))
                .ok_or_else(|| JournalError::Corrupt(format!("{id}: response headers")))?;
            Some(StoredResponse {
                status,
                headers,
                body: bytes::Bytes::from(body.unwrap_or_default()),
            })
        }
    };
    if (point == crate::plan::FINISHED) != response.is_some() {
        return Err(JournalError::Corrupt(format!(
            "{id}: point `{point}` and response disagree"
        )));
    }
    Ok(response)
}
