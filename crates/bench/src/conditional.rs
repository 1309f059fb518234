//! `oncely-bench --conditional`: what optimistic concurrency costs and what it buys.
//!
//! - **The guard's cost:** the same single-row updates, written blind (`UPDATE ... SET
//!   title = ? WHERE id = ?`, what a service without versions runs) and through
//!   `oncely_conditional`'s guarded update (the version in the `WHERE`, the version bumped,
//!   `changed_at`/`changed_by` set, the row returned), one after the other in one run, on
//!   SQLite and PostgreSQL.
//! - **Contention:** W writers doing read-modify-write on one row for the same time, each
//!   write guarded by the version it read. Attempts, successful writes (goodput) and the
//!   share refused as stale, as W grows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oncely_conditional::{postgres, sqlite, Table, Timestamp, WriteError, WriteGuard};

const ROWS: usize = 1000;

/// What one run measures.
pub(crate) struct Plan {
    pub(crate) duration: Duration,
    pub(crate) writers: Vec<usize>,
    pub(crate) postgres: Option<String>,
    pub(crate) dir: std::path::PathBuf,
}

fn guard(version: u64) -> WriteGuard {
    WriteGuard {
        must_exist: true,
        version_in: Some(vec![version]),
        ..WriteGuard::default()
    }
}

/// A new value on every write: SQLite writes an unchanged row far more cheaply, which would
/// flatter whichever side wrote the same value over and over.
fn title(n: u64) -> String {
    format!("t{n}")
}

fn change() -> sqlite::Change<'static> {
    sqlite::Change {
        by: Some("bench"),
        at: Timestamp(1),
    }
}

fn sqlite_title(row: &rusqlite::Row<'_>) -> rusqlite::Result<String> {
    row.get(0)
}

fn pg_title(row: &tokio_postgres::Row) -> Result<String, tokio_postgres::Error> {
    row.try_get(0)
}

const SCHEMA: &str = "(id TEXT PRIMARY KEY, title TEXT NOT NULL, version BIGINT NOT NULL,
                       changed_at BIGINT NOT NULL, changed_by TEXT)";

pub(crate) async fn run(plan: Plan) -> Result<(), String> {
    eprintln!(
        "conditional writes: {} s per measurement, writers {:?}",
        plan.duration.as_secs(),
        plan.writers
    );
    let mut cost_rows = Vec::new();
    let mut contention_rows = Vec::new();

    let path = plan.dir.join("conditional.db");
    let setup = open_sqlite(&path)?;
    setup
        .execute_batch(&format!("CREATE TABLE docs {SCHEMA};"))
        .map_err(|e| e.to_string())?;
    for i in 0..ROWS {
        setup
            .execute(
                "INSERT INTO docs VALUES (?1, 't', 1, 0, NULL)",
                [format!("d{i}")],
            )
            .map_err(|e| e.to_string())?;
    }
    drop(setup);
    eprintln!("running: SQLite, blind and guarded updates ...");
    let p = path.clone();
    let d = plan.duration;
    let (blind, guarded, blind_again) = tokio::task::spawn_blocking(move || sqlite_cost(&p, d))
        .await
        .map_err(|e| e.to_string())??;
    cost_rows.push(("SQLite, one connection", blind, guarded, blind_again));
    for &w in &plan.writers {
        eprintln!("running: SQLite, {w} writers on one row ...");
        let p = path.clone();
        let r = tokio::task::spawn_blocking(move || sqlite_contention(&p, w, d))
            .await
            .map_err(|e| e.to_string())??;
        contention_rows.push(("SQLite", w, r));
    }

    if let Some(url) = &plan.postgres {
        match pg_run(url, &plan, &mut cost_rows, &mut contention_rows).await {
            Ok(()) => {}
            Err(e) => eprintln!("skipped PostgreSQL: {e}"),
        }
    }

    println!();
    println!("| updates | blind µs/update | guarded µs/update | blind again µs/update | guarded / blind |");
    println!("|---|---:|---:|---:|---:|");
    for (name, a, g, b) in &cost_rows {
        let base = (a + b) / 2.0;
        println!(
            "| {name} | {a:.1} | {g:.1} | {b:.1} | {:.2} |",
            g / base.max(f64::MIN_POSITIVE)
        );
    }
    println!();
    println!(
        "| database | writers on one row | attempts/s | successful writes/s | refused as stale |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (db, w, r) in &contention_rows {
        let secs = plan.duration.as_secs_f64();
        println!(
            "| {db} | {w} | {:.0} | {:.0} | {:.1} % |",
            r.attempts as f64 / secs,
            r.writes as f64 / secs,
            100.0 * r.stale as f64 / (r.attempts.max(1)) as f64
        );
    }
    Ok(())
}

fn open_sqlite(path: &std::path::Path) -> Result<rusqlite::Connection, String> {
    let conn = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
    conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")
        .map_err(|e| e.to_string())?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(|e| e.to_string())?;
    Ok(conn)
}

const DOCS: Table = Table::new("docs", "id", "title");

/// µs per update: blind, guarded, blind again (the two blind runs bracket the guarded one,
/// so that drift shows).
fn sqlite_cost(path: &std::path::Path, d: Duration) -> Result<(f64, f64, f64), String> {
    let conn = open_sqlite(path)?;
    let ids: Vec<String> = (0..ROWS).map(|i| format!("d{i}")).collect();
    let blind = |conn: &rusqlite::Connection| -> Result<f64, String> {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed() < d {
            let id = &ids[n as usize % ROWS];
            conn.prepare_cached("UPDATE docs SET title = ?1 WHERE id = ?2")
                .and_then(|mut s| s.execute(rusqlite::params![title(n), id]))
                .map_err(|e| e.to_string())?;
            n += 1;
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64)
    };
    let first = blind(&conn)?;
    let mut versions = vec![1u64; ROWS];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < d {
        let i = n as usize % ROWS;
        let row = sqlite::update(
            &conn,
            &DOCS,
            &ids[i],
            &guard(versions[i]),
            "title = ?1",
            &[&title(n)],
            change(),
            sqlite_title,
        )
        .map_err(|e| e.to_string())?;
        versions[i] = row.revision.version;
        n += 1;
    }
    let guarded = started.elapsed().as_secs_f64() * 1e6 / n.max(1) as f64;
    let again = blind(&conn)?;
    Ok((first, guarded, again))
}

#[derive(Default)]
pub(crate) struct Contention {
    attempts: u64,
    writes: u64,
    stale: u64,
}

#[derive(Default)]
struct Counts {
    attempts: AtomicU64,
    writes: AtomicU64,
    stale: AtomicU64,
}

impl Counts {
    fn take(&self) -> Contention {
        Contention {
            attempts: self.attempts.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            stale: self.stale.load(Ordering::Relaxed),
        }
    }
}

fn sqlite_contention(
    path: &std::path::Path,
    writers: usize,
    d: Duration,
) -> Result<Contention, String> {
    let version = |conn: &rusqlite::Connection| -> Result<u64, String> {
        Ok(sqlite::read(conn, &DOCS, &"d0", sqlite_title)
            .map_err(|e| e.to_string())?
            .ok_or("the row is missing")?
            .revision
            .version)
    };
    let before = version(&open_sqlite(path)?)?;
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + d;
    let threads: Vec<_> = (0..writers)
        .map(|_| {
            let (path, counts) = (path.to_owned(), counts.clone());
            std::thread::spawn(move || -> Result<(), String> {
                let conn = open_sqlite(&path)?;
                while Instant::now() < deadline {
                    let current = sqlite::read(&conn, &DOCS, &"d0", sqlite_title)
                        .map_err(|e| e.to_string())?
                        .ok_or("the row is missing")?;
                    counts.attempts.fetch_add(1, Ordering::Relaxed);
                    match sqlite::update(
                        &conn,
                        &DOCS,
                        &"d0",
                        &guard(current.revision.version),
                        "title = ?1",
                        &[&"contended"],
                        change(),
                        sqlite_title,
                    ) {
                        Ok(_) => counts.writes.fetch_add(1, Ordering::Relaxed),
                        Err(WriteError::Stale(_)) => counts.stale.fetch_add(1, Ordering::Relaxed),
                        Err(e) => return Err(e.to_string()),
                    };
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| "a writer panicked".to_owned())??;
    }
    let counted = counts.take();
    no_write_lost(before, version(&open_sqlite(path)?)?, &counted)?;
    Ok(counted)
}

/// Every successful write moved the version by exactly one: none overwrote another.
fn no_write_lost(before: u64, after: u64, counted: &Contention) -> Result<(), String> {
    let moved = after.checked_sub(before);
    if moved == Some(counted.writes) {
        Ok(())
    } else {
        Err(format!(
            "lost update: the version went from {before} to {after} but {} writes succeeded",
            counted.writes
        ))
    }
}

async fn pg_connect(url: &str) -> Result<tokio_postgres::Client, String> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    tokio::spawn(conn);
    Ok(client)
}

type CostRow = (&'static str, f64, f64, f64);

async fn pg_run(
    url: &str,
    plan: &Plan,
    cost_rows: &mut Vec<CostRow>,
    contention_rows: &mut Vec<(&'static str, usize, Contention)>,
) -> Result<(), String> {
    let client = pg_connect(url).await?;
    let name: &'static str =
        Box::leak(format!("oncely_bench_docs_{}", std::process::id()).into_boxed_str());
    let table = Table::new(name, "id", "title");
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {name}; CREATE TABLE {name} {SCHEMA};
             INSERT INTO {name} SELECT 'd' || i, 't', 1, 0, NULL FROM generate_series(0, {}) i;",
            ROWS - 1
        ))
        .await
        .map_err(|e| e.to_string())?;
    let result = async {
        for concurrency in [1usize, 16] {
            eprintln!(
                "running: PostgreSQL, blind and guarded updates, {concurrency} connections ..."
            );
            let blind = pg_cost(url, &table, concurrency, plan.duration, false).await?;
            let guarded = pg_cost(url, &table, concurrency, plan.duration, true).await?;
            let again = pg_cost(url, &table, concurrency, plan.duration, false).await?;
            let label = if concurrency == 1 {
                "PostgreSQL, one connection"
            } else {
                "PostgreSQL, 16 connections (µs of wall time per update)"
            };
            cost_rows.push((label, blind, guarded, again));
        }
        for &w in &plan.writers {
            eprintln!("running: PostgreSQL, {w} writers on one row ...");
            contention_rows.push((
                "PostgreSQL",
                w,
                pg_contention(url, &table, w, plan.duration).await?,
            ));
        }
        Ok::<(), String>(())
    }
    .await;
    let _ = client
        .batch_execute(&format!("DROP TABLE IF EXISTS {name}"))
        .await;
    result
}

async fn pg_cost(
    url: &str,
    table: &Table,
    connections: usize,
    d: Duration,
    guarded: bool,
) -> Result<f64, String> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..connections {
        let client = pg_connect(url).await?;
        let table = *table;
        tasks.spawn(async move {
            // Each connection updates rows of its own, so that guarded writes never conflict.
            let mine: Vec<String> = (c..ROWS)
                .step_by(connections)
                .map(|i| format!("d{i}"))
                .collect();
            // The versions are known before the clock starts, as a client holding ETags
            // knows them.
            let mut versions = vec![1u64; mine.len()];
            if guarded {
                for (id, v) in mine.iter().zip(versions.iter_mut()) {
                    *v = postgres::read(&client, &table, id, pg_title)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or("row missing")?
                        .revision
                        .version;
                }
            }
            let blind = format!("UPDATE {} SET title = $1 WHERE id = $2", table.name);
            let mut n = 0usize;
            let started = Instant::now();
            while started.elapsed() < d {
                let i = n % mine.len();
                if guarded {
                    let row = postgres::update(
                        &client,
                        &table,
                        &mine[i],
                        &guard(versions[i]),
                        "title = $1",
                        &[&title(n as u64)],
                        change(),
                        pg_title,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    versions[i] = row.revision.version;
                } else {
                    client
                        .execute(&blind, &[&title(n as u64), &mine[i]])
                        .await
                        .map_err(|e| e.to_string())?;
                }
                n += 1;
            }
            Ok::<(usize, f64), String>((n, started.elapsed().as_secs_f64()))
        });
    }
    // Wall time per update, with `connections` running in parallel.
    let (mut total, mut seconds) = (0usize, 0f64);
    while let Some(r) = tasks.join_next().await {
        let (n, s) = r.map_err(|e| e.to_string())??;
        total += n;
        seconds = seconds.max(s);
    }
    Ok(seconds * 1e6 / total.max(1) as f64)
}

async fn pg_contention(
    url: &str,
    table: &Table,
    writers: usize,
    d: Duration,
) -> Result<Contention, String> {
    let probe = pg_connect(url).await?;
    let version = || async {
        Ok::<u64, String>(
            postgres::read(&probe, table, &"d0", pg_title)
                .await
                .map_err(|e| e.to_string())?
                .ok_or("the row is missing")?
                .revision
                .version,
        )
    };
    let before = version().await?;
    let counts = Arc::new(Counts::default());
    let deadline = Instant::now() + d;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..writers {
        let client = pg_connect(url).await?;
        let (table, counts) = (*table, counts.clone());
        tasks.spawn(async move {
            while Instant::now() < deadline {
                let current = postgres::read(&client, &table, &"d0", pg_title)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or("the row is missing")?;
                counts.attempts.fetch_add(1, Ordering::Relaxed);
                match postgres::update(
                    &client,
                    &table,
                    &"d0",
                    &guard(current.revision.version),
                    "title = $1",
                    &[&"contended"],
                    change(),
                    pg_title,
                )
                .await
                {
                    Ok(_) => counts.writes.fetch_add(1, Ordering::Relaxed),
                    Err(WriteError::Stale(_)) => counts.stale.fetch_add(1, Ordering::Relaxed),
                    Err(e) => return Err(e.to_string()),
                };
            }
            Ok::<(), String>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.map_err(|e| e.to_string())??;
    }
    let counted = counts.take();
    no_write_lost(before, version().await?, &counted)?;
    Ok(counted)
}
