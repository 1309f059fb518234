//! The listener: accepts connections, serves each through the engine, purges expired
//! records, and shuts down gracefully.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use oncely_audit::AuditWriter;
use oncely_core::{Clock, SystemClock};
use oncely_http::body::IdleTimeout;
use oncely_http::{
    CorrelationLayer, Engine, EngineMetrics, IdempotencyLayer, Observers, OutcomeObserver,
};
use oncely_store::{StoreAdmin, StoreError, StoreMetrics, TimedStore};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tower_layer::Layer;
use tower_service::Service;

use crate::admin;
use crate::audit::AuditOpenError;
use crate::config::Config;
use crate::forward::{ClientAddr, Forwarder, ForwarderError};

/// A gateway that has its store but does not listen yet: [`Gateway::open`] or
/// [`Gateway::with_store`], then [`Gateway::start`].
pub struct Gateway {
    config: Config,
    store: Arc<dyn StoreAdmin>,
    clock: Arc<dyn Clock>,
}

/// A gateway serving in the background; dropped or shut down, it stops.
pub struct RunningGateway {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
    engine: Arc<Engine>,
    metrics: Arc<EngineMetrics>,
    store_metrics: Arc<StoreMetrics>,
    audit: Option<Arc<AuditWriter>>,
}

/// Why a gateway could not open or start. Each message is one line an operator can act on.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The store could not be opened or prepared (unreachable, refused credentials, a schema
    /// it cannot migrate).
    #[error("cannot open the store {store}: {source}")]
    Store {
        /// The store, as displayed (passwords masked).
        store: String,
        /// What the store answered.
        source: StoreError,
    },
    /// The client listener could not bind its address (taken, or not this host's).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for (`server.listen`, `--listen`).
        addr: SocketAddr,
        /// Why the system refused it.
        source: std::io::Error,
    },
    /// The config names no upstream, so there is nothing to forward to.
    #[error(
        "no upstream: pass --upstream http://HOST:PORT (or set server.upstream in the config)"
    )]
    NoUpstream,
    /// The upstream URL cannot be used to reach the upstream.
    #[error(transparent)]
    Upstream(#[from] ForwarderError),
    /// The admin listener could not start on an address that was asked for.
    #[error(transparent)]
    Admin(#[from] admin::BindError),
    /// The audit trail could not be opened; the gateway does not run without the trail it
    /// was told to keep.
    #[error(transparent)]
    Audit(#[from] AuditOpenError),
}

impl Gateway {
    /// Opens the store named by the config.
    pub async fn open(config: Config) -> Result<Gateway, GatewayError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let store =
            config
                .store
                .open(clock.clone())
                .await
                .map_err(|source| GatewayError::Store {
                    store: config.store.to_string(),
                    source,
                })?;
        Ok(Gateway::with_store(config, store, clock))
    }

    /// Uses a given store and clock (tests, embedding).
    pub fn with_store(
        config: Config,
        store: Arc<dyn StoreAdmin>,
        clock: Arc<dyn Clock>,
    ) -> Gateway {
        // Sealed under everything else, so the admin API, the purge and the engine all see
        // responses in clear and the store only ciphertext.
        let store: Arc<dyn StoreAdmin> = match &config.encryption {
            Some(ring) => Arc::new(oncely_store::SealedStore::new(store, ring.clone())),
            None => store,
        };
        Gateway {
            config,
            store,
            clock,
        }
    }

    /// Binds the listener and serves in a background task.
    pub async fn start(self) -> Result<RunningGateway, GatewayError> {
        let listen = self.config.listen;
        let failed = |source| GatewayError::Listen {
            addr: listen,
            source,
        };
        let listener = TcpListener::bind(listen).await.map_err(failed)?;
        let addr = listener.local_addr().map_err(failed)?;
        let upstream = self
            .config
            .upstream
            .clone()
            .ok_or(GatewayError::NoUpstream)?;
        // One forwarder, so one upstream connection pool, per worker thread: a pooled
        // connection then lives on the thread whose requests use it.
        let forwarders = (0..self.config.worker_count())
            .map(|_| {
                Forwarder::new(
                    upstream.clone(),
                    self.config.connect_timeout,
                    self.config.response_timeout,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        // The engine sees the store through a meter, so /metrics shows what each store
        // operation cost the request path, whatever the backend.
        let timed = Arc::new(TimedStore::new(self.store.clone()));
        let store_metrics = timed.metrics().clone();
        let metrics = Arc::new(EngineMetrics::new());
        let audit = match &self.config.audit {
            Some(a) => Some(crate::audit::open_writer(a, self.clock.clone()).await?),
            None => None,
        };
        let mut observers: Vec<Arc<dyn OutcomeObserver>> = vec![metrics.clone()];
        if let Some(writer) = &audit {
            observers.push(Arc::new(crate::audit::AuditObserver {
                writer: writer.clone(),
            }));
        }
        let engine = Engine::new(
            timed.clone(),
            self.clock.clone(),
            self.config.routes.clone(),
        )
        .with_replay_cache(self.config.replay_cache)
        .with_body_timeout(self.config.body_timeout)
        .with_observer(Arc::new(Observers(observers)));
        let engine = Arc::new(engine);
        let (tx, rx) = watch::channel(false);
        let admin_addr = match &self.config.admin {
            Some(a) => {
                let page = admin::Metrics {
                    engine: metrics.clone(),
                    store: store_metrics.clone(),
                    executions: engine.clone(),
                    records: timed.clone(),
                    audit: audit.clone(),
                };
                match admin::bind(a.listen, a.token.clone(), page.clone(), rx.clone()).await {
                    Ok((addr, _task)) => Some(addr),
                    // Only the default address gives way: a second gateway on this host then
                    // runs, while an address someone asked for stays a hard error.
                    Err(e) if a.is_default && e.is_address_taken() => {
                        tracing::warn!(
                            admin = %a.listen,
                            "the default admin address is in use (another gateway on this host?): \
                             running without an admin listener until it is free; pass \
                             --admin-listen ADDR to get one of its own"
                        );
                        tokio::spawn(take_admin_when_free(a.clone(), page, rx.clone()));
                        None
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            None => None,
        };
        // Every worker accepts on the same socket, so a failure to share it is a start error.
        let listener = listener.into_std().map_err(failed)?;
        let workers = forwarders
            .into_iter()
            .map(|f| Ok((listener.try_clone()?, f)))
            .collect::<Result<Vec<_>, std::io::Error>>()
            .map_err(failed)?;
        drop(listener);
        let task = tokio::spawn(serve(
            workers,
            engine.clone(),
            timed,
            audit.clone(),
            self.config,
            rx,
        ));
        Ok(RunningGateway {
            addr,
            admin_addr,
            shutdown: tx,
            task,
            engine,
            metrics,
            store_metrics,
            audit,
        })
    }
}

impl RunningGateway {
    /// The address clients reach the gateway on: `server.listen`, with the port the system
    /// chose when it was 0.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The idempotency engine serving the requests: executions in flight, the replay cache.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Where the admin listener (`/metrics`) listens, if it was configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The engine's series: requests by outcome, lease takeovers, refused stale completions,
    /// the upstream's latency.
    pub fn metrics(&self) -> &Arc<EngineMetrics> {
        &self.metrics
    }

    /// The engine's store operations: their latency and failures by operation, and the
    /// records purged.
    pub fn store_metrics(&self) -> &Arc<StoreMetrics> {
        &self.store_metrics
    }

    /// The audit trail's writer, if the gateway keeps one.
    pub fn audit(&self) -> Option<&Arc<AuditWriter>> {
        self.audit.as_ref()
    }

    /// Stops accepting, lets requests in flight finish (up to the grace period), and returns
    /// when everything is closed.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        signal.await;
        tracing::info!("shutting down: no new connections; finishing requests in flight");
        self.shutdown().await;
    }
}

/// Runs the workers, the purge and the shutdown: one worker thread per forwarder accepts
/// and serves connections on a runtime of its own; this task waits for the stop, lets every
/// worker finish its connections, drains the engine, and only then lets the workers' runtimes
/// (and any execution still on them) go.
async fn serve(
    workers: Vec<(std::net::TcpListener, Forwarder)>,
    engine: Arc<Engine>,
    records: Arc<dyn StoreAdmin>,
    audit: Option<Arc<AuditWriter>>,
    config: Config,
    mut stop: watch::Receiver<bool>,
) {
    let purger = tokio::spawn(purge_loop(
        records,
        config.purge_interval,
        config.purge_batch,
    ));
    let worker = Worker {
        engine: engine.clone(),
        slots: Arc::new(Semaphore::new(config.connection_limit())),
        config: config.clone(),
        stop: stop.clone(),
    };
    // Dropped (or sent) once the engine has drained: the workers' runtimes end with it.
    let (release, released) = watch::channel(());
    let mut running = Vec::new();
    for (i, (listener, forwarder)) in workers.into_iter().enumerate() {
        let (closed, closed_rx) = tokio::sync::oneshot::channel();
        let (worker, mut released) = (worker.clone(), released.clone());
        let thread = std::thread::Builder::new()
            .name(format!("oncely-worker-{i}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "worker {i}: cannot start its runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    worker.accept(listener, forwarder).await;
                    let _ = closed.send(());
                    // Executions whose client left may still run here: keep the runtime until
                    // the engine has drained them.
                    let _ = released.changed().await;
                });
            });
        match thread {
            Ok(t) => running.push((t, closed_rx)),
            Err(e) => tracing::error!(error = %e, "cannot start worker thread {i}"),
        }
    }
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            break;
        }
    }
    purger.abort();
    // One deadline for the whole stop: connections first (each worker bounds its own by the
    // same grace), then executions whose client left.
    let deadline = tokio::time::Instant::now() + config.shutdown_grace;
    let mut threads = Vec::new();
    for (thread, closed) in running {
        let _ = closed.await;
        threads.push(thread);
    }
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if !engine.drain(left).await {
        tracing::warn!(
            "executions still running at shutdown; their keys stay held until their leases end"
        );
    }
    // The executions' events are queued now; what is left of the grace (a few seconds at
    // least, the database may be slow) appends them.
    if let Some(writer) = audit {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        writer.close(left.max(Duration::from_secs(5))).await;
    }
    drop(release);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
}

/// What every worker thread shares.
#[derive(Clone)]
struct Worker {
    engine: Arc<Engine>,
    /// Connection slots across all workers (`max_connections`).
    slots: Arc<Semaphore>,
    config: Config,
    stop: watch::Receiver<bool>,
}

impl Worker {
    /// Accepts and serves connections until the stop, then closes them gracefully within the
    /// grace period.
    async fn accept(mut self, listener: std::net::TcpListener, forwarder: Forwarder) {
        let listener = match listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(listener))
        {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen in this worker");
                return;
            }
        };
        let config = &self.config;
        // Correlation outside the engine: its answers, replays included, carry the ids of
        // the request that got them.
        let service =
            CorrelationLayer.layer(IdempotencyLayer::new(self.engine.clone()).layer(forwarder));
        let graceful = GracefulShutdown::new();
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout);
        let body_idle = config.body_idle_timeout;
        let max_connections = config.connection_limit();
        let slots = self.slots.clone();
        let stop = &mut self.stop;
        let mut full_since_logged: Option<tokio::time::Instant> = None;
        loop {
            if *stop.borrow() {
                break;
            }
            // A connection slot first: at the limit, new connections wait in the kernel's
            // accept queue (and are refused by it once that is full) instead of taking
            // descriptors and memory here.
            let slot = match slots.clone().try_acquire_owned() {
                Ok(slot) => slot,
                Err(_) => {
                    if full_since_logged.is_none_or(|t| t.elapsed() >= CONNECTION_LIMIT_LOG_EVERY) {
                        tracing::warn!(
                            max_connections,
                            "connection limit reached: new connections wait until one closes \
                             (server.max_connections / --max-connections)"
                        );
                        full_since_logged = Some(tokio::time::Instant::now());
                    }
                    tokio::select! {
                        slot = slots.clone().acquire_owned() => match slot {
                            Ok(slot) => slot,
                            Err(_) => break,
                        },
                        _ = stop.changed() => break,
                    }
                }
            };
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(c) => c,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop.changed() => break,
            };
            let _ = stream.set_nodelay(true);
            let svc = service.clone();
            let hyper_svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                // A body that stalls is cut off, keyed or not (see `IdleTimeout`).
                let mut req = req.map(|body| IdleTimeout::new(body, body_idle));
                req.extensions_mut().insert(ClientAddr(peer));
                let mut svc = svc.clone();
                async move {
                    Ok::<_, Infallible>(svc.call(req).await.unwrap_or_else(|never| match never {}))
                }
            });
            let conn = http.serve_connection(TokioIo::new(stream), hyper_svc);
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                drop(slot);
            });
        }
        drop(listener);
        if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?config.shutdown_grace, "connections still open after the grace period; closing them");
        }
    }
}

/// Binds the default admin address once the gateway holding it is gone: in a rolling restart
/// on one host the new gateway starts while the old one still has it, and must not run its
/// whole life without `/metrics` and `/healthz`.
async fn take_admin_when_free(
    admin: crate::config::AdminConfig,
    page: admin::Metrics,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(ADMIN_RETRY_EVERY) => {}
            _ = stop.changed() => return,
        }
        match admin::bind(
            admin.listen,
            admin.token.clone(),
            page.clone(),
            stop.clone(),
        )
        .await
        {
            Ok((addr, _task)) => {
                tracing::info!(admin = %addr, "admin listener ready (/metrics, /healthz): the default address is free now");
                return;
            }
            Err(e) if e.is_address_taken() => {}
            Err(e) => {
                tracing::warn!(error = %e, "giving up on the admin listener");
                return;
            }
        }
    }
}

/// How often a gateway without its default admin address tries to bind it again.
const ADMIN_RETRY_EVERY: Duration = Duration::from_secs(5);

/// How often, at most, the gateway says that it is at its connection limit.
const CONNECTION_LIMIT_LOG_EVERY: Duration = Duration::from_secs(10);

/// The soft limit on open files of this process (`ulimit -n`), where the system tells it.
pub(crate) fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

async fn purge_loop(records: Arc<dyn StoreAdmin>, every: Duration, batch: usize) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let mut total = 0;
        // Small batches keep each write transaction short, so the hot path never waits long.
        loop {
            match records.purge_expired(batch).await {
                Ok(n) => {
                    total += n;
                    if (n as usize) < batch {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "purging expired records failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::info!(purged = total, "expired idempotency records purged");
        }
    }
}
