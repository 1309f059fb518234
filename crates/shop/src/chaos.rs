//! The fault switches of `GET`/`PUT /api/chaos`: what the fake provider, its webhooks and
//! the favourites do wrong on purpose. Every switch is off in a fresh shop; the counts are
//! "the next N" and go down as they are used.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// The switches' values, as the API reads and writes them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Switches {
    /// Every charge waits this long before the provider handles it (beyond the checkout's
    /// attempt timeout every attempt runs out, and the saga keeps trying under one key).
    pub provider_slow_ms: u64,
    /// The next N charges are answered 503 before the provider does anything.
    pub provider_fail_next: u64,
    /// The next N charges are made, but their answers come after the attempt timed out.
    pub provider_timeout_next: u64,
    /// The next N provider webhooks are lost on the way (the provider believes them sent).
    pub webhook_drop_next: u64,
    /// The next N provider webhooks arrive twice.
    pub webhook_duplicate_next: u64,
    /// Each webhook is held back and arrives after the next one (or after a second).
    pub webhook_reorder: bool,
    /// Favourites cannot be changed: 503 `injected-failure`, nothing stored.
    pub favourites_fail: bool,
}

/// A change to some of the switches (`PUT /api/chaos` with the members to set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchesChange {
    /// [`Switches::provider_slow_ms`].
    pub provider_slow_ms: Option<u64>,
    /// [`Switches::provider_fail_next`].
    pub provider_fail_next: Option<u64>,
    /// [`Switches::provider_timeout_next`].
    pub provider_timeout_next: Option<u64>,
    /// [`Switches::webhook_drop_next`].
    pub webhook_drop_next: Option<u64>,
    /// [`Switches::webhook_duplicate_next`].
    pub webhook_duplicate_next: Option<u64>,
    /// [`Switches::webhook_reorder`].
    pub webhook_reorder: Option<bool>,
    /// [`Switches::favourites_fail`].
    pub favourites_fail: Option<bool>,
}

/// The live switches, shared by the fakes and the handlers.
#[derive(Debug, Default)]
pub struct Chaos {
    provider_slow_ms: AtomicU64,
    provider_fail_next: AtomicU64,
    provider_timeout_next: AtomicU64,
    webhook_drop_next: AtomicU64,
    webhook_duplicate_next: AtomicU64,
    webhook_reorder: AtomicBool,
    favourites_fail: AtomicBool,
}

/// Takes one use of a "next N" count; whether there was one left.
fn take(counter: &AtomicU64) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

impl Chaos {
    /// The switches as they stand.
    pub fn get(&self) -> Switches {
        Switches {
            provider_slow_ms: self.provider_slow_ms.load(Ordering::SeqCst),
            provider_fail_next: self.provider_fail_next.load(Ordering::SeqCst),
            provider_timeout_next: self.provider_timeout_next.load(Ordering::SeqCst),
            webhook_drop_next: self.webhook_drop_next.load(Ordering::SeqCst),
            webhook_duplicate_next: self.webhook_duplicate_next.load(Ordering::SeqCst),
            webhook_reorder: self.webhook_reorder.load(Ordering::SeqCst),
            favourites_fail: self.favourites_fail.load(Ordering::SeqCst),
        }
    }

    /// Sets the switches `change` names, leaving the others.
    pub fn apply(&self, change: &SwitchesChange) {
        let set = |slot: &AtomicU64, v: Option<u64>| {
            if let Some(v) = v {
                slot.store(v, Ordering::SeqCst);
            }
        };
        set(&self.provider_slow_ms, change.provider_slow_ms);
        set(&self.provider_fail_next, change.provider_fail_next);
        set(&self.provider_timeout_next, change.provider_timeout_next);
        set(&self.webhook_drop_next, change.webhook_drop_next);
        set(&self.webhook_duplicate_next, change.webhook_duplicate_next);
        if let Some(v) = change.webhook_reorder {
            self.webhook_reorder.store(v, Ordering::SeqCst);
        }
        if let Some(v) = change.favourites_fail {
            self.favourites_fail.store(v, Ordering::SeqCst);
        }
    }

    /// Every switch off.
    pub fn clear(&self) {
        let off = Switches::default();
        self.apply(&SwitchesChange {
            provider_slow_ms: Some(off.provider_slow_ms),
            provider_fail_next: Some(off.provider_fail_next),
            provider_timeout_next: Some(off.provider_timeout_next),
            webhook_drop_next: Some(off.webhook_drop_next),
            webhook_duplicate_next: Some(off.webhook_duplicate_next),
            webhook_reorder: Some(off.webhook_reorder),
            favourites_fail: Some(off.favourites_fail),
        });
    }

    /// How long a charge waits before the provider handles it.
    pub fn provider_delay_ms(&self) -> u64 {
        self.provider_slow_ms.load(Ordering::SeqCst)
    }
    /// Whether this charge fails with 503 (one use of the count).
    pub fn provider_fails(&self) -> bool {
        take(&self.provider_fail_next)
    }
    /// Whether this charge's answer comes too late (one use of the count).
    pub fn provider_times_out(&self) -> bool {
        take(&self.provider_timeout_next)
    }
    /// Whether this webhook is lost (one use of the count).
    pub fn webhook_dropped(&self) -> bool {
        take(&self.webhook_drop_next)
    }
    /// Whether this webhook arrives twice (one use of the count).
    pub fn webhook_duplicated(&self) -> bool {
        take(&self.webhook_duplicate_next)
    }
    /// Whether webhooks are reordered.
    pub fn webhooks_reordered(&self) -> bool {
        self.webhook_reorder.load(Ordering::SeqCst)
    }
    /// Whether favourites fail.
    pub fn favourites_fail(&self) -> bool {
        self.favourites_fail.load(Ordering::SeqCst)
    }
}

/// A fault no switch of `/api/chaos` reaches: the crashes and database errors a test must
/// be able to place exactly, armed through [`crate::Running::inject`] for the next N times.
/// Nothing arms them in a running demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// A keyed write (`POST /api/checkout`, `POST /api/orders/{id}/cancel`) does all its
    /// work and then answers 503 instead of its outcome, as a process dying before it
    /// answered would: the idempotency layer stores nothing, so a retry under the same key
    /// runs the handler again against what the first attempt left.
    AnswerLost,
    /// The follow-up of an order's settlement (the cart emptied, the saga's decision
    /// audited) fails before it does anything, as a database error would: the relay hands
    /// the event over again later.
    FollowUpFails,
}

/// The armed [`Fault`]s, each a "next N" count.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    answer_lost: AtomicU64,
    follow_up_fails: AtomicU64,
}

impl Faults {
    fn slot(&self, fault: Fault) -> &AtomicU64 {
        match fault {
            Fault::AnswerLost => &self.answer_lost,
            Fault::FollowUpFails => &self.follow_up_fails,
        }
    }

    /// Arms `fault` for the next `times` times (0 disarms it).
    pub(crate) fn arm(&self, fault: Fault, times: u64) {
        self.slot(fault).store(times, Ordering::SeqCst);
    }

    /// Whether `fault` strikes now (one use of its count).
    pub(crate) fn strikes(&self, fault: Fault) -> bool {
        take(self.slot(fault))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_used_up_and_changes_leave_the_rest() {
        let chaos = Chaos::default();
        chaos.apply(&SwitchesChange {
            provider_fail_next: Some(2),
            favourites_fail: Some(true),
            ..SwitchesChange::default()
        });
        assert!(chaos.provider_fails());
        assert!(chaos.provider_fails());
        assert!(!chaos.provider_fails());
        chaos.apply(&SwitchesChange {
            webhook_drop_next: Some(1),
            ..SwitchesChange::default()
        });
        assert!(chaos.get().favourites_fail, "an unnamed switch stays");
        chaos.clear();
        assert_eq!(chaos.get(), Switches::default());
    }
}
