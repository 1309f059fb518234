//! The shop as one process: its database opened, the fake inventory and payment provider on
//! an internal loopback listener, the saga runner, the outbox relay feeding the order
//! history and the notifications, the reconciliation job, and the public listener (the API
//! under `/api`, the UI everywhere else).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oncely_core::{Clock, SystemClock};
use oncely_example_checkout::checkout::{Checkout, CheckoutConfig};
use oncely_example_checkout::orders::OrdersDb;
use oncely_example_checkout::{inventory, payments};
use oncely_http::{Engine, KeyRequirement, RoutePolicy, TenantSource};
use oncely_outbox::webhook::WebhookSecret;
use oncely_outbox::{OutboxStore, Relay, RelayConfig};
use oncely_reconcile::{Job, ReconcileStore, Reconciler};
use oncely_saga::{Runner, RunnerConfig, SagaStore};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::chaos::{Chaos, Fault, Faults};
use crate::config::{Config, DbUrl, LEASE};
use crate::events::Consumers;
use crate::store::sqlite::SqliteShop;
use crate::store::ShopStore;
use crate::trail::Trail;
use crate::ShopError;

/// The header naming who is asking; also the idempotency layer's tenant, so that one
/// user's keys never answer another's requests.
pub const USER_HEADER: &str = "x-shop-user";

/// Everything the handlers share.
pub(crate) struct Shop {
    /// The shop's own tables.
    pub(crate) store: Arc<dyn ShopStore>,
    /// The checkout saga's services (its orders table, the inventory's and provider's URLs).
    pub(crate) checkout: Arc<Checkout>,
    /// The runner that starts and drives checkouts.
    pub(crate) runner: Arc<Runner>,
    /// The sagas.
    pub(crate) sagas: Arc<dyn SagaStore>,
    /// The outbox (its counts for the admin page).
    pub(crate) outbox: Arc<dyn OutboxStore>,
    /// Wakes the relay after a write enqueued an event.
    pub(crate) wake_relay: Arc<Notify>,
    /// Woken whenever the order history applied an event.
    pub(crate) history_moved: Arc<Notify>,
    /// The consumers the relay delivers to.
    pub(crate) consumers: Arc<Consumers>,
    /// The fake inventory's books.
    pub(crate) inventory: Arc<inventory::Ledger>,
    /// The fake provider's books.
    pub(crate) provider: Arc<payments::Ledger>,
    /// The fault switches.
    pub(crate) chaos: Arc<Chaos>,
    /// The faults only a test arms ([`Running::inject`]).
    pub(crate) faults: Arc<Faults>,
    /// How many provider webhooks the reorder switch has held back.
    pub(crate) webhooks_held: AtomicU64,
    /// The audit trail.
    pub(crate) trail: Arc<Trail>,
    /// Runs and findings.
    pub(crate) reconcile_store: Arc<dyn ReconcileStore>,
    /// Runs the job.
    pub(crate) reconciler: Reconciler,
    /// The payments job.
    pub(crate) job: Job,
    /// Calls the provider and the inventory for a buyer's cancel, with one key per call.
    pub(crate) http: oncely_client::Client,
    /// The secret the provider signs its webhooks with.
    pub(crate) webhook_secret: WebhookSecret,
    /// How patient the handlers are.
    pub(crate) timing: Timing,
    /// A webhook held back by the reorder switch.
    pub(crate) held_webhook: std::sync::Mutex<Option<HeldWebhook>>,
}

/// A webhook the reorder switch holds until the next one has arrived.
pub(crate) struct HeldWebhook {
    pub(crate) headers: http::HeaderMap,
    pub(crate) body: bytes::Bytes,
    pub(crate) serial: u64,
}

/// How patient the handlers are (from [`Config`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    pub(crate) checkout_wait: Duration,
    pub(crate) consistency_wait: Duration,
    pub(crate) provider_timeout: Duration,
}

impl Shop {
    /// Milliseconds since the epoch, from the shop's clock.
    pub(crate) fn now(&self) -> i64 {
        SystemClock.now().as_millis()
    }
}

/// A running shop: its addresses, its parts for tests and operators, and how to stop it.
pub struct Running {
    addr: SocketAddr,
    internal: SocketAddr,
    db: PathBuf,
    shop: Arc<Shop>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// A directory made for this run's database, removed at [`Running::stop`].
    scratch: Option<PathBuf>,
}

impl Running {
    /// The address the shop listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The internal listener's address (the inventory under `/inventory`, the provider
    /// under `/provider`, the provider's webhooks at `/webhooks/provider`).
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
    }

    /// The SQLite file the shop keeps its data in.
    pub fn db_path(&self) -> &std::path::Path {
        &self.db
    }

    /// The fake payment provider's books (the charges and refunds it executed).
    pub fn provider(&self) -> Arc<payments::Ledger> {
        self.shop.provider.clone()
    }

    /// The fake inventory's books (its stock and reservations).
    pub fn inventory(&self) -> Arc<inventory::Ledger> {
        self.shop.inventory.clone()
    }

    /// Hands every event the relay delivered to the consumers again, as a relay that lost
    /// its confirmations would: the inbox must absorb each. How many were handed over.
    pub async fn redeliver(&self) -> Result<usize, ShopError> {
        let events = self
            .shop
            .store
            .delivered_events(10_000)
            .await
            .map_err(|e| ShopError::Database(e.to_string()))?;
        for event in &events {
            self.shop
                .consumers
                .deliver(event)
                .await
                .map_err(ShopError::Database)?;
        }
        Ok(events.len())
    }

    /// Arms `fault` for the next `times` times (0 disarms it): a crash or a database error
    /// placed exactly where a test needs it (see [`Fault`]).
    pub fn inject(&self, fault: Fault, times: u64) {
        self.shop.faults.arm(fault, times);
    }

    /// How many provider webhooks the reorder switch has held back so far (each is let
    /// through after the next one, or after a second).
    pub fn webhooks_held(&self) -> u64 {
        self.shop.webhooks_held.load(Ordering::SeqCst)
    }

    /// Stops the listeners, the runner, the relay and the periodic reconciliation, lets the
    /// audit trail append what it holds, and removes the database if it was made for this
    /// run.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
        self.shop.trail.writer().close(Duration::from_secs(2)).await;
        if let Some(dir) = &self.scratch {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A directory made for a run, removed if the start fails before a [`Running`] owns it.
struct Scratch(Option<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// A fresh directory for a run's database.
fn scratch_dir() -> Result<PathBuf, ShopError> {
    let dir = std::env::temp_dir().join(format!(
        "oncely-shop-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| ShopError::Database(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, ShopError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| ShopError::Listen {
            addr: addr.to_string(),
            message: e.to_string(),
        })
}

/// Resolves when `stop` says so (or its sender is gone).
pub(crate) async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Starts the shop and answers once every part is ready (both listeners bound).
pub async fn start(config: Config) -> Result<Running, ShopError> {
    config.validate()?;
    // The public address first: a port that is taken fails the start before anything else
    // is opened or spawned.
    let listener = bind(config.listen).await?;
    let addr = listener
        .local_addr()
        .map_err(|e| ShopError::component("listener", e))?;
    let (path, mut scratch) = match &config.db {
        Some(DbUrl::Sqlite(path)) => (path.clone(), Scratch(None)),
        Some(DbUrl::Postgres { .. }) => {
            return Err(ShopError::Unsupported(
                "the shop runs on SQLite for now (sqlite://PATH); PostgreSQL comes later".into(),
            ))
        }
        None => {
            let dir = scratch_dir()?;
            (dir.join("shop.db"), Scratch(Some(dir)))
        }
    };
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let busy = Duration::from_secs(10);

    // The checkout's orders and sagas first: they create the outbox's tables, which the
    // shop's own tables number events on.
    let (sagas, orders) = DbUrl::Sqlite(path.clone())
        .open(clock.clone())
        .await
        .map_err(ShopError::Database)?;
    let store: Arc<dyn ShopStore> =
        Arc::new(SqliteShop::open(&path, busy).map_err(|e| ShopError::Database(e.to_string()))?);
    let now = clock.now().as_millis();
    store
        .seed(now)
        .await
        .map_err(|e| ShopError::Database(e.to_string()))?;
    let outbox: Arc<dyn OutboxStore> = Arc::new(
        oncely_outbox::sqlite::SqliteOutbox::open(&path, busy, clock.clone())
            .map_err(|e| ShopError::component("outbox", e))?,
    );
    let reconcile_store: Arc<dyn ReconcileStore> = Arc::new(
        oncely_reconcile::sqlite::SqliteReconcile::open(&path, busy, clock.clone())
            .map_err(|e| ShopError::component("reconciliation store", e))?,
    );
    let audit_log: Arc<dyn oncely_audit::AuditLog> = Arc::new(
        oncely_audit::sqlite::SqliteAuditLog::open(&path, busy)
            .map_err(|e| ShopError::component("audit trail", e))?,
    );
    audit_log
        .migrate()
        .await
        .map_err(|e| ShopError::component("audit trail", e))?;
    // A key for this run: the chains verify; the personal fields' commitments can be
    // checked only while it runs, which is all a demo needs.
    let audit_key = format!("{:032x}", rand::random::<u128>()).into_bytes();
    let writer = Arc::new(
        oncely_audit::AuditWriter::open(
            audit_log.clone(),
            "shop",
            audit_key,
            clock.clone(),
            10_000,
        )
        .await
        .map_err(|e| ShopError::component("audit trail", e))?,
    );
    let trail = Arc::new(Trail::new(writer.clone(), audit_log));

    // The fakes, on the internal listener bound now so that their URLs are known.
    let internal_listener = bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    let internal = internal_listener
        .local_addr()
        .map_err(|e| ShopError::component("internal listener", e))?;
    let (inventory_router, inventory) = inventory::router_with(inventory::Ledger::with_stock(0))
        .map_err(|e| ShopError::component("inventory", e))?;
    inventory.reset(crate::catalog::seed_stock());
    let (provider_router, provider) =
        payments::router().map_err(|e| ShopError::component("payment provider", e))?;
    let webhook_secret = config
        .webhook_secret
        .clone()
        .unwrap_or_else(|| WebhookSecret::from_bytes(&rand::random::<[u8; 32]>()));
    provider.send_webhooks(
        &format!("http://{internal}/webhooks/provider"),
        webhook_secret.clone(),
        payments::Chaos::default(),
    );
    let inventory_url = format!("http://{internal}/inventory");
    let provider_url = format!("http://{internal}/provider");

    // The saga: its HTTP steps each get half the lease, every attempt bounded by the
    // provider timeout, retried under the step's key.
    let step_bound = LEASE / 2 - Duration::from_millis(50);
    let steps_client = oncely_client::Client::builder()
        .attempt_timeout(Some(config.provider_timeout))
        .deadline(Some(step_bound))
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
        .build()
        .map_err(|e| ShopError::component("checkout client", e))?;
    let checkout = Arc::new(Checkout {
        orders: orders.clone(),
        inventory: inventory_url.clone(),
        payments: provider_url.clone(),
        http: oncely_saga::http::HttpSteps::new(Arc::new(steps_client)),
        config: CheckoutConfig {
            backoff_cap: Duration::from_secs(2),
            ..CheckoutConfig::default()
        },
    });
    let runner = Arc::new(
        Runner::new(
            sagas.clone(),
            vec![checkout.definition(None)],
            clock.clone(),
            RunnerConfig {
                lease: LEASE,
                batch: 16,
                // Checkouts are waited for by a buyer: look often.
                poll: Duration::from_millis(50),
            },
        )
        .map_err(|e| ShopError::component("saga runner", e))?
        .with_audit(writer),
    );

    let history_moved = Arc::new(Notify::new());
    let faults = Arc::new(Faults::default());
    let consumers = Arc::new(Consumers::new(
        store.clone(),
        trail.clone(),
        history_moved.clone(),
        config.history_lag,
        faults.clone(),
    ));
    let relay = Relay::new(
        outbox.clone(),
        consumers.clone(),
        RelayConfig {
            batch: 64,
            lease: Duration::from_secs(30),
            dead_after: 20,
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
            poll: Duration::from_millis(100),
            passes_in_flight: 1,
        },
    );
    let relay_waker = relay.waker();
    let http_client = oncely_client::Client::builder()
        .attempt_timeout(Some(config.provider_timeout))
        .deadline(Some(config.provider_timeout * 2))
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
        .build()
        .map_err(|e| ShopError::component("cancel client", e))?;
    let job = crate::reconciliation::job(
        store.clone(),
        trail.clone(),
        relay_waker.clone(),
        &provider_url,
        config.reconcile_settle,
    );
    let shop = Arc::new(Shop {
        store,
        checkout,
        runner: runner.clone(),
        sagas,
        outbox,
        wake_relay: relay_waker,
        history_moved,
        consumers,
        inventory,
        provider,
        chaos: Arc::new(Chaos::default()),
        faults,
        webhooks_held: AtomicU64::new(0),
        trail,
        reconciler: Reconciler::new(
            reconcile_store.clone(),
            clock.clone(),
            Duration::from_secs(60),
        ),
        reconcile_store,
        job,
        http: http_client,
        webhook_secret,
        timing: Timing {
            checkout_wait: config.checkout_wait,
            consistency_wait: config.consistency_wait,
            provider_timeout: config.provider_timeout,
        },
        held_webhook: std::sync::Mutex::new(None),
    });

    let engine = Arc::new(idempotency_engine(&path, clock.clone()).await?);
    let (stop, stopping) = watch::channel(false);
    let mut tasks = Vec::new();

    let internal_app =
        crate::services::internal_router(shop.clone(), inventory_router, provider_router);
    let s = stopping.clone();
    tasks.push(tokio::spawn(async move {
        let served = axum::serve(internal_listener, internal_app)
            .with_graceful_shutdown(stopped(s))
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the internal listener failed");
        }
    }));
    let s = stopping.clone();
    tasks.push(tokio::spawn(async move { runner.run(stopped(s)).await }));
    let s = stopping.clone();
    tasks.push(tokio::spawn(async move {
        relay
            .run(stopped(s), |pass| {
                if let Err(e) = pass {
                    tracing::warn!(error = %e, "an outbox relay pass failed; retrying");
                }
            })
            .await;
    }));
    if let Some(every) = config.reconcile_every {
        let (shop, s) = (shop.clone(), stopping.clone());
        tasks.push(tokio::spawn(async move {
            reconcile_every(shop, every, s).await;
        }));
    }

    let app = crate::api::router(shop.clone(), engine);
    let s = stopping.clone();
    tasks.push(tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stopped(s))
        .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "the shop's listener failed");
        }
    }));
    Ok(Running {
        addr,
        internal,
        db: path,
        shop,
        stop,
        tasks,
        scratch: scratch.0.take(),
    })
}

/// The idempotency layer's engine: its records beside the shop's file (`PATH.keys`), keyed
/// per user; only the two writes that must happen once are keyed.
async fn idempotency_engine(
    path: &std::path::Path,
    clock: Arc<dyn Clock>,
) -> Result<Engine, ShopError> {
    let mut keys = path.as_os_str().to_owned();
    keys.push(".keys");
    let store = oncely_open::StoreUrl::sqlite(PathBuf::from(keys))
        .open(clock.clone())
        .await
        .map_err(|e| ShopError::component("idempotency store", e))?;
    let routes = oncely_example_checkout::keyed_routes(
        &["/api/checkout", "/api/orders/{id}/cancel"],
        RoutePolicy {
            key: KeyRequirement::Required,
            lease: LEASE,
            ttl: Duration::from_secs(24 * 3600),
            tenant: TenantSource::Header(http::HeaderName::from_static(USER_HEADER)),
            ..RoutePolicy::default()
        },
    )
    .map_err(|e| ShopError::component("idempotency routes", e))?;
    Ok(Engine::new(store, clock, routes))
}

/// Runs the reconciliation every `every` until stopped.
async fn reconcile_every(shop: Arc<Shop>, every: Duration, stopping: watch::Receiver<bool>) {
    let stop = stopped(stopping);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
        match shop.reconciler.run(&shop.job).await {
            Ok(summary) => tracing::info!(
                run = summary.run,
                outcome = summary.outcome.as_str(),
                "payments reconciled"
            ),
            Err(oncely_reconcile::RunError::Busy(_)) => {}
            Err(e) => tracing::warn!(error = %e, "the payments reconciliation failed"),
        }
    }
}

/// Orders placed through the saga: the checkout's table, for the handlers.
pub(crate) fn orders(shop: &Shop) -> &OrdersDb {
    &shop.checkout.orders
}
