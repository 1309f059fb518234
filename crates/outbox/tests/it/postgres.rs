//! The conformance suite on PostgreSQL, each fixture in a schema of its own (dropped at the
//! end), the interleavings only a database with concurrent writers has: a long
//! transaction committing after short ones, and two transactions on one aggregate, and the
//! bound on every call of the outbox's own while another transaction holds its table.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use oncely_core::{SystemClock, Timestamp};
use oncely_outbox::conformance::{run_all, Fixture};
use oncely_outbox::inbox::postgres::PgInbox;
use oncely_outbox::inbox::InboxError;
use oncely_outbox::postgres::PgOutbox;
use oncely_outbox::{EventId, NewEvent, OutboxError, OutboxStore, Settled};
use oncely_testkit::services::{unique_name, Service};

pub(crate) struct Pg {
    store: Arc<PgOutbox>,
    pool: deadpool_postgres::Pool,
    schema: String,
    url: String,
}

impl Drop for Pg {
    fn drop(&mut self) {
        oncely_testkit::services::drop_postgres_schemas(
            &self.url,
            std::slice::from_ref(&self.schema),
        );
    }
}

pub(crate) async fn fixture(url: &str) -> Pg {
    let schema = unique_name("oncely_outbox");
    let pool = oncely_db::postgres::pool(&oncely_db::postgres::PgOptions::new(url)).unwrap();
    let store = PgOutbox::open(pool.clone(), &schema, Arc::new(SystemClock))
        .await
        .unwrap();
    pool.get()
        .await
        .unwrap()
        .batch_execute(&format!(
            "CREATE TABLE \"{schema}\".orders (id bigserial PRIMARY KEY, note text NOT NULL)"
        ))
        .await
        .unwrap();
    Pg {
        store: Arc::new(store),
        pool,
        schema,
        url: url.to_owned(),
    }
}

impl Pg {
    async fn write(&self, events: &[NewEvent], commit: bool) -> Vec<EventId> {
        let mut client = self.pool.get().await.unwrap();
        let tx = client.transaction().await.unwrap();
        let insert = format!("INSERT INTO \"{}\".orders (note) VALUES ($1)", self.schema);
        let mut ids = Vec::new();
        for e in events {
            tx.execute(&insert, &[&e.event_type]).await.unwrap();
            ids.push(self.store.enqueue(&tx, e).await.unwrap());
        }
        if commit {
            tx.commit().await.unwrap();
        } else {
            tx.rollback().await.unwrap();
        }
        ids
    }
}

#[async_trait]
impl Fixture for Pg {
    fn store(&self) -> Arc<dyn OutboxStore> {
        self.store.clone()
    }
    async fn commit(&self, events: Vec<NewEvent>) -> Vec<EventId> {
        self.write(&events, true).await
    }
    async fn roll_back(&self, events: Vec<NewEvent>) {
        self.write(&events, false).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_on_postgres() {
    let Some(url) = Service::Postgres.available("the_conformance_suite_on_postgres") else {
        return;
    };
    run_all(|| fixture(&url)).await;
}

fn ev(aggregate: &str, n: u32) -> NewEvent {
    NewEvent::new(
        "order",
        aggregate,
        "order.changed",
        serde_json::json!({ "n": n }),
    )
}

/// A long transaction enqueues first and commits last; short ones commit and are delivered
/// meanwhile. The long one's event is still delivered: no offset skipped it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_committed_late_by_a_long_transaction_is_not_skipped() {
    let Some(url) =
        Service::Postgres.available("a_row_committed_late_by_a_long_transaction_is_not_skipped")
    else {
        return;
    };
    let f = fixture(&url).await;
    let mut long_client = f.pool.get().await.unwrap();
    let long = long_client.transaction().await.unwrap();
    let late = f.store.enqueue(&long, &ev("long", 1)).await.unwrap();
    let mut short_ids = Vec::new();
    for i in 0..5 {
        short_ids.extend(f.commit(vec![ev(&format!("short{i}"), 1)]).await);
    }
    let mut delivered = Vec::new();
    for c in f.store.claim(100, Duration::from_secs(30)).await.unwrap() {
        assert_eq!(
            f.store.delivered(c.event.id, c.token).await.unwrap(),
            Settled::Delivered
        );
        delivered.push(c.event.id);
    }
    assert_eq!(
        delivered.len(),
        5,
        "the short ones, while the long one is open"
    );
    assert!(!delivered.contains(&late));
    assert!(late < short_ids[0], "the late event has the older id");
    long.commit().await.unwrap();
    let after = f.store.claim(100, Duration::from_secs(30)).await.unwrap();
    assert_eq!(after.len(), 1, "found after its commit");
    assert_eq!(after[0].event.id, late);
}

/// Two transactions on one aggregate: the second waits for the first's commit to get its
/// number, so the sequence is the commit order, and the relay publishes in that order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_aggregate_numbers_follow_commits() {
    let Some(url) = Service::Postgres.available("one_aggregate_numbers_follow_commits") else {
        return;
    };
    let f = Arc::new(fixture(&url).await);
    let mut first_client = f.pool.get().await.unwrap();
    let first = first_client.transaction().await.unwrap();
    let first_id = f.store.enqueue(&first, &ev("same", 1)).await.unwrap();
    let second = {
        let f = f.clone();
        tokio::spawn(async move { f.commit(vec![ev("same", 2)]).await[0] })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second transaction waits for the first"
    );
    first.commit().await.unwrap();
    let second_id = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap()
        .unwrap();
    let c = f.store.claim(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].event.id, c[0].event.sequence), (first_id, 1));
    f.store.delivered(c[0].event.id, c[0].token).await.unwrap();
    let c = f.store.claim(10, Duration::from_secs(30)).await.unwrap();
    assert_eq!((c[0].event.id, c[0].event.sequence), (second_id, 2));

    // And the other way round: the transaction that enqueues first but commits last gets
    // the later number, because the other one committed in between.
    let mut slow_client = f.pool.get().await.unwrap();
    let slow = slow_client.transaction().await.unwrap();
    let fast = f.commit(vec![ev("other", 1)]).await[0];
    let slow_id = f.store.enqueue(&slow, &ev("other", 2)).await.unwrap();
    slow.commit().await.unwrap();
    let c = f.store.claim(10, Duration::from_secs(30)).await.unwrap();
    let mine: Vec<_> = c
        .iter()
        .filter(|c| c.event.aggregate_id == "other")
        .collect();
    assert_eq!((mine[0].event.id, mine[0].event.sequence), (fast, 1));
    let _ = slow_id;
}

/// A listener hears an enqueue when, and only when, its transaction commits.
#[tokio::test]
async fn enqueue_notifies_at_commit() {
    let Some(url) = Service::Postgres.available("enqueue_notifies_at_commit") else {
        return;
    };
    let f = fixture(&url).await;
    let (client, mut conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n.channel().to_owned());
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN \"{}\"", f.store.channel()))
        .await
        .unwrap();
    f.roll_back(vec![ev("n", 1)]).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "no wake-up for a rollback"
    );
    f.commit(vec![ev("n", 1)]).await;
    let channel = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(channel, f.store.channel());
}

/// A transaction that holds the outbox's and the inbox's tables locked (a migration, an
/// operator's `LOCK TABLE`, a server that stopped answering all look alike from here): a
/// claim and an inbox purge give up within their bound instead of waiting for it, and the
/// outbox answers again once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_behind_a_held_lock_give_up_within_their_bound() {
    let Some(url) =
        Service::Postgres.available("calls_behind_a_held_lock_give_up_within_their_bound")
    else {
        return;
    };
    let f = fixture(&url).await;
    f.commit(vec![ev("held", 1)]).await;
    let bound = Duration::from_millis(100);
    let quick = PgOutbox::open(f.pool.clone(), &f.schema, Arc::new(SystemClock))
        .await
        .unwrap()
        .with_timeout(bound);
    let mut inbox_client = f.pool.get().await.unwrap();
    let inbox = PgInbox::open(&mut inbox_client, &f.schema)
        .await
        .unwrap()
        .with_timeout(bound);

    let mut holder = f.pool.get().await.unwrap();
    let lock = holder.transaction().await.unwrap();
    lock.batch_execute(&format!(
        "LOCK TABLE \"{0}\".outbox, \"{0}\".inbox IN ACCESS EXCLUSIVE MODE",
        f.schema
    ))
    .await
    .unwrap();

    let started = Instant::now();
    let claimed = tokio::time::timeout(
        Duration::from_secs(1),
        quick.claim(10, Duration::from_secs(30)),
    )
    .await;
    match claimed {
        Ok(Err(OutboxError::Unavailable(why))) => {
            assert!(why.contains("did not answer within 100ms"), "{why}")
        }
        other => panic!("a claim behind the lock answered {other:?}, not Unavailable"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));

    let started = Instant::now();
    let purged = tokio::time::timeout(
        Duration::from_secs(1),
        inbox.purge(&inbox_client, Timestamp(i64::MAX), 10),
    )
    .await;
    match purged {
        Ok(Err(InboxError::Unavailable(why))) => {
            assert!(why.contains("did not answer within 100ms"), "{why}")
        }
        other => panic!("an inbox purge behind the lock answered {other:?}, not Unavailable"),
    }
    assert!(started.elapsed() < Duration::from_secs(1));

    // Once the lock is gone the outbox answers again (the abandoned claim may have taken the
    // event meanwhile: it stays pending either way).
    lock.rollback().await.unwrap();
    let stats = f.store.stats().await.unwrap();
    assert_eq!(stats.pending, 1);
}
