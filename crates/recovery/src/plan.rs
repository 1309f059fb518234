//! The pure part of a multi-step operation: where a run stands, what it does next, what a
//! phase's result makes of the recovery point, and the names of every crash boundary.
//!
//! Nothing here touches a database; the driver asks these functions and the journal applies
//! their answers inside one transaction.

use oncely_core::StoredResponse;
use sha2::{Digest, Sha256};

/// The recovery point of an operation that has not run a phase yet.
pub const STARTED: &str = "started";
/// The recovery point of an operation whose response is stored.
pub const FINISHED: &str = "finished";

/// What a phase decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flow {
    /// Go on with the next phase.
    Continue,
    /// The operation is over: this is its response, stored in the same transaction. Any
    /// phase may end the operation early (a declined card is a final answer, not an error).
    Respond(StoredResponse),
}

/// The kind of a phase, as far as the plan cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// Runs inside the application's own transaction, which also moves the recovery point.
    Atomic,
    /// Calls something outside the database (a payment provider) with a derived idempotency
    /// key; its result is recorded, with the new recovery point, in a transaction of its own.
    Foreign,
}

/// The phases of an operation by name and kind, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Each phase's name, which is also the recovery point it commits, and its kind, in the
    /// order a run takes them.
    pub phases: Vec<(String, PhaseKind)>,
}

/// Where a run goes from a recovery point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Run the phase at this index; commit `next_point` if it continues.
    Run {
        /// The phase's index in [`Plan::phases`].
        index: usize,
        /// The phase's name: the recovery point committed if it continues.
        next_point: String,
    },
    /// The operation is finished.
    Finished,
    /// The plan has no phase that ends at this point: the code changed under an unfinished
    /// operation (a phase renamed or removed), or the row was edited.
    UnknownPoint,
}

/// Why a plan cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The operation has no phase.
    #[error("an operation needs at least one phase")]
    Empty,
    /// Two phases share this name, so a recovery point could not say which one committed.
    #[error("phase name `{0}` is used twice")]
    Duplicate(String),
    /// A phase is named [`STARTED`] or [`FINISHED`], the points before the first phase and
    /// after the response.
    #[error("phase name `{0}` is reserved")]
    Reserved(String),
    /// A phase name that is not 1 to 64 of `A-Z a-z 0-9 _ . -`, or an operation name that is
    /// empty or longer than 128 bytes.
    #[error("phase name `{0:?}` must be 1-64 characters of [A-Za-z0-9_.-]")]
    BadName(String),
}

impl Plan {
    /// Checks that every recovery point names exactly one place in the plan.
    pub fn validate(&self) -> Result<(), PlanError> {
        if self.phases.is_empty() {
            return Err(PlanError::Empty);
        }
        let mut seen = std::collections::HashSet::new();
        for (name, _) in &self.phases {
            if name == STARTED || name == FINISHED {
                return Err(PlanError::Reserved(name.clone()));
            }
            if !valid_name(name) {
                return Err(PlanError::BadName(name.clone()));
            }
            if !seen.insert(name.as_str()) {
                return Err(PlanError::Duplicate(name.clone()));
            }
        }
        Ok(())
    }

    /// The step after `point`. A point is the name of the last committed phase, so the next
    /// phase is the one after it.
    pub fn next(&self, point: &str) -> Next {
        if point == FINISHED {
            return Next::Finished;
        }
        let index = if point == STARTED {
            0
        } else {
            match self.phases.iter().position(|(n, _)| n == point) {
                Some(i) => i + 1,
                None => return Next::UnknownPoint,
            }
        };
        match self.phases.get(index) {
            Some((name, _)) => Next::Run {
                index,
                next_point: name.clone(),
            },
            // The last phase committed without responding: only a plan changed since (a
            // phase appended) can resume it, which `Run` would have found. Nothing to run.
            None => Next::UnknownPoint,
        }
    }

    /// Every crash boundary of the plan, in the order a run passes them: for each phase,
    /// `before:P`, then `after-call:P` (foreign) or `before-commit:P` (atomic), then `after:P`.
    pub fn boundaries(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (name, kind) in &self.phases {
            out.push(Boundary::Before(name).to_string());
            out.push(match kind {
                PhaseKind::Atomic => Boundary::BeforeCommit(name).to_string(),
                PhaseKind::Foreign => Boundary::AfterCall(name).to_string(),
            });
            out.push(Boundary::After(name).to_string());
        }
        out
    }
}

/// Whether `id` can name an operation: 1-128 visible ASCII characters, so that it is a valid
/// text value in every database and `{id}/{phase}` stays within the 255 characters that
/// idempotency keys may have.
pub fn valid_operation_id(id: &str) -> bool {
    (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// What a phase commits: the new recovery point and, when the operation ends, its response.
/// The last phase must respond; continuing past it is a plan error reported as `None`.
pub fn commit_point(
    plan: &Plan,
    index: usize,
    flow: Flow,
) -> Option<(String, Option<StoredResponse>)> {
    match flow {
        Flow::Respond(r) => Some((FINISHED.to_owned(), Some(r))),
        Flow::Continue if index + 1 < plan.phases.len() => {
            Some((plan.phases[index].0.clone(), None))
        }
        Flow::Continue => None,
    }
}

/// A place between two steps of a run where a process can die. Hooks see these (tests stop
/// or kill the process there); their names are stable: `before:P`, `after-call:P`,
/// `before-commit:P`, `after:P`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Boundary<'a> {
    /// The previous point is committed; phase `P` has not started.
    Before(&'a str),
    /// A foreign phase's call returned; its result is not recorded yet. A crash here is the
    /// one a derived idempotency key exists for: the retry calls again and must not charge
    /// twice.
    AfterCall(&'a str),
    /// An atomic phase's work is done inside its transaction, not committed yet. A crash here
    /// must leave no trace of it.
    BeforeCommit(&'a str),
    /// Phase `P` is committed.
    After(&'a str),
}

impl std::fmt::Display for Boundary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Boundary::Before(p) => write!(f, "before:{p}"),
            Boundary::AfterCall(p) => write!(f, "after-call:{p}"),
            Boundary::BeforeCommit(p) => write!(f, "before-commit:{p}"),
            Boundary::After(p) => write!(f, "after:{p}"),
        }
    }
}

/// The idempotency key a foreign phase sends: `{operation id}/{phase}`. The operation id is
/// already unique per (tenant, method, route, key), so two tenants that picked the same key
/// never share a charge at a provider that sees both under one merchant credential.
pub fn derived_key(operation_id: &str, phase: &str) -> String {
    format!("{operation_id}/{phase}")
}

/// Identifies one run's input: the operation's name and its initial state, canonical JSON
/// (RFC 8785) so that field order does not matter. A retry with another input is refused.
/// JSON that RFC 8785 cannot represent faithfully (integers beyond 2^53) is hashed as given;
/// the driver passes `serde_json::Value`'s serialisation, whose maps are sorted, so that is
/// deterministic too.
pub fn input_digest(operation: &str, initial_state: &[u8]) -> String {
    let canonical = oncely_core::jcs::canonicalize(initial_state);
    let bytes = canonical.as_deref().unwrap_or(initial_state);
    let mut h = Sha256::new();
    h.update((operation.len() as u64).to_be_bytes());
    h.update(operation.as_bytes());
    h.update(bytes);
    oncely_core::fingerprint::hex(&h.finalize())
}

/// An operation id for a record of the idempotency layer: SHA-256 over tenant, method, route
/// and key, each length-prefixed, as 64 hex characters. It fits in any provider's key limit
/// (255) together with a phase name, and says nothing about the tenant.
pub fn operation_id(record: &oncely_core::RecordKey) -> String {
    let mut h = Sha256::new();
    for part in [
        record.scope.tenant.as_str(),
        record.scope.method.as_str(),
        record.scope.route.as_str(),
        record.key.as_str(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    oncely_core::fingerprint::hex(&h.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn plan(names: &[&str]) -> Plan {
        Plan {
            phases: names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let kind = if i % 2 == 0 {
                        PhaseKind::Atomic
                    } else {
                        PhaseKind::Foreign
                    };
                    (n.to_string(), kind)
                })
                .collect(),
        }
    }

    fn response() -> StoredResponse {
        StoredResponse {
            status: 201,
            headers: vec![],
            body: bytes::Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn plans_with_ambiguous_points_are_refused() {
        assert_eq!(plan(&[]).validate(), Err(PlanError::Empty));
        assert_eq!(
            plan(&["a", "a"]).validate(),
            Err(PlanError::Duplicate("a".into()))
        );
        assert_eq!(
            plan(&["a", FINISHED]).validate(),
            Err(PlanError::Reserved(FINISHED.into()))
        );
        assert!(matches!(
            plan(&["a b"]).validate(),
            Err(PlanError::BadName(_))
        ));
        assert!(plan(&["create_order", "charge", "email"])
            .validate()
            .is_ok());
    }

    #[test]
    fn operation_ids_are_bounded_visible_ascii() {
        assert!(valid_operation_id(&"a".repeat(128)));
        assert!(!valid_operation_id(&"a".repeat(129)));
        assert!(!valid_operation_id(""));
        assert!(!valid_operation_id("a b"));
        assert!(!valid_operation_id("a\0b"));
        assert!(!valid_operation_id("é"));
        assert!(derived_key(&"f".repeat(128), &"p".repeat(64)).len() <= 255);
    }

    #[test]
    fn unknown_and_exhausted_points_are_not_run() {
        let p = plan(&["a", "b"]);
        assert_eq!(p.next("zzz"), Next::UnknownPoint);
        assert_eq!(p.next("b"), Next::UnknownPoint);
        assert_eq!(p.next(FINISHED), Next::Finished);
        assert_eq!(commit_point(&p, 1, Flow::Continue), None);
    }

    #[test]
    fn boundaries_follow_the_phases() {
        let p = plan(&["order", "charge"]);
        assert_eq!(
            p.boundaries(),
            [
                "before:order",
                "before-commit:order",
                "after:order",
                "before:charge",
                "after-call:charge",
                "after:charge"
            ]
        );
    }

    #[test]
    fn operation_ids_separate_tenants_and_parts() {
        use oncely_core::{parse_idempotency_key, RecordKey, Tenant};
        let k = |tenant: &str, route: &str, key: &str| {
            operation_id(&RecordKey::new(
                Tenant::from_header_value(tenant.as_bytes()),
                "POST",
                route,
                parse_idempotency_key(key.as_bytes()).unwrap(),
            ))
        };
        assert_ne!(k("a", "/checkout", "k1"), k("b", "/checkout", "k1"));
        assert_ne!(k("a", "/checkout", "k1"), k("a", "/checkou", "tk1"));
        assert_eq!(k("a", "/checkout", "k1"), k("a", "/checkout", "k1"));
        assert_eq!(k("a", "/checkout", "k1").len(), 64);
    }

    #[test]
    fn input_digest_ignores_json_spelling_only() {
        let a = input_digest("checkout", br#"{"a":1,"b":[true]}"#);
        let b = input_digest("checkout", br#"{ "b": [true], "a": 1.0 }"#);
        assert_eq!(a, b);
        assert_ne!(a, input_digest("refund", br#"{"a":1,"b":[true]}"#));
        assert_ne!(a, input_digest("checkout", br#"{"a":2,"b":[true]}"#));
        // Beyond 2^53 the bytes are hashed: two ids differing in the last digit stay apart.
        assert_ne!(
            input_digest("checkout", br#"{"id":9007199254740993}"#),
            input_digest("checkout", br#"{"id":9007199254740992}"#)
        );
    }

    proptest! {
        /// Walking a valid plan from `started`, committing each phase's point, visits every
        /// phase exactly once in order and ends finished, whichever phase responds.
        #[test]
        fn a_run_visits_each_phase_once_in_order(n in 1usize..8, respond_at in 0usize..8) {
            let names: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();
            let p = plan(&names.iter().map(String::as_str).collect::<Vec<_>>());
            prop_assert!(p.validate().is_ok());
            let respond_at = respond_at.min(n - 1);
            let mut point = STARTED.to_owned();
            let mut visited = Vec::new();
            loop {
                match p.next(&point) {
                    Next::Run { index, next_point } => {
                        visited.push(index);
                        prop_assert_eq!(&next_point, &p.phases[index].0);
                        let flow = if index == respond_at { Flow::Respond(response()) } else { Flow::Continue };
                        let (new_point, resp) = commit_point(&p, index, flow).expect("responds by the end");
                        prop_assert_eq!(resp.is_some(), index == respond_at);
                        point = new_point;
                    }
                    Next::Finished => break,
                    Next::UnknownPoint => prop_assert!(false, "lost at {point}"),
                }
            }
            prop_assert_eq!(visited, (0..=respond_at).collect::<Vec<_>>());
        }

        /// Any point string is either in the plan, a reserved point, or unknown; never a panic.
        #[test]
        fn any_point_is_answered(point in ".{0,20}") {
            let p = plan(&["a", "b", "c"]);
            let _ = p.next(&point);
        }
    }
}
