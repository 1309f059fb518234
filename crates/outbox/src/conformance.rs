//! The suite every outbox backend passes (feature `conformance`). A backend's tests give it
//! a [`Fixture`]: the store, and a way to enqueue in committed and rolled-back
//! transactions of the backend's own kind.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{EventId, Failure, NewEvent, OutboxStore, Settled};

/// What the suite needs from a backend.
#[async_trait]
pub trait Fixture: Send + Sync + 'static {
    /// The store under test, on an empty outbox.
    fn store(&self) -> Arc<dyn OutboxStore>;
    /// Enqueues `events` in one transaction that commits.
    async fn commit(&self, events: Vec<NewEvent>) -> Vec<EventId>;
    /// Enqueues `events` in one transaction that rolls back.
    async fn roll_back(&self, events: Vec<NewEvent>);
}

fn event(aggregate: &str, n: u32) -> NewEvent {
    NewEvent::new(
        "order",
        aggregate,
        "order.changed",
        serde_json::json!({ "n": n }),
    )
    .with_header(
        "traceparent",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
}

const LEASE: Duration = Duration::from_secs(30);

fn no_retry_for(d: Duration, dead_after: u32) -> Failure {
    Failure {
        error: "broker said no".into(),
        retry_in: d,
        dead_after,
    }
}

/// Committed events are claimed with everything they carry; rolled-back ones never exist.
pub async fn committed_events_are_claimed_and_rolled_back_ones_never(f: &impl Fixture) {
    let store = f.store();
    f.roll_back(vec![event("ghost", 1)]).await;
    let ids = f.commit(vec![event("a", 1)]).await;
    let claims = store.claim(10, LEASE).await.unwrap();
    assert_eq!(claims.len(), 1, "only the committed event: {claims:?}");
    let e = &claims[0].event;
    assert_eq!(e.id, ids[0]);
    assert_eq!(
        (e.aggregate_type.as_str(), e.aggregate_id.as_str()),
        ("order", "a")
    );
    assert_eq!(e.event_type, "order.changed");
    assert_eq!(e.payload, serde_json::json!({ "n": 1 }));
    assert_eq!(e.sequence, 1);
    assert_eq!(e.attempts, 1);
    assert_eq!(
        e.headers.get("traceparent").map(String::as_str),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert!(
        store.claim(10, LEASE).await.unwrap().is_empty(),
        "held by the lease"
    );
    assert_eq!(
        store.delivered(e.id, claims[0].token).await.unwrap(),
        Settled::Delivered
    );
    assert!(store.claim(10, LEASE).await.unwrap().is_empty());
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 1, 0));
}

/// One aggregate's events go one at a time, in sequence; other aggregates go alongside.
pub async fn each_aggregate_in_order_one_at_a_time(f: &impl Fixture) {
    let store = f.store();
    f.commit(vec![event("x", 1), event("x", 2)]).await;
    f.commit(vec![event("y", 1)]).await;
    f.commit(vec![event("x", 3)]).await;
    let claims = store.claim(10, LEASE).await.unwrap();
    // Across aggregates there is no order to keep (ids made in one millisecond sort at
    // random), so the heads are compared as a set.
    let mut heads: Vec<(String, i64)> = claims
        .iter()
        .map(|c| (c.event.aggregate_id.clone(), c.event.sequence))
        .collect();
    heads.sort();
    assert_eq!(
        heads,
        vec![("x".into(), 1), ("y".into(), 1)],
        "the heads only"
    );
    for c in &claims {
        store.delivered(c.event.id, c.token).await.unwrap();
    }
    let next = store.claim(10, LEASE).await.unwrap();
    assert_eq!(next.len(), 1);
    assert_eq!(
        (next[0].event.aggregate_id.as_str(), next[0].event.sequence),
        ("x", 2)
    );
    // A failed head holds its aggregate back until it is delivered.
    let failed = store
        .failed(
            next[0].event.id,
            next[0].token,
            &no_retry_for(Duration::ZERO, 10),
        )
        .await
        .unwrap();
    assert_eq!(failed, Settled::WillRetry);
    let again = store.claim(10, LEASE).await.unwrap();
    assert_eq!(again.len(), 1, "x2 again, and not x3: {again:?}");
    assert_eq!(again[0].event.sequence, 2);
    assert_eq!(again[0].event.attempts, 2);
    assert_eq!(again[0].event.last_error.as_deref(), Some("broker said no"));
    store
        .delivered(again[0].event.id, again[0].token)
        .await
        .unwrap();
    let last = store.claim(10, LEASE).await.unwrap();
    assert_eq!(last[0].event.sequence, 3);
}

/// A relay whose lease ran out loses its event to the next claim, and its late
/// confirmation is refused.
pub async fn an_expired_lease_is_taken_over_and_fenced(f: &impl Fixture) {
    let store = f.store();
    f.commit(vec![event("l", 1)]).await;
    let first = store.claim(1, Duration::from_millis(100)).await.unwrap();
    assert_eq!(first.len(), 1);
    assert!(store.claim(1, LEASE).await.unwrap().is_empty());
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = store.claim(1, LEASE).await.unwrap();
    assert_eq!(second.len(), 1, "taken over after the lease");
    assert_eq!(second[0].event.id, first[0].event.id);
    assert_eq!(second[0].event.attempts, 2);
    assert_ne!(second[0].token, first[0].token);
    let id = first[0].event.id;
    assert_eq!(
        store.delivered(id, first[0].token).await.unwrap(),
        Settled::LeaseLost
    );
    assert_eq!(
        store
            .failed(id, first[0].token, &no_retry_for(Duration::ZERO, 1))
            .await
            .unwrap(),
        Settled::LeaseLost,
        "a stale relay cannot dead-letter it either"
    );
    assert_eq!(
        store.delivered(id, second[0].token).await.unwrap(),
        Settled::Delivered
    );
    assert_eq!(
        store.delivered(id, second[0].token).await.unwrap(),
        Settled::LeaseLost,
        "delivered once"
    );
}

/// Settling a batch at once answers each entry as settling it alone would: live tokens are
/// delivered, a stale token and an event delivered already are refused, a repeated entry is
/// delivered once.
pub async fn delivered_all_answers_each_entry_like_delivered(f: &impl Fixture) {
    let store = f.store();
    assert_eq!(
        store.delivered_all(&[]).await.unwrap(),
        Vec::new(),
        "nothing to settle"
    );
    f.commit(vec![event("stale", 1)]).await;
    let stale = store.claim(1, Duration::from_millis(100)).await.unwrap();
    assert_eq!(stale.len(), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    f.commit(vec![event("b1", 1), event("b2", 1), event("done", 1)])
        .await;
    let claims = store.claim(10, LEASE).await.unwrap();
    assert_eq!(claims.len(), 4, "the stale one taken over, and three new");
    let token_of = |aggregate: &str| {
        let c = claims
            .iter()
            .find(|c| c.event.aggregate_id == aggregate)
            .unwrap();
        (c.event.id, c.token)
    };
    let (b1, b2, done, live) = (
        token_of("b1"),
        token_of("b2"),
        token_of("done"),
        token_of("stale"),
    );
    assert_eq!(live.0, stale[0].event.id);
    assert_eq!(
        store.delivered(done.0, done.1).await.unwrap(),
        Settled::Delivered
    );
    let stale_entry = (stale[0].event.id, stale[0].token);
    assert_eq!(
        store
            .delivered_all(&[b1, stale_entry, done, b2, b1])
            .await
            .unwrap(),
        vec![
            Settled::Delivered,
            Settled::LeaseLost,
            Settled::LeaseLost,
            Settled::Delivered,
            Settled::LeaseLost,
        ],
        "b1, the stale token, done already, b2, b1 again"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.delivered, stats.dead),
        (1, 3, 0),
        "the stale entry left its event to the live lease"
    );
    assert_eq!(
        store.delivered_all(&[stale_entry, live]).await.unwrap(),
        vec![Settled::LeaseLost, Settled::Delivered],
        "the live token settles it, in the same batch as the stale one"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.delivered, stats.dead), (0, 4, 0));
    assert!(store.claim(10, LEASE).await.unwrap().is_empty());
}

/// Failures wait for their retry time, become dead letters after the allowed attempts, hold
/// their aggregate back, and come back when retried.
pub async fn failures_wait_then_dead_letter_then_retry(f: &impl Fixture) {
    let store = f.store();
    f.commit(vec![event("d", 1), event("d", 2)]).await;
    let c = store.claim(1, LEASE).await.unwrap().remove(0);
    let retry_later = no_retry_for(Duration::from_millis(300), 2);
    assert_eq!(
        store
            .failed(c.event.id, c.token, &retry_later)
            .await
            .unwrap(),
        Settled::WillRetry
    );
    assert!(
        store.claim(5, LEASE).await.unwrap().is_empty(),
        "not before its retry time"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let c = store.claim(5, LEASE).await.unwrap().remove(0);
    assert_eq!(c.event.attempts, 2);
    assert_eq!(
        store
            .failed(c.event.id, c.token, &retry_later)
            .await
            .unwrap(),
        Settled::Dead
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store.claim(5, LEASE).await.unwrap().is_empty(),
        "d2 waits behind its dead predecessor"
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (1, 1));
    let dead = store.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, c.event.id);
    assert_eq!(dead[0].last_error.as_deref(), Some("broker said no"));
    assert!(store.retry(c.event.id).await.unwrap());
    assert!(!store.retry(c.event.id).await.unwrap(), "no longer dead");
    let back = store.claim(5, LEASE).await.unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!((back[0].event.sequence, back[0].event.attempts), (1, 1));
}

/// Purging removes delivered events only, a batch at a time.
pub async fn purge_removes_delivered_events_in_batches(f: &impl Fixture) {
    let store = f.store();
    let events: Vec<NewEvent> = (0..5).map(|i| event(&format!("p{i}"), i)).collect();
    f.commit(events).await;
    f.commit(vec![event("p0", 9)]).await;
    for c in store.claim(10, LEASE).await.unwrap() {
        store.delivered(c.event.id, c.token).await.unwrap();
    }
    assert_eq!(store.purge_delivered(2).await.unwrap(), 2);
    assert_eq!(store.purge_delivered(10).await.unwrap(), 3);
    assert_eq!(store.purge_delivered(10).await.unwrap(), 0);
    let stats = store.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.delivered),
        (1, 0),
        "p0's second event stays"
    );
    let c = store.claim(10, LEASE).await.unwrap();
    assert_eq!(
        (c[0].event.aggregate_id.as_str(), c[0].event.sequence),
        ("p0", 2)
    );
}

/// Four relays draining 400 events of 20 aggregates: each event delivered exactly once, and
/// each aggregate's events delivered in sequence.
pub async fn concurrent_relays_deliver_each_event_once_in_order(f: &impl Fixture) {
    let store = f.store();
    for batch in 0..20 {
        let events: Vec<NewEvent> = (0..20).map(|a| event(&format!("c{a}"), batch)).collect();
        f.commit(events).await;
    }
    let delivered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut relays = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (store, delivered) = (store.clone(), delivered.clone());
        relays.spawn(async move {
            let mut idle = 0;
            while idle < 5 {
                let claims = store.claim(7, LEASE).await.unwrap();
                if claims.is_empty() {
                    idle += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                idle = 0;
                for c in claims {
                    // Recorded before settling: the settle is what lets the next in line go.
                    delivered.lock().unwrap().push((
                        c.event.aggregate_id.clone(),
                        c.event.sequence,
                        c.event.id,
                    ));
                    assert_eq!(
                        store.delivered(c.event.id, c.token).await.unwrap(),
                        Settled::Delivered
                    );
                }
            }
        });
    }
    while let Some(r) = relays.join_next().await {
        r.unwrap();
    }
    let delivered = delivered.lock().unwrap().clone();
    assert_eq!(delivered.len(), 400);
    let ids: HashSet<EventId> = delivered.iter().map(|d| d.2).collect();
    assert_eq!(ids.len(), 400, "each event once");
    let mut per_aggregate: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (aggregate, seq, _) in delivered {
        per_aggregate.entry(aggregate).or_default().push(seq);
    }
    for (aggregate, seqs) in per_aggregate {
        assert_eq!(seqs, (1..=20).collect::<Vec<_>>(), "{aggregate} in order");
    }
}

/// Runs every check of the suite against fixtures `make` returns, one fresh outbox each.
pub async fn run_all<F: Fixture, Fut: std::future::Future<Output = F>>(make: impl Fn() -> Fut) {
    committed_events_are_claimed_and_rolled_back_ones_never(&make().await).await;
    each_aggregate_in_order_one_at_a_time(&make().await).await;
    an_expired_lease_is_taken_over_and_fenced(&make().await).await;
    delivered_all_answers_each_entry_like_delivered(&make().await).await;
    failures_wait_then_dead_letter_then_retry(&make().await).await;
    purge_removes_delivered_events_in_batches(&make().await).await;
    concurrent_relays_deliver_each_event_once_in_order(&make().await).await;
}
