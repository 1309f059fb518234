//! The Lua scripts: one per transition, each touching exactly one key (the record's), so each
//! runs atomically on a single node and on Redis Cluster alike.
//!
//! Every script starts with the same preamble: `now` is the caller's time (`ARGV[1]`, a local
//! clock) or, when that is empty, the server's `TIME`. Liveness is always decided against the
//! record's `expires` field, exactly as in the model; the key's physical expiry (`PEXPIREAT`)
//! only collects garbage. It is set at `expires` on the server's clock, plus `ARGV[2]` of slack
//! (0 on the server clock; generous on a local clock, whose time may run slower than the
//! server's, so that a record the model still sees alive is never evicted under it).
//!
//! Numbers are written with `%.0f`: Lua's own number formatting would turn large integers
//! into exponent notation.

const PREAMBLE: &str = r#"
local t = redis.call('TIME')
local server_now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local now = server_now
if ARGV[1] ~= '' then now = tonumber(ARGV[1]) end
local offset = server_now - now + tonumber(ARGV[2])
local function int(x) return string.format('%.0f', x) end
local function expire_at(exp) redis.call('PEXPIREAT', KEYS[1], int(exp + offset)) end
local FIELDS = {'fp', 'created', 'expires', 'state', 'token', 'lease', 'status', 'headers', 'body'}
local function live_record()
  local r = redis.call('HMGET', KEYS[1], unpack(FIELDS))
  if not r[3] or tonumber(r[3]) <= now then return nil end
  return r
end
-- The model's check_holder: live, in progress, and held with this token.
local function refusal(r, token)
  if not r then return 'missing' end
  if r[4] == 'c' then return 'completed' end
  if r[5] ~= token then return 'stale' end
  return nil
end
"#;

/// ARGV: now, slack, fingerprint, token, ttl ms, lease ms, then tenant, method, route and key
/// (kept in the record so the in-flight list can name it; the key name is only a digest).
/// Returns `{1, lease_expires_at, takeover}` if claimed, else `{0, <the nine fields>}`.
pub(crate) const CLAIM: &str = r#"
local fp, token, ttl, lease = ARGV[3], ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6])
local r = live_record()
local created, takeover = now, 0
if r then
  if r[4] == 'p' and tonumber(r[6]) <= now and r[1] == fp then
    created, takeover = tonumber(r[2]), 1
  else
    return {0, r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]}
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'fp', fp, 'created', int(created), 'expires', int(now + ttl),
  'state', 'p', 'token', token, 'lease', int(now + lease),
  'tenant', ARGV[7], 'method', ARGV[8], 'route', ARGV[9], 'key', ARGV[10])
expire_at(now + ttl)
return {1, int(now + lease), takeover}
"#;

/// ARGV: now, slack, token, status, headers, body, ttl ms. Returns 'ok' or a refusal.
pub(crate) const COMPLETE: &str = r#"
local r = live_record()
local no = refusal(r, ARGV[3])
if no then return no end
local exp = math.max(now + tonumber(ARGV[7]), tonumber(r[3]))
redis.call('HSET', KEYS[1], 'state', 'c', 'status', ARGV[4], 'headers', ARGV[5],
  'body', ARGV[6], 'expires', int(exp))
redis.call('HDEL', KEYS[1], 'token', 'lease')
expire_at(exp)
return 'ok'
"#;

/// ARGV: now, slack, token. Returns 'ok' or a refusal.
pub(crate) const RELEASE: &str = r#"
local no = refusal(live_record(), ARGV[3])
if no then return no end
redis.call('DEL', KEYS[1])
return 'ok'
"#;

/// ARGV: now, slack, token, lease ms. Returns `{'ok', lease_expires_at}` or a refusal.
pub(crate) const RENEW: &str = r#"
local r = live_record()
local no = refusal(r, ARGV[3])
if no then return {no} end
local until_ = now + tonumber(ARGV[4])
-- A record never expires under a live lease.
local exp = math.max(tonumber(r[3]), until_)
redis.call('HSET', KEYS[1], 'lease', int(until_), 'expires', int(exp))
expire_at(exp)
return {'ok', int(until_)}
"#;

/// ARGV: now, slack. Returns the nine fields of the live record, or nil.
pub(crate) const GET: &str = r#"
local r = live_record()
if not r then return nil end
return {r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9]}
"#;

/// ARGV: now, slack. Deletes the record if it exists and has expired; returns 1 if it did.
pub(crate) const PURGE_ONE: &str = r#"
local exp = redis.call('HGET', KEYS[1], 'expires')
if exp and tonumber(exp) <= now then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"#;

/// ARGV: now, slack. Returns 'p' or 'c' for a live record, else nil (for stats).
pub(crate) const STATE: &str = r#"
local r = redis.call('HMGET', KEYS[1], 'expires', 'state')
if not r[1] or tonumber(r[1]) <= now then return nil end
return r[2]
"#;

/// ARGV: now, slack. Deletes the record whatever its state; returns 1 if it was live.
pub(crate) const EVICT: &str = r#"
local r = live_record()
redis.call('DEL', KEYS[1])
if r then return 1 end
return 0
"#;

/// ARGV: now, slack. For a live in-progress record: its nine fields and its tenant, method,
/// route and key; else nil.
pub(crate) const IN_PROGRESS: &str = r#"
local r = live_record()
if not r or r[4] ~= 'p' then return nil end
local k = redis.call('HMGET', KEYS[1], 'tenant', 'method', 'route', 'key')
return {r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], k[1], k[2], k[3], k[4]}
"#;

/// The script text with the preamble.
pub(crate) fn script(body: &str) -> redis::Script {
    redis::Script::new(&format!("{PREAMBLE}{body}"))
}
