//! The RabbitMQ publisher (feature `amqp`).
//!
//! Each event goes to one exchange with the routing key `{aggregate_type}.{event_type}`, as
//! a persistent message (delivery mode 2) whose `message_id` is the event id, published
//! `mandatory` on a channel in confirm mode. `publish` returns only after the broker's
//! confirm. A message no queue would take comes back, and counts as a failure, not a
//! delivery: the relay retries it until a queue is bound, or dead-letters it.
//!
//! [`AmqpConsumer`] is the other end: a queue consumer with manual acknowledgement that hands
//! each delivery to a [`Handler`] and acknowledges it only after the handler's transaction
//! committed. RabbitMQ has no dedupe of its own: a confirm lost on the way back makes the
//! relay publish again, and the consumer's inbox absorbs the copy.

use std::time::Duration;

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
};

use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use crate::consume::{ConsumeError, HandleError, Handler, Message, Outcome};
use crate::metrics::ConsumerMetrics;
use crate::relay::{PublishError, Publisher};
use crate::OutboxEvent;

/// Publishes events to a RabbitMQ exchange.
pub struct AmqpPublisher {
    url: String,
    exchange: String,
    link: tokio::sync::Mutex<Option<Link>>,
    confirm_timeout: Duration,
}

/// One connection and its channel in confirm mode. A connection that broke is replaced by
/// a new one at the next publish: the relay retries what failed meanwhile.
struct Link {
    // Kept so that the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
}

impl Link {
    async fn open(url: &str, confirms: bool) -> Result<Link, PublishError> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| PublishError::new(format!("cannot connect to RabbitMQ: {e}")))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(failed("open a channel"))?;
        if confirms {
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(failed("enable publisher confirms"))?;
        }
        Ok(Link {
            _connection: connection,
            channel,
        })
    }

    fn usable(&self) -> bool {
        self.channel.status().connected()
    }
}

fn failed(what: &str) -> impl Fn(lapin::Error) -> PublishError + '_ {
    move |e| PublishError::new(format!("{what}: {e}"))
}

impl AmqpPublisher {
    /// Connects to `url` (`amqp://user:pass@host:5672/%2f`) and opens a channel in confirm
    /// mode for `exchange`. Connecting again after a broken connection is automatic.
    pub async fn connect(url: &str, exchange: &str) -> Result<Self, PublishError> {
        let link = Link::open(url, true).await?;
        Ok(AmqpPublisher {
            url: url.to_owned(),
            exchange: exchange.to_owned(),
            link: tokio::sync::Mutex::new(Some(link)),
            confirm_timeout: Duration::from_secs(10),
        })
    }

    /// How long a publish (and a reconnect) waits for the broker before it counts as
    /// failed (default 10 s). Shorter than the relay's lease.
    pub fn with_confirm_timeout(mut self, timeout: Duration) -> Self {
        self.confirm_timeout = timeout;
        self
    }

    /// The channel (connecting again if the connection broke), for declaring queues and
    /// bindings.
    pub async fn channel(&self) -> Result<Channel, PublishError> {
        let mut link = self.link.lock().await;
        if let Some(l) = link.as_ref().filter(|l| l.usable()) {
            return Ok(l.channel.clone());
        }
        *link = None;
        let fresh = tokio::time::timeout(self.confirm_timeout, Link::open(&self.url, true))
            .await
            .map_err(|_| {
                PublishError::new(format!(
                    "cannot connect to RabbitMQ within {:?}",
                    self.confirm_timeout
                ))
            })??;
        let channel = fresh.channel.clone();
        *link = Some(fresh);
        Ok(channel)
    }

    /// Declares the exchange as a durable topic exchange if it does not exist.
    pub async fn declare_exchange(&self) -> Result<(), PublishError> {
        self.channel()
            .await?
            .exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(failed("declare the exchange"))
    }

    /// The routing key of an event.
    pub fn routing_key_of(event: &OutboxEvent) -> String {
        format!("{}.{}", event.aggregate_type, event.event_type)
    }
}

#[async_trait]
impl Publisher for AmqpPublisher {
    fn name(&self) -> &str {
        "amqp"
    }

    async fn publish(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        let mut headers = FieldTable::default();
        let mut put = |k: &str, v: String| {
            headers.insert(k.into(), AMQPValue::LongString(v.into()));
        };
        for (name, value) in &event.headers {
            put(name, value.clone());
        }
        put("oncely-aggregate-type", event.aggregate_type.clone());
        put("oncely-aggregate-id", event.aggregate_id.clone());
        put("oncely-sequence", event.sequence.to_string());
        put(
            "oncely-created-at",
            event.created_at.as_millis().to_string(),
        );
        let properties = BasicProperties::default()
            .with_message_id(event.id.to_string().into())
            .with_type(event.event_type.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let payload = event.payload.to_string();
        let publish = async {
            self.channel()
                .await?
                .basic_publish(
                    self.exchange.as_str().into(),
                    Self::routing_key_of(event).as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    payload.as_bytes(),
                    properties,
                )
                .await
                .map_err(failed("publish"))?
                .await
                .map_err(failed("no confirm"))
        };
        let result = tokio::time::timeout(self.confirm_timeout, publish).await;
        if matches!(result, Err(_) | Ok(Err(_)) | Ok(Ok(Confirmation::Nack(_)))) {
            // The channel may be dead while it still reports itself connected (a half-open
            // connection lapin's heartbeat has not noticed yet): open a new one next time.
            *self.link.lock().await = None;
        }
        match result {
            Ok(Ok(Confirmation::Ack(None))) => Ok(()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(PublishError::new(format!(
                "no queue takes routing key {}: {}",
                Self::routing_key_of(event),
                returned.reply_text
            ))),
            Ok(Ok(Confirmation::Nack(_))) => {
                Err(PublishError::new("the broker refused the message"))
            }
            Ok(Ok(Confirmation::NotRequested)) => {
                Err(PublishError::new("the channel is not in confirm mode"))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PublishError::new(format!(
                "no confirm within {:?}",
                self.confirm_timeout
            ))),
        }
    }
}

/// A consumer of one RabbitMQ queue feeding a [`Handler`]: deliveries one at a time, each
/// acknowledged only after the handler returned. A delivery the handler wants again goes back
/// to the queue after a pause; one it rejects is rejected without requeueing (to the queue's
/// dead-letter exchange, if it has one). A broken connection is opened again, after a
/// pause, until `stop`; the deliveries it had not acknowledged come again.
pub struct AmqpConsumer {
    url: String,
    queue: String,
    prefetch: u16,
    retry_delay: Duration,
    metrics: Arc<ConsumerMetrics>,
}

impl AmqpConsumer {
    /// A consumer named `name` (its inbox name and consumer tag) of `queue` at `url`.
    pub fn new(url: &str, queue: &str, name: &str) -> Self {
        AmqpConsumer {
            url: url.to_owned(),
            queue: queue.to_owned(),
            prefetch: 32,
            retry_delay: Duration::from_secs(1),
            metrics: Arc::new(ConsumerMetrics::new(name)),
        }
    }

    /// Deliveries the broker sends ahead of their acks (default 32). With 1, deliveries are
    /// handled strictly in the queue's order, retries included; with more, a delivery the
    /// handler wants again is requeued after later ones have been handled.
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// How long to pause before a message the handler wants again goes back, and before
    /// connecting again (default 1 s).
    pub fn with_retry_delay(mut self, delay: Duration) -> Self {
        self.retry_delay = delay;
        self
    }

    /// This consumer's counts, for `/metrics`.
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        self.metrics.clone()
    }

    /// Hands deliveries to `handler` until `stop` completes. Fails at once only when the
    /// first connection is refused or the queue does not exist; later breaks are connected
    /// again.
    pub async fn run(
        &self,
        handler: impl Handler,
        stop: impl Future<Output = ()>,
    ) -> Result<(), ConsumeError> {
        tokio::pin!(stop);
        let mut first = true;
        loop {
            let consumer = match self.subscribe().await {
                Ok(c) => c,
                Err(e) if first => return Err(e),
                Err(_) => {
                    tokio::select! {
                        () = &mut stop => return Ok(()),
                        () = tokio::time::sleep(self.retry_delay) => continue,
                    }
                }
            };
            first = false;
            let (_link, mut deliveries) = consumer;
            loop {
                let next = tokio::select! {
                    () = &mut stop => return Ok(()),
                    next = deliveries.next() => next,
                };
                match next {
                    Some(Ok(delivery)) => self.handle(&handler, delivery).await,
                    // The connection broke: open another.
                    Some(Err(_)) | None => break,
                }
            }
        }
    }

    async fn subscribe(&self) -> Result<(Link, lapin::Consumer), ConsumeError> {
        let link = Link::open(&self.url, false)
            .await
            .map_err(|e| ConsumeError(e.message))?;
        link.channel
            .basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| ConsumeError(format!("prefetch: {e}")))?;
        let deliveries = link
            .channel
            .basic_consume(
                self.queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| ConsumeError(format!("consume {}: {e}", self.queue)))?;
        Ok((link, deliveries))
    }

    async fn handle(&self, handler: &impl Handler, delivery: lapin::message::Delivery) {
        let props = &delivery.properties;
        let mut headers = Vec::new();
        if let Some(table) = props.headers() {
            for (name, value) in table.inner() {
                let text = match value {
                    AMQPValue::LongString(s) => s.to_string(),
                    AMQPValue::ShortString(s) => s.to_string(),
                    other => format!("{other:?}"),
                };
                headers.push((name.to_string(), text));
            }
        }
        let result = match props.message_id() {
            Some(id) => {
                let mut message =
                    Message::from_parts(id.to_string(), delivery.data.clone(), headers);
                if message.event_type.is_empty() {
                    if let Some(kind) = props.kind() {
                        message.event_type = kind.to_string();
                    }
                }
                self.metrics.handle(handler, message).await
            }
            // Nothing to dedupe by: applying it could apply it twice.
            None => {
                let result = Err(HandleError::Reject("the message has no message_id".into()));
                self.metrics
                    .record(&result, None, oncely_core::Timestamp(0));
                result
            }
        };
        // A lost acknowledgement is a redelivery later, which the inbox absorbs.
        let _ = match result {
            Ok(Outcome::Applied | Outcome::Duplicate) => {
                delivery.ack(BasicAckOptions::default()).await
            }
            Err(HandleError::Retry(_)) => {
                tokio::time::sleep(self.retry_delay).await;
                delivery
                    .nack(BasicNackOptions {
                        requeue: true,
                        ..BasicNackOptions::default()
                    })
                    .await
            }
            Err(HandleError::Reject(_)) => {
                delivery.reject(BasicRejectOptions { requeue: false }).await
            }
        };
    }
}
