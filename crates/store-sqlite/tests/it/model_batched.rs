//! The pure model again, but with writes from many tasks at once, so that they share
//! group-commit batches: refused, failed and successful ops of different keys interleave
//! inside one transaction, each under its own savepoint. Every key is driven by one task,
//! so its history is sequential and the model for it is exact; the clock only moves
//! between rounds, when no op is in flight.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::record::{self, ClaimRequest};
use oncely_core::{ClaimOutcome, Clock, LeaseToken, ManualClock, Record, RecordKey, Timestamp};
use oncely_store::conformance::{fp, key, response, LEASE, TTL};
use oncely_store::{IdempotencyStore, StoreAdmin, StoreError};

/// splitmix64: enough randomness for op choice, reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct KeyModel {
    key: RecordKey,
    record: Option<Record>,
    tokens: Vec<LeaseToken>,
}

async fn drive(
    store: Arc<crate::common::TempStore>,
    mut m: KeyModel,
    now: Timestamp,
    seed: u64,
    ops: usize,
) -> KeyModel {
    let mut rng = Rng(seed);
    let fps = [fp(b"x"), fp(b"y")];
    for step in 0..ops {
        let ctx = format!("seed {seed} step {step} {}", m.key);
        let pick = |rng: &mut Rng, tokens: &[LeaseToken]| {
            tokens[usize::try_from(rng.below(tokens.len() as u64)).unwrap()]
        };
        match rng.below(8) {
            0..=2 => {
                let f = fps[usize::try_from(rng.below(2)).unwrap()];
                let got = store.claim(&m.key, f, LEASE, TTL).await.unwrap();
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
                let (write, want) = record::claim(m.record.as_ref(), &req);
                assert_eq!(got, want, "{ctx}: claim");
                if let Some(r) = write {
                    m.record = Some(r);
                    m.tokens.push(token);
                }
            }
            3 => {
                let t = pick(&mut rng, &m.tokens);
                let body = ctx.clone();
                let got = store.complete(&m.key, t, response(body.clone()), TTL).await;
                match record::complete(m.record.as_ref(), t, response(body), now, TTL) {
                    Ok(r) => {
                        assert_eq!(got, Ok(()), "{ctx}: complete");
                        m.record = Some(r);
                    }
                    Err(e) => assert_eq!(got, Err(StoreError::Refused(e)), "{ctx}: complete"),
                }
            }
            4 => {
                let t = pick(&mut rng, &m.tokens);
                let got = store.release(&m.key, t).await;
                match record::release(m.record.as_ref(), t, now) {
                    Ok(()) => {
                        assert_eq!(got, Ok(()), "{ctx}: release");
                        m.record = None;
                    }
                    Err(e) => assert_eq!(got, Err(StoreError::Refused(e)), "{ctx}: release"),
                }
            }
            5 => {
                let t = pick(&mut rng, &m.tokens);
                let got = store.renew(&m.key, t, LEASE).await;
                match record::renew(m.record.as_ref(), t, now, LEASE) {
                    Ok(r) => {
                        assert_eq!(got, Ok(now.plus(LEASE)), "{ctx}: renew");
                        m.record = Some(r);
                    }
                    Err(e) => assert_eq!(got, Err(StoreError::Refused(e)), "{ctx}: renew"),
                }
            }
            _ => {
                let got = store.get(&m.key).await.unwrap();
                let want = m.record.clone().filter(|r| !r.is_expired(now));
                assert_eq!(got, want, "{ctx}: get");
            }
        }
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_keys_match_the_model_through_shared_batches() {
    const KEYS: usize = 24;
    for seed in 0..4u64 {
        let clock = ManualClock::new(Timestamp(1_700_000_000_000));
        let store = Arc::new(crate::common::temp_store(clock.clone()));
        let mut models: Vec<KeyModel> = (0..KEYS)
            .map(|i| KeyModel {
                key: key(&format!("t{}", i % 3), &format!("k{i}")),
                record: None,
                // A token no claim ever mints, so refusals of strangers are exercised too.
                tokens: vec![LeaseToken(7)],
            })
            .collect();
        let mut rng = Rng(seed ^ 0xdead_beef);
        let batches_before = store.store.committed_batches();
        let mut writes_hint = 0u64;
        for round in 0..25u64 {
            let now = clock.now();
            let mut tasks = Vec::new();
            for (i, m) in models.into_iter().enumerate() {
                let store = store.clone();
                let s = seed * 1_000_003 + round * 1_009 + i as u64;
                tasks.push(tokio::spawn(drive(store, m, now, s, 6)));
            }
            models = Vec::with_capacity(KEYS);
            for t in tasks {
                models.push(t.await.unwrap());
            }
            writes_hint += (KEYS * 6) as u64;
            match rng.below(5) {
                0 => clock.rewind(Duration::from_millis(rng.below(150))),
                1 => {
                    let now = clock.now();
                    let purged = store.purge_expired(1000).await.unwrap();
                    let mut expected = 0;
                    for m in &mut models {
                        if m.record.as_ref().is_some_and(|r| r.is_expired(now)) {
                            m.record = None;
                            expected += 1;
                        }
                    }
                    assert_eq!(purged, expected, "seed {seed} round {round}: purge");
                }
                _ => clock.advance(Duration::from_millis(rng.below(250))),
            }
        }
        let batches = store.store.committed_batches() - batches_before;
        println!("seed {seed}: about {writes_hint} ops (5/8 writes), {batches} transactions");
    }
}
