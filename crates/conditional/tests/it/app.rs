//! The service under test: documents `{title, count}` at `/docs/{id}`, written with
//! `If-Match` (required), created with `If-None-Match: *`, and, as the control, `/blind/{id}`
//! which writes without any precondition, the way most services do.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::routing::{get, put};
use axum::{Extension, Json, Router};
use oncely_conditional::{
    postgres, sqlite, Conditional, ConflictStatus, Current, Refusal, Table, Versioned, WriteError,
    WriteGuard,
};
use oncely_core::{Clock, SystemClock};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Doc {
    pub(crate) title: String,
    pub(crate) count: i64,
}

#[derive(Clone)]
pub(crate) enum Db {
    Sqlite(Arc<Mutex<rusqlite::Connection>>),
    Postgres(Arc<tokio_postgres::Client>),
}

#[derive(Clone)]
struct App {
    db: Db,
    table: Table,
}

/// A fresh database of the kind asked for; `None` when PostgreSQL is not reachable (the
/// test is then skipped, or fails under ONCELY_REQUIRE_SERVICES=1).
pub(crate) enum Kind {
    Sqlite,
    Postgres,
}

pub(crate) struct Running {
    pub(crate) url: String,
    pub(crate) db: Db,
    pub(crate) table: Table,
    _dir: Option<tempfile::TempDir>,
    pg: Option<(String, String)>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some((url, table)) = &self.pg {
            let url = url.clone();
            let sql = format!("DROP TABLE IF EXISTS {table}");
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    if let Ok((c, conn)) =
                        tokio_postgres::connect(&url, tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        let _ = c.batch_execute(&sql).await;
                    }
                });
            })
            .join();
        }
    }
}

impl Running {
    pub(crate) fn doc_url(&self, id: &str) -> String {
        format!("{}/docs/{id}", self.url)
    }

    pub(crate) fn blind_url(&self, id: &str) -> String {
        format!("{}/blind/{id}", self.url)
    }

    /// The row as stored, read past the service.
    pub(crate) async fn stored(&self, id: &str) -> Option<Current<Doc>> {
        match &self.db {
            Db::Sqlite(c) => {
                sqlite::read(&c.lock().unwrap(), &self.table, &id, sqlite_doc).unwrap()
            }
            Db::Postgres(c) => postgres::read(c.as_ref(), &self.table, &id, pg_doc)
                .await
                .unwrap(),
        }
    }
}

pub(crate) async fn start(kind: Kind, test: &str, conflict: ConflictStatus) -> Option<Running> {
    start_with_layer(kind, test, conflict, None).await
}

/// The service, behind the idempotency layer when one is given.
pub(crate) async fn start_with_layer(
    kind: Kind,
    test: &str,
    conflict: ConflictStatus,
    idempotency: Option<oncely_http::IdempotencyLayer>,
) -> Option<Running> {
    let name: &'static str =
        Box::leak(oncely_testkit::services::unique_name("docs").into_boxed_str());
    let table = Table::new(name, "id", "title, count");
    let (db, dir, pg) = match kind {
        Kind::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            let conn = rusqlite::Connection::open(dir.path().join("docs.db")).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE {name} (id TEXT PRIMARY KEY, title TEXT NOT NULL,
                     count INTEGER NOT NULL, version INTEGER NOT NULL,
                     changed_at INTEGER NOT NULL, changed_by TEXT);"
            ))
            .unwrap();
            (Db::Sqlite(Arc::new(Mutex::new(conn))), Some(dir), None)
        }
        Kind::Postgres => {
            let url = oncely_testkit::services::Service::Postgres.available(test)?;
            let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .batch_execute(&format!(
                    "CREATE TABLE {name} (id TEXT PRIMARY KEY, title TEXT NOT NULL,
                         count BIGINT NOT NULL, version BIGINT NOT NULL,
                         changed_at BIGINT NOT NULL, changed_by TEXT)"
                ))
                .await
                .unwrap();
            (
                Db::Postgres(Arc::new(client)),
                None,
                Some((url, name.to_owned())),
            )
        }
    };
    let app = App {
        db: db.clone(),
        table,
    };
    let router = Router::new()
        .route("/docs/{id}", get(read_doc).put(put_doc).delete(delete_doc))
        .route("/blind/{id}", put(blind_put))
        .with_state(app)
        .layer(Extension(conflict));
    let router = match idempotency {
        Some(layer) => router.layer(layer),
        None => router,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Some(Running {
        url,
        db,
        table,
        _dir: dir,
        pg,
    })
}

pub(crate) fn sqlite_doc(row: &rusqlite::Row<'_>) -> rusqlite::Result<Doc> {
    Ok(Doc {
        title: row.get(0)?,
        count: row.get(1)?,
    })
}

pub(crate) fn pg_doc(row: &tokio_postgres::Row) -> Result<Doc, tokio_postgres::Error> {
    Ok(Doc {
        title: row.try_get(0)?,
        count: row.try_get(1)?,
    })
}

fn user(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn read_doc(
    State(app): State<App>,
    cond: Conditional,
    Path(id): Path<String>,
) -> Result<Versioned<Doc>, Refusal> {
    let current = match &app.db {
        Db::Sqlite(c) => sqlite::read(&c.lock().unwrap(), &app.table, &id, sqlite_doc)
            .map_err(|_| Refusal::Internal)?,
        Db::Postgres(c) => postgres::read(c.as_ref(), &app.table, &id, pg_doc)
            .await
            .map_err(|_| Refusal::Internal)?,
    };
    cond.read(current)
}

/// The handler the crate is for: one extractor, one guard, one helper call.
async fn put_doc(
    State(app): State<App>,
    cond: Conditional,
    Path(id): Path<String>,
    headers: HeaderMap,
    Json(doc): Json<Doc>,
) -> Result<Versioned<Doc>, Refusal> {
    let guard = cond.require()?;
    let created = guard.must_be_absent;
    let written = write(&app, &id, &guard, &doc, user(&headers).as_deref()).await;
    let answer = cond.written(written)?;
    Ok(if created { answer.created() } else { answer })
}

/// The control: the same write with no precondition, so whoever writes last wins.
async fn blind_put(
    State(app): State<App>,
    Path(id): Path<String>,
    Json(doc): Json<Doc>,
) -> Result<Versioned<Doc>, Refusal> {
    let written = write(&app, &id, &WriteGuard::default(), &doc, None).await;
    written.map(Versioned::ok).map_err(|_| Refusal::Internal)
}

async fn delete_doc(
    State(app): State<App>,
    cond: Conditional,
    Path(id): Path<String>,
) -> Result<axum::http::StatusCode, Refusal> {
    let guard = cond.require()?;
    let deleted: Result<Current<Doc>, WriteError<Doc, String>> = match &app.db {
        Db::Sqlite(c) => sqlite::delete(&c.lock().unwrap(), &app.table, &id, &guard, sqlite_doc)
            .map_err(|e| stringify_db(e, |e| e.to_string())),
        Db::Postgres(c) => postgres::delete(c.as_ref(), &app.table, &id, &guard, pg_doc)
            .await
            .map_err(|e| stringify_db(e, |e| e.to_string())),
    };
    cond.written(deleted)?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

fn stringify_db<T, E>(e: WriteError<T, E>, f: impl Fn(E) -> String) -> WriteError<T, String> {
    match e {
        WriteError::Stale(c) => WriteError::Stale(c),
        WriteError::Gone => WriteError::Gone,
        WriteError::Database(e) => WriteError::Database(f(e)),
    }
}

async fn write(
    app: &App,
    id: &str,
    guard: &WriteGuard,
    doc: &Doc,
    by: Option<&str>,
) -> Result<Current<Doc>, WriteError<Doc, String>> {
    let change = sqlite::Change {
        by,
        at: SystemClock.now(),
    };
    let id = id.to_owned();
    match &app.db {
        Db::Sqlite(c) => {
            let conn = c.lock().unwrap();
            let r = if guard.must_be_absent {
                sqlite::create(
                    &conn,
                    &app.table,
                    &id,
                    "?1, ?2",
                    &[&doc.title, &doc.count],
                    change,
                    sqlite_doc,
                )
            } else {
                sqlite::update(
                    &conn,
                    &app.table,
                    &id,
                    guard,
                    "title = ?1, count = ?2",
                    &[&doc.title, &doc.count],
                    change,
                    sqlite_doc,
                )
            };
            r.map_err(|e| stringify_db(e, |e| e.to_string()))
        }
        Db::Postgres(c) => {
            let r = if guard.must_be_absent {
                postgres::create(
                    c.as_ref(),
                    &app.table,
                    &id,
                    "$1, $2",
                    &[&doc.title, &doc.count],
                    change,
                    pg_doc,
                )
                .await
            } else {
                postgres::update(
                    c.as_ref(),
                    &app.table,
                    &id,
                    guard,
                    "title = $1, count = $2",
                    &[&doc.title, &doc.count],
                    change,
                    pg_doc,
                )
                .await
            };
            r.map_err(|e| stringify_db(e, |e| e.to_string()))
        }
    }
}
