//! The pessimistic helpers, for rows where conflicts are the rule: 16 writers decrementing
//! one stock counter never oversell and never lose a decrement, and a PostgreSQL lock that
//! cannot be had within its timeout fails as a lock timeout.

use std::sync::Arc;
use std::time::Duration;

use oncely_conditional::{postgres, sqlite, Table, Timestamp, WriteGuard};

const STOCK: Table = Table::new("stock", "sku", "available");

fn available(row: &rusqlite::Row<'_>) -> rusqlite::Result<i64> {
    row.get(0)
}

#[test]
fn immediate_transactions_never_oversell_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stock.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE stock (sku TEXT PRIMARY KEY, available INTEGER NOT NULL,
             version INTEGER NOT NULL, changed_at INTEGER NOT NULL, changed_by TEXT);
         INSERT INTO stock VALUES ('book', 50, 1, 0, NULL);",
    )
    .unwrap();
    let path = Arc::new(path);
    let threads: Vec<_> = (0..16)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut conn = rusqlite::Connection::open(path.as_ref()).unwrap();
                conn.busy_timeout(Duration::from_secs(10)).unwrap();
                let mut sold = 0;
                for _ in 0..5 {
                    // Read, decide, write: safe only because the write lock is held from the
                    // first read.
                    let took = sqlite::immediate(&mut conn, |tx| -> rusqlite::Result<bool> {
                        let row = sqlite::read(tx, &STOCK, &"book", available)?.unwrap();
                        if row.value == 0 {
                            return Ok(false);
                        }
                        let change = sqlite::Change {
                            by: None,
                            at: Timestamp(1),
                        };
                        sqlite::update(
                            tx,
                            &STOCK,
                            &"book",
                            &WriteGuard::default(),
                            "available = ?1",
                            &[&(row.value - 1)],
                            change,
                            available,
                        )
                        .map_err(|e| match e {
                            oncely_conditional::WriteError::Database(e) => e,
                            other => panic!("{other}"),
                        })?;
                        Ok(true)
                    })
                    .unwrap();
                    sold += i64::from(took);
                }
                sold
            })
        })
        .collect();
    let sold: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
    let left = sqlite::read(&conn, &STOCK, &"book", available)
        .unwrap()
        .unwrap();
    assert_eq!(sold, 50, "80 attempts on 50 items: exactly 50 sold");
    assert_eq!(left.value, 0, "none oversold, none lost");
    assert_eq!(left.revision.version, 51);
}

#[tokio::test]
async fn a_lock_that_cannot_be_had_times_out_on_postgres() {
    let Some(url) = oncely_testkit::services::Service::Postgres
        .available("a_lock_that_cannot_be_had_times_out_on_postgres")
    else {
        return;
    };
    let name: &'static str =
        Box::leak(oncely_testkit::services::unique_name("stock").into_boxed_str());
    let table = Table::new(name, "sku", "available");
    let connect = || async {
        let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        c
    };
    let mut holder = connect().await;
    let mut waiter = connect().await;
    holder
        .batch_execute(&format!(
            "CREATE TABLE {name} (sku TEXT PRIMARY KEY, available BIGINT NOT NULL,
                 version BIGINT NOT NULL, changed_at BIGINT NOT NULL, changed_by TEXT);
             INSERT INTO {name} VALUES ('book', 3, 1, 0, NULL);"
        ))
        .await
        .unwrap();
    let pg = |row: &tokio_postgres::Row| row.try_get::<_, i64>(0);
    let held = holder.transaction().await.unwrap();
    let row = postgres::lock(&held, &table, &"book", Duration::from_secs(1), pg)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.value, 3);

    let tx = waiter.transaction().await.unwrap();
    let started = std::time::Instant::now();
    let e = postgres::lock(&tx, &table, &"book", Duration::from_millis(100), pg)
        .await
        .unwrap_err();
    assert!(postgres::is_lock_timeout(&e), "{e}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(tx);

    held.rollback().await.unwrap();
    let tx = waiter.transaction().await.unwrap();
    let row = postgres::lock(&tx, &table, &"book", Duration::from_millis(100), pg)
        .await
        .unwrap();
    assert_eq!(
        row.map(|r| r.value),
        Some(3),
        "free once the holder is done"
    );
    tx.rollback().await.unwrap();
    holder
        .batch_execute(&format!("DROP TABLE {name}"))
        .await
        .unwrap();
}
