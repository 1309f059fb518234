//! The alert hook: after a run, one webhook with a Slack-style JSON payload (`text` and
//! `blocks`, plus the job, the run, its counts and sample keys) when the run passes the
//! threshold: at least `threshold` alert findings a person has not seen (new ones, and
//! resolved ones seen again), or any invariant violation when it is set to fire on those. Never one per row. Sent through `oncely-client`'s retry rules with the
//! key `reconcile/{job}/{run}`, so a receiver that honours `Idempotency-Key` posts it once.

use std::sync::Arc;

use http::{header, HeaderValue};
use oncely_client::{Client, Request};

use crate::RunSummary;

/// Where and when to alert.
#[derive(Clone)]
pub struct AlertHook {
    /// The webhook's URL (a Slack incoming webhook, or any receiver of JSON).
    pub url: String,
    /// New (or reopened) alert findings in one run that make it worth telling a person (at
    /// least 1).
    pub threshold: u64,
    /// Also fire for any invariant violation, new or not.
    pub on_violation: bool,
    client: Arc<Client>,
}

/// Why an alert was not delivered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the alert to {url} was not delivered: {reason}")]
pub struct AlertError {
    /// The hook's URL.
    pub url: String,
    /// What happened.
    pub reason: String,
}

impl AlertHook {
    /// A hook posting to `url` once a run has `threshold` new alerts.
    pub fn new(url: &str, threshold: u64, client: Arc<Client>) -> AlertHook {
        AlertHook {
            url: url.to_owned(),
            threshold: threshold.max(1),
            on_violation: false,
            client,
        }
    }

    /// Whether `run` passes the threshold.
    pub fn fires(&self, run: &RunSummary) -> bool {
        let n = |k: &str| run.report.counts.get(k).copied().unwrap_or(0);
        n("new_alerts") >= self.threshold || (self.on_violation && n("invariant_violations") > 0)
    }

    /// Posts the payload for `run` of `job` if it passes the threshold; whether it did.
    pub async fn notify(&self, job: &str, run: &RunSummary) -> Result<bool, AlertError> {
        if !self.fires(run) {
            return Ok(false);
        }
        let body = payload(job, run).to_string();
        let request = Request::post(&self.url)
            .key(format!("reconcile/{job}/{}", run.run))
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .body(body);
        let fail = |reason: String| AlertError {
            url: self.url.clone(),
            reason,
        };
        match self.client.send(request).await {
            Ok(r) if r.status.is_success() => Ok(true),
            Ok(r) => Err(fail(format!("answered {}", r.status))),
            Err(e) => Err(fail(e.to_string())),
        }
    }
}

/// The payload: Slack's `text` and `blocks`, and the same facts as fields for any other
/// receiver.
pub fn payload(job: &str, run: &RunSummary) -> serde_json::Value {
    let n = |k: &str| run.report.counts.get(k).copied().unwrap_or(0);
    let text = format!(
        "Reconciliation {job}, run {}: {} ({} new findings, {} alerts, {} healed, {} invariant violations)",
        run.run,
        run.outcome.as_str(),
        n("new_findings"),
        n("alerts"),
        n("healed"),
        n("invariant_violations"),
    );
    let samples: Vec<String> = run
        .report
        .samples
        .iter()
        .map(|(class, keys)| format!("*{class}*: {}", keys.join(", ")))
        .collect();
    serde_json::json!({
        "text": text,
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": text } },
            { "type": "section", "text": { "type": "mrkdwn", "text": samples.join("\n") } },
        ],
        "job": job,
        "run": run.run,
        "outcome": run.outcome.as_str(),
        "counts": run.report.counts,
        "samples": run.report.samples,
    })
}
