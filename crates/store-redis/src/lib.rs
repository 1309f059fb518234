//! The Redis backend: many gateways on one Redis, or on Redis Cluster.
//!
//! - **One hash per record**, named `{prefix}:{<hash tag>}` where the tag is the hex SHA-256
//!   of the record key's parts (tenant, method, route, key, each length-prefixed, so no two
//!   keys collide whatever characters they hold). Every transition is one Lua script on that
//!   one key (`scripts.rs`): atomic, and runnable on Redis Cluster as it is.
//! - **The server's clock.** By default the scripts read Redis's `TIME`, so gateways whose own
//!   clocks disagree still agree on every lease and expiry. Tests inject a clock
//!   ([`TimeSource::Local`]).
//! - **Expiry.** Each record's key carries `PEXPIREAT` at the record's expiry, so Redis deletes
//!   finished records by itself; a record past its expiry but not yet evicted is treated as
//!   absent, as in the model.
//! - **Bounded.** Every command is bounded by `timeout`; past it, or while Redis is
//!   unreachable, the store is unavailable and the gateway answers 503. The connection
//!   reconnects by itself.
//!
//! # Durability: what Redis forgets, and what that means for duplicates
//!
//! Redis keeps records in memory. Without persistence (`--save "" --appendonly no`, the
//! development machines' setting) **a Redis restart forgets every record**: a retry of a
//! request that had completed executes again, i.e. a duplicate side effect, and keys in flight
//! are free at once. With `appendonly yes` and `appendfsync everysec` a crash of the Redis host
//! loses up to about a second of records; `appendfsync always` loses none, at one fsync per
//! write. Replication to replicas is asynchronous (`WAIT` is not used), so a failover can lose
//! the last writes the old primary acknowledged. Where a duplicate is expensive, prefer
//! PostgreSQL, or run Redis with `appendfsync always` and no failover.
//!
//! # Costs of the admin paths
//!
//! `purge_expired` and `stats` walk the prefix with `SCAN` (O(keys); on a cluster, the node the
//! connection reaches only). Purging is mostly Redis's own work here; the walk deletes records
//! that are logically expired but not yet evicted.

#![warn(missing_docs)]

mod options;
mod scripts;

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::{
    ClaimOutcome, Fingerprint, IdempotencyKey, LeaseToken, Record, RecordKey, RecordState, Refusal,
    StoredResponse, Tenant, Timestamp,
};
use oncely_store::{IdempotencyStore, StoreAdmin, StoreError, StoreResult, StoreStats, TimeSource};
use redis::aio::ConnectionManager;
use redis::Value;
use sha2::{Digest, Sha256};

pub use options::{RedisOptions, DEFAULT_PREFIX, DEFAULT_TIMEOUT};

/// Slack added to the physical expiry when the store runs on a local clock (see [`scripts`]).
const LOCAL_CLOCK_SLACK_MS: i64 = 60_000;

/// How many keys one `SCAN` step asks for.
const SCAN_COUNT: usize = 500;

struct Scripts {
    claim: redis::Script,
    complete: redis::Script,
    release: redis::Script,
    renew: redis::Script,
    get: redis::Script,
    purge_one: redis::Script,
    state: redis::Script,
    evict: redis::Script,
    in_progress: redis::Script,
}

/// Idempotency records in Redis, shared by any number of gateways.
pub struct RedisStore {
    /// One multiplexed connection per thread that uses the store, made there on first use:
    /// its driver task then runs on that thread's runtime, so a gateway worker's command and
    /// its answer never cross threads (measured: sharing one connection across the gateway's
    /// worker threads cost 40 % more CPU per keyed request).
    conns: std::sync::Mutex<std::collections::HashMap<std::thread::ThreadId, ConnectionManager>>,
    client: redis::Client,
    config: redis::aio::ConnectionManagerConfig,
    prefix: String,
    time: TimeSource,
    timeout: Duration,
    scripts: Scripts,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("redis: {e}"))
}

impl RedisStore {
    /// Connects (within the timeout) and returns the store.
    pub async fn connect(opts: RedisOptions, time: TimeSource) -> StoreResult<RedisStore> {
        let client = redis::Client::open(opts.url.as_str()).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(opts.timeout))
            .set_response_timeout(Some(opts.timeout))
            // Reconnect attempts back off up to a second: a returning Redis is used within
            // about a second, and a dead one is not hammered.
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            opts.timeout,
            ConnectionManager::new_with_config(client.clone(), config.clone()),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "no connection within {}ms",
                opts.timeout.as_millis()
            ))
        })?
        .map_err(unavailable)?;
        let conns = std::collections::HashMap::from([(std::thread::current().id(), conn)]);
        Ok(RedisStore {
            conns: std::sync::Mutex::new(conns),
            client,
            config,
            prefix: opts.prefix,
            time,
            timeout: opts.timeout,
            scripts: Scripts {
                claim: scripts::script(scripts::CLAIM),
                complete: scripts::script(scripts::COMPLETE),
                release: scripts::script(scripts::RELEASE),
                renew: scripts::script(scripts::RENEW),
                get: scripts::script(scripts::GET),
                purge_one: scripts::script(scripts::PURGE_ONE),
                state: scripts::script(scripts::STATE),
                evict: scripts::script(scripts::EVICT),
                in_progress: scripts::script(scripts::IN_PROGRESS),
            },
        })
    }

    /// This thread's connection, made (within the timeout) if it has none yet.
    async fn connection(&self) -> StoreResult<ConnectionManager> {
        let thread = std::thread::current().id();
        if let Some(c) = self.conns.lock_ignoring_poison().get(&thread) {
            return Ok(c.clone());
        }
        let conn = tokio::time::timeout(
            self.timeout,
            ConnectionManager::new_with_config(self.client.clone(), self.config.clone()),
        )
        .await
        .map_err(|_| {
            unavailable(format!(
                "no connection within {}ms",
                self.timeout.as_millis()
            ))
        })?
        .map_err(unavailable)?;
        self.conns
            .lock_ignoring_poison()
            .entry(thread)
            .or_insert(conn.clone());
        Ok(conn)
    }

    /// The Redis key holding `key`'s record.
    pub fn redis_key(&self, key: &RecordKey) -> String {
        redis_key(&self.prefix, key)
    }

    /// `ARGV[1]` and `ARGV[2]` of every script: the local now (or empty) and the slack.
    fn clock_args(&self) -> (String, i64) {
        match self.time.local_now() {
            Some(now) => (now.as_millis().to_string(), LOCAL_CLOCK_SLACK_MS),
            None => (String::new(), 0),
        }
    }

    /// Runs `script` on `key` with the clock arguments followed by `args`.
    async fn run(&self, script: &redis::Script, key: &str, args: &[&[u8]]) -> StoreResult<Value> {
        let (now, slack) = self.clock_args();
        let mut invocation = script.key(key);
        invocation.arg(now).arg(slack);
        for a in args {
            invocation.arg(*a);
        }
        let mut conn = self.connection().await?;
        tokio::time::timeout(self.timeout, invocation.invoke_async(&mut conn))
            .await
            .map_err(|_| unavailable(format!("no answer within {}ms", self.timeout.as_millis())))?
            .map_err(unavailable)
    }

    /// One `SCAN` step over this store's prefix: the next cursor (0 at the end) and keys.
    async fn scan_step(&self, cursor: u64) -> StoreResult<(u64, Vec<String>)> {
        let mut conn = self.connection().await?;
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(format!("{}:*", self.prefix))
            .arg("COUNT")
            .arg(SCAN_COUNT);
        tokio::time::timeout(self.timeout, scan.query_async(&mut conn))
            .await
            .map_err(|_| unavailable("SCAN timed out"))?
            .map_err(unavailable)
    }
}

/// `{prefix}:{hex}`: the braces make the whole digest the Redis Cluster hash tag.
fn redis_key(prefix: &str, key: &RecordKey) -> String {
    let mut h = Sha256::new();
    for part in [
        key.scope.tenant.as_str(),
        key.scope.method.as_str(),
        key.scope.route.as_str(),
        key.key.as_str(),
    ] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}:{{{hex}}}")
}

fn refusal_from(word: &[u8]) -> Option<Refusal> {
    match word {
        b"missing" => Some(Refusal::Missing),
        b"completed" => Some(Refusal::AlreadyCompleted),
        b"stale" => Some(Refusal::StaleToken),
        _ => None,
    }
}

fn bytes_of(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        other => std::str::from_utf8(bytes_of(other)?).ok()?.parse().ok(),
    }
}

/// The nine record fields (fp, created, expires, state, token, lease, status, headers, body).
fn record_from(fields: &[Value], what: &RecordKey) -> StoreResult<Record> {
    let corrupt =
        |field: &str, why: &str| StoreError::Corrupt(format!("{what}: field {field} {why}"));
    let field = |i: usize, name: &str| fields.get(i).ok_or_else(|| corrupt(name, "is missing"));
    let blob =
        |i: usize, name: &str| bytes_of(field(i, name)?).ok_or_else(|| corrupt(name, "is missing"));
    let int = |i: usize, name: &str| {
        int_of(field(i, name)?).ok_or_else(|| corrupt(name, "is not an integer"))
    };
    let fingerprint = blob(0, "fp")?
        .try_into()
        .map(Fingerprint)
        .map_err(|_| corrupt("fp", "is not 32 bytes"))?;
    let state = match blob(3, "state")? {
        b"p" => RecordState::InProgress {
            token: std::str::from_utf8(blob(4, "token")?)
                .ok()
                .and_then(LeaseToken::from_hex)
                .ok_or_else(|| corrupt("token", "is not a token"))?,
            lease_expires_at: Timestamp(int(5, "lease")?),
        },
        b"c" => RecordState::Completed {
            response: StoredResponse {
                status: u16::try_from(int(6, "status")?)
                    .ok()
                    .filter(|s| (100..=999).contains(s))
                    .ok_or_else(|| corrupt("status", "is not an HTTP status"))?,
                headers: StoredResponse::decode_headers(blob(7, "headers")?)
                    .ok_or_else(|| corrupt("headers", "does not decode"))?,
                body: Bytes::copy_from_slice(blob(8, "body")?),
            },
        },
        _ => return Err(corrupt("state", "is unknown")),
    };
    Ok(Record {
        fingerprint,
        created_at: Timestamp(int(1, "created")?),
        expires_at: Timestamp(int(2, "expires")?),
        state,
    })
}

fn millis(d: Duration) -> String {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).to_string()
}

/// The answer of complete and release: 'ok' or a refusal word.
fn verdict(v: &Value, key: &RecordKey) -> StoreResult<()> {
    match bytes_of(v) {
        Some(b"ok") => Ok(()),
        Some(word) => match refusal_from(word) {
            Some(r) => Err(StoreError::Refused(r)),
            None => Err(StoreError::Corrupt(format!("{key}: unexpected answer"))),
        },
        None => Err(StoreError::Corrupt(format!(
            "{key}: unexpected answer {v:?}"
        ))),
    }
}

#[async_trait]
impl IdempotencyStore for RedisStore {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
        ttl: Duration,
    ) -> StoreResult<ClaimOutcome> {
        let token = LeaseToken::random();
        let (ttl, lease) = (millis(ttl), millis(lease));
        let answer = self
            .run(
                &self.scripts.claim,
                &self.redis_key(key),
                &[
                    &fingerprint.0,
                    token.to_hex().as_bytes(),
                    ttl.as_bytes(),
                    lease.as_bytes(),
                    key.scope.tenant.as_str().as_bytes(),
                    key.scope.method.as_bytes(),
                    key.scope.route.as_bytes(),
                    key.key.as_str().as_bytes(),
                ],
            )
            .await?;
        let unexpected = || StoreError::Corrupt(format!("{key}: unexpected claim answer"));
        let Value::Array(items) = answer else {
            return Err(unexpected());
        };
        match items.first().and_then(int_of) {
            Some(1) => Ok(ClaimOutcome::Claimed {
                token,
                lease_expires_at: Timestamp(items.get(1).and_then(int_of).ok_or_else(unexpected)?),
                takeover: items.get(2).and_then(int_of) == Some(1),
            }),
            Some(0) => Ok(ClaimOutcome::Exists(record_from(&items[1..], key)?)),
            _ => Err(unexpected()),
        }
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> StoreResult<()> {
        let answer = self
            .run(
                &self.scripts.complete,
                &self.redis_key(key),
                &[
                    token.to_hex().as_bytes(),
                    response.status.to_string().as_bytes(),
                    &response.encode_headers(),
                    &response.body,
                    millis(ttl).as_bytes(),
                ],
            )
            .await?;
        verdict(&answer, key)
    }

    async fn release(&self, key: &RecordKey, token: LeaseToken) -> StoreResult<()> {
        let answer = self
            .run(
                &self.scripts.release,
                &self.redis_key(key),
                &[token.to_hex().as_bytes()],
            )
            .await?;
        verdict(&answer, key)
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        lease: Duration,
    ) -> StoreResult<Timestamp> {
        let answer = self
            .run(
                &self.scripts.renew,
                &self.redis_key(key),
                &[token.to_hex().as_bytes(), millis(lease).as_bytes()],
            )
            .await?;
        let unexpected = || StoreError::Corrupt(format!("{key}: unexpected renew answer"));
        let Value::Array(items) = answer else {
            return Err(unexpected());
        };
        match items.first().and_then(bytes_of) {
            Some(b"ok") => Ok(Timestamp(
                items.get(1).and_then(int_of).ok_or_else(unexpected)?,
            )),
            Some(word) => Err(StoreError::Refused(
                refusal_from(word).ok_or_else(unexpected)?,
            )),
            None => Err(unexpected()),
        }
    }

    async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
        match self
            .run(&self.scripts.get, &self.redis_key(key), &[])
            .await?
        {
            Value::Nil => Ok(None),
            Value::Array(fields) => record_from(&fields, key).map(Some),
            other => Err(StoreError::Corrupt(format!(
                "{key}: unexpected answer {other:?}"
            ))),
        }
    }
}

#[async_trait]
impl StoreAdmin for RedisStore {
    async fn purge_expired(&self, batch: usize) -> StoreResult<u64> {
        let mut purged = 0u64;
        let mut cursor = 0;
        while (purged as usize) < batch {
            let (next, keys) = self.scan_step(cursor).await?;
            for k in keys {
                if (purged as usize) >= batch {
                    break;
                }
                if let Value::Int(1) = self.run(&self.scripts.purge_one, &k, &[]).await? {
                    purged += 1;
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        Ok(purged)
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        let mut stats = StoreStats::default();
        let mut cursor = 0;
        loop {
            let (next, keys) = self.scan_step(cursor).await?;
            for k in keys {
                match self.run(&self.scripts.state, &k, &[]).await? {
                    Value::BulkString(s) if s == b"p" => stats.in_progress += 1,
                    Value::BulkString(s) if s == b"c" => stats.completed += 1,
                    _ => {}
                }
            }
            if next == 0 {
                return Ok(stats);
            }
            cursor = next;
        }
    }

    async fn evict(&self, key: &RecordKey) -> StoreResult<bool> {
        match self
            .run(&self.scripts.evict, &self.redis_key(key), &[])
            .await?
        {
            Value::Int(n) => Ok(n == 1),
            other => Err(StoreError::Corrupt(format!(
                "{key}: unexpected evict answer {other:?}"
            ))),
        }
    }

    /// A walk of the whole prefix (admin use only). Records claimed by a version that did not
    /// keep the key's parts are skipped: their key name is a digest that names nothing.
    async fn list_in_progress(&self, limit: usize) -> StoreResult<Vec<(RecordKey, Record)>> {
        let mut held = Vec::new();
        let mut cursor = 0;
        loop {
            let (next, keys) = self.scan_step(cursor).await?;
            for k in keys {
                let Value::Array(items) = self.run(&self.scripts.in_progress, &k, &[]).await?
                else {
                    continue;
                };
                let text = |i: usize| items.get(i).and_then(bytes_of).map(String::from_utf8_lossy);
                let (Some(t), Some(m), Some(r), Some(raw)) =
                    (text(9), text(10), text(11), text(12))
                else {
                    continue;
                };
                let idem = IdempotencyKey::new(&raw)
                    .map_err(|e| StoreError::Corrupt(format!("{k}: stored key: {e}")))?;
                let key = RecordKey::new(Tenant::from_stored(t.into_owned()), &m, &r, idem);
                let fields = items
                    .get(..9)
                    .ok_or_else(|| StoreError::Corrupt(format!("{k}: short answer")))?;
                let record = record_from(fields, &key)?;
                held.push((key, record));
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        held.sort_by(|(ka, ra), (kb, rb)| (ra.created_at, ka).cmp(&(rb.created_at, kb)));
        held.truncate(limit);
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oncely_core::{IdempotencyKey, Tenant};

    fn key(tenant: &str, route: &str, k: &str) -> RecordKey {
        RecordKey::new(
            Tenant::from_stored(tenant.into()),
            "POST",
            route,
            IdempotencyKey::new(k).unwrap(),
        )
    }

    #[test]
    fn key_names_carry_one_hash_tag_and_never_collide() {
        let a = redis_key("oncely", &key("t", "/a", "k"));
        assert!(a.starts_with("oncely:{") && a.ends_with('}'), "{a}");
        assert_eq!(a.matches('{').count(), 1);
        // Moving characters between parts changes the name (length prefixes).
        let b = redis_key("oncely", &key("t:", "/a", "k"));
        let c = redis_key("oncely", &key("t", ":/a", "k"));
        let d = redis_key("oncely", &key("t{", "/a", "k}"));
        let names = std::collections::HashSet::from([a.clone(), b, c, d]);
        assert_eq!(names.len(), 4);
        assert_eq!(a, redis_key("oncely", &key("t", "/a", "k")), "stable");
    }
}
