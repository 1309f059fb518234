//! The gateway's audit trail: one event per keyed request's answer, appended to the
//! `audit_events` table of a SQLite file or a PostgreSQL schema.
//!
//! The engine reports each answer ([`OutcomeObserver::answered`]), also for executions that
//! finish after their client hung up; [`AuditObserver`] turns it into a [`Draft`] and hands
//! it to this gateway's [`AuditWriter`], which never makes a request wait.

use std::sync::Arc;

use oncely_audit::{AuditError, AuditWriter, Draft};
use oncely_http::{Answer, Correlation, Outcome, OutcomeObserver};
pub use oncely_open::AuditUrl;

use crate::forward::ClientAddr;

/// The secret that keys personal fields' commitments. Kept out of every log line.
#[derive(Clone, PartialEq, Eq)]
pub struct RedactionKey(pub Vec<u8>);

impl std::fmt::Debug for RedactionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedactionKey(<set>)")
    }
}

impl RedactionKey {
    /// The shortest key accepted.
    pub const MIN_LEN: usize = 16;

    /// A key read from a file or variable: surrounding whitespace dropped, 16 bytes at least.
    pub fn parse(text: &str) -> Result<RedactionKey, RedactionKeyError> {
        let t = text.trim();
        if t.len() < Self::MIN_LEN {
            return Err(RedactionKeyError::TooShort);
        }
        Ok(RedactionKey(t.as_bytes().to_vec()))
    }

    /// A key of this run only: commitments can then not be checked against values later.
    pub fn random() -> RedactionKey {
        let id = oncely_audit::writer::new_event_id;
        RedactionKey(format!("{}{}", id(), id()).into_bytes())
    }
}

/// Why a text is not a usable redaction key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedactionKeyError {
    /// Fewer than [`RedactionKey::MIN_LEN`] bytes once surrounding whitespace is dropped. A
    /// shorter secret could be guessed, and with it every commitment checked against guessed
    /// personal values.
    #[error(
        "the audit redaction key needs at least {min} characters (e.g. `openssl rand -hex 32`)",
        min = RedactionKey::MIN_LEN
    )]
    TooShort,
}

/// Why [`open_writer`] could not open a gateway's audit trail.
#[derive(Debug, thiserror::Error)]
pub enum AuditOpenError {
    /// The log could not be opened at all (a SQLite file that cannot be created, a
    /// PostgreSQL URL the driver refuses); the message names the log.
    #[error("{0}")]
    Open(String),
    /// The `audit_events` table could not be created or brought up to date.
    #[error("cannot prepare the audit log {url}: {source}")]
    Prepare {
        /// The log, as displayed (passwords masked).
        url: String,
        /// What the log answered.
        source: AuditError,
    },
    /// The chain's head could not be read, or its opening event not appended.
    #[error("cannot open audit chain `{chain}` in {url}: {source}")]
    Chain {
        /// The chain this gateway writes to.
        chain: String,
        /// The log, as displayed (passwords masked).
        url: String,
        /// What the log answered.
        source: AuditError,
    },
}

/// The chain name a gateway writes to when none is given: this host's name, so a restarted
/// gateway continues its chain. Several gateways on one host share it safely.
pub fn default_chain() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_:".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if name.is_empty() {
        "oncely".to_owned()
    } else {
        name
    }
}

/// Everything the gateway needs to keep an audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The log: a SQLite file or a PostgreSQL schema holding the `audit_events` table
    /// (`audit.url`, `--audit`).
    pub url: AuditUrl,
    /// The chain this gateway appends to (`audit.chain`, `--audit-chain`; default
    /// [`default_chain`]): 1 to 64 of `A-Z a-z 0-9 . _ : -`. A chain per gateway keeps
    /// writers from contending for one last hash; two writers on one chain stay correct but
    /// reseal batches on conflicts.
    pub chain: String,
    /// The secret keying the personal fields' commitments and sealing every event
    /// (`audit.key_file`, `--audit-key-file`, `ONCELY_AUDIT_KEY`). None: a random key for
    /// this run (a warning says what that costs).
    pub key: Option<RedactionKey>,
    /// Events queued for the database before new ones are dropped (and counted, in the trail
    /// too); default 10 000, at least 1.
    pub queue: usize,
}

/// The event for one keyed answer.
///
/// - actor: the tenant (`anon` for anonymous requests), actor_type `tenant` or `anonymous`;
/// - action: the outcome (`executed`, `replayed`, `mismatch`, ...);
/// - resource: `idempotency_key`, `METHOD ROUTE KEY`;
/// - new_value: the status answered;
/// - correlation_id: the request's X-Request-Id; ip_address: the client's address as the
///   gateway saw it; user_agent: its User-Agent.
pub fn draft_for(answer: &Answer<'_>, event_id: String, now_ms: i64) -> Draft {
    let scope = &answer.key.scope;
    let tenant = scope.tenant.as_str();
    let request = answer.request;
    Draft {
        event_id,
        timestamp_ms: now_ms,
        actor: Some(tenant.to_owned()),
        actor_type: if tenant == oncely_core::Tenant::anonymous().as_str() {
            "anonymous".into()
        } else {
            "tenant".into()
        },
        action: answer.outcome.name().into(),
        resource_type: "idempotency_key".into(),
        resource_id: format!(
            "{} {} {}",
            scope.method,
            scope.route,
            answer.key.key.as_str()
        ),
        old_value: None,
        new_value: Some(answer.status.to_string()),
        correlation_id: request
            .extensions
            .get::<Correlation>()
            .map(|c| c.request_id.clone()),
        ip_address: request
            .extensions
            .get::<ClientAddr>()
            .map(|a| a.0.ip().to_string()),
        user_agent: request
            .headers
            .get(http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    }
}

/// Records every keyed answer through the writer.
pub struct AuditObserver {
    /// The trail's writer; recording only queues, so a request never waits for the log.
    pub writer: Arc<AuditWriter>,
}

impl OutcomeObserver for AuditObserver {
    fn observe(&self, _outcome: Outcome) {}

    fn wants_answers(&self) -> bool {
        true
    }

    fn answered(&self, answer: &Answer<'_>) {
        let draft = draft_for(
            answer,
            oncely_audit::writer::new_event_id(),
            self.writer.now_ms(),
        );
        if !self.writer.record(draft) {
            tracing::warn!(key = %answer.key, "audit queue full: event dropped (the trail records the count)");
        }
    }
}

/// Opens the trail for a gateway: the table (created if missing) and this gateway's chain.
pub async fn open_writer(
    config: &AuditConfig,
    clock: Arc<dyn oncely_core::Clock>,
) -> Result<Arc<AuditWriter>, AuditOpenError> {
    let log = config.url.open().map_err(AuditOpenError::Open)?;
    log.migrate()
        .await
        .map_err(|source| AuditOpenError::Prepare {
            url: config.url.to_string(),
            source,
        })?;
    let key = match &config.key {
        Some(k) => k.clone(),
        None => {
            tracing::warn!("no audit redaction key (--audit-key-file or ONCELY_AUDIT_KEY): using one for this run only, so `oncely audit verify --key-file` will name this run's events as not written with the key; the chain itself verifies without a key");
            RedactionKey::random()
        }
    };
    let writer = AuditWriter::open(log, &config.chain, key.0, clock, config.queue)
        .await
        .map_err(|source| AuditOpenError::Chain {
            chain: config.chain.clone(),
            url: config.url.to_string(),
            source,
        })?;
    Ok(Arc::new(writer))
}
