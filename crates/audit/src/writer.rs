//! The one writer of a chain.
//!
//! [`AuditWriter::record`] never waits: drafts go into a bounded queue, and one task seals
//! them into the chain and appends them in batches (one transaction per batch). While the
//! database is away the task retries with backoff and the queue absorbs the backlog; once it
//! is full, new drafts are dropped and counted, and the next batch that lands carries an
//! [`EVENTS_DROPPED`] event saying how many, so the trail records its own gap.
//!
//! Opening a chain reads its head, so a restarted writer continues where it stopped, and
//! appends an anchor ([`CHAIN_OPENED`]) naming every other chain's head. If another process
//! appends to the same chain (two gateways given one chain name), the append conflicts, the
//! writer re-reads the head and seals its batch again: the chain stays one valid chain.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use oncely_core::Clock;
use tokio::sync::{mpsc, oneshot};

use crate::chain::{
    anchor_value, validate_chain, Draft, Event, Head, CHAIN_OPENED, EVENTS_DROPPED,
};
use crate::log::{AuditError, AuditLog};

/// Events queued before new ones are dropped.
pub const DEFAULT_QUEUE: usize = 10_000;
/// Events per append transaction at most.
pub const DEFAULT_BATCH: usize = 256;
/// How long a batch waits for company after its first event: one transaction per 10 ms
/// under load instead of one per event costs the database far less, and an event reaches
/// the table at most this much later.
pub const LINGER: Duration = Duration::from_millis(10);

/// Counters a writer keeps (for metrics).
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Events appended to the chain, the writer's anchor and drop records included
    /// (the gateway's `oncely_audit_events_total`).
    pub appended: AtomicU64,
    /// Events lost: refused by a full queue or a closed writer, or by the log together with
    /// their batch (`oncely_audit_events_dropped_total`).
    pub dropped: AtomicU64,
    /// Batch appends that failed and were retried after a backoff
    /// (`oncely_audit_append_failures_total`).
    pub append_failures: AtomicU64,
    /// Batches sealed again because another process had appended to the same chain first
    /// (`oncely_audit_chain_conflicts_total`).
    pub conflicts: AtomicU64,
    /// Dropped since the last [`EVENTS_DROPPED`] event was queued.
    unrecorded_drops: AtomicU64,
}

// Nearly every message is an event: boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Event(Draft),
    Close(oneshot::Sender<()>),
}

/// A fresh event id: 128 random bits in hex.
pub fn new_event_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Appends to one chain of an [`AuditLog`]; cheap to share.
pub struct AuditWriter {
    chain: String,
    tx: mpsc::Sender<Msg>,
    stats: Arc<WriterStats>,
    clock: Arc<dyn Clock>,
}

impl AuditWriter {
    /// Opens `chain` on `log` (which must be migrated) and starts its task. Fails if the log
    /// cannot be read or the anchor cannot be appended, so a misconfigured gateway does not
    /// start.
    pub async fn open(
        log: Arc<dyn AuditLog>,
        chain: &str,
        key: Vec<u8>,
        clock: Arc<dyn Clock>,
        queue: usize,
    ) -> Result<AuditWriter, AuditError> {
        validate_chain(chain).map_err(AuditError::Invalid)?;
        let mut head = log.head(chain).await?.unwrap_or_else(|| Head::new(chain));
        // The anchor: append it now, retrying if another writer of this chain got in between.
        loop {
            let others: Vec<Head> = log
                .heads()
                .await?
                .into_iter()
                .filter(|h| h.chain != chain)
                .collect();
            let anchor = Draft {
                event_id: new_event_id(),
                timestamp_ms: clock.now().as_millis(),
                actor_type: "system".into(),
                action: CHAIN_OPENED.into(),
                resource_type: "audit_chain".into(),
                resource_id: chain.into(),
                new_value: Some(anchor_value(&others)),
                ..Draft::default()
            };
            let mut next = head.clone();
            let event = next.seal_draft(&anchor, &key);
            match log.append(&[event]).await {
                Ok(()) => {
                    head = next;
                    break;
                }
                Err(AuditError::Conflict { .. }) => {
                    let found = log.head(chain).await?;
                    if found.as_ref() == Some(&next) {
                        // Ours: an earlier attempt committed and its answer was lost.
                        head = next;
                        break;
                    }
                    head = found.unwrap_or_else(|| Head::new(chain));
                }
                Err(e) => return Err(e),
            }
        }
        let (tx, rx) = mpsc::channel(queue.max(1));
        let stats = Arc::new(WriterStats::default());
        stats.appended.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(
            Task {
                log,
                head,
                key,
                stats: stats.clone(),
                clock: clock.clone(),
                batch: DEFAULT_BATCH,
            }
            .run(rx),
        );
        Ok(AuditWriter {
            chain: chain.to_owned(),
            tx,
            stats,
            clock,
        })
    }

    /// The name of the chain this writer appends to.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// The writer's counters, kept up to date by its task (for metrics).
    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// The clock event timestamps come from.
    pub fn now_ms(&self) -> i64 {
        self.clock.now().as_millis()
    }

    /// Queues `draft` for the chain; never waits. Returns false if it was dropped (the queue
    /// is full or the writer closed).
    pub fn record(&self, draft: Draft) -> bool {
        match self.tx.try_send(Msg::Event(draft)) {
            Ok(()) => true,
            Err(_) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                self.stats.unrecorded_drops.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Appends everything queued so far and stops the task; waits at most `grace`. Returns
    /// false if that was not enough (the database is away): what was queued is lost, and
    /// counted in the error this logs.
    pub async fn close(&self, grace: Duration) -> bool {
        let (done, closed) = oneshot::channel();
        let flushed = async {
            self.tx.send(Msg::Close(done)).await.ok()?;
            closed.await.ok()
        };
        match tokio::time::timeout(grace, flushed).await {
            Ok(Some(())) => true,
            _ => {
                tracing::error!(
                    chain = %self.chain,
                    queued = self.tx.max_capacity() - self.tx.capacity(),
                    "the audit log did not take the queued events in time; they are lost"
                );
                false
            }
        }
    }
}

struct Task {
    log: Arc<dyn AuditLog>,
    head: Head,
    key: Vec<u8>,
    stats: Arc<WriterStats>,
    clock: Arc<dyn Clock>,
    batch: usize,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut pending: Vec<Draft> = Vec::new();
        let mut closing: Option<oneshot::Sender<()>> = None;
        let mut backoff = Duration::from_millis(50);
        loop {
            // A batch being retried takes nothing more from the queue, so the queue's bound
            // is what waits beyond it.
            let fresh = pending.is_empty();
            if fresh && self.stats.unrecorded_drops.load(Ordering::Relaxed) == 0 {
                if let Some(done) = closing.take() {
                    let _ = done.send(());
                    return;
                }
                match rx.recv().await {
                    Some(Msg::Event(d)) => pending.push(d),
                    Some(Msg::Close(done)) => closing = Some(done),
                    None => return,
                }
            }
            if fresh && closing.is_none() {
                let until = tokio::time::Instant::now() + LINGER;
                while pending.len() < self.batch {
                    let next = tokio::select! {
                        m = rx.recv() => m,
                        _ = tokio::time::sleep_until(until) => break,
                    };
                    match next {
                        Some(Msg::Event(d)) => pending.push(d),
                        Some(Msg::Close(done)) => {
                            closing = Some(done);
                            break;
                        }
                        None => break,
                    }
                }
            }
            // Only a fresh batch records drops: a batch being retried must stay exactly as it
            // was sealed, or a retry after a lost commit answer would not recognise itself.
            let drops = if fresh {
                self.stats.unrecorded_drops.swap(0, Ordering::Relaxed)
            } else {
                0
            };
            if drops > 0 {
                pending.push(Draft {
                    event_id: new_event_id(),
                    timestamp_ms: self.clock.now().as_millis(),
                    actor_type: "system".into(),
                    action: EVENTS_DROPPED.into(),
                    resource_type: "audit_chain".into(),
                    resource_id: self.head.chain.clone(),
                    new_value: Some(drops.to_string()),
                    ..Draft::default()
                });
            }
            if pending.is_empty() {
                continue;
            }
            let mut next = self.head.clone();
            let events: Vec<Event> = pending
                .iter()
                .map(|d| next.seal_draft(d, &self.key))
                .collect();
            let appended = match self.log.append(&events).await {
                Ok(()) => true,
                Err(AuditError::Conflict { chain, seq }) => match self.log.head(&chain).await {
                    // Our own batch: an earlier attempt committed, but its answer was lost
                    // (a timeout after the commit). Sealing it again would duplicate it.
                    Ok(Some(h)) if h == next => true,
                    // Nobody appended: the conflict is the batch's own (an event id taken).
                    Ok(h) if h.as_ref().unwrap_or(&Head::new(chain.as_str())) == &self.head => {
                        self.refuse_batch(
                            &mut pending,
                            &format!("chain {chain}: event {seq}: an event id is already taken"),
                        );
                        false
                    }
                    Ok(h) => {
                        // Another process appends to this chain too: continue after its
                        // events.
                        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%chain, seq, "another writer appended to this audit chain; sealing the batch again after its events");
                        self.head = h.unwrap_or_else(|| Head::new(chain));
                        false
                    }
                    Err(e) => {
                        self.wait(&e, &mut backoff).await;
                        false
                    }
                },
                Err(AuditError::Invalid(e)) => {
                    self.refuse_batch(&mut pending, &e);
                    false
                }
                Err(e) => {
                    self.wait(&e, &mut backoff).await;
                    false
                }
            };
            if appended {
                self.head = next;
                self.stats
                    .appended
                    .fetch_add(events.len() as u64, Ordering::Relaxed);
                pending.clear();
                backoff = Duration::from_millis(50);
            }
        }
    }

    /// The batch itself is refused (no retry can change that): drop it, and let the next
    /// batch record the loss.
    fn refuse_batch(&self, pending: &mut Vec<Draft>, why: &str) {
        tracing::error!(error = %why, events = pending.len(), "the audit log refused a batch; dropped");
        // A drop record in the batch stands for events lost before: they must be recorded
        // again, but were counted already.
        let (mut lost, mut carried) = (0u64, 0u64);
        for d in pending.iter() {
            match d.action.as_str() {
                EVENTS_DROPPED => {
                    carried += d
                        .new_value
                        .as_deref()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                }
                _ => lost += 1,
            }
        }
        self.stats.dropped.fetch_add(lost, Ordering::Relaxed);
        self.stats
            .unrecorded_drops
            .fetch_add(lost + carried, Ordering::Relaxed);
        pending.clear();
    }

    async fn wait(&self, e: &AuditError, backoff: &mut Duration) {
        self.stats.append_failures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "appending audit events failed; retrying");
        tokio::time::sleep(*backoff).await;
        *backoff = (*backoff * 2).min(Duration::from_secs(5));
    }
}
