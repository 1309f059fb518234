//! The NATS JetStream publisher (feature `nats`).
//!
//! Each event goes to the subject `{prefix}.{aggregate_type}.{event_type}`, with the event
//! id as `Nats-Msg-Id`. A stream with a duplicate window drops a message whose id it has
//! seen within the window, which is what the relay's retries need: a publish that reached
//! the stream but whose ack was lost is published again, and acknowledged as a duplicate.
//! `publish` returns only after the stream's ack.

use std::time::Duration;

use async_nats::jetstream;
use async_trait::async_trait;

use crate::relay::{PublishError, Publisher};
use crate::OutboxEvent;

/// Publishes events to JetStream.
pub struct NatsPublisher {
    jetstream: jetstream::Context,
    prefix: String,
    ack_timeout: Duration,
}

impl NatsPublisher {
    /// Connects to the NATS server at `url` (`nats://host:4222`). Subjects start with
    /// `prefix`; a stream must capture `{prefix}.>` (see [`NatsPublisher::ensure_stream`]).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, PublishError> {
        let client = async_nats::connect(url)
            .await
            .map_err(|e| PublishError::new(format!("cannot connect to NATS at {url}: {e}")))?;
        Ok(Self::new(client, prefix))
    }

    /// On an existing connection.
    pub fn new(client: async_nats::Client, prefix: &str) -> Self {
        NatsPublisher {
            jetstream: jetstream::new(client),
            prefix: prefix.trim_end_matches('.').to_owned(),
            ack_timeout: Duration::from_secs(10),
        }
    }

    /// The JetStream context, for streams and consumers.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// Creates the stream `name` over `{prefix}.>` with `duplicate_window` if it does not
    /// exist. The window must be longer than the longest a relay may retry a publish whose
    /// ack was lost (its lease, plus the backoff), or a repeat gets through.
    pub async fn ensure_stream(
        &self,
        name: &str,
        duplicate_window: Duration,
    ) -> Result<(), PublishError> {
        self.jetstream
            .get_or_create_stream(jetstream::stream::Config {
                name: name.to_owned(),
                subjects: vec![format!("{}.>", self.prefix)],
                duplicate_window,
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| PublishError::new(format!("stream {name}: {e}")))
    }

    /// The subject an event is published to. Characters NATS gives a meaning in subjects
    /// (whitespace, `*`, `>`) become `_`; dots in the event type make levels
    /// (`order.placed`).
    pub fn subject_of(&self, event: &OutboxEvent) -> String {
        let token = |s: &str, dots: bool| -> String {
            s.chars()
                .map(|c| match c {
                    '*' | '>' => '_',
                    '.' if !dots => '_',
                    c if c.is_whitespace() || c.is_control() => '_',
                    c => c,
                })
                .collect()
        };
        format!(
            "{}.{}.{}",
            self.prefix,
            token(&event.aggregate_type, false),
            token(&event.event_type, true)
        )
    }
}

#[async_trait]
impl Publisher for NatsPublisher {
    fn name(&self) -> &str {
        "nats"
    }

    async fn publish(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in &event.headers {
            headers.insert(name.as_str(), value.as_str());
        }
        headers.insert("Nats-Msg-Id", event.id.to_string().as_str());
        headers.insert("Oncely-Aggregate-Type", event.aggregate_type.as_str());
        headers.insert("Oncely-Aggregate-Id", event.aggregate_id.as_str());
        headers.insert("Oncely-Sequence", event.sequence.to_string().as_str());
        headers.insert("Oncely-Event-Type", event.event_type.as_str());
        let payload = bytes::Bytes::from(event.payload.to_string());
        let publish = async {
            let ack = self
                .jetstream
                .publish_with_headers(self.subject_of(event), headers, payload)
                .await
                .map_err(|e| PublishError::new(format!("publish: {e}")))?;
            ack.await
                .map_err(|e| PublishError::new(format!("no ack from the stream: {e}")))
        };
        match tokio::time::timeout(self.ack_timeout, publish).await {
            // A duplicate ack means the stream already has it: delivered either way.
            Ok(Ok(_ack)) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PublishError::new(format!(
                "no ack from the stream within {:?}",
                self.ack_timeout
            ))),
        }
    }
}
