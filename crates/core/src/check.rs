//! The checker of `oncely check`, sans I/O: given the history of operations an attack sent
//! to an API (each with its key, tenant, the unique reference its body carried, and how it
//! ended) and the effects the system under test shows per reference, it says, per property,
//! whether the API kept its promise, and names the keys and operations that broke it.
//!
//! | property | what it means |
//! |---|---|
//! | `at_most_one_effect` | no reference took effect more than once, however often it was sent |
//! | `no_phantom_success` | every success has its effect: the API never said "done" for work that did not happen |
//! | `identical_successes` | every success for one key (and one request) is the same answer, byte for byte |
//! | `failure_has_no_effect` | a reference whose every answer was a definite failure took no effect |
//! | `no_foreign_result` | no answer carries another key's or another tenant's result |
//! | `key_recovers` | every reference's last answer is settled: a 5xx, a timeout or an "in progress" is not what a retry keeps getting |
//!
//! An operation that got no answer (a timeout, a reset) or a 5xx is *indeterminate*: it may
//! or may not have acted, so it constrains nothing but `at_most_one_effect`.

use std::collections::BTreeMap;

/// How one operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx (or a 3xx pointing at the result): the API says the work is done.
    Success {
        /// The status.
        status: u16,
        /// A hash of the answer's body (and of the headers that matter).
        response: String,
    },
    /// An answer that says the work was not done and will not be by this request: a 4xx
    /// (400, 409 in progress, 422 key reused with another body...).
    Failure {
        /// The status.
        status: u16,
    },
    /// No answer that settles it: a 5xx, a timeout, a reset connection.
    Indeterminate {
        /// What happened (`timeout`, `reset`, `503`).
        reason: String,
    },
}

impl Outcome {
    /// The outcome of an HTTP answer with `status` and a body hashed to `response`.
    pub fn of_status(status: u16, response: String) -> Outcome {
        match status {
            200..=399 => Outcome::Success { status, response },
            400..=499 => Outcome::Failure { status },
            _ => Outcome::Indeterminate {
                reason: status.to_string(),
            },
        }
    }

    /// Whether a client may stop retrying on this answer: a success, or a failure that says
    /// the request will not act. A 408, 409 (in progress), 425 or 429 asks for a retry, and
    /// an indeterminate answer leaves the client not knowing.
    pub fn is_settled(&self) -> bool {
        match self {
            Outcome::Success { .. } => true,
            Outcome::Failure { status } => !matches!(status, 408 | 409 | 425 | 429),
            Outcome::Indeterminate { .. } => false,
        }
    }
}

/// One operation of the history: an invocation and how it completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operation {
    /// Its number in the history.
    pub id: u64,
    /// The client process (lane) that sent it.
    pub process: u32,
    /// The `Idempotency-Key` it carried.
    pub key: String,
    /// The tenant it was sent as.
    pub tenant: String,
    /// The unique reference its body carried: what effects are counted by.
    pub reference: String,
    /// A hash of its request body: two operations of one key with other bodies are two
    /// requests.
    pub request: String,
    /// When it was sent (milliseconds).
    pub invoked_at: i64,
    /// When it completed (or gave up).
    pub completed_at: i64,
    /// How it ended.
    pub outcome: Outcome,
    /// The reference found in its answer, if the API echoes one (for `no_foreign_result`).
    pub echoed: Option<String>,
}

/// The properties checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Property {
    /// See the module's table.
    AtMostOneEffect,
    /// See the module's table.
    NoPhantomSuccess,
    /// See the module's table.
    IdenticalSuccesses,
    /// See the module's table.
    FailureHasNoEffect,
    /// See the module's table.
    NoForeignResult,
    /// A reference retried until it settles does settle: the last answer is a success or a
    /// definite failure (a gateway that stored a 500 replays it to every retry).
    KeyRecovers,
}

impl Property {
    /// Every property, in report order.
    pub const ALL: [Property; 6] = [
        Property::AtMostOneEffect,
        Property::NoPhantomSuccess,
        Property::IdenticalSuccesses,
        Property::FailureHasNoEffect,
        Property::NoForeignResult,
        Property::KeyRecovers,
    ];

    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Property::AtMostOneEffect => "at_most_one_effect",
            Property::NoPhantomSuccess => "no_phantom_success",
            Property::IdenticalSuccesses => "identical_successes",
            Property::FailureHasNoEffect => "failure_has_no_effect",
            Property::NoForeignResult => "no_foreign_result",
            Property::KeyRecovers => "key_recovers",
        }
    }
}

/// One broken promise, with its evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Which property.
    pub property: Property,
    /// The tenant and key (or, for effects, the reference) it is about.
    pub tenant: String,
    /// The key.
    pub key: String,
    /// The operations involved, by id.
    pub operations: Vec<u64>,
    /// What was seen.
    pub detail: String,
}

/// The verdict per property.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verdict {
    /// How many cases each property was checked on (keys, references or operations).
    pub checked: BTreeMap<Property, u64>,
    /// Every violation found.
    pub violations: Vec<Violation>,
}

impl Verdict {
    /// The violations of one property.
    pub fn of(&self, p: Property) -> impl Iterator<Item = &Violation> {
        self.violations.iter().filter(move |v| v.property == p)
    }

    /// Whether every property held.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Checks `history` against `effects` (how many times each reference took effect, as the
/// system under test reports it; a reference it does not list took none).
pub fn check(history: &[Operation], effects: &BTreeMap<String, u64>) -> Verdict {
    let mut v = Verdict::default();
    let mut checked = |p: Property, n: u64| *v.checked.entry(p).or_default() += n;
    let mut violations = Vec::new();

    // By reference: how it was answered, and how often it acted.
    let mut by_reference: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_reference
            .entry(op.reference.as_str())
            .or_default()
            .push(op);
    }
    for (reference, ops) in &by_reference {
        let n = effects.get(*reference).copied().unwrap_or(0);
        let first = ops[0];
        let ids = || ops.iter().map(|o| o.id).collect::<Vec<_>>();
        checked(Property::AtMostOneEffect, 1);
        if n > 1 {
            violations.push(Violation {
                property: Property::AtMostOneEffect,
                tenant: first.tenant.clone(),
                key: first.key.clone(),
                operations: ids(),
                detail: format!("reference {reference} took effect {n} times"),
            });
        }
        let successes: Vec<u64> = ops
            .iter()
            .filter(|o| matches!(o.outcome, Outcome::Success { .. }))
            .map(|o| o.id)
            .collect();
        if !successes.is_empty() {
            checked(Property::NoPhantomSuccess, 1);
            if n == 0 {
                violations.push(Violation {
                    property: Property::NoPhantomSuccess,
                    tenant: first.tenant.clone(),
                    key: first.key.clone(),
                    operations: successes,
                    detail: format!("answered success, but reference {reference} took no effect"),
                });
            }
        }
        // A 409 (in progress) or a 429 says another request may be doing the work: only
        // answers that settle the request say that it did not act.
        if ops
            .iter()
            .all(|o| matches!(o.outcome, Outcome::Failure { .. }) && o.outcome.is_settled())
        {
            checked(Property::FailureHasNoEffect, 1);
            if n > 0 {
                let statuses: Vec<String> = ops
                    .iter()
                    .filter_map(|o| match o.outcome {
                        Outcome::Failure { status } => Some(status.to_string()),
                        _ => None,
                    })
                    .collect();
                violations.push(Violation {
                    property: Property::FailureHasNoEffect,
                    tenant: first.tenant.clone(),
                    key: first.key.clone(),
                    operations: ids(),
                    detail: format!(
                        "every answer was a failure ({}), yet reference {reference} took effect {n} time(s)",
                        statuses.join(", ")
                    ),
                });
            }
        }
        checked(Property::KeyRecovers, 1);
        // Ids follow the order operations were sent in, whatever the clock did.
        let last = ops.iter().max_by_key(|o| o.id).unwrap_or(&first);
        // A 409 to a key whose other request succeeded is that key's conflict (some APIs
        // answer 409, not 422, to a key reused with another body), not a stuck key.
        let conflict_of_a_used_key = matches!(last.outcome, Outcome::Failure { status: 409 })
            && history.iter().any(|o| {
                o.key == last.key
                    && o.tenant == last.tenant
                    && o.reference != last.reference
                    && matches!(o.outcome, Outcome::Success { .. })
            });
        if !last.outcome.is_settled() && !conflict_of_a_used_key {
            let tail: Vec<String> = ops
                .iter()
                .rev()
                .take(3)
                .map(|o| match &o.outcome {
                    Outcome::Success { status, .. } | Outcome::Failure { status } => {
                        status.to_string()
                    }
                    Outcome::Indeterminate { reason } => reason.clone(),
                })
                .collect();
            violations.push(Violation {
                property: Property::KeyRecovers,
                tenant: first.tenant.clone(),
                key: first.key.clone(),
                operations: ids(),
                detail: format!(
                    "reference {reference} never settled: its last answers were {}",
                    tail.join(", ")
                ),
            });
        }
    }

    // By tenant, key and request: every success the same answer.
    let mut by_request: BTreeMap<(&str, &str, &str), Vec<&Operation>> = BTreeMap::new();
    for op in history {
        if matches!(op.outcome, Outcome::Success { .. }) {
            by_request
                .entry((op.tenant.as_str(), op.key.as_str(), op.request.as_str()))
                .or_default()
                .push(op);
        }
    }
    for ((tenant, key, _), ops) in &by_request {
        checked(Property::IdenticalSuccesses, 1);
        let answer = |o: &Operation| match &o.outcome {
            Outcome::Success { status, response } => Some((*status, response.clone())),
            _ => None,
        };
        let first = answer(ops[0]);
        if ops.iter().any(|o| answer(o) != first) {
            let mut distinct: Vec<String> = ops
                .iter()
                .filter_map(|o| answer(o).map(|(s, r)| format!("{s} {r}")))
                .collect();
            distinct.sort();
            distinct.dedup();
            violations.push(Violation {
                property: Property::IdenticalSuccesses,
                tenant: (*tenant).to_owned(),
                key: (*key).to_owned(),
                operations: ops.iter().map(|o| o.id).collect(),
                detail: format!(
                    "{} different successes: {}",
                    distinct.len(),
                    distinct.join(" / ")
                ),
            });
        }
    }

    // Per operation: an answer that names another reference is someone else's result.
    for op in history {
        let (Outcome::Success { .. }, Some(echoed)) = (&op.outcome, &op.echoed) else {
            continue;
        };
        checked(Property::NoForeignResult, 1);
        if *echoed != op.reference {
            let owner = history
                .iter()
                .find(|o| o.reference == *echoed)
                .map(|o| {
                    format!(
                        " (the result of tenant {} key {}, operation {})",
                        o.tenant, o.key, o.id
                    )
                })
                .unwrap_or_default();
            violations.push(Violation {
                property: Property::NoForeignResult,
                tenant: op.tenant.clone(),
                key: op.key.clone(),
                operations: vec![op.id],
                detail: format!(
                    "sent reference {}, answered with reference {echoed}{owner}",
                    op.reference
                ),
            });
        }
    }
    v.violations = violations;
    v
}

/// What the nemesis can do to the system under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultKind {
    /// The system under test was killed (`--kill-cmd`).
    Kill,
    /// It was started again (`--start-cmd`).
    Start,
    /// Its store was stopped (`--store-stop-cmd`).
    StoreStop,
    /// Its store was started again (`--store-start-cmd`).
    StoreStart,
    /// The fault proxy let a request through and threw its answer away.
    DropResponse,
    /// The fault proxy reset a connection.
    Reset,
    /// The fault proxy held a connection's bytes back for a while.
    Delay,
    /// The fault proxy swallowed a connection: nothing through, no answer, no close.
    BlackHole,
}

impl FaultKind {
    /// Every kind, in the order the report lists them.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Kill,
        FaultKind::Start,
        FaultKind::StoreStop,
        FaultKind::StoreStart,
        FaultKind::DropResponse,
        FaultKind::Reset,
        FaultKind::Delay,
        FaultKind::BlackHole,
    ];

    /// Its name in the history and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Start => "start",
            FaultKind::StoreStop => "store-stop",
            FaultKind::StoreStart => "store-start",
            FaultKind::DropResponse => "drop-response",
            FaultKind::Reset => "reset",
            FaultKind::Delay => "delay",
            FaultKind::BlackHole => "black-hole",
        }
    }

    /// The kind named `name`.
    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether the system under test (or its store) went down: what recovery is timed from.
    pub fn is_crash(self) -> bool {
        matches!(self, FaultKind::Kill | FaultKind::StoreStop)
    }
}

/// One act of the nemesis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// When (ms since the epoch).
    pub at: i64,
    /// What it did.
    pub kind: FaultKind,
    /// To what (a connection, a command's outcome).
    pub detail: String,
}

/// How long the API took to work again after each of the nemesis's crashes: from the crash
/// to the first success completed after it, in milliseconds (`None`: it never did).
pub fn recovery_times(history: &[Operation], crashes: &[i64]) -> Vec<(i64, Option<i64>)> {
    crashes
        .iter()
        .map(|&at| {
            let back = history
                .iter()
                .filter(|o| matches!(o.outcome, Outcome::Success { .. }) && o.invoked_at >= at)
                .map(|o| o.completed_at)
                .min();
            (at, back.map(|b| b - at))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op(id: u64, key: &str, reference: &str, outcome: Outcome) -> Operation {
        Operation {
            id,
            process: (id % 4) as u32,
            key: key.into(),
            tenant: "t".into(),
            reference: reference.into(),
            request: format!("body-{reference}"),
            invoked_at: id as i64 * 10,
            completed_at: id as i64 * 10 + 5,
            outcome,
            echoed: Some(reference.into()),
        }
    }

    fn ok(response: &str) -> Outcome {
        Outcome::Success {
            status: 201,
            response: response.into(),
        }
    }

    fn effects(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(r, n)| ((*r).to_owned(), *n)).collect()
    }

    #[test]
    fn each_property_catches_what_it_is_for() {
        // A race that executed twice, with two different answers.
        let history = vec![
            op(1, "k1", "r1", ok("a")),
            op(2, "k1", "r1", ok("b")),
            op(3, "k2", "r2", ok("c")),
            op(4, "k3", "r3", Outcome::Failure { status: 422 }),
            op(
                5,
                "k4",
                "r4",
                Outcome::Indeterminate {
                    reason: "timeout".into(),
                },
            ),
            Operation {
                echoed: Some("r1".into()),
                ..op(6, "k5", "r5", ok("a"))
            },
        ];
        let v = check(
            &history,
            &effects(&[("r1", 2), ("r3", 1), ("r4", 1), ("r5", 1)]),
        );
        let found: Vec<(Property, String, Vec<u64>)> = v
            .violations
            .iter()
            .map(|x| (x.property, x.key.clone(), x.operations.clone()))
            .collect();
        assert_eq!(
            found,
            [
                (Property::AtMostOneEffect, "k1".into(), vec![1, 2]),
                (Property::NoPhantomSuccess, "k2".into(), vec![3]),
                (Property::FailureHasNoEffect, "k3".into(), vec![4]),
                (Property::KeyRecovers, "k4".into(), vec![5]),
                (Property::IdenticalSuccesses, "k1".into(), vec![1, 2]),
                (Property::NoForeignResult, "k5".into(), vec![6]),
            ]
        );
        assert!(v
            .of(Property::NoForeignResult)
            .next()
            .unwrap()
            .detail
            .contains("key k1"));
        assert!(!v.passed());
        // An indeterminate operation with one effect is fine, with none too; it only says
        // that its reference never settled.
        for n in [0, 1] {
            let v = check(&history[4..5], &effects(&[("r4", n)]));
            let found: Vec<Property> = v.violations.iter().map(|x| x.property).collect();
            assert_eq!(found, [Property::KeyRecovers], "{v:?}");
        }
        // A 409 asks for a retry; a 422 settles.
        assert!(!Outcome::Failure { status: 409 }.is_settled());
        assert!(Outcome::Failure { status: 422 }.is_settled());
    }

    #[test]
    fn recovery_is_measured_from_each_crash() {
        let history = vec![
            op(1, "k1", "r1", ok("a")),
            op(
                20,
                "k2",
                "r2",
                Outcome::Indeterminate {
                    reason: "reset".into(),
                },
            ),
            op(30, "k3", "r3", ok("c")),
        ];
        assert_eq!(
            recovery_times(&history, &[150, 1000]),
            [(150, Some(305 - 150)), (1000, None)]
        );
        assert_eq!(
            Outcome::of_status(503, "x".into()),
            Outcome::Indeterminate {
                reason: "503".into()
            }
        );
        assert_eq!(
            Outcome::of_status(409, "x".into()),
            Outcome::Failure { status: 409 }
        );
        assert!(matches!(
            Outcome::of_status(303, "x".into()),
            Outcome::Success { status: 303, .. }
        ));
    }

    #[test]
    fn a_409_is_neither_a_refusal_nor_a_stuck_key_when_the_key_was_used() {
        let conflict = Outcome::Failure { status: 409 };
        // Another copy acted while this one was told "in progress": not a failure that
        // took effect.
        let v = check(
            &[
                op(
                    1,
                    "k1",
                    "r1",
                    Outcome::Indeterminate {
                        reason: "reset".into(),
                    },
                ),
                op(2, "k1", "r1", ok("a")),
                op(3, "k2", "r2", conflict.clone()),
                op(4, "k2", "r2", ok("b")),
            ],
            &effects(&[("r1", 1), ("r2", 1)]),
        );
        assert!(v.passed(), "{v:?}");
        // The same key with another body answered 409 after the first body succeeded.
        let reused = vec![
            op(1, "k1", "r1", ok("a")),
            op(2, "k1", "r1b", conflict.clone()),
        ];
        let v = check(&reused, &effects(&[("r1", 1)]));
        assert!(v.passed(), "{v:?}");
        // A key that answers 409 for ever, nothing ever succeeding: stuck.
        let stuck = vec![
            op(1, "k1", "r1", conflict.clone()),
            op(2, "k1", "r1", conflict),
        ];
        let v = check(&stuck, &effects(&[]));
        let found: Vec<Property> = v.violations.iter().map(|x| x.property).collect();
        assert_eq!(found, [Property::KeyRecovers], "{v:?}");
    }

    /// A history an idempotent API could produce: per reference, at most one execution;
    /// every success of one request the same answer; failures only before or without an
    /// execution.
    fn correct_history() -> impl Strategy<Value = (Vec<Operation>, BTreeMap<String, u64>)> {
        prop::collection::vec((0u8..8, 0u8..4, 0u8..3), 1..60).prop_map(|plan| {
            let mut history = Vec::new();
            let mut effects = BTreeMap::new();
            for (i, (key, kind, tenant)) in plan.into_iter().enumerate() {
                let reference = format!("r{tenant}-{key}");
                let executed = *effects.get(&reference).unwrap_or(&0) > 0;
                let outcome = match kind {
                    // Refused before it ran (a body that does not validate): no effect.
                    0 => Outcome::Failure { status: 422 },
                    1 => Outcome::Indeterminate {
                        reason: "timeout".into(),
                    },
                    _ => Outcome::Success {
                        status: 201,
                        response: format!("answer-{reference}"),
                    },
                };
                match &outcome {
                    Outcome::Success { .. } => {
                        effects.insert(reference.clone(), 1);
                    }
                    // A timeout may have executed, once.
                    Outcome::Indeterminate { .. } if !executed && i % 2 == 0 => {
                        effects.insert(reference.clone(), 1);
                    }
                    _ => {}
                }
                history.push(Operation {
                    id: i as u64,
                    process: (i % 3) as u32,
                    key: format!("k{key}"),
                    tenant: format!("t{tenant}"),
                    reference: reference.clone(),
                    request: format!("body-{reference}"),
                    invoked_at: i as i64,
                    completed_at: i as i64 + 1,
                    outcome,
                    echoed: Some(reference),
                });
            }
            // The attack retries every reference until it settles: one more success for
            // each whose last answer left it unknown (the execution, if it had none yet).
            let mut last: BTreeMap<String, Operation> = BTreeMap::new();
            for o in &history {
                last.insert(o.reference.clone(), o.clone());
            }
            for (reference, o) in last {
                if !o.outcome.is_settled() {
                    let i = history.len();
                    effects.insert(reference.clone(), 1);
                    history.push(Operation {
                        id: i as u64,
                        invoked_at: i as i64,
                        completed_at: i as i64 + 1,
                        outcome: Outcome::Success {
                            status: 201,
                            response: format!("answer-{reference}"),
                        },
                        ..o
                    });
                }
            }
            (history, effects)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// A correct API passes every property; each fault injected into its history or its
        /// effects is caught by its property, with the operations involved.
        #[test]
        fn correct_histories_pass_and_each_fault_is_caught(
            (history, effects) in correct_history(),
            pick in any::<prop::sample::Index>(),
            fault in 0u8..5,
        ) {
            let v = check(&history, &effects);
            prop_assert!(v.passed(), "{:?}", v.violations);
            let target = &history[pick.index(history.len())];
            let mut history = history.clone();
            let mut effects = effects.clone();
            let expected = match fault {
                0 => {
                    *effects.entry(target.reference.clone()).or_default() += 1;
                    if effects[&target.reference] > 1 { Some(Property::AtMostOneEffect) } else { None }
                }
                1 => {
                    let succeeded = history.iter().any(|o| o.reference == target.reference && matches!(o.outcome, Outcome::Success { .. }));
                    effects.remove(&target.reference);
                    succeeded.then_some(Property::NoPhantomSuccess)
                }
                2 => {
                    let i = target.id as usize;
                    let other = matches!(history[i].outcome, Outcome::Success { .. }) && history.iter().filter(|o| o.reference == target.reference && matches!(o.outcome, Outcome::Success { .. })).count() > 1;
                    if let Outcome::Success { response, .. } = &mut history[i].outcome { response.push('!'); }
                    other.then_some(Property::IdenticalSuccesses)
                }
                3 => {
                    let i = target.id as usize;
                    let success = matches!(history[i].outcome, Outcome::Success { .. });
                    history[i].echoed = Some("someone-else".into());
                    success.then_some(Property::NoForeignResult)
                }
                _ => {
                    // Its reference's last answer becomes a stored 500, replayed once more.
                    let i = history.len();
                    history.push(Operation {
                        id: i as u64,
                        invoked_at: i as i64,
                        completed_at: i as i64 + 1,
                        outcome: Outcome::Indeterminate { reason: "500".into() },
                        ..target.clone()
                    });
                    Some(Property::KeyRecovers)
                }
            };
            let v = check(&history, &effects);
            match expected {
                Some(p) => {
                    let hit: Vec<&Violation> = v.of(p).collect();
                    prop_assert!(!hit.is_empty(), "{p:?} not caught: {:?}", v.violations);
                    prop_assert!(hit.iter().any(|x| x.operations.contains(&target.id) || x.key == target.key), "{hit:?}");
                }
                None => prop_assert!(v.violations.iter().all(|x| x.property != Property::FailureHasNoEffect || x.key == target.key)),
            }
        }
    }
}

/// The history file: JSON Lines, one line per invocation and one per completion, written
/// as the attack runs (so a run cut short still has its history), read back by the checker.
///
/// ```text
/// {"type":"invoke","op":7,"process":2,"key":"k-3","tenant":"acme","reference":"ref-3","request":"9f2c…","at":1800000000123}
/// {"type":"ok","op":7,"at":1800000000150,"status":201,"response":"51ab…","echoed":"ref-3"}
/// {"type":"fail","op":8,"at":1800000000151,"status":409}
/// {"type":"info","op":9,"at":1800000002123,"reason":"timeout"}
/// ```
pub mod history {
    use std::collections::BTreeMap;

    use super::{Operation, Outcome};

    /// One line of the history.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Event {
        /// An operation was sent.
        Invoke {
            /// Its id.
            op: u64,
            /// The client process.
            process: u32,
            /// Its key.
            key: String,
            /// Its tenant.
            tenant: String,
            /// Its body's reference.
            reference: String,
            /// Its body's hash.
            request: String,
            /// When (ms).
            at: i64,
        },
        /// An operation completed.
        Complete {
            /// Its id.
            op: u64,
            /// When (ms).
            at: i64,
            /// How.
            outcome: Outcome,
            /// The reference its answer carried.
            echoed: Option<String>,
        },
        /// The nemesis acted.
        Nemesis(super::Fault),
    }

    /// The JSON line of `event` (without the newline).
    pub fn line(event: &Event) -> String {
        let v = match event {
            Event::Invoke {
                op,
                process,
                key,
                tenant,
                reference,
                request,
                at,
            } => serde_json::json!({
                "type": "invoke", "op": op, "process": process, "key": key, "tenant": tenant,
                "reference": reference, "request": request, "at": at,
            }),
            Event::Complete {
                op,
                at,
                outcome,
                echoed,
            } => {
                let mut v = match outcome {
                    Outcome::Success { status, response } => serde_json::json!({
                        "type": "ok", "status": status, "response": response,
                    }),
                    Outcome::Failure { status } => {
                        serde_json::json!({ "type": "fail", "status": status })
                    }
                    Outcome::Indeterminate { reason } => {
                        serde_json::json!({ "type": "info", "reason": reason })
                    }
                };
                v["op"] = serde_json::json!(op);
                v["at"] = serde_json::json!(at);
                if let Some(e) = echoed {
                    v["echoed"] = serde_json::json!(e);
                }
                v
            }
            Event::Nemesis(f) => serde_json::json!({
                "type": "nemesis", "at": f.at, "fault": f.kind.as_str(), "detail": f.detail,
            }),
        };
        v.to_string()
    }

    /// Why a history did not read: the line and what is wrong with it.
    #[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
    #[error("history line {line}: {reason}")]
    pub struct HistoryError {
        /// The line number, from 1.
        pub line: usize,
        /// What is wrong.
        pub reason: String,
    }

    fn parse_line(n: usize, text: &str) -> Result<Event, HistoryError> {
        let err = |reason: String| HistoryError { line: n, reason };
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| err(format!("not JSON: {e}")))?;
        let str_of = |k: &str| {
            v[k].as_str()
                .map(str::to_owned)
                .ok_or_else(|| err(format!("no `{k}`")))
        };
        let int_of = |k: &str| v[k].as_i64().ok_or_else(|| err(format!("no `{k}`")));
        if v["type"] == "nemesis" {
            let kind = str_of("fault")?;
            return Ok(Event::Nemesis(super::Fault {
                at: int_of("at")?,
                kind: super::FaultKind::parse(&kind)
                    .ok_or_else(|| err(format!("unknown fault {kind:?}")))?,
                detail: str_of("detail")?,
            }));
        }
        let op = v["op"].as_u64().ok_or_else(|| err("no `op`".into()))?;
        let at = int_of("at")?;
        let status = || {
            v["status"]
                .as_u64()
                .and_then(|s| u16::try_from(s).ok())
                .ok_or_else(|| err("no `status`".into()))
        };
        let echoed = v["echoed"].as_str().map(str::to_owned);
        Ok(match v["type"].as_str() {
            Some("invoke") => Event::Invoke {
                op,
                process: v["process"]
                    .as_u64()
                    .and_then(|p| u32::try_from(p).ok())
                    .ok_or_else(|| err("no `process`".into()))?,
                key: str_of("key")?,
                tenant: str_of("tenant")?,
                reference: str_of("reference")?,
                request: str_of("request")?,
                at,
            },
            Some("ok") => Event::Complete {
                op,
                at,
                outcome: Outcome::Success {
                    status: status()?,
                    response: str_of("response")?,
                },
                echoed,
            },
            Some("fail") => Event::Complete {
                op,
                at,
                outcome: Outcome::Failure { status: status()? },
                echoed,
            },
            Some("info") => Event::Complete {
                op,
                at,
                outcome: Outcome::Indeterminate {
                    reason: str_of("reason")?,
                },
                echoed,
            },
            other => return Err(err(format!("unknown type {other:?}"))),
        })
    }

    /// Reads a history: its events in order. An empty last line is fine; a line cut short
    /// at the very end (the run was killed while writing it) is dropped, any other bad line
    /// is an error.
    pub fn parse(text: &str) -> Result<Vec<Event>, HistoryError> {
        let lines: Vec<&str> = text.lines().collect();
        let mut events = Vec::with_capacity(lines.len());
        for (i, l) in lines.iter().enumerate() {
            if l.trim().is_empty() {
                continue;
            }
            match parse_line(i + 1, l) {
                Ok(e) => events.push(e),
                Err(_) if i + 1 == lines.len() && !text.ends_with('\n') => break,
                Err(e) => return Err(e),
            }
        }
        Ok(events)
    }

    /// The operations of a history: each invocation with its completion; one never
    /// completed (the run stopped first) is indeterminate. A completion without its
    /// invocation, or a second one, is an error.
    pub fn operations(events: &[Event]) -> Result<Vec<Operation>, HistoryError> {
        let mut ops: BTreeMap<u64, Operation> = BTreeMap::new();
        let mut done: BTreeMap<u64, bool> = BTreeMap::new();
        for (i, e) in events.iter().enumerate() {
            let err = |reason: String| HistoryError {
                line: i + 1,
                reason,
            };
            match e {
                Event::Invoke {
                    op,
                    process,
                    key,
                    tenant,
                    reference,
                    request,
                    at,
                } => {
                    let fresh = Operation {
                        id: *op,
                        process: *process,
                        key: key.clone(),
                        tenant: tenant.clone(),
                        reference: reference.clone(),
                        request: request.clone(),
                        invoked_at: *at,
                        completed_at: *at,
                        outcome: Outcome::Indeterminate {
                            reason: "never completed".into(),
                        },
                        echoed: None,
                    };
                    if ops.insert(*op, fresh).is_some() {
                        return Err(err(format!("operation {op} invoked twice")));
                    }
                }
                Event::Complete {
                    op,
                    at,
                    outcome,
                    echoed,
                } => {
                    let Some(o) = ops.get_mut(op) else {
                        return Err(err(format!(
                            "operation {op} completed before it was invoked"
                        )));
                    };
                    if done.insert(*op, true).is_some() {
                        return Err(err(format!("operation {op} completed twice")));
                    }
                    o.completed_at = *at;
                    o.outcome = outcome.clone();
                    o.echoed = echoed.clone();
                }
                Event::Nemesis(_) => {}
            }
        }
        Ok(ops.into_values().collect())
    }

    /// What the nemesis did, in order.
    pub fn faults(events: &[Event]) -> Vec<super::Fault> {
        events
            .iter()
            .filter_map(|e| match e {
                Event::Nemesis(f) => Some(f.clone()),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod history_tests {
    use super::history::{line, operations, parse, Event};
    use super::*;
    use proptest::prelude::*;

    fn arb_outcome() -> impl Strategy<Value = Outcome> {
        prop_oneof![
            (200u16..300, "[a-f0-9]{0,16}")
                .prop_map(|(status, response)| Outcome::Success { status, response }),
            (400u16..500).prop_map(|status| Outcome::Failure { status }),
            "[a-z0-9 \"\\\\]{0,12}".prop_map(|reason| Outcome::Indeterminate { reason }),
        ]
    }

    proptest! {
        /// What is written reads back the same, whatever the strings hold.
        #[test]
        fn lines_round_trip(
            op in any::<u64>(), process in any::<u32>(), at in any::<i64>(),
            key in "\\PC{0,20}", tenant in "\\PC{0,8}", outcome in arb_outcome(),
            echoed in prop::option::of("\\PC{0,10}"),
        ) {
            let invoke = Event::Invoke { op, process, key: key.clone(), tenant, reference: key.clone(), request: "h".into(), at };
            let complete = Event::Complete { op, at: at.wrapping_add(1), outcome, echoed };
            let fault = Event::Nemesis(Fault { at, kind: FaultKind::ALL[(op % 8) as usize], detail: key.clone() });
            let text = format!("{}\n{}\n{}\n", line(&invoke), line(&fault), line(&complete));
            let events = parse(&text).unwrap();
            prop_assert_eq!(&events, &vec![invoke, fault.clone(), complete]);
            prop_assert_eq!(super::history::faults(&events).len(), 1);
            prop_assert_eq!(operations(&events).unwrap().len(), 1);
        }
    }

    #[test]
    fn a_history_cut_short_still_reads_and_bad_ones_are_named() {
        let invoke = |op| {
            line(&Event::Invoke {
                op,
                process: 1,
                key: format!("k{op}"),
                tenant: "t".into(),
                reference: format!("r{op}"),
                request: "h".into(),
                at: 10,
            })
        };
        let ok = line(&Event::Complete {
            op: 1,
            at: 12,
            outcome: Outcome::Success {
                status: 201,
                response: "x".into(),
            },
            echoed: Some("r1".into()),
        });
        let text = format!(
            "{}\n{}\n{}\n{{\"type\":\"ok\",\"op\":2,\"at",
            invoke(1),
            ok,
            invoke(2)
        );
        let ops = operations(&parse(&text).unwrap()).unwrap();
        assert_eq!(ops.len(), 2);
        assert_eq!(
            ops[0].outcome,
            Outcome::Success {
                status: 201,
                response: "x".into()
            }
        );
        assert_eq!(
            ops[1].outcome,
            Outcome::Indeterminate {
                reason: "never completed".into()
            },
            "killed mid-line"
        );
        let bad = format!("{}\nnot json\n{}\n", invoke(1), ok);
        assert_eq!(parse(&bad).unwrap_err().line, 2);
        let twice = format!("{}\n{}\n{}\n", invoke(1), ok, ok);
        assert!(operations(&parse(&twice).unwrap())
            .unwrap_err()
            .reason
            .contains("completed twice"));
        let orphan = format!("{ok}\n");
        assert!(operations(&parse(&orphan).unwrap())
            .unwrap_err()
            .reason
            .contains("before it was invoked"));
    }
}
