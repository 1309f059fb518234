//! The statements, each a single atomic statement.
//!
//! Every statement starts from `t.now`: the caller's time when the store runs on a local
//! clock (a parameter), or the database's `now()` when it is NULL. So the same text serves
//! tests driving a `ManualClock` and replicas that must agree on one clock.
//!
//! The two writes of the common path (a new key's claim, the completion) are group-committed
//! by [`batch`](crate::batch): an `INSERT ... ON CONFLICT DO NOTHING RETURNING` and a token-
//! conditioned `UPDATE`, each over many rows at once. Only when those do nothing does a
//! statement from here run: the contended claim (takeover, or read the record that stopped
//! us), or the lookup of why a write was refused.
//! That lookup runs after the refused write, so if the row changed in between the *reason*
//! may be one step stale; the verdict never is (the write itself was conditioned on the row).

use crate::codec::RECORD_COLUMNS;
use crate::schema::quoted;

pub(crate) struct Statements {
    pub claim_contended: String,
    pub release: String,
    pub renew: String,
    pub live_state: String,
    pub get: String,
    pub purge: String,
    pub stats: String,
    pub evict: String,
    pub list_in_progress: String,
}

/// `now` in milliseconds: parameter `$n` if given, else the database clock.
fn now(n: usize) -> String {
    format!("SELECT COALESCE(${n}::int8, floor(extract(epoch FROM now()) * 1000)::int8) AS now")
}

const PK: &str = "r.tenant = $1 AND r.method = $2 AND r.route = $3 AND r.idem_key = $4";

impl Statements {
    pub(crate) fn new(schema: &str) -> Statements {
        let table = format!("{}.idempotency_records", quoted(schema));
        let insert = format!(
            "INSERT INTO {table} AS r (tenant, method, route, idem_key, fingerprint,
                    created_at, expires_at, state, lease_token, lease_expires_at)
             SELECT $1, $2, $3, $4, $5, t.now, t.now + $7, 0, $6, t.now + $8 FROM t"
        );
        Statements {
            // Insert, or take over an expired record or an expired lease of the same request.
            // If neither, read the live record that stopped us. In the rare case that it was
            // committed after this statement's snapshot, no row comes back and the caller runs
            // the statement again.
            claim_contended: format!(
                "WITH t AS ({now}),
                 up AS (
                   {insert}
                   ON CONFLICT (tenant, method, route, idem_key) DO UPDATE SET
                     created_at = CASE WHEN r.expires_at <= EXCLUDED.created_at
                                       THEN EXCLUDED.created_at ELSE r.created_at END,
                     taken_over_at = CASE WHEN r.expires_at <= EXCLUDED.created_at
                                          THEN NULL ELSE EXCLUDED.created_at END,
                     fingerprint = EXCLUDED.fingerprint,
                     expires_at = EXCLUDED.expires_at,
                     state = 0,
                     lease_token = EXCLUDED.lease_token,
                     lease_expires_at = EXCLUDED.lease_expires_at,
                     status = NULL, headers = NULL, body = NULL
                   WHERE r.expires_at <= EXCLUDED.created_at
                      OR (r.state = 0 AND r.lease_expires_at <= EXCLUDED.created_at
                          AND r.fingerprint = EXCLUDED.fingerprint)
                   RETURNING r.lease_expires_at, r.taken_over_at IS NOT NULL AS takeover
                 )
                 SELECT true, up.lease_expires_at, up.takeover,
                        NULL::bytea, NULL::int8, NULL::int8, NULL::int2, NULL::bytea,
                        NULL::int8, NULL::int2, NULL::bytea, NULL::bytea
                   FROM up
                 UNION ALL
                 SELECT false, NULL::int8, NULL::bool, {RECORD_COLUMNS}
                   FROM {table} r, t
                  WHERE {PK} AND r.expires_at > t.now AND NOT EXISTS (SELECT 1 FROM up)",
                now = now(9)
            ),
            release: format!(
                "WITH t AS ({now})
                 DELETE FROM {table} r USING t
                  WHERE {PK} AND r.expires_at > t.now AND r.state = 0 AND r.lease_token = $5",
                now = now(6)
            ),
            renew: format!(
                "WITH t AS ({now})
                 UPDATE {table} r SET lease_expires_at = t.now + $6,
                        expires_at = GREATEST(r.expires_at, t.now + $6)
                   FROM t
                  WHERE {PK} AND r.expires_at > t.now AND r.state = 0 AND r.lease_token = $5
                 RETURNING r.lease_expires_at",
                now = now(7)
            ),
            // Why a write conditioned on the token did nothing: the live record's state.
            live_state: format!(
                "WITH t AS ({now})
                 SELECT r.state FROM {table} r, t WHERE {PK} AND r.expires_at > t.now",
                now = now(5)
            ),
            get: format!(
                "WITH t AS ({now})
                 SELECT {RECORD_COLUMNS} FROM {table} r, t WHERE {PK} AND r.expires_at > t.now",
                now = now(5)
            ),
            // Oldest first through the expiry index; rows a claim is working on are skipped
            // rather than waited for, so the purge never holds up the hot path.
            purge: format!(
                "WITH t AS ({now}),
                 doomed AS (
                   SELECT r.ctid FROM {table} r, t WHERE r.expires_at <= t.now
                    ORDER BY r.expires_at LIMIT $1 FOR UPDATE OF r SKIP LOCKED
                 )
                 DELETE FROM {table} r USING t
                  WHERE r.ctid = ANY (ARRAY(SELECT ctid FROM doomed)) AND r.expires_at <= t.now",
                now = now(2)
            ),
            stats: format!(
                "WITH t AS ({now})
                 SELECT count(*) FILTER (WHERE r.state = 0), count(*) FILTER (WHERE r.state = 1)
                   FROM {table} r, t WHERE r.expires_at > t.now",
                now = now(1)
            ),
            // Whatever the state; the answer says whether the deleted row was live.
            evict: format!(
                "WITH t AS ({now})
                 DELETE FROM {table} r WHERE {PK}
                 RETURNING r.expires_at > (SELECT now FROM t)",
                now = now(5)
            ),
            // A scan (admin use only), oldest claim first.
            list_in_progress: format!(
                "WITH t AS ({now})
                 SELECT {RECORD_COLUMNS}, r.tenant, r.method, r.route, r.idem_key
                   FROM {table} r, t WHERE r.state = 0 AND r.expires_at > t.now
                  ORDER BY r.created_at, r.tenant, r.method, r.route, r.idem_key LIMIT $2",
                now = now(1)
            ),
        }
    }
}
