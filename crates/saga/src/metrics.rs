//! Prometheus metrics of a saga runner, in the gateway's style.
//!
//! | Series | Kind | What |
//! |---|---|---|
//! | `oncely_sagas{phase}` | gauge | sagas per phase (running, compensating, completed, compensated, stuck) |
//! | `oncely_saga_oldest_active_seconds` | gauge | age of the oldest saga still running or compensating |
//! | `oncely_sagas_started_total` | counter | sagas this runner started |
//! | `oncely_sagas_ended_total{phase}` | counter | sagas this runner ended, by how |
//! | `oncely_saga_steps_total{direction,outcome}` | counter | step attempts (do or undo; done, retryable, failed) |

use oncely_core::Timestamp;
use oncely_metrics::{Counter, Text};

use crate::SagaStats;

/// Counts of one runner.
#[derive(Debug, Default)]
pub struct SagaMetrics {
    pub(crate) started: Counter,
    pub(crate) completed: Counter,
    pub(crate) compensated: Counter,
    pub(crate) stuck: Counter,
    /// do/undo × done/retryable/failed.
    pub(crate) steps: [[Counter; 3]; 2],
}

impl SagaMetrics {
    /// Sagas ended as `completed` so far.
    pub fn completed(&self) -> u64 {
        self.completed.get()
    }

    /// Writes the gauges (from `stats`, read at `now`; left out when the store could not be
    /// read) and this runner's counters.
    pub fn render(&self, stats: Option<&SagaStats>, now: Timestamp, text: &mut Text) {
        if let Some(s) = stats {
            text.family("oncely_sagas", "gauge", "Sagas per phase.");
            for (phase, n) in [
                ("running", s.running),
                ("compensating", s.compensating),
                ("completed", s.completed),
                ("compensated", s.compensated),
                ("stuck", s.stuck),
            ] {
                text.sample("oncely_sagas", &[("phase", phase)], n as f64);
            }
            let age = s
                .oldest_active
                .map_or(0.0, |t| (now.0 - t.0).max(0) as f64 / 1000.0);
            text.family(
                "oncely_saga_oldest_active_seconds",
                "gauge",
                "Age of the oldest saga still running or compensating.",
            );
            text.sample("oncely_saga_oldest_active_seconds", &[], age);
        }
        text.family(
            "oncely_sagas_started_total",
            "counter",
            "Sagas this runner started.",
        );
        text.counter("oncely_sagas_started_total", &[], &self.started);
        text.family(
            "oncely_sagas_ended_total",
            "counter",
            "Sagas this runner ended, by how.",
        );
        for (phase, c) in [
            ("completed", &self.completed),
            ("compensated", &self.compensated),
            ("stuck", &self.stuck),
        ] {
            text.counter("oncely_sagas_ended_total", &[("phase", phase)], c);
        }
        text.family(
            "oncely_saga_steps_total",
            "counter",
            "Step attempts, by direction and outcome.",
        );
        for (d, direction) in ["do", "undo"].iter().enumerate() {
            for (o, outcome) in ["done", "retryable", "failed"].iter().enumerate() {
                text.counter(
                    "oncely_saga_steps_total",
                    &[("direction", direction), ("outcome", outcome)],
                    &self.steps[d][o],
                );
            }
        }
    }
}
