//! The relay to the machine's RabbitMQ: every event in the bound queue, persistent, with its
//! id as `message_id`, in each aggregate's order; a message no queue takes is a failure the
//! relay retries, never a delivery.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use oncely_outbox::amqp::AmqpPublisher;
use oncely_outbox::conformance::Fixture;
use oncely_outbox::{NewEvent, Relay, RelayConfig};
use oncely_testkit::services::{unique_name, Service};

fn quick() -> RelayConfig {
    RelayConfig {
        backoff_base: Duration::from_millis(1),
        backoff_cap: Duration::from_millis(10),
        ..RelayConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_to_rabbitmq_confirms_each_event() {
    let Some(url) = Service::Amqp.available("the_relay_to_rabbitmq_confirms_each_event") else {
        return;
    };
    let name = unique_name("oncely_outbox");
    let publisher = Arc::new(AmqpPublisher::connect(&url, &name).await.unwrap());
    publisher.declare_exchange().await.unwrap();
    let f = crate::sqlite::fixture();

    // Nothing bound yet: the broker returns the message, the relay keeps it pending.
    f.commit(vec![NewEvent::new(
        "order",
        "early",
        "order.placed",
        serde_json::json!({}),
    )])
    .await;
    let relay = Relay::new(f.store(), publisher.clone(), quick());
    let pass = relay.pass().await.unwrap();
    assert_eq!(
        (pass.delivered, pass.retrying),
        (0, 1),
        "unroutable is not delivered"
    );
    assert_eq!(f.store().stats().await.unwrap().pending, 1);

    let ch = publisher.channel();
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        name.as_str().into(),
        name.as_str().into(),
        "order.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut ids = Vec::new();
    for round in 0..5 {
        let events = (0..20)
            .map(|a| {
                NewEvent::new(
                    "order",
                    format!("o{a}"),
                    "order.changed",
                    serde_json::json!({ "round": round }),
                )
                .with_header("x-request-id", "req-1")
            })
            .collect();
        ids.extend(f.commit(events).await);
    }
    for _ in 0..1000 {
        if f.store().stats().await.unwrap().pending == 0 {
            break;
        }
        relay.pass().await.unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(f.store().stats().await.unwrap().pending, 0);

    let mut got = Vec::new();
    let mut per_aggregate: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    while let Some(m) = ch
        .basic_get(name.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
    {
        let props = &m.delivery.properties;
        assert_eq!(*props.delivery_mode(), Some(2), "persistent");
        let id = props.message_id().as_ref().unwrap().to_string();
        let headers = props.headers().as_ref().unwrap();
        let text = |k: &str| match headers.inner().get(k) {
            Some(lapin::types::AMQPValue::LongString(s)) => s.to_string(),
            other => panic!("{k}: {other:?}"),
        };
        if text("oncely-aggregate-id") != "early" {
            assert_eq!(text("x-request-id"), "req-1");
            per_aggregate
                .entry(text("oncely-aggregate-id"))
                .or_default()
                .push(text("oncely-sequence").parse().unwrap());
            got.push(id);
        }
    }
    let expected: HashSet<String> = ids.iter().map(|i| i.to_string()).collect();
    assert_eq!(got.len(), 100, "each event once");
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), expected);
    for (aggregate, seqs) in per_aggregate {
        assert_eq!(seqs, (1..=5).collect::<Vec<i64>>(), "{aggregate} in order");
    }
    ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete(name.as_str().into(), Default::default())
        .await
        .unwrap();
}
