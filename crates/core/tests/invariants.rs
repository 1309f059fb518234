//! Property test: random interleavings of claims, completions, releases, renewals and clock
//! jumps (forwards and backwards) over a few keys in two tenants never break invariants 1 to
//! 5 of the design. Holders only know what the transitions told them, as real gateways do.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use oncely_core::record::{self, ClaimRequest};
use oncely_core::{
    ClaimOutcome, ExistingDecision, Fingerprint, IdempotencyKey, LeaseToken, Record, RecordKey,
    RecordState, StoredResponse, Tenant, Timestamp,
};
use proptest::prelude::*;

const LEASE: Duration = Duration::from_millis(100);
const TTL: Duration = Duration::from_millis(600);

#[derive(Debug, Clone)]
enum Op {
    Claim { key: usize, fp: usize },
    Complete { holder: usize },
    Release { holder: usize },
    Renew { holder: usize },
    Advance(u64),
    Rewind(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..2usize).prop_map(|(key, fp)| Op::Claim { key, fp }),
        3 => any::<usize>().prop_map(|holder| Op::Complete { holder }),
        1 => any::<usize>().prop_map(|holder| Op::Release { holder }),
        1 => any::<usize>().prop_map(|holder| Op::Renew { holder }),
        2 => (0..250u64).prop_map(Op::Advance),
        1 => (0..120u64).prop_map(Op::Rewind),
    ]
}

struct Holder {
    key: RecordKey,
    token: LeaseToken,
    lease_expires_at: Timestamp,
    finished: bool,
}

fn keys() -> Vec<RecordKey> {
    let k = |tenant: &str, key: &str| {
        RecordKey::new(
            Tenant::from_header_value(tenant.as_bytes()),
            "POST",
            "/pay",
            IdempotencyKey::new(key).unwrap(),
        )
    };
    // The same key string in two tenants, and two keys in one tenant.
    vec![
        k("acme", "k1"),
        k("globex", "k1"),
        k("acme", "k2"),
        k("globex", "k3"),
    ]
}

fn fps() -> [Fingerprint; 2] {
    [
        Fingerprint::compute("POST", "/pay", Some("application/json"), br#"{"amount":1}"#),
        Fingerprint::compute("POST", "/pay", Some("application/json"), br#"{"amount":2}"#),
    ]
}

fn response_for(key: &RecordKey, n: usize) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![(
            "x-tenant".into(),
            key.scope.tenant.as_str().as_bytes().to_vec(),
        )],
        body: Bytes::from(format!("{}:{}:{n}", key.scope.tenant, key.key)),
    }
}

fn live<'a>(
    records: &'a HashMap<RecordKey, Record>,
    key: &RecordKey,
    now: Timestamp,
) -> Option<&'a Record> {
    records.get(key).filter(|r| !r.is_expired(now))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn invariants_hold_under_any_interleaving(ops in proptest::collection::vec(op(), 1..120)) {
        let keys = keys();
        let fps = fps();
        let mut now = Timestamp(1_000_000);
        let mut records: HashMap<RecordKey, Record> = HashMap::new();
        let mut holders: Vec<Holder> = Vec::new();
        let mut next_token = 1u128;
        let mut completions = 0usize;

        for op in ops {
            match op {
                Op::Claim { key, fp } => {
                    let k = &keys[key];
                    let f = fps[fp];
                    let before = live(&records, k, now).cloned();
                    let token = LeaseToken(next_token);
                    next_token += 1;
                    let req = ClaimRequest { fingerprint: f, now, lease: LEASE, ttl: TTL, token };
                    let (write, outcome) = record::claim(records.get(k), &req);
                    match outcome {
                        ClaimOutcome::Claimed { token: t, lease_expires_at, takeover } => {
                            prop_assert_eq!(t, token);
                            if let Some(prev) = &before {
                                // Invariant 3: another fingerprint never executes.
                                prop_assert_eq!(prev.fingerprint, f, "claimed over a live record of another fingerprint");
                                match &prev.state {
                                    // Invariant 1: after a completion, no execution follows.
                                    RecordState::Completed { .. } => prop_assert!(false, "claimed over a completed record"),
                                    // Invariant 1: no overlap with a holder whose lease is live.
                                    RecordState::InProgress { token: cur, lease_expires_at: until } => {
                                        prop_assert!(*until <= now, "took over a live lease");
                                        prop_assert!(takeover);
                                        for h in holders.iter().filter(|h| &h.key == k && h.token == *cur && !h.finished) {
                                            prop_assert!(h.lease_expires_at <= now, "the current holder still believed in its lease");
                                        }
                                    }
                                }
                            } else {
                                prop_assert!(!takeover);
                            }
                            records.insert(k.clone(), write.expect("a won claim writes"));
                            holders.push(Holder { key: k.clone(), token, lease_expires_at, finished: false });
                        }
                        ClaimOutcome::Exists(r) => {
                            prop_assert!(write.is_none());
                            let prev = before.as_ref().expect("Exists only for a live record");
                            prop_assert_eq!(&r, prev);
                            match record::decide_existing(&r, f) {
                                ExistingDecision::Replay(resp) => {
                                    // Invariants 2 and 4: the stored bytes, of this tenant.
                                    let RecordState::Completed { response } = &prev.state else { unreachable!() };
                                    prop_assert_eq!(&resp, response);
                                    let own = format!("{}:{}:", k.scope.tenant, k.key);
                                    prop_assert!(resp.body.starts_with(own.as_bytes()), "replayed another scope's response");
                                }
                                ExistingDecision::KeyReused => prop_assert_ne!(prev.fingerprint, f),
                                ExistingDecision::InProgress { lease_expires_at } => {
                                    // Invariant 5: only a live lease blocks the same request.
                                    prop_assert!(lease_expires_at > now, "an expired lease still blocks the key");
                                    prop_assert_eq!(prev.fingerprint, f);
                                }
                            }
                        }
                    }
                }
                Op::Complete { holder } if !holders.is_empty() => {
                    let i = holder % holders.len();
                    let (k, token) = (holders[i].key.clone(), holders[i].token);
                    let current = match live(&records, &k, now).map(|r| &r.state) {
                        Some(RecordState::InProgress { token: t, .. }) => *t == token,
                        _ => false,
                    };
                    completions += 1;
                    let resp = response_for(&k, completions);
                    match record::complete(records.get(&k), token, resp.clone(), now, TTL) {
                        Ok(r) => {
                            // Fencing: only the current holder's completion is accepted.
                            prop_assert!(current, "a stale holder completed");
                            prop_assert_eq!(&r.state, &RecordState::Completed { response: resp });
                            prop_assert!(r.expires_at > now);
                            records.insert(k, r);
                            holders[i].finished = true;
                        }
                        Err(_) => prop_assert!(!current, "the current holder was refused"),
                    }
                }
                Op::Release { holder } if !holders.is_empty() => {
                    let i = holder % holders.len();
                    let (k, token) = (holders[i].key.clone(), holders[i].token);
                    if record::release(records.get(&k), token, now).is_ok() {
                        let RecordState::InProgress { token: t, .. } = &records[&k].state else {
                            return Err(TestCaseError::fail("released a completed record"));
                        };
                        prop_assert_eq!(*t, token);
                        records.remove(&k);
                        holders[i].finished = true;
                    }
                }
                Op::Renew { holder } if !holders.is_empty() => {
                    let i = holder % holders.len();
                    let (k, token) = (holders[i].key.clone(), holders[i].token);
                    if let Ok(r) = record::renew(records.get(&k), token, now, LEASE) {
                        let RecordState::InProgress { token: t, lease_expires_at } = r.state else {
                            return Err(TestCaseError::fail("renewal completed a record"));
                        };
                        prop_assert_eq!(t, token);
                        holders[i].lease_expires_at = lease_expires_at;
                        records.insert(k, r);
                    }
                }
                Op::Advance(ms) => now = now.plus(Duration::from_millis(ms)),
                Op::Rewind(ms) => now = Timestamp(now.0 - ms as i64),
                _ => {}
            }
        }
    }
}
