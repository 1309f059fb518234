//! Group commit for the two writes every keyed request makes: the claim of a new key and the
//! completion.
//!
//! Each request arriving alone would cost the database one statement and one commit (a WAL
//! flush) per write. Instead, callers queue their write and a few workers each take whatever
//! is queued at that moment and apply it in **one** statement (`unnest` over arrays): one
//! parse, one plan, one commit for the whole batch. Under load batches grow by themselves
//! (while a worker waits for its commit, the next batch queues); alone, a write waits for
//! nobody.
//!
//! The batch statements are the single-row statements over arrays, so every row keeps the
//! same atomic condition: a new key is inserted `ON CONFLICT DO NOTHING` (a row that did not
//! insert goes back to its caller, who runs the contended claim), a completion updates only
//! the live row holding that token (a row that did not match goes back to its caller, who
//! asks why). No caller hears "done" before the statement holding its row committed.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::codec::{no_answer, unavailable};
use crate::schema::quoted;
use oncely_store::{StoreError, StoreResult};

/// The most writes one statement carries: bounds the statement's size (bodies travel in it)
/// and how long one commit holds its row locks.
const MAX_BATCH: usize = 64;

/// A claim of a key nobody holds (yet).
pub(crate) struct NewClaim {
    pub tenant: String,
    pub method: String,
    pub route: String,
    pub idem_key: String,
    pub fingerprint: Vec<u8>,
    pub token: Vec<u8>,
    pub ttl_ms: i64,
    pub lease_ms: i64,
    /// The caller's now on a local clock, `None` for the database's.
    pub now: Option<i64>,
}

pub(crate) struct Completion {
    pub tenant: String,
    pub method: String,
    pub route: String,
    pub idem_key: String,
    pub token: Vec<u8>,
    pub status: i16,
    pub headers: Vec<u8>,
    pub body: Vec<u8>,
    pub ttl_ms: i64,
    pub now: Option<i64>,
}

enum Write {
    /// Answers the lease expiry if inserted, `None` if the key exists.
    Claim(NewClaim, oneshot::Sender<StoreResult<Option<i64>>>),
    /// Answers whether the completion was applied.
    Complete(Box<Completion>, oneshot::Sender<StoreResult<bool>>),
}

#[derive(Clone)]
pub(crate) struct Batcher {
    queue: mpsc::UnboundedSender<Write>,
    timeout: Duration,
}

struct Statements {
    claims: String,
    completions: String,
}

/// `COALESCE(now, database now)` per row, in milliseconds.
const ROW_NOW: &str = "COALESCE(i.now, floor(extract(epoch FROM now()) * 1000)::int8)";

impl Statements {
    fn new(schema: &str) -> Statements {
        let table = format!("{}.idempotency_records", quoted(schema));
        Statements {
            claims: format!(
                "INSERT INTO {table} AS r (tenant, method, route, idem_key, fingerprint,
                        created_at, expires_at, state, lease_token, lease_expires_at)
                 SELECT i.tenant, i.method, i.route, i.idem_key, i.fp,
                        {ROW_NOW}, {ROW_NOW} + i.ttl, 0, i.token, {ROW_NOW} + i.lease
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                               $6::bytea[], $7::int8[], $8::int8[], $9::int8[])
                        AS i(tenant, method, route, idem_key, fp, token, ttl, lease, now)
                 ON CONFLICT (tenant, method, route, idem_key) DO NOTHING
                 RETURNING r.lease_token, r.lease_expires_at"
            ),
            completions: format!(
                "UPDATE {table} r SET state = 1, lease_token = NULL, lease_expires_at = NULL,
                        status = i.status, headers = i.headers, body = i.body,
                        expires_at = GREATEST({ROW_NOW} + i.ttl, r.expires_at)
                   FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                               $6::int2[], $7::bytea[], $8::bytea[], $9::int8[], $10::int8[])
                        AS i(tenant, method, route, idem_key, token, status, headers, body,
                             ttl, now)
                  WHERE r.tenant = i.tenant AND r.method = i.method AND r.route = i.route
                    AND r.idem_key = i.idem_key AND r.expires_at > {ROW_NOW}
                    AND r.state = 0 AND r.lease_token = i.token
                 RETURNING i.token"
            ),
        }
    }
}

impl Batcher {
    /// Starts `workers` workers on `pool`. They end when the last `Batcher` clone is dropped.
    pub(crate) fn start(pool: Pool, schema: &str, workers: usize, timeout: Duration) -> Batcher {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(Mutex::new(rx));
        let sql = Arc::new(Statements::new(schema));
        for _ in 0..workers.max(1) {
            tokio::spawn(worker(pool.clone(), rx.clone(), sql.clone(), timeout));
        }
        Batcher { queue: tx, timeout }
    }

    /// Inserts a new record; `Ok(None)` if the key already has one.
    pub(crate) async fn claim_new(&self, claim: NewClaim) -> StoreResult<Option<i64>> {
        let (tx, rx) = oneshot::channel();
        self.send(Write::Claim(claim, tx), rx).await
    }

    /// Completes the record held with the token; `Ok(false)` if it was not applied.
    pub(crate) async fn complete(&self, completion: Completion) -> StoreResult<bool> {
        let (tx, rx) = oneshot::channel();
        self.send(Write::Complete(Box::new(completion), tx), rx)
            .await
    }

    async fn send<T>(&self, write: Write, rx: oneshot::Receiver<StoreResult<T>>) -> StoreResult<T> {
        self.queue
            .send(write)
            .map_err(|_| StoreError::Unavailable("postgres: the store is shut down".into()))?;
        // The worker bounds its statement by the same timeout; this bounds the queueing too.
        match tokio::time::timeout(self.timeout * 2, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Unavailable(
                "postgres: the batch worker stopped".into(),
            )),
            Err(_) => Err(no_answer(oncely_db::postgres::NoAnswer {
                limit: self.timeout * 2,
            })),
        }
    }
}

async fn worker(
    pool: Pool,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<Write>>>,
    sql: Arc<Statements>,
    timeout: Duration,
) {
    loop {
        // Take everything queued right now (at least one), then let the next worker queue up
        // behind us while this batch commits.
        let mut batch = Vec::new();
        {
            let mut rx = queue.lock().await;
            match rx.recv().await {
                Some(w) => batch.push(w),
                None => return,
            }
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
        }
        let (mut claims, mut completions) = (Vec::new(), Vec::new());
        for w in batch {
            match w {
                Write::Claim(c, reply) => claims.push((c, reply)),
                Write::Complete(c, reply) => completions.push((c, reply)),
            }
        }
        let run = async {
            let client = pool.get().await.map_err(unavailable)?;
            if !claims.is_empty() {
                apply_claims(&client, &sql.claims, &mut claims).await;
            }
            if !completions.is_empty() {
                apply_completions(&client, &sql.completions, &mut completions).await;
            }
            Ok::<(), StoreError>(())
        };
        let failed = oncely_db::postgres::bounded(timeout, run, no_answer)
            .await
            .err();
        // Whoever was not answered (the connection or the timeout failed) hears why.
        if let Some(e) = failed {
            for (_, reply) in claims {
                let _ = reply.send(Err(e.clone()));
            }
            for (_, reply) in completions {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

type Pending<T, R> = Vec<(T, oneshot::Sender<StoreResult<R>>)>;

/// Runs the claims and answers every caller; answered entries are removed from `claims`.
async fn apply_claims(
    client: &deadpool_postgres::Object,
    sql: &str,
    claims: &mut Pending<NewClaim, Option<i64>>,
) {
    let tenants: Vec<&str> = claims.iter().map(|(c, _)| c.tenant.as_str()).collect();
    let methods: Vec<&str> = claims.iter().map(|(c, _)| c.method.as_str()).collect();
    let routes: Vec<&str> = claims.iter().map(|(c, _)| c.route.as_str()).collect();
    let keys: Vec<&str> = claims.iter().map(|(c, _)| c.idem_key.as_str()).collect();
    let fps: Vec<&[u8]> = claims
        .iter()
        .map(|(c, _)| c.fingerprint.as_slice())
        .collect();
    let tokens: Vec<&[u8]> = claims.iter().map(|(c, _)| c.token.as_slice()).collect();
    let ttls: Vec<i64> = claims.iter().map(|(c, _)| c.ttl_ms).collect();
    let leases: Vec<i64> = claims.iter().map(|(c, _)| c.lease_ms).collect();
    let nows: Vec<Option<i64>> = claims.iter().map(|(c, _)| c.now).collect();
    let result = async {
        let stmt = client.prepare_cached(sql).await?;
        client
            .query(
                &stmt,
                &[
                    &tenants, &methods, &routes, &keys, &fps, &tokens, &ttls, &leases, &nows,
                ],
            )
            .await
    }
    .await;
    match result {
        Ok(rows) => {
            let mut inserted = std::collections::HashMap::with_capacity(rows.len());
            for row in &rows {
                if let (Ok(token), Ok(lease)) =
                    (row.try_get::<_, Vec<u8>>(0), row.try_get::<_, i64>(1))
                {
                    inserted.insert(token, lease);
                }
            }
            for (c, reply) in claims.drain(..) {
                let _ = reply.send(Ok(inserted.get(&c.token).copied()));
            }
        }
        Err(e) => {
            let e = unavailable(e);
            for (_, reply) in claims.drain(..) {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Runs the completions and answers every caller; answered entries are removed.
async fn apply_completions(
    client: &deadpool_postgres::Object,
    sql: &str,
    completions: &mut Pending<Box<Completion>, bool>,
) {
    let tenants: Vec<&str> = completions.iter().map(|(c, _)| c.tenant.as_str()).collect();
    let methods: Vec<&str> = completions.iter().map(|(c, _)| c.method.as_str()).collect();
    let routes: Vec<&str> = completions.iter().map(|(c, _)| c.route.as_str()).collect();
    let keys: Vec<&str> = completions
        .iter()
        .map(|(c, _)| c.idem_key.as_str())
        .collect();
    let tokens: Vec<&[u8]> = completions
        .iter()
        .map(|(c, _)| c.token.as_slice())
        .collect();
    let statuses: Vec<i16> = completions.iter().map(|(c, _)| c.status).collect();
    let headers: Vec<&[u8]> = completions
        .iter()
        .map(|(c, _)| c.headers.as_slice())
        .collect();
    let bodies: Vec<&[u8]> = completions.iter().map(|(c, _)| c.body.as_slice()).collect();
    let ttls: Vec<i64> = completions.iter().map(|(c, _)| c.ttl_ms).collect();
    let nows: Vec<Option<i64>> = completions.iter().map(|(c, _)| c.now).collect();
    let result = async {
        let stmt = client.prepare_cached(sql).await?;
        client
            .query(
                &stmt,
                &[
                    &tenants, &methods, &routes, &keys, &tokens, &statuses, &headers, &bodies,
                    &ttls, &nows,
                ],
            )
            .await
    }
    .await;
    match result {
        Ok(rows) => {
            let applied: std::collections::HashSet<Vec<u8>> = rows
                .iter()
                .filter_map(|row| row.try_get::<_, Vec<u8>>(0).ok())
                .collect();
            for (c, reply) in completions.drain(..) {
                let _ = reply.send(Ok(applied.contains(&c.token)));
            }
        }
        Err(e) => {
            let e = unavailable(e);
            for (_, reply) in completions.drain(..) {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
