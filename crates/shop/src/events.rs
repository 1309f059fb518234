//! The in-process consumers of the outbox: the order history (the read model), the
//! follow-up of an order's settlement (its cart emptied, the saga's decision audited) and
//! the notifications, each behind the inbox under its own name, so an event has each effect
//! once however often the relay delivers it. The relay hands each event to [`Consumers`], a
//! publisher that applies it for all three and confirms only when all committed; a retry
//! after one failed finds the others' copies in the inbox and applies nothing there.

use std::sync::Arc;

use async_trait::async_trait;
use oncely_outbox::{OutboxEvent, PublishError, Publisher};
use tokio::sync::Notify;

use crate::chaos::{Fault, Faults};
use crate::store::{Applied, Consumer, ShopStore};
use crate::trail::{Entity, Trail};

/// The relay's publisher: both consumers, in this process.
pub(crate) struct Consumers {
    store: Arc<dyn ShopStore>,
    trail: Arc<Trail>,
    /// Woken whenever the order history applied an event (a read waiting for a
    /// consistency token looks again).
    history_moved: Arc<Notify>,
    /// How long after its commit an event is delivered.
    lag: std::time::Duration,
    /// The faults a test arms.
    faults: Arc<Faults>,
}

impl Consumers {
    /// The consumers over the shop's tables.
    pub(crate) fn new(
        store: Arc<dyn ShopStore>,
        trail: Arc<Trail>,
        history_moved: Arc<Notify>,
        lag: std::time::Duration,
        faults: Arc<Faults>,
    ) -> Self {
        Consumers {
            store,
            trail,
            history_moved,
            lag,
            faults,
        }
    }

    /// Applies `event` for both consumers, and follows up an order's settlement; whether
    /// each consumer applied it now. Each of the three is behind the inbox on its own, so a
    /// delivery after one of them failed does what is left and nothing twice.
    pub(crate) async fn deliver(&self, event: &OutboxEvent) -> Result<(Applied, Applied), String> {
        let history = self
            .store
            .apply(Consumer::OrderHistory, event)
            .await
            .map_err(|e| e.to_string())?;
        self.history_moved.notify_waiters();
        self.follow_up(event).await?;
        let notifications = self
            .store
            .apply(Consumer::Notifications, event)
            .await
            .map_err(|e| e.to_string())?;
        Ok((history, notifications))
    }

    /// What follows an order's confirmation or cancellation by its checkout: the cart
    /// emptied (the checkout's answer may never have reached the buyer) and the audit event
    /// of the saga's decision. Tried on every delivery and done once: the store keeps the
    /// event's id with the cart's change under an inbox consumer of its own, and the audit
    /// events are recorded only by the delivery that did it.
    async fn follow_up(&self, event: &OutboxEvent) -> Result<(), String> {
        let order = event.aggregate_id.as_str();
        let saga_decided = match event.event_type.as_str() {
            "order.confirmed" => Some("order.confirmed"),
            // A buyer's own cancel is recorded where it happens, with its request.
            "order.cancelled" if !cancelled_by_buyer(event) => Some("order.cancelled"),
            _ => None,
        };
        let Some(action) = saga_decided else {
            return Ok(());
        };
        if self.faults.strikes(Fault::FollowUpFails) {
            return Err("injected: the follow-up failed".into());
        }
        let confirmed = action == "order.confirmed";
        let Some(done) = self
            .store
            .follow_up(event, confirmed)
            .await
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        if let Some((user, w)) = done.emptied {
            self.trail.by_system(
                "checkout-saga",
                "cart.emptied",
                Entity {
                    kind: "cart",
                    id: &user,
                },
                None,
                w.old.map(|c| serde_json::json!(c)),
                Some(serde_json::json!({ "items": [], "version": w.new.value.version, "order": order })),
            );
        }
        self.trail.by_system(
            "checkout-saga",
            action,
            Entity {
                kind: "order",
                id: order,
            },
            None,
            None,
            Some(event.payload.clone()),
        );
        Ok(())
    }
}

/// The reason a buyer's cancel gives (`cancelled by ada`), as the cancel handler writes it.
pub(crate) const BUYER_CANCEL: &str = "cancelled by ";

fn cancelled_by_buyer(event: &OutboxEvent) -> bool {
    event.payload["detail"]["reason"]
        .as_str()
        .is_some_and(|r| r.starts_with(BUYER_CANCEL))
}

#[async_trait]
impl Publisher for Consumers {
    fn name(&self) -> &str {
        "in-process"
    }

    async fn publish(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        if !self.lag.is_zero() {
            let due = event.created_at.plus(self.lag);
            let now = oncely_core::Clock::now(&oncely_core::SystemClock);
            tokio::time::sleep(now.until(due)).await;
        }
        self.deliver(event)
            .await
            .map(|_| ())
            .map_err(PublishError::new)
    }
}
