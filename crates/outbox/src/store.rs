//! The storage concern every outbox backend implements, and what its calls answer.

use std::time::Duration;

use async_trait::async_trait;
use oncely_core::Timestamp;

use crate::event::{EventId, OutboxEvent};

/// An event a relay has claimed: it may publish it until its lease ends, and confirms with
/// the token.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The event.
    pub event: OutboxEvent,
    /// The lease's fencing token: [`OutboxStore::delivered`], [`OutboxStore::delivered_all`]
    /// and [`OutboxStore::failed`] are refused with any other, so a relay whose lease ran
    /// out cannot settle an event another relay now holds.
    pub token: i64,
}

/// Why an attempt to publish failed, and what to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What the publisher said.
    pub error: String,
    /// When to try again, from now (the relay's full-jitter backoff).
    pub retry_in: Duration,
    /// After this many attempts in all, the event becomes a dead letter instead.
    pub dead_after: u32,
}

/// How settling a claimed event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Recorded as delivered.
    Delivered,
    /// Back to pending, not before its retry time.
    WillRetry,
    /// Moved to the dead letters after its last allowed attempt.
    Dead,
    /// The lease was no longer this relay's (it ran out, and another relay may hold the
    /// event now): nothing was recorded. The event will be published again; the broker's
    /// dedupe and the consumer's inbox absorb the duplicate.
    LeaseLost,
}

/// What the outbox holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStats {
    /// Events not yet delivered, claimed or not.
    pub pending: u64,
    /// Dead letters.
    pub dead: u64,
    /// Delivered events not yet purged.
    pub delivered: u64,
    /// When the oldest pending event was enqueued: the relay's lag is now minus this.
    pub oldest_pending: Option<Timestamp>,
}

/// Errors of the outbox's own storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutboxError {
    /// The database could not be reached or refused the statement; nothing is known to be
    /// recorded. Retry later.
    #[error("the outbox database is unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read (bad JSON, a bad id): reported, never panicked on.
    #[error("corrupt outbox row {id}: {reason}")]
    Corrupt {
        /// The row's id as stored.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument the outbox cannot take (a schema name, an event with an empty aggregate).
    #[error("{0}")]
    Invalid(String),
}

/// An outbox on one database: what relays and operators do with its events. Enqueueing is
/// not here: it happens inside the application's own transaction, with the backend's own
/// transaction type.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Claims up to `limit` events for `lease`: for each aggregate, its oldest undelivered
    /// event, if it is pending, due, and held by no live lease. Oldest first. Attempts are
    /// counted here.
    async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Claim>, OutboxError>;

    /// Records a claimed event as delivered (the broker acknowledged it).
    async fn delivered(&self, id: EventId, token: i64) -> Result<Settled, OutboxError>;

    /// Records each claimed event of `settled` (id and token) as delivered: one answer per
    /// entry, in order, each what [`OutboxStore::delivered`] would have answered had the
    /// entries been settled one after another (so an entry repeated is `LeaseLost` the
    /// second time). The SQLite and PostgreSQL outboxes settle them all in one transaction,
    /// which is what lets a relay keep up with its broker; this default settles them one by
    /// one.
    async fn delivered_all(&self, settled: &[(EventId, i64)]) -> Result<Vec<Settled>, OutboxError> {
        let mut answers = Vec::with_capacity(settled.len());
        for &(id, token) in settled {
            answers.push(self.delivered(id, token).await?);
        }
        Ok(answers)
    }

    /// Records a failed attempt: the event is retried after `failure.retry_in`, or becomes
    /// a dead letter after `failure.dead_after` attempts.
    async fn failed(
        &self,
        id: EventId,
        token: i64,
        failure: &Failure,
    ) -> Result<Settled, OutboxError>;

    /// Removes up to `limit` delivered events; the number removed. Small batches, which
    /// never wait for rows other transactions hold.
    async fn purge_delivered(&self, limit: usize) -> Result<u64, OutboxError>;

    /// Counts and the oldest pending event.
    async fn stats(&self) -> Result<OutboxStats, OutboxError>;

    /// The oldest `limit` dead letters.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<OutboxEvent>, OutboxError>;

    /// Makes a dead letter pending again, due now, with its attempts counted from zero.
    /// `false` when `id` is not a dead letter.
    async fn retry(&self, id: EventId) -> Result<bool, OutboxError>;
}

/// Checks an event before it is enqueued.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn validate(event: &crate::NewEvent) -> Result<(), OutboxError> {
    for (what, value) in [
        ("aggregate_type", &event.aggregate_type),
        ("aggregate_id", &event.aggregate_id),
        ("event_type", &event.event_type),
    ] {
        if value.is_empty() || value.len() > 255 {
            return Err(OutboxError::Invalid(format!(
                "{what} must be 1 to 255 bytes, not {}",
                value.len()
            )));
        }
    }
    Ok(())
}

/// The settled state a `failed` update returned.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn settled_failure(status: &str) -> Settled {
    if status == "dead" {
        Settled::Dead
    } else {
        Settled::WillRetry
    }
}
