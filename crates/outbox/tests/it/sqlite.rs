//! The conformance suite on SQLite files, the application writing through a connection of
//! its own, as it would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::{Clock, SystemClock};
use oncely_outbox::conformance::{run_all, Fixture};
use oncely_outbox::sqlite::SqliteOutbox;
use oncely_outbox::{EventId, NewEvent, OutboxError, OutboxStore};

pub(crate) struct Sqlite {
    store: Arc<SqliteOutbox>,
    app: Mutex<rusqlite::Connection>,
    _dir: tempfile::TempDir,
}

pub(crate) fn fixture() -> Sqlite {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let store = SqliteOutbox::open(&path, Duration::from_secs(10), Arc::new(SystemClock)).unwrap();
    let app = rusqlite::Connection::open(&path).unwrap();
    app.busy_timeout(Duration::from_secs(10)).unwrap();
    app.execute_batch("CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT NOT NULL)")
        .unwrap();
    Sqlite {
        store: Arc::new(store),
        app: Mutex::new(app),
        _dir: dir,
    }
}

impl Sqlite {
    fn write(&self, events: &[NewEvent], commit: bool) -> Vec<EventId> {
        let mut conn = self.app.lock().unwrap();
        let tx = conn.transaction().unwrap();
        let mut ids = Vec::new();
        for e in events {
            tx.execute("INSERT INTO orders (note) VALUES (?1)", [&e.event_type])
                .unwrap();
            ids.push(SqliteOutbox::enqueue(&tx, e, SystemClock.now()).unwrap());
        }
        if commit {
            tx.commit().unwrap();
        }
        ids
    }
}

#[async_trait]
impl Fixture for Sqlite {
    fn store(&self) -> Arc<dyn OutboxStore> {
        self.store.clone()
    }
    async fn commit(&self, events: Vec<NewEvent>) -> Vec<EventId> {
        self.write(&events, true)
    }
    async fn roll_back(&self, events: Vec<NewEvent>) {
        self.write(&events, false);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conformance_suite_on_sqlite() {
    run_all(|| async { fixture() }).await;
}

#[tokio::test]
async fn bad_events_and_corrupt_rows_are_errors_not_panics() {
    let f = fixture();
    {
        let mut conn = f.app.lock().unwrap();
        let tx = conn.transaction().unwrap();
        let empty = NewEvent::new("", "a", "t", serde_json::json!({}));
        assert!(matches!(
            SqliteOutbox::enqueue(&tx, &empty, SystemClock.now()),
            Err(OutboxError::Invalid(_))
        ));
        tx.execute(
            "INSERT INTO oncely_outbox (id, aggregate_type, aggregate_id, sequence, event_type, \
         payload, headers, created_at, available_at) VALUES ('not-a-uuid', 'o', 'a', 1, 't', \
         '{', '{}', 0, 0)",
            [],
        )
        .unwrap();
        tx.commit().unwrap();
    }
    match f.store.claim(10, Duration::from_secs(5)).await {
        Err(OutboxError::Corrupt { id, .. }) => assert_eq!(id, "not-a-uuid"),
        other => panic!("{other:?}"),
    }
}
