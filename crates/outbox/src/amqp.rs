//! The RabbitMQ publisher (feature `amqp`).
//!
//! Each event goes to one exchange with the routing key `{aggregate_type}.{event_type}`, as
//! a persistent message (delivery mode 2) whose `message_id` is the event id, published
//! `mandatory` on a channel in confirm mode. `publish` returns only after the broker's
//! confirm. A message no queue would take comes back, and counts as a failure, not a
//! delivery: the relay retries it until a queue is bound, or dead-letters it.

use std::time::Duration;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};

use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use crate::relay::{PublishError, Publisher};
use crate::OutboxEvent;

/// Publishes events to a RabbitMQ exchange.
pub struct AmqpPublisher {
    // Kept so that the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
    exchange: String,
    confirm_timeout: Duration,
}

fn failed(what: &str) -> impl Fn(lapin::Error) -> PublishError + '_ {
    move |e| PublishError::new(format!("{what}: {e}"))
}

impl AmqpPublisher {
    /// Connects to `url` (`amqp://user:pass@host:5672/%2f`) and opens a channel in confirm
    /// mode for `exchange`.
    pub async fn connect(url: &str, exchange: &str) -> Result<Self, PublishError> {
        let connection = Connection::connect(url, ConnectionProperties::default())
            .await
            .map_err(|e| PublishError::new(format!("cannot connect to RabbitMQ: {e}")))?;
        let channel = connection
            .create_channel()
            .await
            .map_err(failed("open a channel"))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(failed("enable publisher confirms"))?;
        Ok(AmqpPublisher {
            _connection: connection,
            channel,
            exchange: exchange.to_owned(),
            confirm_timeout: Duration::from_secs(10),
        })
    }

    /// The channel, for declaring queues and bindings.
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Declares the exchange as a durable topic exchange if it does not exist.
    pub async fn declare_exchange(&self) -> Result<(), PublishError> {
        self.channel
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
        let properties = BasicProperties::default()
            .with_message_id(event.id.to_string().into())
            .with_type(event.event_type.as_str().into())
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        let payload = event.payload.to_string();
        let publish = async {
            self.channel
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
        match tokio::time::timeout(self.confirm_timeout, publish).await {
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
