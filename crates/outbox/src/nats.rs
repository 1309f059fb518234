//! The NATS JetStream publisher (feature `nats`).
//!
//! Each event goes to the subject `{prefix}.{aggregate_type}.{event_type}`, with the event
//! id as `Nats-Msg-Id`. A stream with a duplicate window drops a message whose id it has
//! seen within the window, which is what the relay's retries need: a publish that reached
//! the stream but whose ack was lost is published again, and acknowledged as a duplicate.
//! `publish` returns only after the stream's ack.
//!
//! [`NatsConsumer`] is the other end: a durable pull consumer that hands each message to a
//! [`Handler`] and acknowledges it only after the handler's transaction committed.

use std::time::Duration;

use std::future::Future;
use std::sync::Arc;

use async_nats::jetstream;
use async_nats::jetstream::consumer::{pull, AckPolicy, PullConsumer};
use async_nats::jetstream::AckKind;
use async_trait::async_trait;
use futures_util::StreamExt as _;

use crate::consume::{ConsumeError, HandleError, Handler, Message, Outcome};
use crate::metrics::ConsumerMetrics;
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

    /// How long a publish waits for the stream's ack before it counts as failed (default
    /// 10 s). Shorter than the relay's lease.
    pub fn with_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ack_timeout = timeout;
        self
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
        headers.insert(
            "Oncely-Created-At",
            event.created_at.as_millis().to_string().as_str(),
        );
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

/// How a [`NatsConsumer`] works (the defaults suit most).
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Only messages whose subject matches this (default: all of the stream's).
    pub filter_subject: String,
    /// How long the server waits for an ack before it delivers a message again (default
    /// 30 s): longer than a handler ever takes, or a slow handler sees its own message twice
    /// (which the inbox absorbs, at the cost of the work).
    pub ack_wait: Duration,
    /// After [`HandleError::Retry`], the message comes again after this (default 1 s).
    pub retry_delay: Duration,
    /// Messages delivered and not yet acknowledged, at most (default 1). With 1, messages
    /// are handled strictly in the stream's order, redeliveries included. More is faster,
    /// but a redelivered message (after a crash, a retry) then comes after later ones, so
    /// raise it only for handlers that do not need each aggregate's order.
    pub max_ack_pending: i64,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            filter_subject: String::new(),
            ack_wait: Duration::from_secs(30),
            retry_delay: Duration::from_secs(1),
            max_ack_pending: 1,
        }
    }
}

/// A durable JetStream pull consumer feeding a [`Handler`]: messages one at a time, in the
/// stream's order (so each aggregate's events in their order; see
/// [`ConsumerConfig::max_ack_pending`]), each acknowledged only after the handler returned. A message the handler wants again is negatively acknowledged with
/// a delay; one it rejects is terminated (never redelivered).
pub struct NatsConsumer {
    consumer: PullConsumer,
    config: ConsumerConfig,
    metrics: Arc<ConsumerMetrics>,
}

impl NatsConsumer {
    /// The durable consumer `name` on `stream`, created with `config` if it does not exist.
    /// Its position survives restarts: a consumer that comes back goes on where its last
    /// ack left it.
    pub async fn durable(
        jetstream: &jetstream::Context,
        stream: &str,
        name: &str,
        config: ConsumerConfig,
    ) -> Result<Self, ConsumeError> {
        let s = jetstream
            .get_stream(stream)
            .await
            .map_err(|e| ConsumeError(format!("stream {stream}: {e}")))?;
        let consumer = s
            .get_or_create_consumer(
                name,
                pull::Config {
                    durable_name: Some(name.to_owned()),
                    ack_policy: AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    filter_subject: config.filter_subject.clone(),
                    max_ack_pending: config.max_ack_pending,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ConsumeError(format!("consumer {name} on {stream}: {e}")))?;
        Ok(NatsConsumer {
            consumer,
            config,
            metrics: Arc::new(ConsumerMetrics::new(name)),
        })
    }

    /// This consumer's counts, for `/metrics`.
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        self.metrics.clone()
    }

    /// Hands messages to `handler` until `stop` completes. A lost connection is the NATS
    /// client's to restore; meanwhile this waits, and unacknowledged messages come again.
    pub async fn run(
        &self,
        handler: impl Handler,
        stop: impl Future<Output = ()>,
    ) -> Result<(), ConsumeError> {
        tokio::pin!(stop);
        let mut messages = None;
        loop {
            let stream = match &mut messages {
                Some(s) => s,
                None => match self.consumer.messages().await {
                    Ok(s) => messages.insert(s),
                    Err(_) => {
                        // The server is away: try again shortly, unless told to stop.
                        tokio::select! {
                            () = &mut stop => return Ok(()),
                            () = tokio::time::sleep(self.config.retry_delay) => continue,
                        }
                    }
                },
            };
            let next = tokio::select! {
                () = &mut stop => return Ok(()),
                next = stream.next() => next,
            };
            match next {
                Some(Ok(m)) => self.handle(&handler, m).await,
                // A missed heartbeat or a reconnect: the stream goes on by itself.
                Some(Err(_)) => {}
                None => messages = None,
            }
        }
    }

    async fn handle(&self, handler: &impl Handler, m: jetstream::Message) {
        let info = m.info().ok().map(|i| (i.stream_sequence, i.delivered));
        let mut headers = Vec::new();
        let mut id = None;
        if let Some(map) = &m.message.headers {
            for (name, values) in map.iter() {
                let name = name.to_string();
                let Some(value) = values.first() else {
                    continue;
                };
                if name.eq_ignore_ascii_case("Nats-Msg-Id") {
                    id = Some(value.to_string());
                } else {
                    headers.push((name, value.to_string()));
                }
            }
        }
        // Without a message id the stream position is the next best stable id: a
        // redelivery keeps it.
        let id = id.unwrap_or_else(|| {
            format!(
                "{}:{}",
                m.message.subject,
                info.map_or(0, |(sequence, _)| sequence)
            )
        });
        let mut message = Message::from_parts(id, m.message.payload.to_vec(), headers);
        message.delivery = info.and_then(|(_, d)| u64::try_from(d).ok());
        let result = self.metrics.handle(handler, message).await;
        let ack = match &result {
            Ok(Outcome::Applied | Outcome::Duplicate) => AckKind::Ack,
            Err(HandleError::Retry(_)) => AckKind::Nak(Some(self.config.retry_delay)),
            Err(HandleError::Reject(_)) => AckKind::Term,
        };
        // A lost ack is a redelivery later, which the inbox absorbs.
        let _ = m.ack_with(ack).await;
    }
}
