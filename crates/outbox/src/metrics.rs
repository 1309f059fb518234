//! Prometheus metrics of relays and consumers, in the gateway's style: plain atomics owned
//! by the component, rendered into an [`oncely_metrics::Text`] when `/metrics` is asked for.
//!
//! | Series | Kind | What |
//! |---|---|---|
//! | `oncely_outbox_pending` | gauge | events not yet delivered |
//! | `oncely_outbox_lag_seconds` | gauge | age of the oldest pending event (0 when none) |
//! | `oncely_outbox_dead_letters` | gauge | dead letters waiting for a person |
//! | `oncely_outbox_publish_attempts_total{publisher}` | counter | events handed to the publisher |
//! | `oncely_outbox_publish_failures_total{publisher}` | counter | attempts that failed |
//! | `oncely_outbox_delivered_total{publisher}` | counter | events recorded as delivered |
//! | `oncely_outbox_dead_lettered_total{publisher}` | counter | events that became dead letters |
//! | `oncely_outbox_lease_lost_total{publisher}` | counter | settled too late (another relay took over) |
//! | `oncely_outbox_relay_errors_total{publisher}` | counter | passes the outbox database failed |
//! | `oncely_inbox_applied_total{consumer}` | counter | messages whose effect ran |
//! | `oncely_inbox_duplicates_total{consumer}` | counter | redeliveries absorbed by the inbox |
//! | `oncely_inbox_retries_total{consumer}` | counter | messages handed back for a later delivery |
//! | `oncely_inbox_rejected_total{consumer}` | counter | messages that can never apply |
//! | `oncely_outbox_end_to_end_seconds{consumer}` | histogram | enqueue to the consumer's commit |
//!
//! The end-to-end latency compares the enqueue time (the outbox database's clock) with the
//! consumer's clock, so it is as true as those clocks agree.

use oncely_core::Timestamp;
use oncely_metrics::{Counter, Histogram, Text};

use crate::consume::{HandleError, Outcome};
use crate::relay::Pass;
use crate::{OutboxError, OutboxStats};

/// Counts of one relay (one publisher).
#[derive(Debug)]
pub struct RelayMetrics {
    publisher: String,
    attempts: Counter,
    failures: Counter,
    delivered: Counter,
    dead: Counter,
    lease_lost: Counter,
    errors: Counter,
}

impl RelayMetrics {
    /// Counts for a relay to `publisher` (its [`crate::Publisher::name`]).
    pub fn new(publisher: &str) -> Self {
        RelayMetrics {
            publisher: publisher.to_owned(),
            attempts: Counter::new(),
            failures: Counter::new(),
            delivered: Counter::new(),
            dead: Counter::new(),
            lease_lost: Counter::new(),
            errors: Counter::new(),
        }
    }

    /// Counts one pass (give it to [`crate::Relay::run`]'s observer).
    pub fn observe(&self, pass: &Result<Pass, OutboxError>) {
        match pass {
            Ok(p) => {
                self.attempts.add(p.claimed as u64);
                self.failures.add((p.retrying + p.dead) as u64);
                self.delivered.add(p.delivered as u64);
                self.dead.add(p.dead as u64);
                self.lease_lost.add(p.lease_lost as u64);
            }
            Err(_) => self.errors.inc(),
        }
    }

    /// Events recorded as delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered.get()
    }

    /// Writes the outbox gauges (from `stats`, read at `now`; left out when the database
    /// could not be read) and this relay's counters.
    pub fn render(&self, stats: Option<&OutboxStats>, now: Timestamp, text: &mut Text) {
        if let Some(s) = stats {
            let lag = s
                .oldest_pending
                .map_or(0.0, |t| (now.0 - t.0).max(0) as f64 / 1000.0);
            for (name, help, value) in [
                (
                    "oncely_outbox_pending",
                    "Events not yet delivered.",
                    s.pending as f64,
                ),
                (
                    "oncely_outbox_lag_seconds",
                    "Age of the oldest pending event.",
                    lag,
                ),
                (
                    "oncely_outbox_dead_letters",
                    "Dead letters waiting for a person.",
                    s.dead as f64,
                ),
            ] {
                text.family(name, "gauge", help);
                text.sample(name, &[], value);
            }
        }
        let labels = [("publisher", self.publisher.as_str())];
        for (name, help, c) in [
            (
                "oncely_outbox_publish_attempts_total",
                "Events handed to the publisher.",
                &self.attempts,
            ),
            (
                "oncely_outbox_publish_failures_total",
                "Publish attempts that failed.",
                &self.failures,
            ),
            (
                "oncely_outbox_delivered_total",
                "Events recorded as delivered.",
                &self.delivered,
            ),
            (
                "oncely_outbox_dead_lettered_total",
                "Events that became dead letters.",
                &self.dead,
            ),
            (
                "oncely_outbox_lease_lost_total",
                "Events settled after another relay took them over.",
                &self.lease_lost,
            ),
            (
                "oncely_outbox_relay_errors_total",
                "Relay passes the outbox database failed.",
                &self.errors,
            ),
        ] {
            text.family(name, "counter", help);
            text.counter(name, &labels, c);
        }
    }
}

/// Counts of one consumer.
#[derive(Debug)]
pub struct ConsumerMetrics {
    consumer: String,
    applied: Counter,
    duplicates: Counter,
    retries: Counter,
    rejected: Counter,
    end_to_end: Histogram,
}

impl ConsumerMetrics {
    /// Counts for the consumer named `consumer` (its inbox name).
    pub fn new(consumer: &str) -> Self {
        ConsumerMetrics {
            consumer: consumer.to_owned(),
            applied: Counter::new(),
            duplicates: Counter::new(),
            retries: Counter::new(),
            rejected: Counter::new(),
            end_to_end: Histogram::default(),
        }
    }

    /// Counts one handled message that was enqueued at `created_at`, at `now`.
    pub fn record(
        &self,
        result: &Result<Outcome, HandleError>,
        created_at: Option<Timestamp>,
        now: Timestamp,
    ) {
        match result {
            Ok(Outcome::Applied) => {
                self.applied.inc();
                if let Some(t) = created_at {
                    let ms = u64::try_from(now.0.saturating_sub(t.0)).unwrap_or(0);
                    self.end_to_end
                        .observe(std::time::Duration::from_millis(ms));
                }
            }
            Ok(Outcome::Duplicate) => self.duplicates.inc(),
            Err(HandleError::Retry(_)) => self.retries.inc(),
            Err(HandleError::Reject(_)) => self.rejected.inc(),
        }
    }

    /// Hands `message` to `handler` and counts what it did; the latency ends when the
    /// handler returned (its commit). What every consumer adapter calls.
    pub async fn handle(
        &self,
        handler: &(impl crate::consume::Handler + ?Sized),
        message: crate::consume::Message,
    ) -> Result<Outcome, HandleError> {
        let created_at = message.created_at;
        let result = handler.handle(message).await;
        self.record(
            &result,
            created_at,
            oncely_core::Clock::now(&oncely_core::SystemClock),
        );
        result
    }

    /// Messages applied so far.
    pub fn applied(&self) -> u64 {
        self.applied.get()
    }

    /// Redeliveries absorbed so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.get()
    }

    /// Writes the counters of several consumers, each family once.
    pub fn render_all(consumers: &[&ConsumerMetrics], text: &mut Text) {
        type Pick = fn(&ConsumerMetrics) -> &Counter;
        let counters: [(&str, &str, Pick); 4] = [
            (
                "oncely_inbox_applied_total",
                "Messages whose effect ran.",
                |m| &m.applied,
            ),
            (
                "oncely_inbox_duplicates_total",
                "Redeliveries absorbed by the inbox.",
                |m| &m.duplicates,
            ),
            (
                "oncely_inbox_retries_total",
                "Messages handed back for a later delivery.",
                |m| &m.retries,
            ),
            (
                "oncely_inbox_rejected_total",
                "Messages that can never apply.",
                |m| &m.rejected,
            ),
        ];
        for (name, help, pick) in counters {
            text.family(name, "counter", help);
            for m in consumers {
                text.counter(name, &[("consumer", m.consumer.as_str())], pick(m));
            }
        }
        let name = "oncely_outbox_end_to_end_seconds";
        text.family(
            name,
            "histogram",
            "From the enqueue to the consumer's commit.",
        );
        for m in consumers {
            text.histogram(name, &[("consumer", m.consumer.as_str())], &m.end_to_end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_and_a_stats_read_become_series() {
        let r = RelayMetrics::new("nats");
        r.observe(&Ok(Pass {
            claimed: 5,
            delivered: 3,
            retrying: 1,
            dead: 1,
            lease_lost: 0,
        }));
        r.observe(&Err(OutboxError::Unavailable("down".into())));
        let stats = OutboxStats {
            pending: 7,
            dead: 1,
            delivered: 3,
            oldest_pending: Some(Timestamp(1_000)),
        };
        let mut text = Text::new();
        r.render(Some(&stats), Timestamp(3_500), &mut text);
        let page = text.finish();
        for line in [
            "oncely_outbox_pending 7",
            "oncely_outbox_lag_seconds 2.5",
            "oncely_outbox_dead_letters 1",
            "oncely_outbox_publish_attempts_total{publisher=\"nats\"} 5",
            "oncely_outbox_publish_failures_total{publisher=\"nats\"} 2",
            "oncely_outbox_delivered_total{publisher=\"nats\"} 3",
            "oncely_outbox_relay_errors_total{publisher=\"nats\"} 1",
        ] {
            assert!(page.contains(line), "{line} in\n{page}");
        }
    }

    #[test]
    fn consumers_count_applied_duplicates_and_latency() {
        let a = ConsumerMetrics::new("billing");
        let b = ConsumerMetrics::new("mail");
        a.record(&Ok(Outcome::Applied), Some(Timestamp(0)), Timestamp(30));
        a.record(&Ok(Outcome::Duplicate), Some(Timestamp(0)), Timestamp(30));
        b.record(&Err(HandleError::Reject("bad".into())), None, Timestamp(0));
        let mut text = Text::new();
        ConsumerMetrics::render_all(&[&a, &b], &mut text);
        let page = text.finish();
        assert_eq!(page.matches("# TYPE oncely_inbox_applied_total").count(), 1);
        for line in [
            "oncely_inbox_applied_total{consumer=\"billing\"} 1",
            "oncely_inbox_duplicates_total{consumer=\"billing\"} 1",
            "oncely_inbox_rejected_total{consumer=\"mail\"} 1",
            "oncely_outbox_end_to_end_seconds_bucket{consumer=\"billing\",le=\"0.05\"} 1",
            "oncely_outbox_end_to_end_seconds_bucket{consumer=\"billing\",le=\"0.025\"} 0",
            "oncely_outbox_end_to_end_seconds_count{consumer=\"mail\"} 0",
        ] {
            assert!(page.contains(line), "{line} in\n{page}");
        }
    }
}
