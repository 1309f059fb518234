//! `oncely relay` and `oncely outbox`: the outbox's relay as a process of its own, so that a
//! service in any language that writes the documented outbox rows (docs/outbox.md) gets its
//! events published at least once, in per-aggregate order; and the operator's view of the
//! outbox (status, dead letters, retry).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use oncely_core::{parse_duration, Clock, SystemClock};
use oncely_outbox::metrics::RelayMetrics;
use oncely_outbox::relay::Pass;
use oncely_outbox::{EventId, OutboxStore, Publisher, Relay, RelayConfig};
use tokio::sync::Notify;

/// Where the outbox is: `sqlite://PATH` or `postgres://...?schema=NAME`.
#[derive(Args)]
pub(crate) struct OutboxDb {
    /// The outbox's database: sqlite://PATH (the application's file) or
    /// postgres://USER@HOST/DB?schema=NAME (default schema `oncely`).
    #[arg(long, value_name = "URL", env = "ONCELY_OUTBOX_DB")]
    db: String,
}

#[derive(Args)]
pub(crate) struct RelayArgs {
    #[command(flatten)]
    db: OutboxDb,
    /// Where events go: nats://HOST:4222 (JetStream), amqp://USER:PASS@HOST:5672/%2f
    /// (RabbitMQ) or http://HOST/PATH (signed webhooks).
    #[arg(long, value_name = "URL")]
    to: String,
    /// NATS: events go to SUBJECT_PREFIX.AGGREGATE_TYPE.EVENT_TYPE.
    #[arg(long, value_name = "PREFIX", default_value = "outbox")]
    subject_prefix: String,
    /// NATS: create this stream over SUBJECT_PREFIX.> if it does not exist.
    #[arg(long, value_name = "NAME")]
    stream: Option<String>,
    /// NATS: the duplicate window of a stream --stream creates; longer than --lease plus
    /// the longest backoff.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    duplicate_window: String,
    /// RabbitMQ: the topic exchange (declared durable if absent).
    #[arg(long, value_name = "NAME", default_value = "outbox")]
    exchange: String,
    /// Webhooks: a file holding the whsec_ signing secret.
    #[arg(long, value_name = "FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// Events claimed at once.
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// How long a claim holds its events: a relay that dies leaves them to another after it.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    lease: String,
    /// Attempts before an event becomes a dead letter.
    #[arg(long, default_value_t = 20)]
    dead_after: u32,
    /// How often an idle relay looks for events (PostgreSQL also wakes it at each commit).
    #[arg(long, value_name = "DURATION", default_value = "1s")]
    poll: String,
    /// Passes kept going at once, so that claiming, publishing and settling overlap.
    #[arg(long, default_value_t = 2)]
    passes_in_flight: usize,
    /// Serve Prometheus metrics (GET /metrics) and GET /healthz on this address, such as
    /// 127.0.0.1:7980.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
}

#[derive(Args)]
pub(crate) struct OutboxArgs {
    #[command(flatten)]
    db: OutboxDb,
    #[command(subcommand)]
    command: OutboxCommand,
}

#[derive(Subcommand)]
enum OutboxCommand {
    /// Pending events, dead letters, delivered rows not yet purged, and the lag.
    Status,
    /// The oldest dead letters, with their last error.
    DeadLetters {
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Makes a dead letter pending again (its aggregate's later events follow it).
    Retry {
        /// The event id, as `dead-letters` prints it.
        id: String,
    },
}

fn duration(flag: &str, value: &str) -> Result<Duration, String> {
    parse_duration(value).map_err(|e| format!("--{flag}: {e}"))
}

enum Opened {
    Sqlite(Arc<oncely_outbox::sqlite::SqliteOutbox>),
    Postgres(
        Arc<oncely_outbox::postgres::PgOutbox>,
        oncely_db::postgres::PgOptions,
    ),
}

impl Opened {
    fn store(&self) -> Arc<dyn OutboxStore> {
        match self {
            Opened::Sqlite(s) => s.clone(),
            Opened::Postgres(s, _) => s.clone(),
        }
    }
}

async fn open(db: &OutboxDb) -> Result<Opened, String> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    if let Some(path) = db.db.strip_prefix("sqlite://") {
        let store = oncely_outbox::sqlite::SqliteOutbox::open(path, Duration::from_secs(10), clock)
            .map_err(|e| format!("--db {}: {e}", db.db))?;
        return Ok(Opened::Sqlite(Arc::new(store)));
    }
    let opts = oncely_db::postgres::PgOptions::from_url(&db.db)
        .map_err(|e| format!("--db: {e} (expected sqlite://PATH or postgres://...)"))?;
    let pool = oncely_db::postgres::pool(&opts).map_err(|e| format!("--db: {e}"))?;
    let store = oncely_outbox::postgres::PgOutbox::open(pool, &opts.schema, clock)
        .await
        .map_err(|e| format!("--db {}: {e}", oncely_db::postgres::hide_password(&db.db)))?
        .with_timeout(opts.timeout);
    Ok(Opened::Postgres(Arc::new(store), opts))
}

async fn publisher(args: &RelayArgs) -> Result<Arc<dyn Publisher>, String> {
    let to = args.to.as_str();
    if to.starts_with("nats://") {
        let p = oncely_outbox::nats::NatsPublisher::connect(to, &args.subject_prefix)
            .await
            .map_err(|e| format!("--to: {e}"))?;
        if let Some(stream) = &args.stream {
            let window = duration("duplicate-window", &args.duplicate_window)?;
            p.ensure_stream(stream, window)
                .await
                .map_err(|e| format!("--stream: {e}"))?;
        }
        Ok(Arc::new(p))
    } else if to.starts_with("amqp://") {
        let p = oncely_outbox::amqp::AmqpPublisher::connect(to, &args.exchange)
            .await
            .map_err(|e| format!("--to: {e}"))?;
        p.declare_exchange()
            .await
            .map_err(|e| format!("--exchange: {e}"))?;
        Ok(Arc::new(p))
    } else if to.starts_with("http://") || to.starts_with("https://") {
        let file = args
            .webhook_secret_file
            .as_ref()
            .ok_or("--to http://...: webhooks are signed; give --webhook-secret-file")?;
        let text = std::fs::read_to_string(file)
            .map_err(|e| format!("--webhook-secret-file {}: {e}", file.display()))?;
        let secret = oncely_outbox::webhook::WebhookSecret::parse(text.trim())
            .map_err(|e| format!("--webhook-secret-file {}: {e}", file.display()))?;
        let p = oncely_outbox::webhook::WebhookPublisher::new(to, secret, Duration::from_secs(10))
            .map_err(|e| format!("--to: {e}"))?;
        Ok(Arc::new(p))
    } else {
        Err(format!(
            "--to `{to}`: expected nats://..., amqp://... or http://..."
        ))
    }
}

/// Wakes the relay at every commit that enqueued an event, through LISTEN; reconnects after
/// a lost connection. Polling covers the gaps.
fn listen(
    opts: oncely_db::postgres::PgOptions,
    channel: String,
    wake: Arc<Notify>,
    retry: Duration,
) {
    tokio::spawn(async move {
        loop {
            match tokio_postgres::connect(&opts.url, tokio_postgres::NoTls).await {
                Ok((client, mut conn)) => {
                    let listening = async {
                        client
                            .batch_execute(&format!("LISTEN \"{channel}\""))
                            .await
                            .map(|_| client)
                    };
                    let messages = async {
                        loop {
                            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                                Some(Ok(tokio_postgres::AsyncMessage::Notification(_))) => {
                                    wake.notify_one()
                                }
                                Some(Ok(_)) => {}
                                Some(Err(e)) => return e.to_string(),
                                None => return "closed".to_owned(),
                            }
                        }
                    };
                    let (_client, why) = tokio::join!(listening, messages);
                    tracing::warn!(%why, "outbox notifications lost; polling until reconnected");
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for outbox notifications"),
            }
            tokio::time::sleep(retry).await;
        }
    });
}

pub(crate) async fn relay(args: RelayArgs) -> Result<(), String> {
    let config = RelayConfig {
        batch: args.batch.max(1),
        lease: duration("lease", &args.lease)?,
        dead_after: args.dead_after.max(1),
        poll: duration("poll", &args.poll)?,
        passes_in_flight: args.passes_in_flight.max(1),
        ..RelayConfig::default()
    };
    let opened = open(&args.db).await?;
    let publisher = publisher(&args).await?;
    let store = opened.store();
    let relay = Relay::new(store.clone(), publisher.clone(), config.clone());
    let metrics = Arc::new(RelayMetrics::new(publisher.name()));
    if let Some(addr) = args.metrics {
        serve_metrics(addr, store.clone(), metrics.clone()).await?;
        println!("metrics on http://{addr}/metrics");
    }
    if let Opened::Postgres(pg, opts) = &opened {
        listen(
            opts.clone(),
            pg.channel().to_owned(),
            relay.waker(),
            config.poll,
        );
    }
    println!(
        "relaying {} to {} ({})",
        oncely_db::postgres::hide_password(&args.db.db),
        oncely_db::postgres::hide_password(&args.to),
        publisher.name()
    );
    let mut total = Pass::default();
    let mut reported = Instant::now();
    let observe = |result: &Result<Pass, oncely_outbox::OutboxError>| {
        metrics.observe(result);
        match result {
            Ok(p) => {
                total.delivered += p.delivered;
                total.retrying += p.retrying;
                total.dead += p.dead;
                total.lease_lost += p.lease_lost;
                if p.dead > 0 {
                    tracing::warn!(dead = p.dead, "events moved to the dead letters");
                }
            }
            Err(e) => tracing::warn!(error = %e, "outbox unavailable; retrying"),
        }
        if reported.elapsed() >= Duration::from_secs(10) {
            tracing::info!(
                delivered = total.delivered,
                retrying = total.retrying,
                dead = total.dead,
                lease_lost = total.lease_lost,
                "relayed in the last 10 s"
            );
            total = Pass::default();
            reported = Instant::now();
        }
    };
    relay.run(crate::serve::shutdown_signal(), observe).await;
    println!("relay stopped");
    Ok(())
}

/// Serves `/metrics` (the outbox's gauges, read at each scrape, and the relay's counters)
/// and `/healthz` on `addr`.
async fn serve_metrics(
    addr: std::net::SocketAddr,
    store: Arc<dyn OutboxStore>,
    metrics: Arc<RelayMetrics>,
) -> Result<(), String> {
    use http_body_util::Full;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen for metrics on {addr}: {e}"))?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: wait instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (store, metrics) = (store.clone(), metrics.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let (store, metrics) = (store.clone(), metrics.clone());
                        async move {
                            let (status, kind, body) = match req.uri().path() {
                                "/metrics" => {
                                    // A database that cannot be read leaves its gauges out; the
                                    // counters still say what the relay did.
                                    let stats = store.stats().await.ok();
                                    let mut text = oncely_metrics::Text::new();
                                    metrics.render(stats.as_ref(), SystemClock.now(), &mut text);
                                    (200, oncely_metrics::CONTENT_TYPE, text.finish())
                                }
                                "/healthz" => (200, "text/plain", "ok\n".to_owned()),
                                _ => (404, "text/plain", "not found\n".to_owned()),
                            };
                            let mut resp = http::Response::new(Full::new(bytes::Bytes::from(body)));
                            *resp.status_mut() = http::StatusCode::from_u16(status)
                                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static(kind),
                            );
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(())
}

pub(crate) async fn run(args: OutboxArgs) -> Result<(), String> {
    let store = open(&args.db).await?.store();
    match args.command {
        OutboxCommand::Status => {
            let s = store.stats().await.map_err(|e| e.to_string())?;
            println!("pending    {}", s.pending);
            println!("dead       {}", s.dead);
            println!("delivered  {} (not yet purged)", s.delivered);
            match s.oldest_pending {
                Some(t) => {
                    let lag = SystemClock.now().0.saturating_sub(t.0).max(0);
                    println!(
                        "lag        {:.1} s (oldest pending event)",
                        lag as f64 / 1000.0
                    );
                }
                None => println!("lag        0 s"),
            }
        }
        OutboxCommand::DeadLetters { limit } => {
            let dead = store.dead_letters(limit).await.map_err(|e| e.to_string())?;
            if dead.is_empty() {
                println!("no dead letters");
            }
            for e in dead {
                println!(
                    "{}  {}/{} #{}  {}  attempts {}  last error: {}",
                    e.id,
                    e.aggregate_type,
                    e.aggregate_id,
                    e.sequence,
                    e.event_type,
                    e.attempts,
                    e.last_error.as_deref().unwrap_or("-")
                );
            }
        }
        OutboxCommand::Retry { id } => {
            let parsed =
                EventId::parse(&id).ok_or(format!("`{id}` is not an event id (a UUID)"))?;
            if store.retry(parsed).await.map_err(|e| e.to_string())? {
                println!("{id} is pending again");
            } else {
                return Err(format!("{id} is not a dead letter"));
            }
        }
    }
    Ok(())
}
