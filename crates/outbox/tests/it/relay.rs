//! The relay against a publisher of the test's own that records what reaches it, on both
//! databases: flaky publishes retried until every event is through in per-aggregate order, a
//! relay that dies mid-batch replaced by another (duplicates, nothing lost), and dead
//! letters after the allowed attempts.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oncely_outbox::conformance::Fixture;
use oncely_outbox::relay::Pass;
use oncely_outbox::{EventId, NewEvent, OutboxEvent, PublishError, Publisher, Relay, RelayConfig};
use oncely_testkit::services::Service;

/// Records every publish that succeeded, in order; fails an event's first `fail_first`
/// attempts when its payload says `flaky`; hangs forever when `hang` is set (a relay that
/// died after publishing, before it settled).
#[derive(Default)]
struct Recorder {
    published: Mutex<Vec<(String, i64, EventId)>>,
    attempts: Mutex<HashMap<EventId, u32>>,
    fail_first: u32,
    always_fail: bool,
    hang: bool,
    /// Each publish takes this long.
    delay: Duration,
    /// Publishes under way, per aggregate and in all, and the most seen at once.
    in_flight: Mutex<(HashMap<String, u32>, u32)>,
    most_per_aggregate: Mutex<u32>,
    most_at_once: Mutex<u32>,
}

#[async_trait]
impl Publisher for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }
    async fn publish(&self, e: &OutboxEvent) -> Result<(), PublishError> {
        {
            let mut f = self.in_flight.lock().unwrap();
            let n = f.0.entry(e.aggregate_id.clone()).or_default();
            *n += 1;
            let n = *n;
            f.1 += 1;
            let all = f.1;
            let mut most = self.most_per_aggregate.lock().unwrap();
            *most = (*most).max(n);
            let mut most = self.most_at_once.lock().unwrap();
            *most = (*most).max(all);
        }
        tokio::time::sleep(self.delay).await;
        {
            let mut f = self.in_flight.lock().unwrap();
            *f.0.entry(e.aggregate_id.clone()).or_default() -= 1;
            f.1 -= 1;
        }
        let n = {
            let mut a = self.attempts.lock().unwrap();
            let n = a.entry(e.id).or_default();
            *n += 1;
            *n
        };
        if self.always_fail || (e.payload["flaky"] == true && n <= self.fail_first) {
            return Err(PublishError::new(format!("attempt {n} refused")));
        }
        self.published
            .lock()
            .unwrap()
            .push((e.aggregate_id.clone(), e.sequence, e.id));
        if self.hang {
            std::future::pending::<()>().await;
        }
        Ok(())
    }
}

fn quick() -> RelayConfig {
    RelayConfig {
        batch: 16,
        lease: Duration::from_secs(30),
        dead_after: 20,
        backoff_base: Duration::from_millis(1),
        backoff_cap: Duration::from_millis(20),
        poll: Duration::from_millis(20),
        passes_in_flight: 1,
    }
}

async fn enqueue_many(f: &impl Fixture, aggregates: usize, per: usize) -> Vec<EventId> {
    let mut ids = Vec::new();
    for round in 0..per {
        let events = (0..aggregates)
            .map(|a| {
                NewEvent::new(
                    "order",
                    format!("a{a}"),
                    "order.changed",
                    serde_json::json!({ "round": round, "flaky": (a + round) % 3 == 0 }),
                )
            })
            .collect();
        ids.extend(f.commit(events).await);
    }
    ids
}

async fn drain(relay: &Relay, f: &impl Fixture) -> Pass {
    let mut total = Pass::default();
    for _ in 0..10_000 {
        let p = relay.pass().await.unwrap();
        total.claimed += p.claimed;
        total.delivered += p.delivered;
        total.retrying += p.retrying;
        total.dead += p.dead;
        total.lease_lost += p.lease_lost;
        let stats = f.store().stats().await.unwrap();
        if stats.pending == 0 {
            return total;
        }
        if p.claimed == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    panic!("the outbox did not drain: {total:?}");
}

fn in_order(published: &[(String, i64, EventId)], per: usize) {
    let mut per_aggregate: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for (a, seq, id) in published {
        // Duplicates (a publish repeated after a lost lease) may repeat a sequence; the
        // first time each event got through is what must be in order.
        if seen.insert(*id) {
            per_aggregate.entry(a).or_default().push(*seq);
        }
    }
    for (a, seqs) in per_aggregate {
        assert_eq!(seqs, (1..=per as i64).collect::<Vec<_>>(), "{a} in order");
    }
}

async fn flaky_publishes_are_retried_until_all_are_through(f: impl Fixture) {
    let ids = enqueue_many(&f, 12, 8).await;
    let recorder = Arc::new(Recorder {
        fail_first: 2,
        ..Recorder::default()
    });
    let relay = Relay::new(f.store(), recorder.clone(), quick());
    let pass = drain(&relay, &f).await;
    let published = recorder.published.lock().unwrap().clone();
    let got: HashSet<EventId> = published.iter().map(|p| p.2).collect();
    assert_eq!(got, ids.iter().copied().collect(), "every event published");
    assert_eq!(
        published.len(),
        ids.len(),
        "no duplicates without a lost lease"
    );
    assert_eq!(pass.delivered, ids.len());
    assert!(
        pass.retrying >= 64,
        "a third of the events failed twice: {pass:?}"
    );
    in_order(&published, 8);
}

async fn a_relay_that_dies_mid_batch_is_replaced(f: impl Fixture) {
    let ids = enqueue_many(&f, 6, 4).await;
    let hanging = Arc::new(Recorder {
        hang: true,
        ..Recorder::default()
    });
    let short_lease = RelayConfig {
        lease: Duration::from_millis(300),
        ..quick()
    };
    let dying = Relay::new(f.store(), hanging.clone(), short_lease.clone());
    let task = tokio::spawn(async move { dying.pass().await });
    while hanging.published.lock().unwrap().len() < 6 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The relay dies after publishing its batch, before recording it.
    task.abort();
    let recorder = Arc::new(Recorder::default());
    let heir = Relay::new(f.store(), recorder.clone(), short_lease);
    let pass = drain(&heir, &f).await;
    assert_eq!(
        pass.delivered,
        ids.len(),
        "everything, the dead relay's batch included"
    );
    let first: HashSet<EventId> = hanging
        .published
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.2)
        .collect();
    let published = recorder.published.lock().unwrap().clone();
    let again: HashSet<EventId> = published.iter().map(|p| p.2).collect();
    assert_eq!(again, ids.iter().copied().collect());
    assert!(
        first.is_subset(&again),
        "at least once: the unsettled batch went out again"
    );
    in_order(&published, 4);
}

async fn events_that_always_fail_become_dead_letters(f: impl Fixture) {
    let ids = enqueue_many(&f, 3, 2).await;
    let recorder = Arc::new(Recorder {
        always_fail: true,
        ..Recorder::default()
    });
    let relay = Relay::new(
        f.store(),
        recorder,
        RelayConfig {
            dead_after: 3,
            ..quick()
        },
    );
    for _ in 0..200 {
        relay.pass().await.unwrap();
        if f.store().stats().await.unwrap().dead == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = f.store().stats().await.unwrap();
    assert_eq!(
        (stats.dead, stats.pending),
        (3, 3),
        "the heads died; their successors wait"
    );
    let dead = f.store().dead_letters(10).await.unwrap();
    assert!(dead.iter().all(|d| d.attempts == 3 && d.sequence == 1));
    assert!(dead.iter().all(|d| ids.contains(&d.id)));
}

/// `Relay::run` with four passes in flight: every event once, each aggregate in order; and a
/// stop while passes still find work returns promptly, with the passes under way settled.
async fn passes_in_flight_keep_order_and_stop_under_load(f: impl Fixture) {
    let ids = enqueue_many(&f, 40, 10).await;
    let recorder = Arc::new(Recorder {
        fail_first: 1,
        delay: Duration::from_millis(2),
        ..Recorder::default()
    });
    let config = RelayConfig {
        batch: 8,
        passes_in_flight: 4,
        ..quick()
    };
    let relay = Relay::new(f.store(), recorder.clone(), config.clone());
    let (done, finished) = tokio::sync::watch::channel(false);
    let mut delivered = 0;
    tokio::time::timeout(
        Duration::from_secs(60),
        relay.run(
            async move {
                let mut finished = finished;
                let _ = finished.wait_for(|d| *d).await;
            },
            |pass| {
                let p = pass.as_ref().unwrap();
                delivered += p.delivered;
                if delivered == ids.len() {
                    let _ = done.send(true);
                }
            },
        ),
    )
    .await
    .expect("the relay delivered everything and stopped");
    let published = recorder.published.lock().unwrap().clone();
    assert_eq!(published.len(), ids.len(), "each event once");
    in_order(&published, 10);
    assert_eq!(
        *recorder.most_per_aggregate.lock().unwrap(),
        1,
        "never two events of one aggregate in flight"
    );
    assert!(
        *recorder.most_at_once.lock().unwrap() > 8,
        "the passes overlapped (more in flight than one batch of 8)"
    );
    assert_eq!(f.store().stats().await.unwrap().pending, 0);

    // A long backlog and a slow broker: every pass finds work, and the stop still ends it.
    enqueue_many(&f, 50, 20).await;
    let slow = Arc::new(Recorder {
        delay: Duration::from_millis(20),
        ..Recorder::default()
    });
    let relay = Relay::new(f.store(), slow.clone(), config);
    let started = std::time::Instant::now();
    relay
        .run(tokio::time::sleep(Duration::from_millis(200)), |_| {})
        .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "stopped while busy, after {:?}",
        started.elapsed()
    );
    let stats = f.store().stats().await.unwrap();
    assert!(stats.pending > 0, "stopped before the backlog was done");
    assert_eq!(
        stats.delivered as usize,
        ids.len() + slow.published.lock().unwrap().len(),
        "what the stopped passes published was settled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_on_sqlite() {
    flaky_publishes_are_retried_until_all_are_through(crate::sqlite::fixture()).await;
    a_relay_that_dies_mid_batch_is_replaced(crate::sqlite::fixture()).await;
    events_that_always_fail_become_dead_letters(crate::sqlite::fixture()).await;
    passes_in_flight_keep_order_and_stop_under_load(crate::sqlite::fixture()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_on_postgres() {
    let Some(url) = Service::Postgres.available("the_relay_on_postgres") else {
        return;
    };
    flaky_publishes_are_retried_until_all_are_through(crate::postgres::fixture(&url).await).await;
    a_relay_that_dies_mid_batch_is_replaced(crate::postgres::fixture(&url).await).await;
    events_that_always_fail_become_dead_letters(crate::postgres::fixture(&url).await).await;
    passes_in_flight_keep_order_and_stop_under_load(crate::postgres::fixture(&url).await).await;
}
