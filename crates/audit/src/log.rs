//! The storage trait of the audit trail, and what every backend shares: the table's shape,
//! operator filters, row decoding, and reading a whole trail through the [`Verifier`].
//!
//! The trait has no method that updates or deletes an event. [`AuditLog::redact`] is the
//! one change it allows, and it only empties personal fields whose commitments stay. Each
//! backend's table refuses anything else by trigger, so a stray `UPDATE` or `DELETE` in a
//! SQL shell fails too; someone who drops the triggers first is what `verify` is for.

use async_trait::async_trait;
use oncely_db::migrate::{Migration, MigrationReport, Migrations};
use sha2::{Digest, Sha256};

use crate::chain::{Broken, Event, Hash, Head, Personal, Summary, Verifier, CHAIN_OPENED};

/// Why an operation on an [`AuditLog`] did not happen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// Another writer already appended at one of these positions: nothing was appended.
    #[error("chain {chain}: another writer appended event {seq} first")]
    Conflict {
        /// The chain of the batch.
        chain: String,
        /// A position of the batch, the taken one or the batch's first depending on the
        /// backend: re-read the chain's head rather than rely on it.
        seq: u64,
    },
    /// The database failed or did not answer within the backend's timeout; a retry may
    /// succeed. An append that timed out may still have committed (its answer lost), which
    /// the chain's head tells.
    #[error("audit log unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (an empty redaction filter, an unknown field).
    #[error("{0}")]
    Invalid(String),
}

/// Which events an operator means: every field set must match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Only the event with this id.
    pub event_id: Option<String>,
    /// Only events of this request (for the gateway, its `X-Request-Id`).
    pub correlation_id: Option<String>,
    /// Only events of this actor. A redacted value is gone, so its events no longer match.
    pub actor: Option<String>,
    /// Only events from this client address; redacted ones no longer match.
    pub ip_address: Option<String>,
    /// Only events with this `User-Agent`; redacted ones no longer match.
    pub user_agent: Option<String>,
    /// Only events on this resource (for the gateway `METHOD ROUTE KEY`, e.g.
    /// `POST /payments 8e03978e`).
    pub resource_id: Option<String>,
    /// Only events with this action (an outcome such as `replayed`, or [`CHAIN_OPENED`]).
    pub action: Option<String>,
}

impl Filter {
    /// The (column, value) pairs to match, in a fixed order.
    pub fn conditions(&self) -> Vec<(&'static str, &str)> {
        [
            ("event_id", &self.event_id),
            ("correlation_id", &self.correlation_id),
            ("actor", &self.actor),
            ("ip_address", &self.ip_address),
            ("user_agent", &self.user_agent),
            ("resource_id", &self.resource_id),
            ("action", &self.action),
        ]
        .into_iter()
        .filter_map(|(c, v)| v.as_deref().map(|v| (c, v)))
        .collect()
    }

    /// `col1 = P1 AND col2 = P2 ...` (or `TRUE`), with `placeholder(n)` for the nth value
    /// (from 1), and the values in that order.
    pub fn where_clause(&self, placeholder: impl Fn(usize) -> String) -> (String, Vec<String>) {
        let conditions = self.conditions();
        if conditions.is_empty() {
            return ("1 = 1".to_owned(), Vec::new());
        }
        let sql = conditions
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{c} = {}", placeholder(i + 1)))
            .collect::<Vec<_>>()
            .join(" AND ");
        (
            sql,
            conditions.into_iter().map(|(_, v)| v.to_owned()).collect(),
        )
    }
}

/// Where audit events are kept. Events are appended already sealed (see
/// [`crate::Head::seal`]); a backend stores them as given and hands them back unchanged.
#[async_trait]
pub trait AuditLog: Send + Sync + 'static {
    /// Brings the table (with its append-only triggers) up to date through the shared
    /// migration mechanism, and reports the trail's schema version.
    async fn migrate(&self) -> Result<MigrationReport, AuditError>;

    /// Appends `events` in one transaction: all or none. [`AuditError::Conflict`] if any
    /// (chain, seq) is taken (a backend may also report a taken event id so).
    async fn append(&self, events: &[Event]) -> Result<(), AuditError>;

    /// The head of `chain` (where its next event goes), or None if it has no events.
    async fn head(&self, chain: &str) -> Result<Option<Head>, AuditError>;

    /// Every chain's head, by chain name.
    async fn heads(&self) -> Result<Vec<Head>, AuditError>;

    /// Up to `limit` events after the position `after` (chain, seq), in (chain, seq) order.
    async fn scan(
        &self,
        after: Option<(&str, u64)>,
        limit: usize,
    ) -> Result<Vec<Event>, AuditError>;

    /// Up to `limit` events matching `filter`, newest first.
    async fn find(&self, filter: &Filter, limit: usize) -> Result<Vec<Event>, AuditError>;

    /// Empties `fields` (names from [`crate::PERSONAL_FIELDS`]) of every event matching
    /// `filter`, leaving their commitments; returns how many events changed. The filter must
    /// not be empty.
    async fn redact(&self, filter: &Filter, fields: &[&str]) -> Result<u64, AuditError>;
}

/// How many events [`verify_log`] reads per query.
pub const VERIFY_PAGE: usize = 1000;

/// Reads the whole trail in `log` through a [`Verifier`] (anchors first), calling
/// `progress` with the count so far after each page. The outer error is the store's, the
/// inner the trail's.
pub async fn verify_log(
    log: &dyn AuditLog,
    key: Option<&[u8]>,
    progress: impl FnMut(u64),
) -> Result<Result<Summary, Broken>, AuditError> {
    verify_log_with(log, Verifier::new(key), progress).await
}

/// [`verify_log`] with a verifier prepared by the caller (heads it must find, see
/// [`Verifier::expect_head`]).
pub async fn verify_log_with(
    log: &dyn AuditLog,
    mut verifier: Verifier<'_>,
    mut progress: impl FnMut(u64),
) -> Result<Result<Summary, Broken>, AuditError> {
    let anchors = Filter {
        action: Some(CHAIN_OPENED.to_owned()),
        ..Filter::default()
    };
    verifier.expect_anchors(&log.find(&anchors, usize::MAX).await?);
    let mut after: Option<(String, u64)> = None;
    let mut seen = 0;
    loop {
        let page = log
            .scan(after.as_ref().map(|(c, s)| (c.as_str(), *s)), VERIFY_PAGE)
            .await?;
        for e in &page {
            if let Err(broken) = verifier.push(e) {
                return Ok(Err(broken));
            }
        }
        seen += page.len() as u64;
        progress(seen);
        match page.last() {
            Some(last) if page.len() == VERIFY_PAGE => after = Some((last.chain.clone(), last.seq)),
            _ => break,
        }
    }
    Ok(verifier.finish())
}

/// Checks `fields` are personal field names, and that `filter` names something.
pub fn check_redaction(filter: &Filter, fields: &[&str]) -> Result<(), AuditError> {
    if filter.conditions().is_empty() {
        return Err(AuditError::Invalid(
            "redaction needs a filter (event id, correlation id, actor, IP address, ...)".into(),
        ));
    }
    if fields.is_empty() {
        return Err(AuditError::Invalid("no field to redact".into()));
    }
    for f in fields {
        if !crate::PERSONAL_FIELDS.contains(f) {
            return Err(AuditError::Invalid(format!(
                "`{f}` is not a personal field (actor, ip_address, user_agent)"
            )));
        }
    }
    Ok(())
}

/// `UPDATE ... SET a = NULL, b = NULL` for `fields`, and the condition that one of them is
/// still set.
pub fn redaction_sql(fields: &[&str]) -> (String, String) {
    let set = fields
        .iter()
        .map(|f| format!("{f} = NULL"))
        .collect::<Vec<_>>()
        .join(", ");
    let any = fields
        .iter()
        .map(|f| format!("{f} IS NOT NULL"))
        .collect::<Vec<_>>()
        .join(" OR ");
    (set, format!("({any})"))
}

/// The trail's schema history, the same steps on every backend in its own SQL dialect:
/// `v1` creates the table and its guards (only what is absent, so trails created before the
/// shared migration table adopt it).
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) const fn migrations(v1: &'static [Migration; 1]) -> Migrations {
    Migrations {
        concern: "audit trail",
        steps: v1,
    }
}

/// Step 1 of [`migrations`] with the backend's statements.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) const fn step_1(sql: &'static str) -> [Migration; 1] {
    [Migration {
        version: 1,
        description: "the audit_events table and its append-only triggers",
        sql,
    }]
}

/// The columns every backend selects, in [`Row`]'s order (each personal value followed by
/// its commitment).
pub const COLUMNS: &str = "chain, seq, event_id, timestamp, actor, actor_commitment, actor_type, \
    action, resource_type, resource_id, old_value, new_value, correlation_id, ip_address, \
    ip_address_commitment, user_agent, user_agent_commitment, prev_hash, hash, mac";

/// One stored row, as a backend reads it: the `audit_events` columns in their database types,
/// before [`Row::into_event`] makes an [`Event`] of them.
pub struct Row {
    /// The chain's name ([`Event::chain`]).
    pub chain: String,
    /// The event's place in its chain, as BIGINT ([`Event::seq`]).
    pub seq: i64,
    /// The event's id ([`Event::event_id`]).
    pub event_id: String,
    /// The `timestamp` column: milliseconds since the Unix epoch ([`Event::timestamp_ms`]).
    pub timestamp: i64,
    /// `actor` and `actor_commitment`: the value (NULL once redacted) and its 32-byte
    /// commitment (NULL if the event named no actor).
    pub actor: (Option<String>, Option<Vec<u8>>),
    /// What kind of actor ([`Event::actor_type`]).
    pub actor_type: String,
    /// What happened ([`Event::action`]).
    pub action: String,
    /// The kind of thing acted on ([`Event::resource_type`]).
    pub resource_type: String,
    /// Which thing was acted on ([`Event::resource_id`]).
    pub resource_id: String,
    /// The value before the action ([`Event::old_value`]).
    pub old_value: Option<String>,
    /// The value after the action ([`Event::new_value`]).
    pub new_value: Option<String>,
    /// The request the event belongs to ([`Event::correlation_id`]).
    pub correlation_id: Option<String>,
    /// `ip_address` and `ip_address_commitment`, as for `actor`.
    pub ip_address: (Option<String>, Option<Vec<u8>>),
    /// `user_agent` and `user_agent_commitment`, as for `actor`.
    pub user_agent: (Option<String>, Option<Vec<u8>>),
    /// The predecessor's hash, 32 bytes as stored ([`Event::prev_hash`]).
    pub prev_hash: Vec<u8>,
    /// The event's hash, 32 bytes as stored ([`Event::hash`]).
    pub hash: Vec<u8>,
    /// The event's MAC, 32 bytes as stored ([`Event::mac`]).
    pub mac: Vec<u8>,
}

/// A stored hash; a value of the wrong length (only a hand edit makes one) becomes a hash no
/// event has, so verification names the row instead of the read failing.
pub fn stored_hash(bytes: &[u8]) -> Hash {
    bytes.try_into().unwrap_or_else(|_| {
        let mut h = Sha256::new();
        h.update(b"oncely-audit-malformed");
        h.update(bytes);
        h.finalize().into()
    })
}

impl Row {
    /// The event the row holds. It never fails: what only a hand edit can produce (a hash of
    /// the wrong length, a negative seq, a value without its commitment) is kept in a form
    /// the verifier names, so reading the trail does not stop at it.
    pub fn into_event(self) -> Event {
        // A value with its commitment, or only the commitment once redacted. A value without
        // a commitment stays a value, which verification reports.
        let personal = |(value, commitment): (Option<String>, Option<Vec<u8>>)| {
            let commitment = commitment.as_deref().map(stored_hash);
            let field = match (value, commitment) {
                (Some(v), _) => Some(Personal::Value(v)),
                (None, Some(c)) => Some(Personal::Redacted(c)),
                (None, None) => None,
            };
            (field, commitment)
        };
        let (actor, actor_c) = personal(self.actor);
        let (ip_address, ip_c) = personal(self.ip_address);
        let (user_agent, ua_c) = personal(self.user_agent);
        Event {
            chain: self.chain,
            // A negative seq (a hand edit) reads as one no chain reaches.
            seq: u64::try_from(self.seq).unwrap_or(u64::MAX),
            event_id: self.event_id,
            timestamp_ms: self.timestamp,
            actor,
            actor_type: self.actor_type,
            action: self.action,
            resource_type: self.resource_type,
            resource_id: self.resource_id,
            old_value: self.old_value,
            new_value: self.new_value,
            correlation_id: self.correlation_id,
            ip_address,
            user_agent,
            commitments: [actor_c, ip_c, ua_c],
            prev_hash: stored_hash(&self.prev_hash),
            hash: stored_hash(&self.hash),
            mac: stored_hash(&self.mac),
        }
    }
}

/// A personal field's stored value: None once redacted (the commitment stays).
pub fn stored_value(p: &Option<Personal>) -> Option<&str> {
    match p {
        Some(Personal::Value(v)) => Some(v),
        _ => None,
    }
}

/// An event's seq as the databases store it (BIGINT).
pub fn stored_seq(e: &Event) -> Result<i64, AuditError> {
    i64::try_from(e.seq).map_err(|_| AuditError::Invalid(format!("seq {} is too large", e.seq)))
}
