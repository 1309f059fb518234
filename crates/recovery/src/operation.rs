//! An operation: a name and its phases, each atomic (the application's transaction) or
//! foreign (a call outside, with a derived idempotency key).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::journal::Journal;
use crate::plan::{Flow, PhaseKind, Plan, PlanError};

/// The state an operation carries from phase to phase, stored as JSON with each recovery
/// point. Its initial value is the operation's input.
pub trait OpState: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> OpState for T {}

/// A boxed `Send` future, as foreign phases and PostgreSQL's atomic phases return.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A phase that failed. Its transaction is rolled back and the recovery point stays where it
/// was, so a retry runs the phase again. (A final answer such as "card declined" is not an
/// error: the phase returns [`Flow::Respond`].)
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PhaseError(pub String);

impl PhaseError {
    /// A phase error whose reason is `msg`, shown in [`crate::RecoveryError::Interrupted`].
    pub fn new(msg: impl std::fmt::Display) -> Self {
        PhaseError(msg.to_string())
    }
}

#[cfg(feature = "sqlite")]
impl From<rusqlite::Error> for PhaseError {
    fn from(e: rusqlite::Error) -> Self {
        PhaseError::new(e)
    }
}

#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for PhaseError {
    fn from(e: tokio_postgres::Error) -> Self {
        PhaseError::new(e)
    }
}

impl From<serde_json::Error> for PhaseError {
    fn from(e: serde_json::Error) -> Self {
        PhaseError::new(e)
    }
}

/// What a foreign phase is given: the key to send and the state so far.
#[derive(Debug, Clone)]
pub struct ForeignCall<S> {
    /// `{operation id}/{phase}`: the same on every attempt of this phase of this operation,
    /// so the foreign side dedupes a call repeated after a crash.
    pub idempotency_key: String,
    /// The state as the last committed phase left it; the phase returns the new one.
    pub state: S,
}

/// A foreign phase: returns the new state and what comes next, or fails (nothing recorded;
/// the retry calls again with the same key).
pub type ForeignFn<S> =
    Arc<dyn Fn(ForeignCall<S>) -> BoxFuture<'static, Result<(S, Flow), PhaseError>> + Send + Sync>;

pub(crate) enum Phase<J: Journal, S: OpState> {
    Atomic(J::Phase<S>),
    Foreign(ForeignFn<S>),
}

impl<J: Journal, S: OpState> Clone for Phase<J, S> {
    fn clone(&self) -> Self {
        match self {
            Phase::Atomic(p) => Phase::Atomic(p.clone()),
            Phase::Foreign(f) => Phase::Foreign(f.clone()),
        }
    }
}

/// A multi-step operation on journal `J` with state `S`. Build it once at start-up and run it
/// with [`crate::Recovery::run`]; the completer resumes abandoned runs of it by its name.
///
/// Atomic phases are added with `atomic` (its signature depends on the database: see
/// the `sqlite` and `postgres` modules), foreign phases with [`Operation::foreign`].
/// The last phase must respond ([`Flow::Respond`]).
pub struct Operation<J: Journal, S: OpState> {
    pub(crate) name: String,
    pub(crate) phases: Vec<(String, Phase<J, S>)>,
}

impl<J: Journal, S: OpState> Operation<J, S> {
    /// An operation named `name` (1 to 128 bytes), with no phases yet. The name is stored
    /// with every run and the completer finds the operation by it, so it must stay the same
    /// across deploys while runs are unfinished.
    pub fn new(name: impl Into<String>) -> Self {
        Operation {
            name: name.into(),
            phases: Vec::new(),
        }
    }

    /// The operation's name, as the journal's `operation` column holds it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds an atomic phase already in the journal's form.
    pub fn atomic_phase(mut self, name: impl Into<String>, phase: J::Phase<S>) -> Self {
        self.phases.push((name.into(), Phase::Atomic(phase)));
        self
    }

    /// Adds a foreign phase: `call` talks to the outside world with
    /// [`ForeignCall::idempotency_key`] and returns the new state; the state and the new
    /// recovery point are then committed together.
    pub fn foreign<F, Fut>(mut self, name: impl Into<String>, call: F) -> Self
    where
        F: Fn(ForeignCall<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(S, Flow), PhaseError>> + Send + 'static,
    {
        let call: ForeignFn<S> = Arc::new(move |c| Box::pin(call(c)));
        self.phases.push((name.into(), Phase::Foreign(call)));
        self
    }

    /// The phases by name and kind.
    pub fn plan(&self) -> Plan {
        Plan {
            phases: self
                .phases
                .iter()
                .map(|(n, p)| {
                    let kind = match p {
                        Phase::Atomic(_) => PhaseKind::Atomic,
                        Phase::Foreign(_) => PhaseKind::Foreign,
                    };
                    (n.clone(), kind)
                })
                .collect(),
        }
    }

    /// Every place a process can crash during a run, by name (see [`crate::Boundary`]).
    pub fn boundaries(&self) -> Vec<String> {
        self.plan().boundaries()
    }

    /// Checks that the operation can run: a name of 1 to 128 bytes, at least one phase, and
    /// phase names valid, unique and not reserved ([`crate::STARTED`], [`crate::FINISHED`]).
    /// [`crate::Recovery::run`] checks it before anything runs.
    pub fn validate(&self) -> Result<(), PlanError> {
        if !(1..=128).contains(&self.name.len()) {
            return Err(PlanError::BadName(self.name.clone()));
        }
        self.plan().validate()
    }
}
