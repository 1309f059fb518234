//! The application audit trail: who changed what (old and new values as JSON), with the
//! request's correlation id, client address and user agent, in oncely's hash-chained
//! `audit_events` table (chain `shop`, shared with the saga runner's transitions).
//!
//! The actor, the client address and the user agent are the personal fields: a redaction
//! empties them for one user, and the chains still verify. The old and new values are
//! covered by the hash and cannot be redacted, so events about personal documents (the
//! profile) record which fields changed and the versions, never the values themselves.

use std::sync::Arc;

use oncely_audit::{AuditLog, AuditWriter, Draft, Event, Filter, Personal};
use oncely_core::conditional::format_rfc3339;
use oncely_core::Timestamp;
use serde_json::{json, Value};

use crate::api::Caller;

/// The personal fields a redaction empties.
pub(crate) const PERSONAL: [&str; 3] = ["actor", "ip_address", "user_agent"];

/// The shop's side of the trail.
pub(crate) struct Trail {
    writer: Arc<AuditWriter>,
    log: Arc<dyn AuditLog>,
}

/// What an event is about: `order:ord_…`, `cart:ada`, `profile:ada`...
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entity<'a> {
    /// `order`, `cart`, `profile`, `favourites`, `chaos`, `shop`, `reconciliation`.
    pub kind: &'a str,
    /// Its id.
    pub id: &'a str,
}

impl Trail {
    /// A trail appending through `writer` to `log`.
    pub(crate) fn new(writer: Arc<AuditWriter>, log: Arc<dyn AuditLog>) -> Self {
        Trail { writer, log }
    }

    /// The writer (the saga runner writes its transitions through it too).
    pub(crate) fn writer(&self) -> Arc<AuditWriter> {
        self.writer.clone()
    }

    /// Records what `caller` did to `entity`. Never waits: the writer appends in the
    /// background (a full queue drops the event and counts it, as the writer does).
    pub(crate) fn by_user(
        &self,
        caller: &Caller,
        action: &str,
        entity: Entity<'_>,
        old: Option<Value>,
        new: Option<Value>,
    ) {
        self.record(Draft {
            actor: Some(caller.user.id.to_owned()),
            actor_type: "user".into(),
            correlation_id: Some(caller.correlation_id.clone()),
            ip_address: caller.client_addr.clone(),
            user_agent: caller.user_agent.clone(),
            ..self.draft(action, entity, old, new)
        });
    }

    /// Records what a part of the system (`payment-provider`, `reconciliation`,
    /// `checkout-saga`) did to `entity`.
    pub(crate) fn by_system(
        &self,
        actor: &str,
        action: &str,
        entity: Entity<'_>,
        correlation: Option<&str>,
        old: Option<Value>,
        new: Option<Value>,
    ) {
        self.record(Draft {
            actor: Some(actor.to_owned()),
            actor_type: "system".into(),
            correlation_id: correlation.map(str::to_owned),
            ..self.draft(action, entity, old, new)
        });
    }

    fn draft(
        &self,
        action: &str,
        entity: Entity<'_>,
        old: Option<Value>,
        new: Option<Value>,
    ) -> Draft {
        Draft {
            event_id: oncely_audit::writer::new_event_id(),
            timestamp_ms: self.writer.now_ms(),
            action: action.to_owned(),
            resource_type: entity.kind.to_owned(),
            resource_id: format!("{}:{}", entity.kind, entity.id),
            old_value: old.map(|v| v.to_string()),
            new_value: new.map(|v| v.to_string()),
            ..Draft::default()
        }
    }

    fn record(&self, draft: Draft) {
        if !self.writer.record(draft) {
            tracing::warn!("the audit trail's queue is full: an event was dropped (and counted)");
        }
    }

    /// The events about `entity` (`order:ord_…`), newest first.
    pub(crate) async fn about(
        &self,
        entity: &str,
        limit: usize,
    ) -> Result<Vec<Value>, oncely_audit::AuditError> {
        let filter = Filter {
            resource_id: Some(entity.to_owned()),
            ..Filter::default()
        };
        Ok(self
            .log
            .find(&filter, limit)
            .await?
            .iter()
            .map(event_json)
            .collect())
    }

    /// The events `user` caused, newest first (none once redacted: the actor is gone).
    pub(crate) async fn by(
        &self,
        user: &str,
        limit: usize,
    ) -> Result<Vec<Value>, oncely_audit::AuditError> {
        let filter = Filter {
            actor: Some(user.to_owned()),
            ..Filter::default()
        };
        Ok(self
            .log
            .find(&filter, limit)
            .await?
            .iter()
            .map(event_json)
            .collect())
    }

    /// Empties the personal fields of every event `user` caused; how many changed. Events
    /// still queued in the writer are appended first: the writer lingers a few
    /// milliseconds per batch, so the redaction waits a little longer than that.
    pub(crate) async fn redact(&self, user: &str) -> Result<u64, oncely_audit::AuditError> {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let filter = Filter {
            actor: Some(user.to_owned()),
            ..Filter::default()
        };
        self.log.redact(&filter, &PERSONAL).await
    }
}

fn personal(p: &Option<Personal>) -> (Value, bool) {
    match p {
        Some(Personal::Value(v)) => (Value::String(v.clone()), false),
        Some(Personal::Redacted(_)) => (Value::Null, true),
        None => (Value::Null, false),
    }
}

/// A stored value as JSON (it was written as JSON; anything else is shown as text).
fn value(v: &Option<String>) -> Value {
    v.as_deref().map_or(Value::Null, |text| {
        serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
    })
}

/// An event as `GET /api/audit` answers it.
pub(crate) fn event_json(e: &Event) -> Value {
    let (actor, a) = personal(&e.actor);
    let (client_addr, b) = personal(&e.ip_address);
    let (user_agent, c) = personal(&e.user_agent);
    json!({
        "id": e.event_id,
        "at": format_rfc3339(Timestamp(e.timestamp_ms)),
        "actor": actor,
        "actor_type": e.actor_type,
        "action": e.action,
        "entity": e.resource_id,
        "old": value(&e.old_value),
        "new": value(&e.new_value),
        "correlation_id": e.correlation_id,
        "client_addr": client_addr,
        "user_agent": user_agent,
        "redacted": a || b || c,
    })
}
