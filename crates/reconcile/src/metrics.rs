//! Prometheus metrics of reconciliation, read from the store (so any process sharing the
//! database reports the same), in the gateway's style.
//!
//! | Series | Kind | What |
//! |---|---|---|
//! | `oncely_reconcile_findings{job,class,state}` | gauge | findings by class and state (the review queue: alert on `state="open"`) |
//! | `oncely_reconcile_last_run_timestamp_seconds{job}` | gauge | when the job's last run ended |
//! | `oncely_reconcile_last_run{job,outcome}` | gauge | 1 for the outcome of the job's last run (clean, drift, failed) |
//! | `oncely_reconcile_last_success_age_seconds{job}` | gauge | how long ago the last run that did not fail ended (alert when it grows past a few periods) |

use oncely_core::Timestamp;
use oncely_metrics::Text;

use crate::{ReconcileStats, RunOutcome};

/// Writes the gauges for `stats`, read at `now`.
pub fn render(stats: &ReconcileStats, now: Timestamp, text: &mut Text) {
    text.family(
        "oncely_reconcile_findings",
        "gauge",
        "Reconciliation findings by job, class and state.",
    );
    for ((job, class, state), n) in &stats.findings {
        text.sample(
            "oncely_reconcile_findings",
            &[("job", job), ("class", class), ("state", state)],
            *n as f64,
        );
    }
    let seconds = |t: Timestamp| t.0 as f64 / 1000.0;
    text.family(
        "oncely_reconcile_last_run_timestamp_seconds",
        "gauge",
        "When the job's last run ended.",
    );
    for (job, s) in &stats.jobs {
        if let Some((at, _)) = s.last_run {
            text.sample(
                "oncely_reconcile_last_run_timestamp_seconds",
                &[("job", job)],
                seconds(at),
            );
        }
    }
    text.family(
        "oncely_reconcile_last_run",
        "gauge",
        "1 for the outcome of the job's last run.",
    );
    for (job, s) in &stats.jobs {
        if let Some((_, outcome)) = s.last_run {
            for o in [RunOutcome::Clean, RunOutcome::Drift, RunOutcome::Failed] {
                text.sample(
                    "oncely_reconcile_last_run",
                    &[("job", job), ("outcome", o.as_str())],
                    if o == outcome { 1.0 } else { 0.0 },
                );
            }
        }
    }
    text.family(
        "oncely_reconcile_last_success_age_seconds",
        "gauge",
        "How long ago the job's last run that did not fail ended.",
    );
    for (job, s) in &stats.jobs {
        if let Some(at) = s.last_success {
            text.sample(
                "oncely_reconcile_last_success_age_seconds",
                &[("job", job)],
                (now.0 - at.0).max(0) as f64 / 1000.0,
            );
        }
    }
}
