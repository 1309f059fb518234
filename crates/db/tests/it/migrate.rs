//! What every concern relies on when it migrates: each step once, in order, under
//! concurrency; a failing step leaves nothing of its run; a newer database is refused; two
//! concerns in one database keep their own versions.

use oncely_db::migrate::{Migration, MigrationError, Migrations};
use oncely_testkit::services::{drop_postgres_schemas, unique_name, Service};

const STEPS: &[Migration] = &[
    Migration {
        version: 1,
        description: "widgets",
        sql: "CREATE TABLE {schema}.widgets (id INTEGER PRIMARY KEY)",
    },
    Migration {
        version: 2,
        description: "widget names",
        sql: "ALTER TABLE {schema}.widgets ADD COLUMN name TEXT",
    },
];

/// A step 2 whose second statement fails: the first must not survive it.
const BROKEN: &[Migration] = &[
    STEPS[0],
    Migration {
        version: 2,
        description: "half a change",
        sql: "CREATE TABLE {schema}.gadgets (id INTEGER); SELECT * FROM {schema}.no_such_table",
    },
];

fn concern(name: &'static str, steps: &'static [Migration]) -> Migrations {
    Migrations {
        concern: name,
        steps,
    }
}

/// The statements as SQLite runs them: no schema prefix (one file is one namespace).
fn sqlite_steps(steps: &'static [Migration]) -> &'static [Migration] {
    let owned: Vec<Migration> = steps
        .iter()
        .map(|m| Migration {
            sql: Box::leak(m.sql.replace("{schema}.", "").into_boxed_str()),
            ..*m
        })
        .collect();
    Box::leak(owned.into_boxed_slice())
}

fn sqlite_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    (dir, path)
}

fn open(path: &std::path::Path) -> rusqlite::Connection {
    oncely_db::sqlite::open(
        path,
        oncely_db::sqlite::OpenOptions::new(std::time::Duration::from_secs(10)),
    )
    .unwrap()
}

#[test]
fn sqlite_applies_each_step_once_and_upgrades_in_place() {
    let (_dir, path) = sqlite_file();
    let mut conn = open(&path);
    let steps = sqlite_steps(STEPS);
    let first = oncely_db::sqlite::migrate(&mut conn, &concern("widgets", &steps[..1])).unwrap();
    assert_eq!((first.from, first.to, first.applied.len()), (0, 1, 1));
    // A later build appends step 2: only it runs.
    let upgrade = oncely_db::sqlite::migrate(&mut conn, &concern("widgets", steps)).unwrap();
    assert_eq!((upgrade.from, upgrade.to), (1, 2), "{upgrade}");
    assert_eq!(upgrade.applied, vec!["2: widget names".to_owned()]);
    let again = oncely_db::sqlite::migrate(&mut conn, &concern("widgets", steps)).unwrap();
    assert!(again.was_up_to_date(), "{again}");
    conn.execute("INSERT INTO widgets (id, name) VALUES (1, 'a')", [])
        .unwrap();
}

#[test]
fn sqlite_keeps_nothing_of_a_failed_run() {
    let (_dir, path) = sqlite_file();
    let mut conn = open(&path);
    let err = oncely_db::sqlite::migrate(&mut conn, &concern("widgets", sqlite_steps(BROKEN)))
        .unwrap_err();
    assert!(
        matches!(&err, MigrationError::Failed { version: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no_such_table"), "{err}");
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('widgets', 'gadgets')",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        tables, 0,
        "step 1 and half of step 2 were rolled back with the run"
    );
    // Fixed, the same file migrates.
    let fixed =
        oncely_db::sqlite::migrate(&mut conn, &concern("widgets", sqlite_steps(STEPS))).unwrap();
    assert_eq!((fixed.from, fixed.to), (0, 2));
}

#[test]
fn sqlite_concerns_sharing_a_file_keep_their_own_versions() {
    let (_dir, path) = sqlite_file();
    let mut conn = open(&path);
    let steps = sqlite_steps(STEPS);
    oncely_db::sqlite::migrate(&mut conn, &concern("widgets", steps)).unwrap();
    let other: &'static [Migration] = Box::leak(Box::new([Migration {
        version: 1,
        description: "sprockets",
        sql: "CREATE TABLE sprockets (id INTEGER)",
    }]));
    let report = oncely_db::sqlite::migrate(&mut conn, &concern("sprockets", other)).unwrap();
    assert_eq!((report.from, report.to), (0, 1));
    assert!(
        oncely_db::sqlite::migrate(&mut conn, &concern("widgets", steps))
            .unwrap()
            .was_up_to_date()
    );
}

#[test]
fn sqlite_refuses_a_file_migrated_by_a_newer_build() {
    let (_dir, path) = sqlite_file();
    let mut conn = open(&path);
    let steps = sqlite_steps(STEPS);
    oncely_db::sqlite::migrate(&mut conn, &concern("widgets", steps)).unwrap();
    let err = oncely_db::sqlite::migrate(&mut conn, &concern("widgets", &steps[..1])).unwrap_err();
    assert_eq!(
        err,
        MigrationError::Newer {
            concern: "widgets",
            found: 2,
            latest: 1
        }
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn sqlite_processes_opening_a_new_file_at_once_apply_each_step_once() {
    let (_dir, path) = sqlite_file();
    let steps = sqlite_steps(STEPS);
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut conn = open(&path);
                oncely_db::sqlite::migrate(&mut conn, &concern("widgets", steps)).unwrap()
            })
        })
        .collect();
    let applied: usize = threads
        .into_iter()
        .map(|t| t.join().unwrap().applied.len())
        .sum();
    assert_eq!(applied, 2, "each step once, across all openers");
}

/// A schema of its own on the test PostgreSQL, dropped when the test ends.
struct Schema(String);

impl Drop for Schema {
    fn drop(&mut self) {
        drop_postgres_schemas(&Service::Postgres.url(), std::slice::from_ref(&self.0));
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_applies_each_step_once_under_concurrency_and_upgrades_in_place() {
    let url = oncely_testkit::require_service!(
        Service::Postgres,
        "postgres_applies_each_step_once_under_concurrency_and_upgrades_in_place"
    );
    let schema = Schema(unique_name("oncely_migrate"));
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let (url, name) = (url.clone(), schema.0.clone());
        tasks.push(tokio::spawn(async move {
            let mut client = connect(&url).await;
            oncely_db::postgres::migrate(&mut client, &name, &concern("widgets", &STEPS[..1]))
                .await
                .unwrap()
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.unwrap().applied.len();
    }
    assert_eq!(applied, 1, "step 1 once, across six starters");

    let mut client = connect(&url).await;
    let upgrade = oncely_db::postgres::migrate(&mut client, &schema.0, &concern("widgets", STEPS))
        .await
        .unwrap();
    assert_eq!((upgrade.from, upgrade.to), (1, 2), "{upgrade}");
    assert_eq!(upgrade.applied, vec!["2: widget names".to_owned()]);
    client
        .batch_execute(&format!(
            "INSERT INTO \"{}\".widgets (id, name) VALUES (1, 'a')",
            schema.0
        ))
        .await
        .unwrap();

    // Another concern in the same schema starts at 0; this one stays at 2.
    let other = oncely_db::postgres::migrate(
        &mut client,
        &schema.0,
        &concern(
            "sprockets",
            Box::leak(Box::new([Migration {
                version: 1,
                description: "sprockets",
                sql: "CREATE TABLE {schema}.sprockets (id int)",
            }])),
        ),
    )
    .await
    .unwrap();
    assert_eq!((other.from, other.to), (0, 1));
    let err =
        oncely_db::postgres::migrate(&mut client, &schema.0, &concern("widgets", &STEPS[..1]))
            .await
            .unwrap_err();
    assert!(
        matches!(
            err,
            MigrationError::Newer {
                found: 2,
                latest: 1,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_nothing_of_a_failed_run() {
    let url = oncely_testkit::require_service!(
        Service::Postgres,
        "postgres_keeps_nothing_of_a_failed_run"
    );
    let schema = Schema(unique_name("oncely_migrate"));
    let mut client = connect(&url).await;
    let err = oncely_db::postgres::migrate(&mut client, &schema.0, &concern("widgets", BROKEN))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MigrationError::Failed { version: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("no_such_table"), "{err}");
    let row = client
        .query_one(
            "SELECT to_regclass($1) IS NULL AND to_regclass($2) IS NULL",
            &[
                &format!("\"{}\".widgets", schema.0),
                &format!("\"{}\".gadgets", schema.0),
            ],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "the whole run was rolled back");
    let err = oncely_db::postgres::migrate(&mut client, "Not Valid", &concern("widgets", STEPS))
        .await
        .unwrap_err();
    assert!(matches!(err, MigrationError::Database { .. }), "{err}");
}
