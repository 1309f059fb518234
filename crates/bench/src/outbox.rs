//! `oncely-bench --outbox`: what the transactional outbox costs, side by side in one run.
//!
//! - **Throughput:** the same events published by the same publisher straight to the broker
//!   (as many in flight at a time as the relay can have: its batch times its passes in
//!   flight) and through the relay from a SQLite or PostgreSQL outbox (each pass claiming a
//!   batch, publishing it and settling it), for NATS JetStream and RabbitMQ. Events per
//!   second and the ratio.
//! - **End to end:** events enqueued one per transaction at a steady rate while a relay and
//!   a consumer run; the time from the producer's commit to the consumer's commit (its inbox
//!   row and effect in its own SQLite file), p50, p99 and max.
//! - **Enqueue cost:** transactions that insert one business row, against the same with the
//!   event enqueued in the transaction too.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use oncely_core::{Clock, SystemClock, Timestamp};
use oncely_outbox::amqp::{AmqpConsumer, AmqpPublisher};
use oncely_outbox::inbox::{sqlite as inbox, InboxError};
use oncely_outbox::nats::{ConsumerConfig, NatsConsumer, NatsPublisher};
use oncely_outbox::postgres::PgOutbox;
use oncely_outbox::sqlite::SqliteOutbox;
use oncely_outbox::{
    handler_fn, EventId, Message, NewEvent, OutboxEvent, OutboxStore, Publisher, Relay, RelayConfig,
};

/// What one run measures.
pub(crate) struct Plan {
    pub(crate) events: usize,
    pub(crate) batch: usize,
    pub(crate) passes: usize,
    pub(crate) rate: u64,
    pub(crate) seconds: u64,
    pub(crate) nats: Option<String>,
    pub(crate) amqp: Option<String>,
    pub(crate) postgres: Option<String>,
    pub(crate) dir: std::path::PathBuf,
}

const AGGREGATES: usize = 1000;

fn now_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn event(n: usize) -> NewEvent {
    NewEvent::new(
        "order",
        format!("o{}", n % AGGREGATES),
        "order.placed",
        serde_json::json!({ "order": n, "total": 1999, "currency": "EUR", "t_us": now_us() }),
    )
}

/// A broker under test, set up for this run and removed after it.
enum Broker {
    Nats {
        url: String,
        name: String,
        publisher: Arc<NatsPublisher>,
    },
    Amqp {
        url: String,
        name: String,
        publisher: Arc<AmqpPublisher>,
    },
}

impl Broker {
    fn label(&self) -> &'static str {
        match self {
            Broker::Nats { .. } => "NATS JetStream",
            Broker::Amqp { .. } => "RabbitMQ",
        }
    }

    fn publisher(&self) -> Arc<dyn Publisher> {
        match self {
            Broker::Nats { publisher, .. } => publisher.clone(),
            Broker::Amqp { publisher, .. } => publisher.clone(),
        }
    }

    async fn nats(url: &str) -> Result<Broker, String> {
        let name = format!("oncely_bench_{}", std::process::id());
        let publisher = NatsPublisher::connect(url, &name)
            .await
            .map_err(|e| e.to_string())?;
        publisher
            .ensure_stream(&name, Duration::from_secs(120))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Broker::Nats {
            url: url.to_owned(),
            name,
            publisher: Arc::new(publisher),
        })
    }

    async fn amqp(url: &str) -> Result<Broker, String> {
        use lapin::options::{QueueBindOptions, QueueDeclareOptions};
        let name = format!("oncely_bench_{}", std::process::id());
        let publisher = AmqpPublisher::connect(url, &name)
            .await
            .map_err(|e| e.to_string())?;
        publisher
            .declare_exchange()
            .await
            .map_err(|e| e.to_string())?;
        let ch = publisher.channel().await.map_err(|e| e.to_string())?;
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        ch.queue_bind(
            name.as_str().into(),
            name.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        Ok(Broker::Amqp {
            url: url.to_owned(),
            name,
            publisher: Arc::new(publisher),
        })
    }

    async fn remove(&self) {
        match self {
            Broker::Nats {
                publisher, name, ..
            } => {
                let _ = publisher.jetstream().delete_stream(name).await;
            }
            Broker::Amqp {
                publisher, name, ..
            } => {
                if let Ok(ch) = publisher.channel().await {
                    let _ = ch
                        .queue_delete(name.as_str().into(), Default::default())
                        .await;
                    let _ = ch
                        .exchange_delete(name.as_str().into(), Default::default())
                        .await;
                }
            }
        }
    }

    /// Empties what the throughput runs left, so the consumer starts at the end-to-end
    /// events.
    async fn drain(&self) -> Result<(), String> {
        match self {
            Broker::Nats {
                publisher, name, ..
            } => {
                let stream = publisher
                    .jetstream()
                    .get_stream(name)
                    .await
                    .map_err(|e| e.to_string())?;
                stream.purge().await.map_err(|e| e.to_string())?;
            }
            Broker::Amqp {
                publisher, name, ..
            } => {
                let ch = publisher.channel().await.map_err(|e| e.to_string())?;
                ch.queue_purge(name.as_str().into(), Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    }
}

/// An outbox under test: where events are enqueued, and the store a relay reads.
enum Db {
    Sqlite {
        app: Mutex<rusqlite::Connection>,
        store: Arc<SqliteOutbox>,
    },
    Postgres {
        pool: deadpool_postgres::Pool,
        store: Arc<PgOutbox>,
        schema: String,
    },
}

impl Db {
    fn label(&self) -> &'static str {
        match self {
            Db::Sqlite { .. } => "SQLite",
            Db::Postgres { .. } => "PostgreSQL",
        }
    }

    fn store(&self) -> Arc<dyn OutboxStore> {
        match self {
            Db::Sqlite { store, .. } => store.clone(),
            Db::Postgres { store, .. } => store.clone(),
        }
    }

    fn sqlite(path: &std::path::Path) -> Result<Db, String> {
        let _ = std::fs::remove_file(path);
        let store = SqliteOutbox::open(path, Duration::from_secs(10), Arc::new(SystemClock))
            .map_err(|e| e.to_string())?;
        let app = rusqlite::Connection::open(path).map_err(|e| e.to_string())?;
        app.busy_timeout(Duration::from_secs(10))
            .map_err(|e| e.to_string())?;
        app.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, body TEXT NOT NULL);",
        )
        .map_err(|e| e.to_string())?;
        Ok(Db::Sqlite {
            app: Mutex::new(app),
            store: Arc::new(store),
        })
    }

    async fn postgres(url: &str, schema: &str) -> Result<Db, String> {
        let opts = oncely_db::postgres::PgOptions::from_url(url)?;
        let pool = oncely_db::postgres::pool(&opts)?;
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; CREATE SCHEMA \"{schema}\";
                 CREATE TABLE \"{schema}\".orders (id bigserial PRIMARY KEY, body text NOT NULL);"
            ))
            .await
            .map_err(|e| e.to_string())?;
        drop(client);
        let store = PgOutbox::open(pool.clone(), schema, Arc::new(SystemClock))
            .await
            .map_err(|e| e.to_string())?;
        Ok(Db::Postgres {
            pool,
            store: Arc::new(store),
            schema: schema.to_owned(),
        })
    }

    async fn remove(&self) {
        if let Db::Postgres { pool, schema, .. } = self {
            if let Ok(c) = pool.get().await {
                let _ = c
                    .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                    .await;
            }
        }
    }

    /// One transaction: a business row, and with `with_event` its event.
    async fn write(&self, n: usize, with_event: bool) -> Result<(), String> {
        let body = format!("{{\"order\":{n},\"total\":1999}}");
        match self {
            Db::Sqlite { app, .. } => {
                let mut conn = app.lock().map_err(|_| "poisoned".to_owned())?;
                let tx = conn.transaction().map_err(|e| e.to_string())?;
                tx.execute("INSERT INTO orders (body) VALUES (?1)", [&body])
                    .map_err(|e| e.to_string())?;
                if with_event {
                    SqliteOutbox::enqueue(&tx, &event(n), SystemClock.now())
                        .map_err(|e| e.to_string())?;
                }
                tx.commit().map_err(|e| e.to_string())
            }
            Db::Postgres {
                pool,
                store,
                schema,
            } => {
                let mut client = pool.get().await.map_err(|e| e.to_string())?;
                let tx = client.transaction().await.map_err(|e| e.to_string())?;
                // Both sides prepared once per connection, as a service would.
                let insert = tx
                    .prepare_cached(&format!(
                        "INSERT INTO \"{schema}\".orders (body) VALUES ($1)"
                    ))
                    .await
                    .map_err(|e| e.to_string())?;
                tx.execute(&insert, &[&body])
                    .await
                    .map_err(|e| e.to_string())?;
                if with_event {
                    store
                        .enqueue_cached(&tx, &event(n))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                tx.commit().await.map_err(|e| e.to_string())
            }
        }
    }

    /// `n` events, `per_tx` to a transaction (not measured: the relay's input).
    async fn fill(&self, n: usize) -> Result<(), String> {
        match self {
            Db::Sqlite { app, .. } => {
                let mut conn = app.lock().map_err(|_| "poisoned".to_owned())?;
                for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
                    let tx = conn.transaction().map_err(|e| e.to_string())?;
                    for &i in chunk {
                        SqliteOutbox::enqueue(&tx, &event(i), SystemClock.now())
                            .map_err(|e| e.to_string())?;
                    }
                    tx.commit().map_err(|e| e.to_string())?;
                }
                Ok(())
            }
            Db::Postgres { pool, store, .. } => {
                let mut client = pool.get().await.map_err(|e| e.to_string())?;
                for chunk in (0..n).collect::<Vec<_>>().chunks(500) {
                    let tx = client.transaction().await.map_err(|e| e.to_string())?;
                    for &i in chunk {
                        store
                            .enqueue(&tx, &event(i))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    tx.commit().await.map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        }
    }
}

fn relay_config(plan: &Plan) -> RelayConfig {
    RelayConfig {
        poll: Duration::from_millis(50),
        passes_in_flight: plan.passes,
        batch: plan.batch,
        ..RelayConfig::default()
    }
}

/// Events per second publishing `n` events straight to the broker, as many in flight at a
/// time as the relay has (its batch times its passes in flight).
async fn direct(
    publisher: Arc<dyn Publisher>,
    n: usize,
    config: &RelayConfig,
) -> Result<f64, String> {
    let events: Vec<OutboxEvent> = (0..n)
        .map(|i| {
            let e = event(i);
            OutboxEvent {
                id: EventId::new(SystemClock.now()),
                aggregate_type: e.aggregate_type,
                aggregate_id: e.aggregate_id,
                sequence: (i / AGGREGATES) as i64 + 1,
                event_type: e.event_type,
                payload: e.payload,
                headers: e.headers,
                created_at: SystemClock.now(),
                attempts: 1,
                last_error: None,
            }
        })
        .collect();
    let started = Instant::now();
    for window in events.chunks(config.batch * config.passes_in_flight) {
        let mut tasks = tokio::task::JoinSet::new();
        for e in window {
            let (p, e) = (publisher.clone(), e.clone());
            tasks.spawn(async move { p.publish(&e).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
        }
    }
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

/// Events per second relaying the `n` events in `db` until all are delivered, with the
/// relay's passes in flight.
async fn relayed(
    db: &Db,
    publisher: Arc<dyn Publisher>,
    n: usize,
    config: &RelayConfig,
) -> Result<f64, String> {
    db.fill(n).await?;
    let relay = Relay::new(db.store(), publisher, config.clone());
    let (done_tx, done_rx) = tokio::sync::watch::channel(false);
    let mut delivered = 0;
    let mut failed = None;
    let started = Instant::now();
    relay
        .run(
            async move {
                let mut rx = done_rx;
                let _ = rx.wait_for(|d| *d).await;
            },
            |pass| match pass {
                Ok(p) => {
                    delivered += p.delivered;
                    if delivered >= n {
                        let _ = done_tx.send(true);
                    }
                }
                Err(e) => {
                    failed = Some(e.to_string());
                    let _ = done_tx.send(true);
                }
            },
        )
        .await;
    let elapsed = started.elapsed();
    if let Some(e) = failed {
        return Err(e);
    }
    if delivered != n {
        return Err(format!("the relay delivered {delivered} of {n}"));
    }
    Ok(n as f64 / elapsed.as_secs_f64())
}

/// Producer commit to consumer commit, in microseconds, for events enqueued at `rate` per
/// second for `seconds`.
async fn end_to_end(
    db: &Db,
    broker: &Broker,
    plan: &Plan,
    consumer_db: &std::path::Path,
) -> Result<Vec<u64>, String> {
    let (rate, seconds) = (plan.rate, plan.seconds);
    broker.drain().await?;
    let _ = std::fs::remove_file(consumer_db);
    let mut conn = rusqlite::Connection::open(consumer_db).map_err(|e| e.to_string())?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;
         CREATE TABLE invoices (order_id INTEGER NOT NULL);",
    )
    .map_err(|e| e.to_string())?;
    inbox::migrate(&mut conn).map_err(|e| e.to_string())?;
    let conn = Arc::new(Mutex::new(conn));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let (conn, latencies) = (conn.clone(), latencies.clone());
        handler_fn(move |m: Message| {
            let (conn, latencies) = (conn.clone(), latencies.clone());
            async move {
                let body: serde_json::Value = m.json()?;
                let mut c = conn
                    .lock()
                    .map_err(|_| oncely_outbox::HandleError::Retry("poisoned".into()))?;
                let applied = inbox::apply_once(&mut c, "bench", &m.id, Timestamp(0), |tx| {
                    tx.execute(
                        "INSERT INTO invoices (order_id) VALUES (?1)",
                        [body["order"].as_i64()],
                    )
                    .map_err(|e| InboxError::Unavailable(e.to_string()))
                })?;
                let took = now_us() - body["t_us"].as_i64().unwrap_or(0);
                if let Ok(mut l) = latencies.lock() {
                    l.push(u64::try_from(took).unwrap_or(0));
                }
                Ok(applied.into())
            }
        })
    };
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let consuming = match broker {
        Broker::Nats { url, name, .. } => {
            let client = async_nats::connect(url.as_str())
                .await
                .map_err(|e| e.to_string())?;
            let consumer = NatsConsumer::durable(
                &async_nats::jetstream::new(client),
                name,
                &format!("{name}_{}", db.label()),
                ConsumerConfig::default(),
            )
            .await
            .map_err(|e| e.to_string())?;
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move { consumer.run(handler, stop).await })
        }
        Broker::Amqp { url, name, .. } => {
            let consumer = AmqpConsumer::new(url, name, "bench");
            let stop = stopped(stop_rx.clone());
            tokio::spawn(async move { consumer.run(handler, stop).await })
        }
    };
    let relay = Arc::new(Relay::new(
        db.store(),
        broker.publisher(),
        relay_config(plan),
    ));
    let waker = relay.waker();
    let relaying = {
        let (relay, stop) = (relay.clone(), stopped(stop_rx.clone()));
        tokio::spawn(async move { relay.run(stop, |_| {}).await })
    };
    let total = (rate * seconds) as usize;
    let gap = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let started = Instant::now();
    for n in 0..total {
        let due = started + gap * n as u32;
        tokio::time::sleep_until(due.into()).await;
        db.write(n, true).await?;
        // In process, the producer wakes its relay at once instead of at its next poll.
        waker.notify_one();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while latencies.lock().map(|l| l.len()).unwrap_or(0) < total {
        if Instant::now() > deadline {
            return Err("the consumer did not get every event within a minute".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let _ = relaying.await;
    let _ = consuming.await;
    let mut l = latencies.lock().map(|l| l.clone()).unwrap_or_default();
    l.sort_unstable();
    Ok(l)
}

/// Microseconds per transaction writing `n` business rows, with or without their events,
/// alternating the two so that neither gets a warmer database.
async fn enqueue_cost(db: &Db, n: usize) -> Result<(f64, f64), String> {
    let mut alone = Duration::ZERO;
    let mut with = Duration::ZERO;
    let rounds = 10;
    for round in 0..rounds {
        let per = n / rounds;
        let t = Instant::now();
        for i in 0..per {
            db.write(round * per + i, false).await?;
        }
        alone += t.elapsed();
        let t = Instant::now();
        for i in 0..per {
            db.write(round * per + i, true).await?;
        }
        with += t.elapsed();
    }
    let us = |d: Duration| d.as_secs_f64() * 1e6 / ((n / rounds) * rounds) as f64;
    Ok((us(alone), us(with)))
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

pub(crate) async fn run(plan: Plan) -> Result<(), String> {
    let mut brokers = Vec::new();
    if let Some(url) = &plan.nats {
        match Broker::nats(url).await {
            Ok(b) => brokers.push(b),
            Err(e) => eprintln!("skipped NATS: {e}"),
        }
    }
    if let Some(url) = &plan.amqp {
        match Broker::amqp(url).await {
            Ok(b) => brokers.push(b),
            Err(e) => eprintln!("skipped RabbitMQ: {e}"),
        }
    }
    if brokers.is_empty() {
        return Err("no broker to measure: give --nats or --amqp".into());
    }
    let schema = format!("oncely_bench_{}", std::process::id());
    let mut dbs = vec![Db::sqlite(&plan.dir.join("outbox.db"))?];
    if let Some(url) = &plan.postgres {
        match Db::postgres(url, &schema).await {
            Ok(db) => dbs.push(db),
            Err(e) => eprintln!("skipped PostgreSQL: {e}"),
        }
    }
    let result = measure(&plan, &brokers, &dbs).await;
    for b in &brokers {
        b.remove().await;
    }
    for db in &dbs {
        db.remove().await;
    }
    result
}

async fn measure(plan: &Plan, brokers: &[Broker], dbs: &[Db]) -> Result<(), String> {
    let n = plan.events;
    let mut throughput = Vec::new();
    for broker in brokers {
        eprintln!(
            "running: {} events straight to {}, {} in flight ...",
            n,
            broker.label(),
            plan.batch * plan.passes
        );
        // A warm-up, so that neither side pays for the first connections.
        let config = relay_config(plan);
        direct(broker.publisher(), 500, &config).await?;
        let straight = direct(broker.publisher(), n, &config).await?;
        for db in dbs {
            eprintln!(
                "running: {} events relayed from {} to {}, {} passes of {} ...",
                n,
                db.label(),
                broker.label(),
                plan.passes,
                plan.batch
            );
            let relayed = relayed(db, broker.publisher(), n, &config).await?;
            throughput.push((broker.label(), db.label(), straight, relayed));
        }
    }
    let mut latency = Vec::new();
    for broker in brokers {
        for db in dbs {
            eprintln!(
                "running: end to end, {} to {} at {}/s for {} s ...",
                db.label(),
                broker.label(),
                plan.rate,
                plan.seconds
            );
            let l = end_to_end(db, broker, plan, &plan.dir.join("consumer.db")).await?;
            latency.push((broker.label(), db.label(), l));
        }
    }
    let mut cost = Vec::new();
    for db in dbs {
        let m = match db {
            Db::Sqlite { .. } => 20_000,
            Db::Postgres { .. } => 5_000,
        };
        eprintln!(
            "running: {m} transactions on {}, with and without their event ...",
            db.label()
        );
        let (alone, with) = enqueue_cost(db, m).await?;
        cost.push((db.label(), m, alone, with));
    }

    println!();
    println!("| broker | outbox | straight to the broker, events/s | through the relay, events/s | relay / straight |");
    println!("|---|---|---:|---:|---:|");
    for (broker, db, straight, relayed) in &throughput {
        println!(
            "| {broker} | {db} | {straight:.0} | {relayed:.0} | {:.2} |",
            relayed / straight
        );
    }
    println!();
    println!("| broker | outbox | events | commit to consumer commit p50 ms | p99 ms | max ms |");
    println!("|---|---|---:|---:|---:|---:|");
    for (broker, db, l) in &latency {
        println!(
            "| {broker} | {db} | {} | {:.2} | {:.2} | {:.2} |",
            l.len(),
            pct(l, 0.5),
            pct(l, 0.99),
            pct(l, 1.0)
        );
    }
    println!();
    println!("| database | transactions | business insert alone µs/tx | with the event enqueued µs/tx | added µs | with / alone |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (db, m, alone, with) in &cost {
        println!(
            "| {db} | {m} | {alone:.1} | {with:.1} | {:.1} | {:.2} |",
            with - alone,
            with / alone
        );
    }
    Ok(())
}
