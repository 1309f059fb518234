//! What the consumer tests share: a consumer's own SQLite database with an `effects` table
//! and an inbox, and a handler that applies each message once through it, able to die right
//! after a commit and before the adapter's ack.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::Timestamp;
use oncely_outbox::inbox::{sqlite as inbox, InboxError};
use oncely_outbox::{HandleError, Handler, Message, Outcome};
use tokio::sync::Notify;

/// A consumer's database.
#[derive(Clone)]
pub(crate) struct Effects {
    db: Arc<Mutex<rusqlite::Connection>>,
    _dir: Arc<tempfile::TempDir>,
}

impl Effects {
    pub(crate) fn new() -> Effects {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = rusqlite::Connection::open(dir.path().join("consumer.db")).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE effects (message_id TEXT NOT NULL, aggregate TEXT NOT NULL,
                                   sequence INTEGER NOT NULL);",
        )
        .unwrap();
        inbox::migrate(&mut conn).unwrap();
        Effects {
            db: Arc::new(Mutex::new(conn)),
            _dir: Arc::new(dir),
        }
    }

    /// A handler for the consumer `name` that dies (never returns, so the adapter never
    /// acks) right after its `crash_at`-th commit, if given.
    pub(crate) fn handler(&self, name: &str, crash_at: Option<usize>) -> Arc<EffectHandler> {
        Arc::new(EffectHandler {
            effects: self.clone(),
            consumer: name.to_owned(),
            crash_at,
            applied: AtomicUsize::new(0),
            crashed: Notify::new(),
            crashed_on: Mutex::new(None),
        })
    }

    /// Every effect: (message id, aggregate, sequence), in the order applied.
    pub(crate) fn all(&self) -> Vec<(String, String, i64)> {
        let conn = self.db.lock().unwrap();
        let mut s = conn
            .prepare("SELECT message_id, aggregate, sequence FROM effects ORDER BY rowid")
            .unwrap();
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    pub(crate) fn count(&self) -> usize {
        let conn = self.db.lock().unwrap();
        conn.query_row("SELECT count(*) FROM effects", [], |r| r.get::<_, i64>(0))
            .unwrap() as usize
    }

    /// Waits until `n` effects are applied (or `limit` passes).
    pub(crate) async fn wait_for(&self, n: usize, limit: Duration) {
        let started = std::time::Instant::now();
        while self.count() < n && started.elapsed() < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Checks that each message had its effect once and each aggregate's effects came in
    /// order 1, 2, ...; returns the number of effects.
    pub(crate) fn assert_once_in_order(&self) -> usize {
        let all = self.all();
        let mut ids: Vec<&String> = all.iter().map(|(id, _, _)| id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), all.len(), "no message applied twice");
        let mut per_aggregate: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for (_, aggregate, sequence) in &all {
            per_aggregate.entry(aggregate).or_default().push(*sequence);
        }
        for (aggregate, seqs) in per_aggregate {
            let expected: Vec<i64> = (1..=seqs.len() as i64).collect();
            assert_eq!(seqs, expected, "{aggregate} applied in order");
        }
        all.len()
    }
}

pub(crate) struct EffectHandler {
    effects: Effects,
    consumer: String,
    crash_at: Option<usize>,
    applied: AtomicUsize,
    /// Notified when the handler dies.
    pub(crate) crashed: Notify,
    /// The message it died on.
    pub(crate) crashed_on: Mutex<Option<String>>,
}

#[async_trait]
impl Handler for EffectHandler {
    async fn handle(&self, message: Message) -> Result<Outcome, HandleError> {
        let db = self.effects.db.clone();
        let consumer = self.consumer.clone();
        let id = message.id.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let mut conn = db.lock().unwrap();
            inbox::apply_once(&mut conn, &consumer, &message.id, Timestamp(0), |tx| {
                tx.execute(
                    "INSERT INTO effects (message_id, aggregate, sequence) VALUES (?1, ?2, ?3)",
                    rusqlite::params![
                        message.id,
                        message.aggregate_id,
                        message.sequence.unwrap_or(-1)
                    ],
                )
                .map_err(|e| InboxError::Unavailable(e.to_string()))
            })
        })
        .await
        .unwrap()?;
        let outcome = Outcome::from(outcome);
        if outcome == Outcome::Applied {
            let n = self.applied.fetch_add(1, Ordering::SeqCst) + 1;
            if Some(n) == self.crash_at {
                // Committed; the ack is never sent. The test drops this consumer now, as
                // the broker sees a consumer that was killed.
                *self.crashed_on.lock().unwrap() = Some(id);
                self.crashed.notify_one();
                std::future::pending::<()>().await;
            }
        }
        Ok(outcome)
    }
}

/// Commits `per` rounds of one `order.changed` event for each of `aggregates` orders named
/// `{prefix}0`, `{prefix}1`, ...
pub(crate) async fn commit_rounds(
    f: &impl oncely_outbox::conformance::Fixture,
    prefix: &str,
    aggregates: usize,
    per: usize,
) {
    for round in 0..per {
        let events = (0..aggregates)
            .map(|a| {
                oncely_outbox::NewEvent::new(
                    "order",
                    format!("{prefix}{a}"),
                    "order.changed",
                    serde_json::json!({ "round": round }),
                )
            })
            .collect();
        f.commit(events).await;
    }
}

/// A relay running in the background, retrying quickly and never giving up, until stopped.
pub(crate) struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    pub(crate) fn start(
        store: Arc<dyn oncely_outbox::OutboxStore>,
        publisher: Arc<dyn oncely_outbox::Publisher>,
    ) -> Running {
        let relay = oncely_outbox::Relay::new(
            store,
            publisher,
            oncely_outbox::RelayConfig {
                lease: Duration::from_secs(10),
                backoff_base: Duration::from_millis(50),
                backoff_cap: Duration::from_secs(1),
                dead_after: 10_000,
                poll: Duration::from_millis(20),
                ..oncely_outbox::RelayConfig::default()
            },
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            relay
                .run(
                    async {
                        let _ = stopped.await;
                    },
                    |_| {},
                )
                .await
        });
        Running { stop, task }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap();
    }
}

/// Once `after` events are delivered, cuts the relay's connection for two seconds.
pub(crate) async fn cut_after(
    store: &dyn oncely_outbox::OutboxStore,
    proxy: &oncely_testkit::fault::FaultProxy,
    after: u64,
) {
    let started = std::time::Instant::now();
    while store.stats().await.unwrap().delivered < after {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the relay is stuck"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.restore();
}

/// Waits until `dying` has died after its commit, then drops its consumer (`task`), as the
/// broker sees a consumer killed before its ack.
pub(crate) async fn kill_when_dead<T>(dying: &EffectHandler, task: tokio::task::JoinHandle<T>) {
    tokio::time::timeout(Duration::from_secs(60), dying.crashed.notified())
        .await
        .expect("the consumer reached the message it dies on");
    task.abort();
    let _ = task.await;
}

/// Waits for `total` effects, stops the relay, and checks that every event had its effect
/// once, in its aggregate's order, and that nothing is left pending.
pub(crate) async fn all_applied_once(
    effects: &Effects,
    running: Running,
    store: &dyn oncely_outbox::OutboxStore,
    total: usize,
) {
    effects.wait_for(total, Duration::from_secs(180)).await;
    running.stop().await;
    assert_eq!(
        effects.assert_once_in_order(),
        total,
        "every event applied once"
    );
    assert_eq!(store.stats().await.unwrap().pending, 0);
}
