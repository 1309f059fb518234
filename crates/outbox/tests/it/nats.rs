//! The relay to the machine's NATS JetStream: every event in the stream once, in each
//! aggregate's order, with its id as `Nats-Msg-Id`; a relay's repeat (a publish whose ack
//! was lost) is dropped by the stream's duplicate window.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use oncely_outbox::conformance::Fixture;
use oncely_outbox::nats::{ConsumerConfig, NatsConsumer, NatsPublisher};
use oncely_outbox::{NewEvent, Publisher, Relay, RelayConfig};
use oncely_testkit::services::{unique_name, Service};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_to_jetstream_publishes_each_event_once_in_order() {
    let Some(url) =
        Service::Nats.available("the_relay_to_jetstream_publishes_each_event_once_in_order")
    else {
        return;
    };
    let name = unique_name("oncely_outbox");
    let publisher = Arc::new(NatsPublisher::connect(&url, &name).await.unwrap());
    publisher
        .ensure_stream(&name, Duration::from_secs(120))
        .await
        .unwrap();
    let f = crate::sqlite::fixture();
    let mut ids = Vec::new();
    for round in 0..10 {
        let events = (0..20)
            .map(|a| {
                NewEvent::new(
                    "order",
                    format!("o{a}"),
                    "order.changed",
                    serde_json::json!({ "round": round }),
                )
                .with_header(
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                )
            })
            .collect();
        ids.extend(f.commit(events).await);
    }
    let relay = Relay::new(
        f.store(),
        publisher.clone(),
        RelayConfig {
            poll: Duration::from_millis(10),
            ..RelayConfig::default()
        },
    );
    while f.store().stats().await.unwrap().pending > 0 {
        relay.pass().await.unwrap();
    }

    let js = publisher.jetstream();
    let mut stream = js.get_stream(&name).await.unwrap();
    assert_eq!(stream.info().await.unwrap().state.messages, 200);
    let mut per_aggregate: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let mut seen = Vec::new();
    for seq in 1..=200 {
        let m = stream.get_raw_message(seq).await.unwrap();
        let header = |n: &str| m.headers.get(n).map(|v| v.as_str().to_owned()).unwrap();
        seen.push(header("Nats-Msg-Id"));
        assert_eq!(
            header("traceparent"),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(m.subject.as_str(), format!("{name}.order.order.changed"));
        per_aggregate
            .entry(header("Oncely-Aggregate-Id"))
            .or_default()
            .push(header("Oncely-Sequence").parse().unwrap());
    }
    let mut expected: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let mut got = seen.clone();
    expected.sort();
    got.sort();
    assert_eq!(got, expected, "each event once");
    for (aggregate, seqs) in per_aggregate {
        assert_eq!(seqs, (1..=10).collect::<Vec<i64>>(), "{aggregate} in order");
    }

    // A repeat of an event the stream has (its ack was lost): the stream keeps one copy.
    let first = oncely_outbox::OutboxEvent {
        id: ids[0],
        aggregate_type: "order".into(),
        aggregate_id: "o0".into(),
        sequence: 1,
        event_type: "order.changed".into(),
        payload: serde_json::json!({ "round": 0 }),
        headers: Default::default(),
        created_at: oncely_core::Timestamp(0),
        attempts: 2,
        last_error: None,
    };
    publisher.publish(&first).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        200,
        "the duplicate was dropped"
    );
    js.delete_stream(&name).await.unwrap();
}

/// 10 000 events from a SQLite outbox to JetStream and into a consumer's inbox, while the
/// relay's connection to the broker is cut mid-publish and restored, and the consumer dies
/// after a commit and before its ack: the stream holds each event once, and each has its
/// effect once, in its aggregate's order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_events_survive_a_cut_connection_and_a_consumer_killed_before_its_ack() {
    let Some(url) = Service::Nats.available(
        "ten_thousand_events_survive_a_cut_connection_and_a_consumer_killed_before_its_ack",
    ) else {
        return;
    };
    const AGGREGATES: usize = 100;
    const PER_AGGREGATE: usize = 100;
    const TOTAL: usize = AGGREGATES * PER_AGGREGATE;
    let name = unique_name("oncely_outbox");
    let broker: std::net::SocketAddr = url
        .trim_start_matches("nats://")
        .parse()
        .expect("ONCELY_TEST_NATS is nats://ip:port");
    let proxy = oncely_testkit::fault::FaultProxy::start(broker).await;
    let publisher = Arc::new(
        NatsPublisher::connect(&format!("nats://{}", proxy.addr()), &name)
            .await
            .unwrap()
            .with_ack_timeout(Duration::from_secs(2)),
    );
    publisher
        .ensure_stream(&name, Duration::from_secs(120))
        .await
        .unwrap();
    let f = crate::sqlite::fixture();
    crate::consume::commit_rounds(&f, "o", AGGREGATES, PER_AGGREGATE).await;

    let running = crate::consume::Running::start(f.store(), publisher.clone());

    let effects = crate::consume::Effects::new();
    let consumer_config = ConsumerConfig {
        ack_wait: Duration::from_secs(2),
        retry_delay: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let direct = async_nats::connect(&url).await.unwrap();
    let first = NatsConsumer::durable(
        &async_nats::jetstream::new(direct),
        &name,
        "billing",
        consumer_config.clone(),
    )
    .await
    .unwrap();
    let dying = effects.handler("billing", Some(3_000));
    let first_run = {
        let dying = dying.clone();
        tokio::spawn(async move { first.run(dying, std::future::pending()).await })
    };

    // Cut the relay's connection once a fifth is through, for two seconds.
    crate::consume::cut_after(&*f.store(), &proxy, (TOTAL / 5) as u64).await;

    // The consumer dies after its 3000th commit, before its ack; another takes its place.
    crate::consume::kill_when_dead(&dying, first_run).await;
    let crashed_on = dying.crashed_on.lock().unwrap().clone().unwrap();
    let direct = async_nats::connect(&url).await.unwrap();
    let second = NatsConsumer::durable(
        &async_nats::jetstream::new(direct),
        &name,
        "billing",
        consumer_config,
    )
    .await
    .unwrap();
    let metrics = second.metrics();
    let second_run = tokio::spawn({
        let handler = effects.handler("billing", None);
        async move { second.run(handler, std::future::pending()).await }
    });
    crate::consume::all_applied_once(&effects, running, &*f.store(), TOTAL).await;
    let mut stream = publisher.jetstream().get_stream(&name).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        TOTAL as u64,
        "each event in the stream once, whatever the relay repeated"
    );
    assert!(
        proxy.accepted() >= 2,
        "the relay connected again after the cut"
    );
    assert!(
        metrics.duplicates() >= 1,
        "the redelivery of {crashed_on} was absorbed by the inbox"
    );
    second_run.abort();
    publisher.jetstream().delete_stream(&name).await.unwrap();
}
