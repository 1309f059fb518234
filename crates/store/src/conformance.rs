//! The conformance suite every store backend must pass: the hot path of [`IdempotencyStore`]
//! and the operator surface of [`StoreAdmin`].
//!
//! A backend's test file calls [`conformance_tests!`](crate::conformance_tests) with a
//! factory that builds a fresh, empty store on a given [`ManualClock`]; the macro expands to
//! one `#[tokio::test]` per case so failures name the broken property.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use oncely_core::record::{self, ClaimRequest};
use oncely_core::{
    ClaimOutcome, Fingerprint, IdempotencyKey, LeaseToken, ManualClock, Record, RecordKey,
    RecordState, Refusal, StoredResponse, Tenant, Timestamp,
};
use rand::{Rng, SeedableRng};

use crate::{IdempotencyStore, StoreAdmin, StoreError, TimeSource};

/// The lease the cases claim with.
pub const LEASE: Duration = Duration::from_millis(100);
/// The retention the cases store with.
pub const TTL: Duration = Duration::from_millis(500);
const START: Timestamp = Timestamp(1_700_000_000_000);

/// A record key of `tenant` on `POST /orders`.
pub fn key(tenant: &str, k: &str) -> RecordKey {
    RecordKey::new(
        Tenant::from_header_value(tenant.as_bytes()),
        "POST",
        "/orders",
        IdempotencyKey::new(k).expect("valid test key"),
    )
}

/// The fingerprint of a request with `body`.
pub fn fp(body: &[u8]) -> Fingerprint {
    Fingerprint::compute("POST", "/orders", Some("application/json"), body)
}

/// A stored 201 answer with `body`.
pub fn response(body: impl Into<Bytes>) -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("x-binary".into(), vec![0x80, 0xff, 0x00, b'a']),
        ],
        body: body.into(),
    }
}

fn claimed(o: ClaimOutcome) -> LeaseToken {
    match o {
        ClaimOutcome::Claimed { token, .. } => token,
        other => panic!("expected a won claim, got {other:?}"),
    }
}

fn existing(o: ClaimOutcome) -> Record {
    match o {
        ClaimOutcome::Exists(r) => r,
        other => panic!("expected an existing record, got {other:?}"),
    }
}

/// Builds a fresh store for one test case.
pub trait Factory<S> {
    /// A fresh, empty store on `clock`.
    fn make(&self, clock: ManualClock) -> impl Future<Output = S>;
}

impl<S, F, Fut> Factory<S> for F
where
    F: Fn(ManualClock) -> Fut,
    Fut: Future<Output = S>,
{
    fn make(&self, clock: ManualClock) -> impl Future<Output = S> {
        self(clock)
    }
}

/// A store together with something that must live exactly as long as it: a temporary file,
/// a schema or key prefix dropped when the test ends. Every call goes to `store`.
pub struct Guarded<S, G> {
    /// The store.
    pub store: S,
    /// What removes its data when dropped (a temporary file, schema or prefix).
    pub guard: G,
}

#[async_trait::async_trait]
impl<S: IdempotencyStore, G: Send + Sync + 'static> IdempotencyStore for Guarded<S, G> {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
        ttl: Duration,
    ) -> crate::StoreResult<ClaimOutcome> {
        self.store.claim(key, fingerprint, lease, ttl).await
    }
    async fn complete(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> crate::StoreResult<()> {
        self.store.complete(key, token, response, ttl).await
    }
    async fn release(&self, key: &RecordKey, token: LeaseToken) -> crate::StoreResult<()> {
        self.store.release(key, token).await
    }
    async fn renew(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        lease: Duration,
    ) -> crate::StoreResult<Timestamp> {
        self.store.renew(key, token, lease).await
    }
    async fn get(&self, key: &RecordKey) -> crate::StoreResult<Option<Record>> {
        self.store.get(key).await
    }
}

#[async_trait::async_trait]
impl<S: StoreAdmin, G: Send + Sync + 'static> StoreAdmin for Guarded<S, G> {
    async fn purge_expired(&self, batch: usize) -> crate::StoreResult<u64> {
        self.store.purge_expired(batch).await
    }
    async fn stats(&self) -> crate::StoreResult<crate::StoreStats> {
        self.store.stats().await
    }
    async fn evict(&self, key: &RecordKey) -> crate::StoreResult<bool> {
        self.store.evict(key).await
    }
    async fn list_in_progress(&self, limit: usize) -> crate::StoreResult<Vec<(RecordKey, Record)>> {
        self.store.list_in_progress(limit).await
    }
}

async fn setup<S: StoreAdmin, F: Factory<S>>(f: &F) -> (Arc<S>, ManualClock) {
    let clock = ManualClock::new(START);
    (Arc::new(f.make(clock.clone()).await), clock)
}

/// The in-flight list shows live in-progress records with their full keys, oldest first;
/// eviction deletes a record whatever its state, and fences off its holder.
pub async fn evict_and_list_in_progress<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, clock) = setup(f).await;
    let k1 = key("t1", "held");
    let k2 = key("t1", "done");
    let k3 = RecordKey::new(
        Tenant::from_header_value(b"tenant two"),
        "PATCH",
        "/orders/7",
        IdempotencyKey::new("quoted/key:1").expect("valid key"),
    );
    let t1 = claimed(store.claim(&k1, fp(b"a"), LEASE, TTL).await.unwrap());
    clock.advance(Duration::from_millis(5));
    let t2 = claimed(store.claim(&k2, fp(b"b"), LEASE, TTL).await.unwrap());
    store
        .complete(&k2, t2, response("done"), TTL)
        .await
        .unwrap();
    clock.advance(Duration::from_millis(5));
    claimed(store.claim(&k3, fp(b"c"), LEASE, TTL).await.unwrap());
    let listed = store.list_in_progress(10).await.unwrap();
    let keys: Vec<&RecordKey> = listed.iter().map(|(k, _)| k).collect();
    assert_eq!(
        keys,
        [&k1, &k3],
        "in progress only, oldest first, keys intact"
    );
    assert_eq!(listed[0].1.fingerprint, fp(b"a"));
    assert!(matches!(listed[1].1.state, RecordState::InProgress { .. }));
    assert_eq!(store.list_in_progress(1).await.unwrap().len(), 1);

    assert!(
        store.evict(&k1).await.unwrap(),
        "an in-progress record is evicted"
    );
    assert_eq!(store.get(&k1).await.unwrap(), None);
    assert_eq!(
        store.complete(&k1, t1, response("late"), TTL).await,
        Err(StoreError::Refused(Refusal::Missing)),
        "the evicted holder's completion is refused"
    );
    assert_eq!(
        store.renew(&k1, t1, LEASE).await,
        Err(StoreError::Refused(Refusal::Missing)),
        "and so is its lease renewal"
    );
    claimed(store.claim(&k1, fp(b"other"), LEASE, TTL).await.unwrap());
    assert!(
        store.evict(&k2).await.unwrap(),
        "a completed record is evicted"
    );
    claimed(store.claim(&k2, fp(b"b"), LEASE, TTL).await.unwrap());
    assert!(!store.evict(&key("t1", "never")).await.unwrap());

    // Expired records are neither listed nor reported as evicted.
    clock.advance(TTL * 2);
    assert!(store.list_in_progress(10).await.unwrap().is_empty());
    assert!(!store.evict(&k3).await.unwrap());
}

/// N tasks claim one key at once: exactly one wins.
pub async fn one_winner_among_concurrent_claims<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, _clock) = setup(f).await;
    let k = key("t1", "race");
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (store, k) = (store.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            store.claim(&k, fp(b"{}"), LEASE, TTL).await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if let ClaimOutcome::Claimed { .. } = t.await.expect("task").expect("claim") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "exactly one concurrent claim may win");
}

/// A duplicate sees the request in progress, then the stored response, byte for byte.
pub async fn duplicate_sees_progress_then_replay<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, clock) = setup(f).await;
    let k = key("t1", "k1");
    let token = claimed(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    let r = existing(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    assert!(matches!(r.state, RecordState::InProgress { token: t, .. } if t == token));
    clock.advance(Duration::from_millis(10));
    store
        .complete(&k, token, response("first"), TTL)
        .await
        .unwrap();
    let r = existing(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    assert_eq!(
        r.state,
        RecordState::Completed {
            response: response("first")
        }
    );
    assert_eq!(r.fingerprint, fp(b"a"));
    assert_eq!(r.created_at, START);
    assert_eq!(
        r.expires_at,
        START.plus(Duration::from_millis(10)).plus(TTL)
    );
    // Long after the lease, a completed record is still replayed, never re-claimed.
    clock.advance(LEASE * 3);
    assert!(existing(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap()).is_completed());
}

/// Another fingerprint never claims, neither while in flight nor after the lease.
pub async fn other_fingerprint_never_claims<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, clock) = setup(f).await;
    let k = key("t1", "k1");
    claimed(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    assert_eq!(
        existing(store.claim(&k, fp(b"b"), LEASE, TTL).await.unwrap()).fingerprint,
        fp(b"a")
    );
    clock.advance(LEASE * 2);
    assert_eq!(
        existing(store.claim(&k, fp(b"b"), LEASE, TTL).await.unwrap()).fingerprint,
        fp(b"a")
    );
}

/// After the lease a takeover gets a new token; the old token is refused everywhere.
pub async fn takeover_fences_stale_holder<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, clock) = setup(f).await;
    let k = key("t1", "k1");
    let old = claimed(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    clock.advance(LEASE - Duration::from_millis(1));
    existing(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    clock.advance(Duration::from_millis(1));
    let new = match store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap() {
        ClaimOutcome::Claimed {
            token,
            takeover,
            lease_expires_at,
        } => {
            assert!(takeover, "a claim over an expired lease is a takeover");
            assert_eq!(lease_expires_at, START.plus(LEASE).plus(LEASE));
            token
        }
        other => panic!("expected takeover, got {other:?}"),
    };
    assert_ne!(old, new);
    let refused = Err(StoreError::Refused(Refusal::StaleToken));
    assert_eq!(
        store.complete(&k, old, response("stale"), TTL).await,
        refused
    );
    assert_eq!(store.release(&k, old).await, refused);
    assert_eq!(store.renew(&k, old, LEASE).await.map(|_| ()), refused);
    store.complete(&k, new, response("new"), TTL).await.unwrap();
    let r = store.get(&k).await.unwrap().unwrap();
    assert_eq!(
        r.state,
        RecordState::Completed {
            response: response("new")
        }
    );
    assert_eq!(
        store.complete(&k, new, response("again"), TTL).await,
        Err(StoreError::Refused(Refusal::AlreadyCompleted))
    );
}

/// Release deletes the record: a retry claims again; the released token is dead.
pub async fn release_frees_the_key<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, _clock) = setup(f).await;
    let k = key("t1", "k1");
    let t1 = claimed(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    store.release(&k, t1).await.unwrap();
    assert_eq!(store.get(&k).await.unwrap(), None);
    assert_eq!(
        store.release(&k, t1).await,
        Err(StoreError::Refused(Refusal::Missing))
    );
    // After a release any fingerprint may claim: nothing executed under the old one.
    let t2 = claimed(store.claim(&k, fp(b"b"), LEASE, TTL).await.unwrap());
    assert_eq!(
        store.complete(&k, t1, response("x"), TTL).await,
        Err(StoreError::Refused(Refusal::StaleToken))
    );
    store.complete(&k, t2, response("y"), TTL).await.unwrap();
}

/// Renewal extends the lease so a live holder is not taken over.
pub async fn renew_extends_the_lease<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, clock) = setup(f).await;
    let k = key("t1", "k1");
    let t = claimed(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    clock.advance(LEASE / 2);
    let until = store.renew(&k, t, LEASE).await.unwrap();
    assert_eq!(until, START.plus(LEASE / 2).plus(LEASE));
    clock.advance(LEASE / 2 + Duration::from_millis(10));
    existing(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    clock.advance(LEASE);
    claimed(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
}

/// A holder that keeps renewing outlives the record's TTL: the record never expires under a
/// live lease, so no duplicate can claim it afresh beside the holder.
pub async fn renewal_outlives_the_ttl<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, clock) = setup(f).await;
    let k = key("t1", "k1");
    let t = claimed(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    for _ in 0..(2 * TTL.as_millis() / (LEASE / 2).as_millis()) {
        clock.advance(LEASE / 2);
        store.renew(&k, t, LEASE).await.unwrap();
        existing(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    }
    let r = store
        .get(&k)
        .await
        .unwrap()
        .expect("still live after twice its TTL");
    assert!(r.expires_at >= clock_now(&clock).plus(LEASE / 2));
    store.complete(&k, t, response("late"), TTL).await.unwrap();
}

/// TTL expiry frees a key in any state, before any purge runs.
pub async fn ttl_expiry_frees_the_key<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, clock) = setup(f).await;
    let k = key("t1", "k1");
    let t = claimed(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    store.complete(&k, t, response("done"), TTL).await.unwrap();
    clock.advance(TTL - Duration::from_millis(1));
    assert!(store.get(&k).await.unwrap().is_some());
    clock.advance(Duration::from_millis(1));
    assert_eq!(store.get(&k).await.unwrap(), None);
    // Expired: even another fingerprint claims, as a fresh record.
    match store.claim(&k, fp(b"b"), LEASE, TTL).await.unwrap() {
        ClaimOutcome::Claimed { takeover, .. } => assert!(!takeover),
        other => panic!("expected a fresh claim, got {other:?}"),
    }
    assert_eq!(
        store.get(&k).await.unwrap().unwrap().created_at,
        clock_now(&clock)
    );
}

fn clock_now(c: &ManualClock) -> Timestamp {
    oncely_core::Clock::now(c)
}

/// Purge removes expired records in bounded batches and never touches live ones.
pub async fn purge_in_batches<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, clock) = setup(f).await;
    for i in 0..25 {
        let k = key("t1", &format!("old-{i}"));
        let t = claimed(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
        if i % 2 == 0 {
            store.complete(&k, t, response("x"), TTL).await.unwrap();
        }
    }
    clock.advance(TTL);
    let live = key("t1", "live");
    claimed(store.claim(&live, fp(b"a"), LEASE, TTL).await.unwrap());
    assert_eq!(store.purge_expired(10).await.unwrap(), 10);
    assert_eq!(store.purge_expired(10).await.unwrap(), 10);
    assert_eq!(store.purge_expired(10).await.unwrap(), 5);
    assert_eq!(store.purge_expired(10).await.unwrap(), 0);
    assert!(store.get(&live).await.unwrap().is_some());
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.in_progress, stats.completed), (1, 0));
}

/// Large and binary bodies come back byte for byte.
pub async fn large_and_binary_bodies_round_trip<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, _clock) = setup(f).await;
    let big: Vec<u8> = (0..(1 << 20))
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let bodies = [
        Bytes::from(big),
        Bytes::from_static(&[0, 159, 146, 150, 0xff, 0]),
        Bytes::new(),
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        let k = key("t1", &format!("body-{i}"));
        let t = claimed(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
        store
            .complete(&k, t, response(body.clone()), TTL)
            .await
            .unwrap();
        let r = store.get(&k).await.unwrap().unwrap();
        assert_eq!(
            r.state,
            RecordState::Completed {
                response: response(body)
            }
        );
    }
}

/// The same key in two scopes names two records.
pub async fn scopes_are_isolated<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, _clock) = setup(f).await;
    let a = key("tenant-a", "shared");
    let b = key("tenant-b", "shared");
    let mut c = a.clone();
    c.scope.route = "/payments".into();
    let mut d = a.clone();
    d.scope.method = "PATCH".into();
    let ta = claimed(store.claim(&a, fp(b"a"), LEASE, TTL).await.unwrap());
    for k in [&b, &c, &d] {
        claimed(store.claim(k, fp(b"a"), LEASE, TTL).await.unwrap());
    }
    store
        .complete(&a, ta, response("for a"), TTL)
        .await
        .unwrap();
    assert!(!store.get(&b).await.unwrap().unwrap().is_completed());
}

/// A clock stepped backwards never frees a key early nor loses a completion.
pub async fn clock_stepping_backwards_is_safe<S: StoreAdmin, F: Factory<S>>(f: &F) {
    let (store, clock) = setup(f).await;
    let k = key("t1", "k1");
    let t = claimed(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    clock.rewind(Duration::from_secs(3600));
    existing(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    store.complete(&k, t, response("done"), TTL).await.unwrap();
    clock.advance(Duration::from_secs(3600));
    assert!(store.get(&k).await.unwrap().unwrap().is_completed());
}

/// Random interleavings of every operation and of clock jumps, compared step by step with
/// the pure transitions of `oncely_core::record`.
pub async fn matches_the_model_under_random_operations<S: StoreAdmin, F: Factory<S>>(f: &F) {
    for seed in 0..12u64 {
        let (store, clock) = setup(f).await;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let keys = [key("t1", "a"), key("t1", "b"), key("t2", "a")];
        let fps = [fp(b"x"), fp(b"y")];
        let mut model: HashMap<RecordKey, Record> = HashMap::new();
        let mut tokens: Vec<LeaseToken> = vec![LeaseToken(7)];
        for step in 0..150 {
            let k = &keys[rng.random_range(0..keys.len())];
            let now = clock_now(&clock);
            let ctx = format!("seed {seed} step {step}");
            match rng.random_range(0..10) {
                0..=2 => {
                    let f = fps[rng.random_range(0..2)];
                    let got = store.claim(k, f, LEASE, TTL).await.unwrap();
                    let token = match &got {
                        ClaimOutcome::Claimed { token, .. } => *token,
                        ClaimOutcome::Exists(_) => LeaseToken(0),
                    };
                    let req = ClaimRequest {
                        fingerprint: f,
                        now,
                        lease: LEASE,
                        ttl: TTL,
                        token,
                    };
                    let (write, want) = record::claim(model.get(k), &req);
                    assert_eq!(got, want, "{ctx}: claim");
                    if let Some(r) = write {
                        model.insert(k.clone(), r);
                        tokens.push(token);
                    }
                }
                3 | 4 => {
                    let t = tokens[rng.random_range(0..tokens.len())];
                    let body = format!("r{step}");
                    let got = store.complete(k, t, response(body.clone()), TTL).await;
                    let want = record::complete(model.get(k), t, response(body), now, TTL);
                    match want {
                        Ok(r) => {
                            assert_eq!(got, Ok(()), "{ctx}: complete");
                            model.insert(k.clone(), r);
                        }
                        Err(e) => assert_eq!(got, Err(StoreError::Refused(e)), "{ctx}: complete"),
                    }
                }
                5 => {
                    let t = tokens[rng.random_range(0..tokens.len())];
                    let got = store.release(k, t).await;
                    match record::release(model.get(k), t, now) {
                        Ok(()) => {
                            assert_eq!(got, Ok(()), "{ctx}: release");
                            model.remove(k);
                        }
                        Err(e) => assert_eq!(got, Err(StoreError::Refused(e)), "{ctx}: release"),
                    }
                }
                6 => {
                    let t = tokens[rng.random_range(0..tokens.len())];
                    let got = store.renew(k, t, LEASE).await;
                    match record::renew(model.get(k), t, now, LEASE) {
                        Ok(r) => {
                            assert_eq!(got, Ok(now.plus(LEASE)), "{ctx}: renew");
                            model.insert(k.clone(), r);
                        }
                        Err(e) => assert_eq!(got, Err(StoreError::Refused(e)), "{ctx}: renew"),
                    }
                }
                7 => {
                    let got = store.get(k).await.unwrap();
                    let want = model.get(k).filter(|r| !r.is_expired(now)).cloned();
                    assert_eq!(got, want, "{ctx}: get");
                }
                8 => clock.advance(Duration::from_millis(rng.random_range(0..200))),
                _ => {
                    if rng.random_bool(0.2) {
                        clock.rewind(Duration::from_millis(rng.random_range(0..150)));
                    } else {
                        let purged = store.purge_expired(100).await.unwrap();
                        let before = model.len();
                        model.retain(|_, r| !r.is_expired(now));
                        assert_eq!(purged, (before - model.len()) as u64, "{ctx}: purge");
                    }
                }
            }
        }
    }
}

/// Two gateways on one shared store (`handle` opens another handle on the same database or
/// prefix), both on the server's clock: one winner among claims spread over both; a live
/// lease is never taken over early, an expired one is, in real time, and the first holder is
/// fenced off.
pub async fn shared_store_leases_run_on_the_server_clock<S, F, Fut>(handle: F)
where
    S: StoreAdmin,
    F: Fn(TimeSource) -> Fut,
    Fut: Future<Output = S>,
{
    let a = Arc::new(handle(TimeSource::Server).await);
    let b = Arc::new(handle(TimeSource::Server).await);
    let (ttl, lease) = (Duration::from_secs(60), Duration::from_millis(400));
    let k = key("t1", "race");
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            store
                .claim(&k, fp(b"{}"), Duration::from_secs(30), ttl)
                .await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if let ClaimOutcome::Claimed { .. } = t.await.expect("task").expect("claim") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1, "one winner across both gateways");

    let k = key("t1", "lease");
    let old = claimed(a.claim(&k, fp(b"x"), lease, ttl).await.unwrap());
    existing(b.claim(&k, fp(b"x"), lease, ttl).await.unwrap());
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let new = match b.claim(&k, fp(b"x"), lease, ttl).await.unwrap() {
        ClaimOutcome::Claimed {
            token, takeover, ..
        } => {
            assert!(takeover, "an expired lease is taken over");
            token
        }
        other => panic!("an expired lease must be taken over, got {other:?}"),
    };
    let stale = Err(StoreError::Refused(Refusal::StaleToken));
    assert_eq!(a.complete(&k, old, response("stale"), ttl).await, stale);
    assert_eq!(a.release(&k, old).await, stale);
    assert_eq!(a.renew(&k, old, lease).await.map(|_| ()), stale);
    a.complete(&k, new, response("new"), ttl)
        .await
        .expect("the successor's token works from any gateway");
    assert!(b.get(&k).await.unwrap().unwrap().is_completed());
}

/// Whose clock rules a shared store: two gateways whose clocks are an hour apart. Judged by
/// their own clocks, the one running ahead claims a key whose holder is alive (the failure
/// the server's clock exists to prevent); on the server's clock they agree.
pub async fn skewed_gateway_clocks_agree_on_the_server_clock<S, F, Fut>(handle: F)
where
    S: StoreAdmin,
    F: Fn(TimeSource) -> Fut,
    Fut: Future<Output = S>,
{
    let (lease, ttl) = (Duration::from_secs(30), Duration::from_secs(24 * 3600));
    let real = oncely_core::Clock::now(&oncely_core::SystemClock);
    let hour = Duration::from_secs(3600);
    let ahead = ManualClock::new(real.plus(hour));
    let behind = ManualClock::new(Timestamp(real.as_millis() - 3_600_000));
    let slow_gw = handle(TimeSource::Local(Arc::new(behind))).await;
    let fast_gw = handle(TimeSource::Local(Arc::new(ahead))).await;
    let k = key("t1", "skew-local");
    claimed(slow_gw.claim(&k, fp(b"x"), lease, ttl).await.unwrap());
    assert!(
        matches!(
            fast_gw.claim(&k, fp(b"x"), lease, ttl).await.unwrap(),
            ClaimOutcome::Claimed { .. }
        ),
        "on local clocks the gateway an hour ahead misjudges a live lease"
    );

    let g1 = handle(TimeSource::Server).await;
    let g2 = handle(TimeSource::Server).await;
    let k = key("t1", "skew-server");
    let token = claimed(g1.claim(&k, fp(b"x"), lease, ttl).await.unwrap());
    existing(g2.claim(&k, fp(b"x"), lease, ttl).await.unwrap());
    g1.complete(&k, token, response("done"), ttl).await.unwrap();
    assert!(g2.get(&k).await.unwrap().unwrap().is_completed());
}

/// A shared store measures a lease on its server's clock: the lease a claim grants ends
/// `lease` after the server's now (read by `server_now_ms` before and after the claim), not
/// after the gateway's.
pub async fn leases_are_measured_on_the_server_clock<S, F, Fut, N, NFut>(
    handle: F,
    server_now_ms: N,
) where
    S: StoreAdmin,
    F: Fn(TimeSource) -> Fut,
    Fut: Future<Output = S>,
    N: Fn() -> NFut,
    NFut: Future<Output = i64>,
{
    let store = handle(TimeSource::Server).await;
    let lease = Duration::from_millis(400);
    let before = server_now_ms().await;
    let ClaimOutcome::Claimed {
        lease_expires_at, ..
    } = store
        .claim(&key("t1", "k"), fp(b"x"), lease, Duration::from_secs(60))
        .await
        .unwrap()
    else {
        panic!("a fresh key is claimed")
    };
    let after = server_now_ms().await;
    let lease_ms = lease.as_millis() as i64;
    assert!(
        (before + lease_ms..=after + lease_ms).contains(&lease_expires_at.as_millis()),
        "the lease ends {lease_ms} ms after the server's now"
    );
}

/// A request in flight that an older build stored with `fingerprint` under `key`, read back
/// after the store adopted the old schema: the record is there, still in progress, and its
/// lease still fences a retry of the same request.
pub async fn assert_adopted_in_flight<S: IdempotencyStore>(
    store: &S,
    key: &RecordKey,
    fingerprint: Fingerprint,
) {
    let record = store
        .get(key)
        .await
        .unwrap()
        .expect("the old record is kept");
    assert_eq!(record.fingerprint, fingerprint);
    assert!(matches!(record.state, RecordState::InProgress { .. }));
    assert!(matches!(
        store.claim(key, fingerprint, LEASE, TTL).await.unwrap(),
        ClaimOutcome::Exists(_)
    ));
}

/// A shared store whose server is not there: `connect` (given the timeout to use) must fail
/// as [`StoreError::Unavailable`] within a few times that timeout, never hang, so a gateway
/// starting during an outage says why instead of waiting forever.
pub async fn an_absent_server_is_unavailable_within_the_timeout<S, Fut>(
    connect: impl FnOnce(Duration) -> Fut,
) where
    Fut: Future<Output = crate::StoreResult<S>>,
{
    let timeout = Duration::from_millis(500);
    let started = std::time::Instant::now();
    match connect(timeout).await {
        Err(StoreError::Unavailable(_)) => {}
        Err(e) => panic!("expected unavailable, got {e}"),
        Ok(_) => panic!("nothing should have answered"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the timeout"
    );
}

/// Expands to one test per conformance case for the store built by `$factory`, a
/// `Fn(ManualClock) -> impl Future<Output = impl StoreAdmin>`.
///
/// For a backend on an external service, `conformance_tests!(if $available => $factory)`
/// runs each case only when `$available` (an expression taking the case's name as `&str`
/// and returning `bool`) says the service is there; the guard decides how a skip is
/// reported. A store that many gateways share (PostgreSQL, Redis) adds
/// `, shared: $space => $open, server_now: $now`: `$space` makes a fresh key space for one
/// case, `space.$open(time_source)` a gateway's handle on it, and `$now()` reads the server's
/// clock in milliseconds, for the cases where handles must agree on the server's clock.
#[macro_export]
macro_rules! conformance_tests {
    (if $available:expr => $factory:expr, shared: $space:expr => $open:ident, server_now: $now:path) => {
        $crate::conformance_tests!(@all $available; $factory);
        $crate::conformance_tests!(@shared $available; $space; $open;
            shared_store_leases_run_on_the_server_clock,
            skewed_gateway_clocks_agree_on_the_server_clock,
        );
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn leases_are_measured_on_the_server_clock() {
            if ($available)("leases_are_measured_on_the_server_clock") {
                let space = $space;
                $crate::conformance::leases_are_measured_on_the_server_clock(
                    |time| space.$open(time),
                    $now,
                )
                .await;
            }
        }
    };
    (if $available:expr => $factory:expr) => {
        $crate::conformance_tests!(@all $available; $factory);
    };
    ($factory:expr) => {
        $crate::conformance_tests!(@all |_: &str| true; $factory);
    };
    (@all $available:expr; $factory:expr) => {
        $crate::conformance_tests!(@cases $available; $factory;
            one_winner_among_concurrent_claims,
            duplicate_sees_progress_then_replay,
            other_fingerprint_never_claims,
            takeover_fences_stale_holder,
            release_frees_the_key,
            renew_extends_the_lease,
            renewal_outlives_the_ttl,
            ttl_expiry_frees_the_key,
            purge_in_batches,
            large_and_binary_bodies_round_trip,
            scopes_are_isolated,
            clock_stepping_backwards_is_safe,
            matches_the_model_under_random_operations,
            evict_and_list_in_progress,
        );
    };
    // A store shared by several handles (gateways): `$space` makes a fresh key space (a
    // schema, a prefix) kept for the whole case, `space.$open(time)` a handle on it.
    (@shared $available:expr; $space:expr; $open:ident; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if ($available)(stringify!($case)) {
                    let space = $space;
                    $crate::conformance::$case(|time| space.$open(time)).await;
                }
            }
        )*
    };
    (@cases $available:expr; $factory:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                if ($available)(stringify!($case)) {
                    $crate::conformance::$case(&$factory).await;
                }
            }
        )*
    };
}
