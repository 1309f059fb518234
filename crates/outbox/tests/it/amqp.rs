//! The relay to the machine's RabbitMQ: every event in the bound queue, persistent, with its
//! id as `message_id`, in each aggregate's order; a message no queue takes is a failure the
//! relay retries, never a delivery.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use oncely_outbox::amqp::{AmqpConsumer, AmqpPublisher};
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

/// A durable queue `name` bound to the exchange `name` for every order event.
async fn declare_bound_queue(ch: &lapin::Channel, name: &str) {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        name.into(),
        name.into(),
        "order.#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
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

    let ch = publisher.channel().await.unwrap();
    declare_bound_queue(&ch, &name).await;
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

/// 10 000 events from a SQLite outbox to RabbitMQ and into a consumer's inbox, while the
/// relay's connection is cut mid-publish and restored, and the consumer dies after a commit
/// and before its ack. RabbitMQ keeps no dedupe, so the queue may hold repeats; the inbox
/// absorbs them: each event has its effect once, in its aggregate's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_survive_a_cut_connection_and_a_consumer_killed_before_its_ack() {
    let Some(url) = Service::Amqp.available(
        "ten_thousand_events_survive_a_cut_connection_and_a_consumer_killed_before_its_ack",
    ) else {
        return;
    };
    const AGGREGATES: usize = 100;
    const PER_AGGREGATE: usize = 100;
    const TOTAL: usize = AGGREGATES * PER_AGGREGATE;
    let name = unique_name("oncely_outbox");
    // amqp://user:pass@host:port/vhost: the proxy takes the place of host:port.
    let (head, rest) = url
        .split_once('@')
        .expect("an amqp:// URL with credentials");
    let (host_port, vhost) = rest.split_once('/').unwrap_or((rest, "%2f"));
    let broker: std::net::SocketAddr = host_port.parse().expect("ip:port in the AMQP URL");
    let proxy = oncely_testkit::fault::FaultProxy::start(broker).await;
    let proxied = format!("{head}@{}/{vhost}", proxy.addr());

    let setup = AmqpPublisher::connect(&url, &name).await.unwrap();
    setup.declare_exchange().await.unwrap();
    let ch = setup.channel().await.unwrap();
    declare_bound_queue(&ch, &name).await;

    let f = crate::sqlite::fixture();
    crate::consume::commit_rounds(&f, "o", AGGREGATES, PER_AGGREGATE).await;
    let publisher = Arc::new(
        AmqpPublisher::connect(&proxied, &name)
            .await
            .unwrap()
            .with_confirm_timeout(Duration::from_secs(2)),
    );
    let running = crate::consume::Running::start(f.store(), publisher.clone());

    let effects = crate::consume::Effects::new();
    let dying = effects.handler("billing", Some(3_000));
    let first =
        AmqpConsumer::new(&url, &name, "billing").with_retry_delay(Duration::from_millis(100));
    let first_run = {
        let dying = dying.clone();
        tokio::spawn(async move { first.run(dying, std::future::pending()).await })
    };

    // Cut the relay's connection once a fifth is through, for two seconds.
    crate::consume::cut_after(&*f.store(), &proxy, (TOTAL / 5) as u64).await;

    crate::consume::kill_when_dead(&dying, first_run).await;
    let second =
        AmqpConsumer::new(&url, &name, "billing").with_retry_delay(Duration::from_millis(100));
    let metrics = second.metrics();
    let second_run = tokio::spawn({
        let handler = effects.handler("billing", None);
        async move { second.run(handler, std::future::pending()).await }
    });
    crate::consume::all_applied_once(&effects, running, &*f.store(), TOTAL).await;
    assert!(
        proxy.accepted() >= 2,
        "the relay connected again after the cut"
    );
    assert!(
        metrics.duplicates() >= 1,
        "the redelivery after the consumer died was absorbed by the inbox"
    );
    second_run.abort();
    let _ = second_run.await;
    ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    ch.exchange_delete(name.as_str().into(), Default::default())
        .await
        .unwrap();
}
