//! Consuming events once: what the consumer adapters (JetStream, RabbitMQ, webhooks) hand to
//! an application's [`Handler`], and what they do with its answer.
//!
//! Every adapter follows one rule: **acknowledge only after the handler's transaction
//! committed**. The handler inserts the message id into its inbox in that same transaction
//! (see [`crate::inbox`]) and applies its effect only for a first receipt. So a consumer that
//! dies after its commit and before its ack gets the message again, finds it in the inbox,
//! and acknowledges it without applying anything: [`Outcome::Duplicate`].

use std::collections::BTreeMap;
use std::future::Future;

use async_trait::async_trait;
use oncely_core::Timestamp;

use crate::inbox::{Applied, InboxError};

/// One message as a consumer adapter received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message id to dedupe by: the outbox event id (`Nats-Msg-Id`, AMQP `message_id`,
    /// `webhook-id`).
    pub id: String,
    /// The event type (`order.placed`), when the sender said.
    pub event_type: String,
    /// The aggregate's type, when the sender said.
    pub aggregate_type: String,
    /// The aggregate's id, when the sender said.
    pub aggregate_id: String,
    /// The event's place in its aggregate's order (1, 2, ...), when the sender said.
    pub sequence: Option<i64>,
    /// When the event was enqueued, for the end-to-end latency.
    pub created_at: Option<Timestamp>,
    /// The other headers (`traceparent`, `x-request-id`, ...).
    pub headers: BTreeMap<String, String>,
    /// The event's JSON payload, as bytes.
    pub payload: Vec<u8>,
    /// How many times the broker delivered it, this time included, when it says.
    pub delivery: Option<u64>,
}

impl Message {
    /// The payload read as `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, HandleError> {
        serde_json::from_slice(&self.payload)
            .map_err(|e| HandleError::Reject(format!("message {}: payload: {e}", self.id)))
    }
}

/// What a handler did with a message it took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect ran and committed, with its id in the inbox.
    Applied,
    /// The inbox had it already: nothing ran. The redelivery was absorbed.
    Duplicate,
}

impl<T> From<Applied<T>> for Outcome {
    fn from(applied: Applied<T>) -> Self {
        match applied {
            Applied::Now(_) => Outcome::Applied,
            Applied::Before => Outcome::Duplicate,
        }
    }
}

/// Why a handler did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// A passing failure (the database is down): nothing committed; the message is
    /// delivered again later.
    #[error("will retry: {0}")]
    Retry(String),
    /// The message can never be applied (it does not parse): nothing committed; it is
    /// taken off the queue (JetStream `TERM`, an AMQP reject to the queue's dead-letter
    /// exchange, a 422 to a webhook sender) instead of being redelivered forever.
    #[error("rejected: {0}")]
    Reject(String),
}

/// A consumer adapter could not start (the stream or queue it names does not exist, the
/// broker refused it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConsumeError(pub String);

impl From<InboxError> for HandleError {
    fn from(e: InboxError) -> Self {
        match e {
            InboxError::Unavailable(_) => HandleError::Retry(e.to_string()),
            InboxError::Invalid(_) => HandleError::Reject(e.to_string()),
        }
    }
}

/// An application's consumer: applies a message's effect once, in one transaction with the
/// message id's inbox row (see [`crate::inbox`]), and says which it was. It returns only
/// after that transaction committed (or did not).
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Handles one message.
    async fn handle(&self, message: Message) -> Result<Outcome, HandleError>;
}

/// A [`Handler`] from an async function.
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, HandleError>> + Send,
{
    HandlerFn(f)
}

/// See [`handler_fn`].
pub struct HandlerFn<F>(F);

#[async_trait]
impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Outcome, HandleError>> + Send,
{
    async fn handle(&self, message: Message) -> Result<Outcome, HandleError> {
        (self.0)(message).await
    }
}

#[async_trait]
impl<H: Handler + ?Sized> Handler for std::sync::Arc<H> {
    async fn handle(&self, message: Message) -> Result<Outcome, HandleError> {
        (**self).handle(message).await
    }
}

/// The header names the publishers write, lower case (NATS and webhooks keep the case they
/// are given; the adapters compare without it).
pub(crate) mod header {
    #![allow(dead_code)]
    pub(crate) const AGGREGATE_TYPE: &str = "oncely-aggregate-type";
    pub(crate) const AGGREGATE_ID: &str = "oncely-aggregate-id";
    pub(crate) const SEQUENCE: &str = "oncely-sequence";
    pub(crate) const EVENT_TYPE: &str = "oncely-event-type";
    pub(crate) const CREATED_AT: &str = "oncely-created-at";
}

impl Message {
    /// A message from its id, payload and headers: the `oncely-*` headers fill the fields
    /// they name, the rest stay headers.
    #[cfg_attr(
        not(any(feature = "nats", feature = "amqp", feature = "webhook")),
        allow(dead_code)
    )]
    pub(crate) fn from_parts(
        id: String,
        payload: Vec<u8>,
        headers: impl IntoIterator<Item = (String, String)>,
    ) -> Message {
        let mut m = Message {
            id,
            event_type: String::new(),
            aggregate_type: String::new(),
            aggregate_id: String::new(),
            sequence: None,
            created_at: None,
            headers: BTreeMap::new(),
            payload,
            delivery: None,
        };
        for (name, value) in headers {
            match name.to_ascii_lowercase().as_str() {
                header::AGGREGATE_TYPE => m.aggregate_type = value,
                header::AGGREGATE_ID => m.aggregate_id = value,
                header::EVENT_TYPE => m.event_type = value,
                header::SEQUENCE => m.sequence = value.parse().ok(),
                header::CREATED_AT => m.created_at = value.parse().ok().map(Timestamp),
                _ => {
                    m.headers.insert(name, value);
                }
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oncely_headers_fill_the_fields_and_the_rest_stay() {
        let m = Message::from_parts(
            "e1".into(),
            br#"{"a":1}"#.to_vec(),
            [
                ("Oncely-Aggregate-Type", "order"),
                ("Oncely-Aggregate-Id", "o1"),
                ("Oncely-Sequence", "3"),
                ("Oncely-Event-Type", "order.placed"),
                ("Oncely-Created-At", "1700000000000"),
                ("traceparent", "00-ab-cd-01"),
                ("Oncely-Sequence-Extra", "x"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        assert_eq!(
            (m.aggregate_type.as_str(), m.aggregate_id.as_str()),
            ("order", "o1")
        );
        assert_eq!(m.sequence, Some(3));
        assert_eq!(m.event_type, "order.placed");
        assert_eq!(m.created_at, Some(Timestamp(1_700_000_000_000)));
        assert_eq!(m.headers.len(), 2);
        assert_eq!(m.json::<serde_json::Value>().unwrap()["a"], 1);
        let bad = Message::from_parts("e2".into(), b"not json".to_vec(), []);
        assert!(matches!(
            bad.json::<serde_json::Value>(),
            Err(HandleError::Reject(_))
        ));
    }
}
