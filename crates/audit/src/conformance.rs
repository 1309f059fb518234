//! The suite every audit log backend runs (feature `conformance`): events come back as
//! appended, appends are all-or-nothing and never overwrite, redaction keeps the trail
//! verifiable, writers continue their chains across restarts and share a chain safely, and
//! every edit, deletion, swap or truncation made with plain SQL is named by `verify`.
//!
//! A backend provides a [`Harness`]: a fresh log, and SQL run against its table as an
//! operator would (triggers in place) or as a forger would (triggers off).
//! `audit_conformance_tests!` turns the suite into tests.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::{ManualClock, Timestamp};

use crate::chain::{Broken, Draft, Event, Head, Personal, Summary, CHAIN_OPENED};
use crate::log::{verify_log, AuditError, AuditLog, Filter};
use crate::writer::AuditWriter;

/// The key every event of the suite is sealed, committed to and verified with.
pub const KEY: &[u8] = b"the suite's redaction key";

/// What a backend gives the suite: a fresh, migrated log per case, and SQL against its
/// `audit_events` table with the triggers in place or removed.
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// The backend's log.
    type L: AuditLog;
    /// The log, migrated.
    fn log(&self) -> Arc<Self::L>;
    /// Runs `sql` with the triggers in place; `audit_events` names the table.
    async fn sql(&self, sql: &str) -> Result<u64, String>;
    /// Runs `sql` with the table's triggers off, as someone covering their tracks would.
    async fn forge(&self, sql: &str);
    /// An insert that overwrites event 1 of chain `gw` in this database's dialect (SQLite's
    /// `INSERT OR REPLACE`, PostgreSQL's `ON CONFLICT DO UPDATE`).
    fn overwriting_insert(&self) -> &'static str;
}

fn draft(i: u64) -> Draft {
    Draft {
        event_id: format!("ev-{i:04}"),
        timestamp_ms: 1_800_000_000_000 + i as i64,
        actor: Some(format!("tenant-{}", i % 3)),
        actor_type: "tenant".into(),
        action: "executed".into(),
        resource_type: "idempotency_key".into(),
        resource_id: format!("POST /orders k-{i}"),
        old_value: None,
        new_value: Some("201".into()),
        correlation_id: Some(format!("req-{i}")),
        ip_address: Some(format!("10.0.0.{}", i % 250)),
        user_agent: i.is_multiple_of(2).then(|| "curl/8.5".to_owned()),
    }
}

/// `n` events of `chain` sealed from `from`, as a writer would seal them.
fn sealed(head: &mut Head, from: u64, n: u64) -> Vec<Event> {
    (from..from + n)
        .map(|i| {
            let mut d = draft(i);
            d.event_id = format!("{}-{i:04}", head.chain);
            head.seal_draft(&d, KEY)
        })
        .collect()
}

async fn verify(log: &dyn AuditLog) -> Result<Summary, Broken> {
    verify_log(log, Some(KEY), |_| {})
        .await
        .expect("the log answers")
}

async fn all(log: &dyn AuditLog) -> Vec<Event> {
    log.scan(None, usize::MAX).await.unwrap()
}

/// A new log has no heads and no events, and verifies as an empty trail.
pub async fn an_empty_log_verifies<H: Harness>(h: H) {
    let log = h.log();
    assert_eq!(log.head("gw").await.unwrap(), None);
    assert!(log.heads().await.unwrap().is_empty());
    assert!(all(&*log).await.is_empty());
    let summary = verify(&*log).await.unwrap();
    assert_eq!((summary.events, summary.heads.len()), (0, 0));
}

/// Events of several chains and batches come back byte for byte, in (chain, seq) order;
/// `scan` pages on exactly after the position given, and `head` and `heads` report each
/// chain's end.
pub async fn events_come_back_as_appended<H: Harness>(h: H) {
    let log = h.log();
    let (mut a, mut b) = (Head::new("gw-a"), Head::new("gw-b"));
    let mut first = sealed(&mut a, 0, 3);
    // One event without any personal field, one with a field already redacted at sealing.
    let mut bare = draft(3);
    bare.event_id = "gw-a-bare".into();
    (bare.actor, bare.ip_address, bare.user_agent) = (None, None, None);
    first.push(a.seal_draft(&bare, KEY));
    log.append(&first).await.unwrap();
    let second = sealed(&mut b, 10, 2);
    log.append(&second).await.unwrap();
    let more = sealed(&mut a, 4, 2);
    log.append(&more).await.unwrap();

    let mut expected: Vec<Event> = first.into_iter().chain(more).chain(second).collect();
    expected.sort_by(|x, y| (&x.chain, x.seq).cmp(&(&y.chain, y.seq)));
    assert_eq!(
        all(&*log).await,
        expected,
        "(chain, seq) order, every byte kept"
    );
    // Paging resumes exactly after the position given, across chains.
    let page = log.scan(Some(("gw-a", 4)), 2).await.unwrap();
    let seqs: Vec<(&str, u64)> = page.iter().map(|e| (e.chain.as_str(), e.seq)).collect();
    assert_eq!(seqs, [("gw-a", 5), ("gw-b", 0)]);
    assert_eq!(log.head("gw-a").await.unwrap(), Some(a.clone()));
    assert_eq!(log.heads().await.unwrap(), vec![a, b]);
    assert_eq!(verify(&*log).await.unwrap().events, 8);
}

/// A batch that collides with a stored position is a [`AuditError::Conflict`] and leaves
/// none of its events behind, whichever of its events collides; nothing stored changes.
pub async fn appends_are_all_or_nothing_and_never_overwrite<H: Harness>(h: H) {
    let log = h.log();
    let mut head = Head::new("gw");
    let first = sealed(&mut head, 0, 3);
    log.append(&first).await.unwrap();
    // A second writer that believed the chain empty: its batch collides at seq 0.
    let mut stale = Head::new("gw");
    let rival = sealed(&mut stale, 100, 4);
    let err = log.append(&rival).await.unwrap_err();
    assert!(
        matches!(&err, AuditError::Conflict { chain, seq: 0 } if chain == "gw"),
        "{err:?}"
    );
    // A batch whose last event collides leaves none of its events behind.
    let mut mixed = sealed(&mut head, 3, 2);
    mixed.push(first[1].clone());
    assert!(matches!(
        log.append(&mixed).await,
        Err(AuditError::Conflict { .. })
    ));
    assert_eq!(
        all(&*log).await,
        first,
        "nothing overwritten, nothing half appended"
    );
    assert_eq!(log.head("gw").await.unwrap().unwrap().next_seq, 3);
}

/// `find` returns the events every set field of the filter matches, newest first, at most
/// `limit` of them.
pub async fn find_filters_newest_first<H: Harness>(h: H) {
    let log = h.log();
    let mut head = Head::new("gw");
    log.append(&sealed(&mut head, 0, 9)).await.unwrap();
    let by_actor = log
        .find(
            &Filter {
                actor: Some("tenant-1".into()),
                ..Filter::default()
            },
            10,
        )
        .await
        .unwrap();
    let seqs: Vec<u64> = by_actor.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [7, 4, 1]);
    let one = log
        .find(
            &Filter {
                correlation_id: Some("req-5".into()),
                action: Some("executed".into()),
                ..Filter::default()
            },
            10,
        )
        .await
        .unwrap();
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].seq, 5);
    assert_eq!(log.find(&Filter::default(), 4).await.unwrap().len(), 4);
    assert_eq!(log.find(&Filter::default(), 4).await.unwrap()[0].seq, 8);
}

/// Redaction needs a filter and personal field names; it empties only the fields asked of
/// the events matched, hides their values, and the trail still verifies with the key.
pub async fn redaction_keeps_the_trail_verifiable<H: Harness>(h: H) {
    let log = h.log();
    let mut head = Head::new("gw");
    log.append(&sealed(&mut head, 0, 6)).await.unwrap();
    let tenant1 = Filter {
        actor: Some("tenant-1".into()),
        ..Filter::default()
    };
    // Refused: no filter, no field, a field that is not personal.
    for (filter, fields) in [
        (Filter::default(), vec!["actor"]),
        (tenant1.clone(), vec![]),
        (tenant1.clone(), vec!["action"]),
    ] {
        assert!(matches!(
            log.redact(&filter, &fields).await,
            Err(AuditError::Invalid(_))
        ));
    }
    let n = log
        .redact(&tenant1, &["actor", "ip_address", "user_agent"])
        .await
        .unwrap();
    assert_eq!(n, 2, "events 1 and 4");
    assert_eq!(log.redact(&tenant1, &["actor"]).await.unwrap(), 0, "gone");
    let events = all(&*log).await;
    for e in &events {
        let redacted = e.seq == 1 || e.seq == 4;
        assert_eq!(
            matches!(e.actor, Some(Personal::Redacted(_))),
            redacted,
            "{e:?}"
        );
        assert_eq!(
            matches!(e.ip_address, Some(Personal::Redacted(_))),
            redacted
        );
    }
    assert!(!format!("{events:?}").contains("tenant-1"));
    // Only one field of another event.
    let ev3 = Filter {
        event_id: Some("gw-0003".into()),
        ..Filter::default()
    };
    assert_eq!(log.redact(&ev3, &["ip_address"]).await.unwrap(), 1);
    let e3 = &log.find(&ev3, 1).await.unwrap()[0];
    assert!(matches!(e3.ip_address, Some(Personal::Redacted(_))));
    assert_eq!(e3.actor, Some(Personal::Value("tenant-0".into())));
    assert_eq!(verify(&*log).await.unwrap().events, 6, "with the key too");
}

/// Plain SQL cannot edit, delete or overwrite an event (the table's triggers refuse it),
/// but may empty a personal field, which is a redaction.
pub async fn the_table_refuses_updates_and_deletes<H: Harness>(h: H) {
    let log = h.log();
    let mut head = Head::new("gw");
    log.append(&sealed(&mut head, 0, 3)).await.unwrap();
    for sql in [
        "UPDATE audit_events SET action = 'replayed' WHERE seq = 1",
        "UPDATE audit_events SET actor = 'someone else' WHERE seq = 1",
        "UPDATE audit_events SET actor_commitment = NULL, actor = NULL WHERE seq = 1",
        "DELETE FROM audit_events WHERE seq = 2",
        // SQLite's REPLACE deletes without firing delete triggers; PostgreSQL's upsert is an
        // update. Both are refused.
        h.overwriting_insert(),
    ] {
        let r = h.sql(sql).await;
        assert!(
            r.as_ref().is_err_and(|e| e.contains("append-only")),
            "{sql}: {r:?}"
        );
    }
    // Emptying a personal field is a redaction, which the table allows.
    assert_eq!(
        h.sql("UPDATE audit_events SET ip_address = NULL WHERE seq = 1")
            .await,
        Ok(1)
    );
    assert_eq!(verify(&*log).await.unwrap().events, 3);
}

/// A trail of two chains, the second opened after the first: its anchor names the first's
/// head. Returns the log.
async fn two_chains<H: Harness>(h: &H) -> Arc<H::L> {
    let log = h.log();
    let clock = Arc::new(ManualClock::new(Timestamp(1_800_000_000_000)));
    let a = AuditWriter::open(log.clone(), "gw-a", KEY.to_vec(), clock.clone(), 100)
        .await
        .unwrap();
    for i in 1..6 {
        assert!(a.record(draft(i)));
    }
    assert!(a.close(Duration::from_secs(10)).await);
    let b = AuditWriter::open(log.clone(), "gw-b", KEY.to_vec(), clock, 100)
        .await
        .unwrap();
    for i in 10..13 {
        assert!(b.record(draft(i)));
    }
    assert!(b.close(Duration::from_secs(10)).await);
    assert_eq!(verify(&*log).await.unwrap().events, 10);
    log
}

/// With the triggers removed, an edit, a changed personal value, a deletion, a swap, a
/// deleted tail and a deleted chain are each named by `verify` as the right [`Broken`].
pub async fn verify_names_every_forged_row<H: Harness>(h: H) {
    type Case = (&'static str, fn(&Broken) -> bool);
    let cases: [Case; 6] = [
        // Edited in place.
        (
            "UPDATE audit_events SET new_value = '500' WHERE chain = 'gw-a' AND seq = 3",
            |b| {
                *b == Broken::Edited {
                    chain: "gw-a".into(),
                    seq: 3,
                }
            },
        ),
        // A personal value swapped for another (its commitment no longer matches).
        (
            "UPDATE audit_events SET ip_address = '192.0.2.1' WHERE chain = 'gw-a' AND seq = 2",
            |b| matches!(b, Broken::Personal { chain, seq: 2, field: "ip_address" } if chain == "gw-a"),
        ),
        // Deleted from the middle.
        (
            "DELETE FROM audit_events WHERE chain = 'gw-a' AND seq = 2",
            |b| {
                *b == Broken::Gap {
                    chain: "gw-a".into(),
                    seq: 2,
                    found: 3,
                }
            },
        ),
        // Two rows swapped (their places exchanged).
        (
            "UPDATE audit_events SET seq = -1 WHERE chain = 'gw-a' AND seq = 1; \
             UPDATE audit_events SET seq = 1 WHERE chain = 'gw-a' AND seq = 4; \
             UPDATE audit_events SET seq = 4 WHERE chain = 'gw-a' AND seq = -1",
            |b| {
                *b == Broken::Link {
                    chain: "gw-a".into(),
                    seq: 1,
                }
            },
        ),
        // The newest events of a chain deleted: no link shows it, gw-b's anchor does.
        (
            "DELETE FROM audit_events WHERE chain = 'gw-a' AND seq >= 4",
            |b| matches!(b, Broken::Truncated { chain, seq: 5, witness } if chain == "gw-a" && witness == "chain gw-b event 0"),
        ),
        // A whole chain deleted.
        (
            "DELETE FROM audit_events WHERE chain = 'gw-a'",
            |b| matches!(b, Broken::Truncated { chain, seq: 5, .. } if chain == "gw-a"),
        ),
    ];
    for (i, (sql, expected)) in cases.iter().enumerate() {
        if i > 0 {
            // A fresh trail for each forgery.
            h.forge("DELETE FROM audit_events").await;
        }
        let log = two_chains(&h).await;
        h.forge(sql).await;
        let broken = verify(&*log).await.unwrap_err();
        assert!(expected(&broken), "{sql}: {broken}");
    }
}

/// A well-formed event appended by someone without the key verifies without the key, and is
/// named [`Broken::Forged`] with it.
pub async fn an_appended_forgery_is_named_with_the_key<H: Harness>(h: H) {
    let log = two_chains(&h).await;
    // Someone who may write the table but lacks the key appends a well-formed event: right
    // seq, right predecessor, a correct hash.
    let mut head = log.head("gw-a").await.unwrap().unwrap();
    let forged = head.seal_draft(&draft(99), b"not the writers' key");
    log.append(&[forged]).await.unwrap();
    let without_key = verify_log(&*log, None, |_| {}).await.unwrap();
    assert!(without_key.is_ok(), "the chain alone cannot tell");
    assert_eq!(
        verify(&*log).await.unwrap_err(),
        Broken::Forged {
            chain: "gw-a".into(),
            seq: 6
        }
    );
}

/// A writer opened again on its chain continues after the newest event, with one anchor per
/// start, and the chain stays one valid chain.
pub async fn a_writer_continues_its_chain_after_a_restart<H: Harness>(h: H) {
    let log = h.log();
    let clock = Arc::new(ManualClock::new(Timestamp(1_800_000_000_000)));
    for run in 0..3u64 {
        let w = AuditWriter::open(log.clone(), "gw", KEY.to_vec(), clock.clone(), 100)
            .await
            .unwrap();
        for i in 0..4 {
            assert!(w.record(draft(run * 10 + i)));
        }
        assert!(w.close(Duration::from_secs(10)).await);
        assert_eq!(
            w.stats()
                .appended
                .load(std::sync::atomic::Ordering::Relaxed),
            5
        );
    }
    let events = all(&*log).await;
    assert_eq!(events.len(), 15, "3 anchors + 12 events");
    assert!(events.iter().all(|e| e.chain == "gw"));
    let anchors: Vec<u64> = events
        .iter()
        .filter(|e| e.action == CHAIN_OPENED)
        .map(|e| e.seq)
        .collect();
    assert_eq!(anchors, [0, 5, 10]);
    assert_eq!(verify(&*log).await.unwrap().events, 15);
}

/// Writers of their own chains, and two given one chain name, write at once: every event is
/// stored once and every chain verifies.
pub async fn concurrent_writers_keep_valid_chains<H: Harness>(h: H) {
    let log = h.log();
    let clock = Arc::new(ManualClock::new(Timestamp(1_800_000_000_000)));
    // Four writers: two chains of their own, and two processes given the same chain name.
    let mut writers = Vec::new();
    for chain in ["gw-a", "gw-b", "shared", "shared"] {
        writers.push(Arc::new(
            AuditWriter::open(log.clone(), chain, KEY.to_vec(), clock.clone(), 1000)
                .await
                .unwrap(),
        ));
    }
    let mut tasks = Vec::new();
    for (w, writer) in writers.iter().enumerate() {
        let writer = writer.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let mut d = draft(i);
                d.event_id = format!("w{w}-{i}");
                assert!(writer.record(d));
                if i % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            assert!(writer.close(Duration::from_secs(20)).await);
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let summary = verify(&*log).await.unwrap();
    assert_eq!(summary.events, 4 * 51, "every event, each once");
    let len = |c: &str| {
        summary
            .heads
            .iter()
            .find(|h| h.chain == c)
            .map(|h| h.next_seq)
    };
    assert_eq!(
        (len("gw-a"), len("gw-b"), len("shared")),
        (Some(51), Some(51), Some(102))
    );
}

/// While the database is stuck, `record` never waits and drops what the queue cannot hold;
/// afterwards the trail holds every event kept and [`crate::EVENTS_DROPPED`] events that
/// count the others.
pub async fn a_full_queue_drops_and_the_trail_says_so<H: Harness>(h: H) {
    let log = Faulty::new(h.log());
    let clock = Arc::new(ManualClock::new(Timestamp(1_800_000_000_000)));
    let w = AuditWriter::open(log.clone(), "gw", KEY.to_vec(), clock, 4)
        .await
        .unwrap();
    // The database is stuck: one batch (at most 256) waits in its append, 4 events in the
    // queue behind it, the rest of a burst of 1000 is dropped, without waiting.
    let stuck = log.gate.write().await;
    let started = std::time::Instant::now();
    let kept = (0..1000).filter(|i| w.record(draft(*i))).count() as u64;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "record never waits"
    );
    let dropped = w.stats().dropped.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(kept + dropped, 1000);
    assert!(
        dropped >= 1000 - 256 - 4,
        "only a batch and the queue are held: {dropped} dropped"
    );
    drop(stuck);
    assert!(w.close(Duration::from_secs(10)).await);
    let events = all(&*h.log()).await;
    let recorded: u64 = events
        .iter()
        .filter(|e| e.action == crate::EVENTS_DROPPED)
        .map(|e| e.new_value.as_deref().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(recorded, dropped, "the trail counts what it lost");
    let kept_events = events.iter().filter(|e| e.action == "executed").count() as u64;
    assert_eq!(kept_events, kept, "everything kept reached the table");
    assert!(verify(&*h.log()).await.is_ok());
}

/// A log that fails as a database does: an append that waits (the database is stuck while
/// `gate` is held for writing), or one that commits but whose answer is lost (a timeout
/// after the commit went through) when `lose_next_answer` is set.
struct Faulty<L> {
    inner: Arc<L>,
    lose_next_answer: std::sync::atomic::AtomicBool,
    gate: tokio::sync::RwLock<()>,
}

impl<L> Faulty<L> {
    fn new(inner: Arc<L>) -> Arc<Self> {
        Arc::new(Faulty {
            inner,
            lose_next_answer: false.into(),
            gate: tokio::sync::RwLock::new(()),
        })
    }
}

#[async_trait]
impl<L: AuditLog> AuditLog for Faulty<L> {
    async fn migrate(&self) -> Result<oncely_db::migrate::MigrationReport, AuditError> {
        self.inner.migrate().await
    }
    async fn append(&self, events: &[Event]) -> Result<(), AuditError> {
        let _open = self.gate.read().await;
        self.inner.append(events).await?;
        if self
            .lose_next_answer
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(AuditError::Unavailable("no answer within 5000ms".into()));
        }
        Ok(())
    }
    async fn head(&self, chain: &str) -> Result<Option<Head>, AuditError> {
        self.inner.head(chain).await
    }
    async fn heads(&self) -> Result<Vec<Head>, AuditError> {
        self.inner.heads().await
    }
    async fn scan(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<Event>, AuditError> {
        self.inner.scan(after, limit).await
    }
    async fn find(&self, filter: &Filter, limit: usize) -> Result<Vec<Event>, AuditError> {
        self.inner.find(filter, limit).await
    }
    async fn redact(&self, filter: &Filter, fields: &[&str]) -> Result<u64, AuditError> {
        self.inner.redact(filter, fields).await
    }
}

/// An append that committed but whose answer was lost is recognised on retry, not appended
/// again, and drops made meanwhile are recorded exactly once.
pub async fn a_lost_commit_answer_appends_nothing_twice<H: Harness>(h: H) {
    let clock = Arc::new(ManualClock::new(Timestamp(1_800_000_000_000)));
    let log = Faulty::new(h.log());
    let w = AuditWriter::open(log.clone(), "gw", KEY.to_vec(), clock, 4)
        .await
        .unwrap();
    // The next append (a batch) commits, but its answer is lost; while it is stuck, a
    // burst overflows the queue. The retry must find its batch already there, unchanged,
    // and the drops must be recorded once, by a later batch.
    log.lose_next_answer
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let stuck = log.gate.write().await;
    assert!(w.record(draft(0)));
    // Past the batch's linger: a batch of one is sealed and waits in its append.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let kept = 1 + (1..400).filter(|i| w.record(draft(*i))).count() as u64;
    drop(stuck);
    assert!(w.close(Duration::from_secs(10)).await);
    let stat = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let dropped = stat(&w.stats().dropped);
    assert_eq!(kept + dropped, 400);
    assert!(dropped > 0, "the burst overflowed the queue");
    assert_eq!(stat(&w.stats().append_failures), 1, "the lost answer");
    let events = all(&*h.log()).await;
    let executed = events.iter().filter(|e| e.action == "executed").count() as u64;
    assert_eq!(executed, kept, "every kept event once");
    let recorded: u64 = events
        .iter()
        .filter(|e| e.action == crate::EVENTS_DROPPED)
        .map(|e| e.new_value.as_deref().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(recorded, dropped, "each loss recorded once");
    assert!(verify(&*h.log()).await.is_ok());
}

/// Expands to one `#[tokio::test]` per case of the suite. `$factory` is called with the
/// case's name and returns a future of `Option<H>`, `H` a
/// [`Harness`](crate::conformance::Harness); `None` skips the case (the backend's database
/// is not there).
#[macro_export]
macro_rules! audit_conformance_tests {
    ($factory:expr) => {
        $crate::audit_conformance_tests!(@tests $factory;
            an_empty_log_verifies,
            events_come_back_as_appended,
            appends_are_all_or_nothing_and_never_overwrite,
            find_filters_newest_first,
            redaction_keeps_the_trail_verifiable,
            the_table_refuses_updates_and_deletes,
            verify_names_every_forged_row,
            an_appended_forgery_is_named_with_the_key,
            a_writer_continues_its_chain_after_a_restart,
            concurrent_writers_keep_valid_chains,
            a_full_queue_drops_and_the_trail_says_so,
            a_lost_commit_answer_appends_nothing_twice,
        );
    };
    (@tests $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(h) = ($factory)(stringify!($name)).await {
                    $crate::conformance::$name(h).await;
                }
            }
        )*
    };
}
