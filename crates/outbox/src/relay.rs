//! The relay: claims events, hands them to a [`Publisher`], and settles each with the
//! result. At least once: an event is marked delivered only after the publisher confirmed
//! it, so a crash anywhere before that publishes it again (after its lease), and the
//! broker's dedupe (the event id as message id) and the consumer's inbox absorb the repeat.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::sync::LockIgnoringPoison as _;
use tokio::sync::Notify;

use crate::{Failure, OutboxError, OutboxEvent, OutboxStore, Settled};

/// Why a publish failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    /// What the broker or the connection said.
    pub message: String,
    /// No retry can change it (a webhook receiver's 4xx refusal): the event becomes a dead
    /// letter at once instead of holding its aggregate back through every retry.
    pub permanent: bool,
}

impl PublishError {
    /// A failure with this message, worth retrying.
    pub fn new(message: impl Into<String>) -> Self {
        PublishError {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure no retry can change.
    pub fn permanent(message: impl Into<String>) -> Self {
        PublishError {
            message: message.into(),
            permanent: true,
        }
    }
}

/// Where events go: a broker, a webhook. `publish` returns only once the destination has
/// taken responsibility for the event (a JetStream ack, a RabbitMQ confirm, a 2xx), and
/// sends the event id as the message id so that the destination can drop a repeat.
#[async_trait]
pub trait Publisher: Send + Sync + 'static {
    /// A short name for logs and metrics (`nats`, `amqp`, `webhook`).
    fn name(&self) -> &str;
    /// Publishes one event.
    async fn publish(&self, event: &OutboxEvent) -> Result<(), PublishError>;
}

/// How a relay works (the defaults suit most).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Events claimed at once (default 64).
    pub batch: usize,
    /// How long a claim holds its events (default 30 s): a relay that dies leaves them to
    /// another after this. Each publish is given at most half of it.
    pub lease: Duration,
    /// After this many attempts an event becomes a dead letter (default 20).
    pub dead_after: u32,
    /// The first retry waits up to this long (default 500 ms)...
    pub backoff_base: Duration,
    /// ...and no retry waits longer than this (default 5 min).
    pub backoff_cap: Duration,
    /// How often an idle relay looks for events without being woken (default 1 s).
    pub poll: Duration,
    /// Passes that [`Relay::run`] keeps going at once (default 2): while one batch is being
    /// published, the next is claimed and the last settled, so the database's round trips
    /// and the broker's overlap instead of adding up. Safe for any number: claims never
    /// take an event another holds, nor an aggregate's event before its predecessor is
    /// delivered.
    pub passes_in_flight: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            batch: 64,
            lease: Duration::from_secs(30),
            dead_after: 20,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(300),
            poll: Duration::from_secs(1),
            passes_in_flight: 2,
        }
    }
}

/// The wait before retry number `attempt` (1 for the first retry): "full jitter", uniform
/// between zero and `min(cap, base * 2^(attempt - 1))`; `unit` is a uniform sample in
/// `[0, 1)`.
pub use oncely_core::backoff::full_jitter as backoff;

/// What one pass of the relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pass {
    /// Events claimed.
    pub claimed: usize,
    /// Published and recorded as delivered.
    pub delivered: usize,
    /// Failed and left for a retry.
    pub retrying: usize,
    /// Failed for the last allowed time.
    pub dead: usize,
    /// Settled too late: another relay had taken them over.
    pub lease_lost: usize,
}

/// A relay over one outbox and one publisher. Several may share an outbox, in one process
/// or many.
pub struct Relay {
    store: Arc<dyn OutboxStore>,
    publisher: Arc<dyn Publisher>,
    config: RelayConfig,
    wake: Arc<Notify>,
}

impl Relay {
    /// A relay of `store`'s events to `publisher`.
    pub fn new(
        store: Arc<dyn OutboxStore>,
        publisher: Arc<dyn Publisher>,
        config: RelayConfig,
    ) -> Self {
        Relay {
            store,
            publisher,
            config,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Wakes the relay at once (an in-process enqueue, a PostgreSQL notification) instead
    /// of at its next poll.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// One pass: claims a batch and publishes it, each aggregate's event on its own task
    /// (at most one per aggregate is claimed, so that is never two of one aggregate at
    /// once), then settles each with its result: a failure as it comes back, the published
    /// events all together at the end, in one call.
    pub async fn pass(&self) -> Result<Pass, OutboxError> {
        fn tally(pass: &mut Pass, settled: Settled) {
            match settled {
                Settled::Delivered => pass.delivered += 1,
                Settled::WillRetry => pass.retrying += 1,
                Settled::Dead => pass.dead += 1,
                Settled::LeaseLost => pass.lease_lost += 1,
            }
        }
        let claims = self
            .store
            .claim(self.config.batch, self.config.lease)
            .await?;
        let mut pass = Pass {
            claimed: claims.len(),
            ..Pass::default()
        };
        // Every publish is bounded by half the lease, so that the pass settles before its
        // lease ends: one slow broker or receiver must not let another relay take the whole
        // batch over and publish it again.
        let bound = self.config.lease / 2;
        let mut tasks = tokio::task::JoinSet::new();
        for claim in claims {
            let publisher = self.publisher.clone();
            tasks.spawn(async move {
                let result =
                    match tokio::time::timeout(bound, publisher.publish(&claim.event)).await {
                        Ok(result) => result,
                        Err(_) => Err(PublishError::new(format!(
                            "no answer within {bound:?} (half the lease)"
                        ))),
                    };
                (claim, result)
            });
        }
        // Settling the published events one by one, a transaction each, would cost more than
        // publishing them: they are settled together once every publish has answered.
        let mut published = Vec::with_capacity(pass.claimed);
        let mut failed = Vec::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((claim, result)) = joined else {
                // A publisher that panicked leaves its event to the lease: it is published
                // again after it, like after a crash.
                continue;
            };
            match result {
                Ok(()) => published.push((claim.event.id, claim.token)),
                Err(e) => failed.push((claim, e)),
            }
        }
        // The deliveries first: a database error on a failure must not cost them.
        let mut error = None;
        match self.store.delivered_all(&published).await {
            Ok(settled) => settled.into_iter().for_each(|s| tally(&mut pass, s)),
            Err(e) => error = Some(e),
        }
        for (claim, e) in failed {
            let failure = Failure {
                retry_in: backoff(
                    claim.event.attempts,
                    self.config.backoff_base,
                    self.config.backoff_cap,
                    rand::random::<f64>(),
                ),
                // A refusal that no retry can change is a dead letter at once.
                dead_after: if e.permanent {
                    claim.event.attempts
                } else {
                    self.config.dead_after
                },
                error: e.message,
            };
            match self
                .store
                .failed(claim.event.id, claim.token, &failure)
                .await
            {
                Ok(settled) => tally(&mut pass, settled),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(pass),
        }
    }

    /// Runs passes until `stop` completes, [`RelayConfig::passes_in_flight`] at a time: a
    /// pass starts again at once while passes find work, else after a wake-up or the poll
    /// interval. Each pass's result goes to `observe` (a pass that failed, the database
    /// being down, is retried after the poll interval). `stop` lets the passes under way
    /// finish (their events settle) before this returns.
    pub async fn run(
        &self,
        stop: impl std::future::Future<Output = ()>,
        observe: impl FnMut(&Result<Pass, OutboxError>) + Send,
    ) {
        // The passes run in this one task, so the lock is never contended; it only makes the
        // shared `observe` Sync, which a spawned `run` needs.
        let observe = std::sync::Mutex::new(observe);
        let (stopping, stopped) = tokio::sync::watch::channel(false);
        let lanes =
            (0..self.config.passes_in_flight.max(1)).map(|_| self.lane(&observe, stopped.clone()));
        let mut lanes = std::pin::pin!(futures_util::future::join_all(lanes));
        tokio::pin!(stop);
        tokio::select! {
            _ = &mut lanes => return,
            () = &mut stop => {}
        }
        let _ = stopping.send(true);
        lanes.await;
    }

    /// One of the passes in flight.
    async fn lane(
        &self,
        observe: &std::sync::Mutex<impl FnMut(&Result<Pass, OutboxError>) + Send>,
        mut stopped: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if *stopped.borrow() {
                return;
            }
            let result = self.pass().await;
            (observe.lock_ignoring_poison())(&result);
            match result {
                // A full batch: there is likely more, so wake an idle pass to help.
                Ok(p) if p.claimed >= self.config.batch => {
                    self.wake.notify_one();
                    continue;
                }
                Ok(p) if p.claimed > 0 => continue,
                _ => {}
            }
            tokio::select! {
                _ = stopped.changed() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.config.poll) => {}
            }
        }
    }
}
