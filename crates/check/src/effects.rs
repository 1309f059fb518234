//! How effects are counted: by a recording upstream put behind the target (a gateway or a
//! proxy), by asking a ledger URL the team exposes, or by a SQL query against the system's
//! own database.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::{Clock as _, SystemClock};

/// Counts how many times each reference took effect in the system under test.
#[async_trait]
pub trait Effects: Send + Sync {
    /// The counts of `references` (absent: none).
    async fn count(&self, references: &[String]) -> Result<BTreeMap<String, u64>, String>;
}

/// Whether something between two instants (ms since the epoch) explains why a target
/// forwarded a request it had already forwarded: a crash, an outage, a broken connection
/// to its upstream.
pub type Excuse = Arc<dyn Fn(i64, i64) -> bool + Send + Sync>;

/// How the recording upstream behaves.
#[derive(Clone, Default)]
pub struct RecorderOptions {
    /// Honour the `Idempotency-Key` the target forwards, as a service behind a gateway
    /// should, for deliveries this excuses: a second delivery of one key and reference
    /// answers the first answer without acting again if a crash or a fault came between
    /// the two. A gateway killed after its upstream acted and before it stored the answer
    /// forwards the request again once the lease ends; only such an upstream makes that
    /// safe (docs/contract.md). A second delivery nothing excuses is executed, as a bug of
    /// the target's, and shows as a second effect. The deliveries absorbed are counted.
    pub dedupe: Option<Excuse>,
    /// The share (0 to 1) of first deliveries answered 500 without acting: a transient
    /// failure the target must not store, or every retry of that key fails for ever. Which
    /// ones follows from the reference alone.
    pub errors: f64,
    /// How long to take over references of the timeout workload (`..._slow`), so that the
    /// attack's short first attempt gives up before the answer.
    pub slow: std::time::Duration,
}

#[derive(Default)]
struct Seen {
    /// Executions per reference.
    effects: BTreeMap<String, u64>,
    /// Deliveries per reference, executed or not.
    deliveries: BTreeMap<String, u64>,
    /// The first answer per (key, reference) and when it was given, for `dedupe`.
    answers: BTreeMap<(String, String), (String, i64)>,
    /// Deliveries answered from `answers`.
    absorbed: u64,
}

/// An upstream that executes every request it receives: it counts the references in their
/// bodies and answers 201 with a fresh id and the reference it saw, so that an execution
/// repeated behind the target also shows as a different answer.
#[derive(Default)]
pub struct Recorder {
    options: RecorderOptions,
    seen: Mutex<Seen>,
}

impl Recorder {
    /// A recorder that behaves as `options` say.
    pub fn new(options: RecorderOptions) -> Recorder {
        Recorder {
            options,
            seen: Mutex::default(),
        }
    }

    /// The router to serve (any method, any path).
    pub fn router(self: &Arc<Self>) -> Router {
        let me = self.clone();
        Router::new().fallback(move |headers: http::HeaderMap, body: Bytes| {
            let me = me.clone();
            async move { me.deliver(&headers, &body).await.into_response() }
        })
    }

    async fn deliver(&self, headers: &http::HeaderMap, body: &[u8]) -> impl IntoResponse {
        let answer = self.act(headers, body);
        if find_reference(&String::from_utf8_lossy(body)).is_some_and(|r| r.ends_with("_slow")) {
            // The work is done; only the answer is slow (a client that gives up now does
            // not know whether it happened).
            tokio::time::sleep(self.options.slow).await;
        }
        answer
    }

    fn act(&self, headers: &http::HeaderMap, body: &[u8]) -> impl IntoResponse {
        let json = [(http::header::CONTENT_TYPE, "application/json")];
        let text = String::from_utf8_lossy(body);
        let reference = find_reference(&text);
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let mut seen = self.seen.lock_ignoring_poison();
        let Some(r) = reference else {
            return (
                StatusCode::CREATED,
                json,
                r#"{"reference":null}"#.to_owned(),
            );
        };
        let deliveries = {
            let n = seen.deliveries.entry(r.clone()).or_default();
            *n += 1;
            *n
        };
        let now = SystemClock.now().as_millis();
        if let (Some(excuse), Some(k)) = (&self.options.dedupe, &key) {
            if let Some((first, at)) = seen.answers.get(&(k.clone(), r.clone())).cloned() {
                if excuse(at, now) {
                    seen.absorbed += 1;
                    return (StatusCode::CREATED, json, first);
                }
            }
        }
        if deliveries == 1 && fails_first(&r, self.options.errors) {
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                json,
                r#"{"error":"transient"}"#.to_owned(),
            );
        }
        *seen.effects.entry(r.clone()).or_default() += 1;
        let id = format!("ex_{:016x}", rand::random::<u64>());
        let answer = serde_json::json!({ "id": id, "reference": r }).to_string();
        if let (Some(_), Some(k)) = (&self.options.dedupe, key) {
            seen.answers.insert((k, r), (answer.clone(), now));
        }
        (StatusCode::CREATED, json, answer)
    }

    /// Executions per reference so far.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.seen.lock_ignoring_poison().effects.clone()
    }

    /// Deliveries answered from an earlier execution of the same key (with `dedupe`).
    pub fn absorbed(&self) -> u64 {
        self.seen.lock_ignoring_poison().absorbed
    }
}

#[async_trait]
impl Effects for Recorder {
    async fn count(&self, references: &[String]) -> Result<BTreeMap<String, u64>, String> {
        let all = self.counts();
        Ok(references
            .iter()
            .filter_map(|r| all.get(r).map(|n| (r.clone(), *n)))
            .collect())
    }
}

/// A ledger the team exposes: `GET {url}?reference=R` answers the number of effects of `R`
/// (a JSON number, `{"count": n}`, or an array of the effects).
pub struct Ledger {
    url: String,
    http: reqwest::Client,
}

impl Ledger {
    /// The ledger at `url`.
    pub fn new(url: &str) -> Ledger {
        Ledger {
            url: url.to_owned(),
            // A ledger that hangs must not hang the verdict.
            http: reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }
}

#[async_trait]
impl Effects for Ledger {
    async fn count(&self, references: &[String]) -> Result<BTreeMap<String, u64>, String> {
        let mut counts = BTreeMap::new();
        for r in references {
            let answer = self
                .http
                .get(&self.url)
                .query(&[("reference", r)])
                .send()
                .await
                .map_err(|e| format!("the ledger {}: {e}", self.url))?;
            let status = answer.status();
            let body = answer
                .bytes()
                .await
                .map_err(|e| format!("the ledger {}: {e}", self.url))?;
            if !status.is_success() {
                return Err(format!("the ledger {} answered {status} for {r}", self.url));
            }
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| format!("the ledger's answer for {r} is not JSON: {e}"))?;
            let n = v
                .as_u64()
                .or_else(|| v["count"].as_u64())
                .or_else(|| v.as_array().map(|a| a.len() as u64))
                .ok_or_else(|| format!("the ledger's answer for {r} has no count: {v}"))?;
            if n > 0 {
                counts.insert(r.clone(), n);
            }
        }
        Ok(counts)
    }
}

/// Whether the first delivery of `reference` is answered 500, for a share `rate` of them.
fn fails_first(reference: &str, rate: f64) -> bool {
    use sha2::Digest as _;
    let d = sha2::Sha256::digest(reference.as_bytes());
    let draw = u16::from_be_bytes([d[0], d[1]]) as f64 / 65536.0;
    draw < rate
}

/// The check's references look like `chk_<run>_<n>_<variant>`: the first one in `text`.
pub fn find_reference(text: &str) -> Option<String> {
    let start = text.find("chk_")?;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}

/// The system's own database: a query that takes a reference as its one parameter (`$1`, or
/// `?1` on SQLite) and answers the number of its effects, say
/// `SELECT count(*) FROM charges WHERE reference = $1`.
pub struct SqlCount {
    query: String,
    db: Db,
}

enum Db {
    Sqlite(std::path::PathBuf),
    Postgres(deadpool_postgres::Pool),
}

impl SqlCount {
    /// Counts with `query` in the database at `url` (`sqlite://PATH` or `postgres://...`).
    pub fn open(url: &str, query: &str) -> Result<SqlCount, String> {
        let db = if let Some(path) = url.strip_prefix("sqlite://") {
            Db::Sqlite(path.into())
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let opts = oncely_db::postgres::PgOptions::from_url(url)?;
            Db::Postgres(oncely_db::postgres::pool(&opts)?)
        } else {
            return Err(format!(
                "--effects-db {url}: expected sqlite://PATH or postgres://..."
            ));
        };
        Ok(SqlCount {
            query: query.to_owned(),
            db,
        })
    }
}

#[async_trait]
impl Effects for SqlCount {
    async fn count(&self, references: &[String]) -> Result<BTreeMap<String, u64>, String> {
        let mut counts = BTreeMap::new();
        match &self.db {
            Db::Sqlite(path) => {
                let (path, query, refs) = (path.clone(), self.query.clone(), references.to_vec());
                counts = tokio::task::spawn_blocking(move || sqlite_counts(&path, &query, &refs))
                    .await
                    .map_err(|e| e.to_string())??;
            }
            Db::Postgres(pool) => {
                let client = pool
                    .get()
                    .await
                    .map_err(|e| format!("the effects database: {e}"))?;
                let statement = client
                    .prepare(&self.query)
                    .await
                    .map_err(|e| format!("the effects query: {}", oncely_db::describe(&e)))?;
                for r in references {
                    let row = client.query_one(&statement, &[r]).await.map_err(|e| {
                        format!("the effects query for {r}: {}", oncely_db::describe(&e))
                    })?;
                    let n: i64 = row
                        .try_get(0)
                        .map_err(|e| format!("the effects query must answer one integer: {e}"))?;
                    if n > 0 {
                        counts.insert(r.clone(), n as u64);
                    }
                }
            }
        }
        Ok(counts)
    }
}

fn sqlite_counts(
    path: &std::path::Path,
    query: &str,
    references: &[String],
) -> Result<BTreeMap<String, u64>, String> {
    // Read-only: the check looks at the system's data, it never writes to it.
    let conn =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| format!("the effects database {}: {e}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(|e| e.to_string())?;
    let mut statement = conn
        .prepare(query)
        .map_err(|e| format!("the effects query: {e}"))?;
    let mut counts = BTreeMap::new();
    for r in references {
        let n: i64 = statement
            .query_row([r], |row| row.get(0))
            .map_err(|e| format!("the effects query for {r} (it must answer one integer): {e}"))?;
        if n > 0 {
            counts.insert(r.clone(), n as u64);
        }
    }
    Ok(counts)
}
