//! The inbox on both databases: eight concurrent deliveries of one message apply its effect
//! once, a failed effect is applied by the next delivery, the classic bug (insert ignored,
//! effect run anyway) is shown to apply it eight times, and old ids are purged.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oncely_core::Timestamp;
use oncely_outbox::inbox::postgres::PgInbox;
use oncely_outbox::inbox::{sqlite, Applied, InboxError, Receipt};
use oncely_testkit::services::{unique_name, Service};

fn open(path: &std::path::Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

fn balance(conn: &rusqlite::Connection) -> i64 {
    conn.query_row("SELECT amount FROM balance", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn sqlite_applies_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("consumer.db");
    let mut conn = open(&path);
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; CREATE TABLE balance (amount INTEGER NOT NULL);
         INSERT INTO balance VALUES (0);",
    )
    .unwrap();
    sqlite::migrate(&mut conn).unwrap();

    let applied = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let (path, applied) = (path.clone(), applied.clone());
            std::thread::spawn(move || {
                let mut conn = open(&path);
                let r = sqlite::apply_once(&mut conn, "ledger", "m1", Timestamp(1), |tx| {
                    tx.execute("UPDATE balance SET amount = amount + 10", [])
                        .map_err(|e| InboxError::Unavailable(e.to_string()))
                })
                .unwrap();
                if matches!(r, Applied::Now(_)) {
                    applied.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(applied.load(Ordering::SeqCst), 1);
    assert_eq!(balance(&conn), 10, "eight deliveries, one effect");

    // A failing effect rolls its insert back: the redelivery applies it.
    let failed: Result<Applied<()>, InboxError> =
        sqlite::apply_once(&mut conn, "ledger", "m2", Timestamp(2), |tx| {
            tx.execute("UPDATE balance SET amount = amount + 5", [])
                .unwrap();
            Err(InboxError::Unavailable("the effect failed".into()))
        });
    assert!(failed.is_err());
    assert_eq!(balance(&conn), 10, "rolled back with the id");
    let again = sqlite::apply_once(&mut conn, "ledger", "m2", Timestamp(3), |tx| {
        tx.execute("UPDATE balance SET amount = amount + 5", [])
            .map_err(|e| InboxError::Unavailable(e.to_string()))
    })
    .unwrap();
    assert_eq!(again, Applied::Now(1));
    assert_eq!(balance(&conn), 15);

    // Another consumer of the same message has an inbox row of its own.
    let other = sqlite::apply_once(&mut conn, "mailer", "m1", Timestamp(4), |_| {
        Ok::<_, InboxError>(())
    })
    .unwrap();
    assert_eq!(other, Applied::Now(()));

    // The classic bug, as a control: the insert is ignored and the effect runs anyway.
    for _ in 0..8 {
        let tx = conn.transaction().unwrap();
        tx.execute(
            "INSERT INTO oncely_inbox (consumer, message_id, received_at) VALUES ('buggy', 'm1', 0) \
             ON CONFLICT DO NOTHING",
            [],
        )
        .unwrap();
        tx.execute("UPDATE balance SET amount = amount + 100", [])
            .unwrap();
        tx.commit().unwrap();
    }
    assert_eq!(balance(&conn), 815, "the unguarded effect ran eight times");

    // Received before 3: ledger/m1 (1) and buggy/m1 (0); ledger/m2 (3) and mailer/m1 (4)
    // stay.
    assert_eq!(
        sqlite::purge(&conn, Timestamp(3), 1).unwrap(),
        1,
        "a batch at a time"
    );
    assert_eq!(sqlite::purge(&conn, Timestamp(3), 10).unwrap(), 1);
    let left: i64 = conn
        .query_row("SELECT count(*) FROM oncely_inbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_applies_each_message_once() {
    let Some(url) = Service::Postgres.available("postgres_applies_each_message_once") else {
        return;
    };
    let schema = unique_name("oncely_inbox");
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    };
    let mut admin = connect().await;
    let inbox = Arc::new(PgInbox::open(&mut admin, &schema).await.unwrap());
    admin
        .batch_execute(&format!(
            "CREATE TABLE \"{schema}\".balance (amount int8 NOT NULL); \
             INSERT INTO \"{schema}\".balance VALUES (0);"
        ))
        .await
        .unwrap();
    let update = format!("UPDATE \"{schema}\".balance SET amount = amount + 10");

    let firsts = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut client = connect().await;
        let (inbox, firsts, update) = (inbox.clone(), firsts.clone(), update.clone());
        tasks.spawn(async move {
            let tx = client.transaction().await.unwrap();
            if inbox.receive(&tx, "ledger", "m1").await.unwrap() == Receipt::First {
                tx.execute(&update, &[]).await.unwrap();
                // Slow enough that the other deliveries wait on the inserted id.
                tokio::time::sleep(Duration::from_millis(100)).await;
                firsts.fetch_add(1, Ordering::SeqCst);
            }
            tx.commit().await.unwrap();
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    let amount = |c: tokio_postgres::Row| c.get::<_, i64>(0);
    let read = format!("SELECT amount FROM \"{schema}\".balance");
    assert_eq!(firsts.load(Ordering::SeqCst), 1);
    assert_eq!(amount(admin.query_one(&read, &[]).await.unwrap()), 10);

    // A first delivery that rolls back leaves the message to the next.
    let mut a = connect().await;
    let tx = a.transaction().await.unwrap();
    assert_eq!(
        inbox.receive(&tx, "ledger", "m2").await.unwrap(),
        Receipt::First
    );
    tx.rollback().await.unwrap();
    let tx = a.transaction().await.unwrap();
    assert_eq!(
        inbox.receive(&tx, "ledger", "m2").await.unwrap(),
        Receipt::First
    );
    tx.commit().await.unwrap();
    let tx = a.transaction().await.unwrap();
    assert_eq!(
        inbox.receive(&tx, "ledger", "m2").await.unwrap(),
        Receipt::Duplicate
    );
    tx.commit().await.unwrap();

    assert_eq!(
        inbox.purge(&admin, Timestamp(i64::MAX), 1).await.unwrap(),
        1
    );
    assert_eq!(
        inbox.purge(&admin, Timestamp(i64::MAX), 10).await.unwrap(),
        1
    );
    oncely_testkit::services::drop_postgres_schemas(&url, &[schema]);
}
