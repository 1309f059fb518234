//! What only a file-backed store can get wrong: restarts, schema versions, several processes
//! on one file, group commit, and damaged rows.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use oncely_core::{
    ClaimOutcome, LeaseToken, ManualClock, RecordState, Refusal, StoredResponse, SystemClock,
    Timestamp,
};
use oncely_store::conformance::{fp, key, LEASE, TTL};
use oncely_store::{IdempotencyStore, StoreAdmin, StoreError};
use oncely_store_sqlite::{SqliteOptions, SqliteStore};
use tokio::sync::Barrier;

const START: Timestamp = Timestamp(1_700_000_000_000);

fn open(path: &Path, clock: &ManualClock) -> SqliteStore {
    SqliteStore::open(SqliteOptions::new(path), Arc::new(clock.clone())).expect("open store")
}

fn binary_response() -> StoredResponse {
    StoredResponse {
        status: 201,
        headers: vec![
            ("content-type".into(), b"application/octet-stream".to_vec()),
            ("x-raw".into(), vec![0, 0xff, 0x80, b'\n']),
            ("x-empty".into(), Vec::new()),
        ],
        body: Bytes::from((0..=255u8).cycle().take(70_000).collect::<Vec<u8>>()),
    }
}

fn won(o: ClaimOutcome) -> LeaseToken {
    match o {
        ClaimOutcome::Claimed { token, .. } => token,
        other => panic!("expected a won claim, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_record_replays_identically_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    let clock = ManualClock::new(START);
    let k = key("t1", "restart");
    let response = binary_response();
    {
        let store = open(&path, &clock);
        let t = won(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
        clock.advance(Duration::from_millis(7));
        store.complete(&k, t, response.clone(), TTL).await.unwrap();
    }
    let store = open(&path, &clock);
    let ClaimOutcome::Exists(r) = store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap() else {
        panic!("a completed record must survive a restart");
    };
    assert_eq!(r.state, RecordState::Completed { response });
    assert_eq!(r.fingerprint, fp(b"a"));
    assert_eq!(r.created_at, START);
    assert_eq!(r.expires_at, START.plus(Duration::from_millis(7)).plus(TTL));
    assert_eq!(store.get(&k).await.unwrap(), Some(r));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_record_survives_restart_and_is_taken_over_after_its_lease() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    let clock = ManualClock::new(START);
    let k = key("t1", "crash");
    let old = {
        let store = open(&path, &clock);
        won(store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap())
    };
    let store = open(&path, &clock);
    match store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap() {
        ClaimOutcome::Exists(r) => assert_eq!(
            r.state,
            RecordState::InProgress {
                token: old,
                lease_expires_at: START.plus(LEASE)
            }
        ),
        other => panic!("the holder's lease is still running, got {other:?}"),
    }
    clock.advance(LEASE);
    let new = match store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap() {
        ClaimOutcome::Claimed {
            token, takeover, ..
        } => {
            assert!(takeover);
            token
        }
        other => panic!("expected a takeover, got {other:?}"),
    };
    assert_eq!(
        store.complete(&k, old, binary_response(), TTL).await,
        Err(StoreError::Refused(Refusal::StaleToken))
    );
    store
        .complete(&k, new, binary_response(), TTL)
        .await
        .unwrap();
    assert_eq!(store.get(&k).await.unwrap().unwrap().created_at, START);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    let clock = ManualClock::new(START);
    drop(open(&path, &clock));
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute(
            "INSERT INTO oncely_migrations (concern, version, description, applied_at) \
             VALUES ('idempotency records', 1000, 'from the future', 0)",
            [],
        )
        .unwrap();
    }
    let err = SqliteStore::open(SqliteOptions::new(&path), Arc::new(clock.clone())).unwrap_err();
    let StoreError::Unavailable(msg) = &err else {
        panic!("expected a clear refusal, got {err:?}");
    };
    assert!(msg.contains("schema version 1000"), "{msg}");
    assert!(msg.contains("newer"), "{msg}");
}

/// A file written by a build that tracked its version in `PRAGMA user_version` (before the
/// shared migration table) opens as it is: its records are kept and it adopts version 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_from_before_the_migration_table_is_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        // The schema as those builds wrote it, with one completed record in it.
        raw.execute_batch(
            "CREATE TABLE idempotency_records (
                id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, method TEXT NOT NULL,
                route TEXT NOT NULL, idem_key TEXT NOT NULL, fingerprint BLOB NOT NULL,
                created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL,
                state INTEGER NOT NULL, lease_token BLOB, lease_expires_at INTEGER,
                status INTEGER, headers BLOB, body BLOB,
                takeovers INTEGER NOT NULL DEFAULT 0,
                UNIQUE (tenant, method, route, idem_key));
             CREATE INDEX idempotency_records_expires_at ON idempotency_records (expires_at);
             PRAGMA user_version = 1;
             PRAGMA application_id = 1869505388;",
        )
        .unwrap();
    }
    let k = key("t1", "old");
    {
        // One request in flight, as those builds stored it.
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.execute(
            "INSERT INTO idempotency_records (tenant, method, route, idem_key, fingerprint, \
             created_at, expires_at, state, lease_token, lease_expires_at) \
             VALUES (?1, 'POST', '/orders', 'old', ?2, ?3, ?4, 0, ?5, ?6)",
            rusqlite::params![
                k.scope.tenant.as_str(),
                fp(b"a").0.to_vec(),
                START.0,
                START.plus(TTL).0,
                vec![7u8; 16],
                START.plus(LEASE).0,
            ],
        )
        .unwrap();
    }
    let clock = ManualClock::new(START);
    let store = open(&path, &clock);
    oncely_store::conformance::assert_adopted_in_flight(&store, &k, fp(b"a")).await;
    drop(store);
    let raw = rusqlite::Connection::open(&path).unwrap();
    let version: u32 = raw
        .query_row(
            "SELECT max(version) FROM oncely_migrations WHERE concern = 'idempotency records'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(version, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_that_are_not_an_oncely_store_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));

    let garbage = dir.path().join("garbage.db");
    std::fs::write(&garbage, vec![0x5a; 8192]).unwrap();
    let err = SqliteStore::open(SqliteOptions::new(&garbage), clock.clone()).unwrap_err();
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");

    let foreign = dir.path().join("foreign.db");
    {
        let raw = rusqlite::Connection::open(&foreign).unwrap();
        raw.pragma_update(None, "application_id", 42).unwrap();
        raw.execute_batch("CREATE TABLE t (x)").unwrap();
    }
    let err = SqliteStore::open(SqliteOptions::new(&foreign), clock).unwrap_err();
    let StoreError::Unavailable(msg) = &err else {
        panic!("expected a clear refusal, got {err:?}");
    };
    assert!(msg.contains("not an oncely record store"), "{msg}");
}

/// Two stores on one file stand for two gateway processes: each has its own writer
/// connection, so only `BEGIN IMMEDIATE`, the busy timeout and the conditional statements
/// keep them from both winning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_race_to_exactly_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    let clock = ManualClock::new(START);
    let stores = [Arc::new(open(&path, &clock)), Arc::new(open(&path, &clock))];
    for round in 0..5 {
        let k = key("t1", &format!("race-{round}"));
        let barrier = Arc::new(Barrier::new(64));
        let mut tasks = Vec::new();
        for i in 0..64 {
            let (store, k, barrier) = (stores[i % 2].clone(), k.clone(), barrier.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store.claim(&k, fp(b"a"), LEASE, TTL).await
            }));
        }
        let mut winners = Vec::new();
        let mut seen = Vec::new();
        for t in tasks {
            match t.await.unwrap().unwrap() {
                ClaimOutcome::Claimed { token, .. } => winners.push(token),
                ClaimOutcome::Exists(r) => seen.push(r),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: exactly one claim may win");
        for r in seen {
            assert!(
                matches!(r.state, RecordState::InProgress { token, .. } if token == winners[0]),
                "every loser sees the winner's lease"
            );
        }
    }

    // Fencing holds across processes too: the second takes over, the first is refused.
    let k = key("t1", "fence");
    let old = won(stores[0].claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    clock.advance(LEASE);
    let new = won(stores[1].claim(&k, fp(b"a"), LEASE, TTL).await.unwrap());
    assert_eq!(
        stores[0].complete(&k, old, binary_response(), TTL).await,
        Err(StoreError::Refused(Refusal::StaleToken))
    );
    stores[1]
        .complete(&k, new, binary_response(), TTL)
        .await
        .unwrap();
    assert!(stores[0].get(&k).await.unwrap().unwrap().is_completed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commit_batches_concurrent_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = SqliteOptions::new(dir.path().join("records.db"));
    // One fsync per commit, as a deployment that cannot lose a write would run: exactly
    // the case group commit exists for.
    opts.synchronous_full = true;
    let store = Arc::new(SqliteStore::open(opts, Arc::new(SystemClock)).unwrap());
    let before = store.committed_batches();
    const N: usize = 256;
    let barrier = Arc::new(Barrier::new(N));
    let mut tasks = Vec::new();
    for i in 0..N {
        let (store, barrier) = (store.clone(), barrier.clone());
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            let k = key("t1", &format!("k{i}"));
            // The wall clock runs here, and a loaded machine with an fsync per commit can take
            // longer than the suite's short lease: claim for long enough not to measure that.
            let long = Duration::from_secs(60);
            let t = won(store.claim(&k, fp(b"a"), long, long).await.unwrap());
            store
                .complete(&k, t, binary_response(), long)
                .await
                .unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let batches = store.committed_batches() - before;
    println!("{} writes committed in {batches} transactions", 2 * N);
    assert!(
        batches < N as u64,
        "{} writes took {batches} transactions: no batching",
        2 * N
    );
    let stats = store.stats().await.unwrap();
    assert_eq!((stats.in_progress, stats.completed), (0, N as u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_row_is_an_error_for_its_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    let clock = ManualClock::new(START);
    let store = Arc::new(open(&path, &clock));
    let bad = key("t1", "bad");
    let t = won(store.claim(&bad, fp(b"a"), LEASE, TTL).await.unwrap());
    store
        .complete(&bad, t, binary_response(), TTL)
        .await
        .unwrap();
    {
        // Another process (or a disk) damages the stored headers.
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.busy_timeout(Duration::from_secs(5)).unwrap();
        let n = raw
            .execute(
                "UPDATE idempotency_records SET headers = x'00000009ff' WHERE idem_key = 'bad'",
                [],
            )
            .unwrap();
        assert_eq!(n, 1);
    }
    assert!(matches!(store.get(&bad).await, Err(StoreError::Corrupt(_))));

    // The damaged claim and healthy ones submitted together: the healthy ones are not hurt,
    // whichever batches they land in.
    let barrier = Arc::new(Barrier::new(17));
    let mut tasks = Vec::new();
    for i in 0..17 {
        let (store, barrier) = (store.clone(), barrier.clone());
        let k = if i == 8 {
            bad.clone()
        } else {
            key("t1", &format!("good-{i}"))
        };
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (i, store.claim(&k, fp(b"a"), LEASE, TTL).await)
        }));
    }
    for t in tasks {
        let (i, got) = t.await.unwrap();
        if i == 8 {
            let err = got.unwrap_err();
            let StoreError::Corrupt(msg) = &err else {
                panic!("expected Corrupt, got {err:?}");
            };
            assert!(msg.contains("headers"), "{msg}");
        } else {
            won(got.unwrap());
        }
    }
    for i in (0..17).filter(|i| *i != 8) {
        assert!(store
            .get(&key("t1", &format!("good-{i}")))
            .await
            .unwrap()
            .is_some());
    }
    // A refusal on the damaged key still classifies without decoding the response.
    assert_eq!(
        store.release(&bad, LeaseToken(1)).await,
        Err(StoreError::Refused(Refusal::AlreadyCompleted))
    );
    // Expiry and purge free it like any other record.
    clock.advance(TTL);
    assert_eq!(store.get(&bad).await.unwrap(), None);
    assert!(store.purge_expired(100).await.unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_write_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    let clock = ManualClock::new(START);
    {
        let store = Arc::new(open(&path, &clock));
        let mut tasks = Vec::new();
        for i in 0..50 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .claim(&key("t1", &format!("k{i}")), fp(b"a"), LEASE, TTL)
                    .await
            }));
        }
        for t in tasks {
            won(t.await.unwrap().unwrap());
        }
    }
    let store = open(&path, &clock);
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.in_progress, 50);
}

/// Another process holding the write lock past the busy timeout: the batch fails closed
/// (every caller hears `Unavailable`, nothing is half-written), reads carry on beside the
/// lock, and the store recovers as soon as the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_elsewhere_fails_closed_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("records.db");
    let clock = ManualClock::new(START);
    let mut opts = SqliteOptions::new(&path);
    opts.busy_timeout = Duration::from_millis(100);
    let store = Arc::new(SqliteStore::open(opts, Arc::new(clock.clone())).unwrap());
    let held = key("t1", "held");
    won(store.claim(&held, fp(b"a"), LEASE, TTL).await.unwrap());

    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch("BEGIN IMMEDIATE").unwrap();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .claim(&key("t1", &format!("blocked-{i}")), fp(b"a"), LEASE, TTL)
                .await
        }));
    }
    for t in tasks {
        let got = t.await.unwrap();
        assert!(matches!(got, Err(StoreError::Unavailable(_))), "{got:?}");
    }
    // WAL readers are not blocked by a writer.
    assert!(store.get(&held).await.unwrap().is_some());
    raw.execute_batch("ROLLBACK").unwrap();

    for i in 0..8 {
        let k = key("t1", &format!("blocked-{i}"));
        assert_eq!(
            store.get(&k).await.unwrap(),
            None,
            "a failed batch keeps nothing"
        );
        match store.claim(&k, fp(b"a"), LEASE, TTL).await.unwrap() {
            ClaimOutcome::Claimed { takeover, .. } => assert!(!takeover),
            other => panic!("expected a fresh claim, got {other:?}"),
        }
    }
}
