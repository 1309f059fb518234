//! How the shop runs: where it listens, where it keeps its data, and its timings.

use std::net::SocketAddr;
use std::time::Duration;

pub use oncely_example_checkout::app::DbUrl;
use oncely_outbox::webhook::WebhookSecret;

use crate::ShopError;

/// The shop's settings. [`Config::default`] is what `oncely demo` runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the shop (API and UI) listens (default `127.0.0.1:8080`; port 0 takes a free
    /// one, shown on the `listening on` line).
    pub listen: SocketAddr,
    /// The shop's database (`sqlite://PATH`). `None` (the default): a fresh SQLite file in a
    /// temporary directory made for this run, removed when [`crate::serve`] returns, so that
    /// every demo starts from the seed data. PostgreSQL URLs are parsed but refused for now.
    pub db: Option<DbUrl>,
    /// How often the payments reconciliation runs by itself (default every 60 s); `None`
    /// runs it only on demand (`POST /api/admin/reconciliation/run`).
    pub reconcile_every: Option<Duration>,
    /// Records younger than this wait for a later reconciliation run (default 2 s): a
    /// webhook may still be on its way.
    pub reconcile_settle: Duration,
    /// The secret the payment provider signs its webhooks with; `None` (the default): a
    /// random one for this run.
    pub webhook_secret: Option<WebhookSecret>,
    /// How long `POST /api/checkout` waits for the checkout's outcome before answering 202
    /// (default 3 s).
    pub checkout_wait: Duration,
    /// The bound on one HTTP attempt of a checkout step (default 2 s); an attempt that runs
    /// out is tried again under the same key.
    pub provider_timeout: Duration,
    /// How long a read that presents `X-Consistency-Token` waits for the order history to
    /// catch up (the contract's 2 s).
    pub consistency_wait: Duration,
    /// How long after its commit an event reaches the order history and the notifications
    /// (default 0: as soon as the relay takes it). A lag makes eventual consistency
    /// visible: reads without a token see the old history, reads with one wait.
    pub history_lag: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            db: None,
            reconcile_every: Some(Duration::from_secs(60)),
            reconcile_settle: Duration::from_secs(2),
            webhook_secret: None,
            checkout_wait: Duration::from_secs(3),
            provider_timeout: Duration::from_secs(2),
            consistency_wait: Duration::from_secs(2),
            history_lag: Duration::ZERO,
        }
    }
}

/// How long a crashed request holds its key, and a crashed runner its sagas.
pub(crate) const LEASE: Duration = Duration::from_secs(10);

impl Config {
    /// Refuses settings that cannot work together.
    pub fn validate(&self) -> Result<(), ShopError> {
        if self.provider_timeout.is_zero() || self.provider_timeout * 2 >= LEASE {
            return Err(ShopError::Config(format!(
                "the provider timeout ({:?}) must be above zero and under half the lease ({LEASE:?})",
                self.provider_timeout
            )));
        }
        if self
            .reconcile_every
            .is_some_and(|d| d < Duration::from_millis(100))
        {
            return Err(ShopError::Config(
                "the reconciliation interval must be at least 100ms".into(),
            ));
        }
        // A delivery is bounded by half the relay's lease (30 s): the lag must fit in it.
        if self.history_lag > Duration::from_secs(10) {
            return Err(ShopError::Config(
                "the history lag must be at most 10s".into(),
            ));
        }
        if self.consistency_wait > Duration::from_secs(30) {
            return Err(ShopError::Config(
                "the consistency wait must be at most 30s".into(),
            ));
        }
        Ok(())
    }
}
