//! The plan of an attack and its run.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oncely_core::check::history::{line, Event};
use oncely_core::check::{check, Operation, Outcome, Verdict};
use oncely_core::{Clock, SystemClock};
use sha2::Digest as _;

use crate::effects::{find_reference, Effects};

/// What to attack, and how hard.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The target's base URL (`http://127.0.0.1:8080`).
    pub target: String,
    /// The method of the operation under test (usually POST).
    pub method: http::Method,
    /// Its path (`/payments`).
    pub path: String,
    /// The JSON body, with `{reference}` (unique per key and request: what effects are
    /// counted by) and optionally `{amount}`.
    pub body: String,
    /// Headers sent with every request (credentials, say).
    pub headers: Vec<(String, String)>,
    /// The header that names the tenant, and the tenants to send one key string as.
    pub tenants: Option<(String, Vec<String>)>,
    /// Keys to attack; each gets one of the workloads in turn.
    pub keys: usize,
    /// Requests per key in the sequential workload.
    pub repeats: usize,
    /// Copies sent at once in the concurrent workload.
    pub concurrency: usize,
    /// The bound on one request; past it the operation is indeterminate.
    pub timeout: Duration,
}

/// Why an attack could not be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The plan cannot work.
    #[error("{0}")]
    Invalid(String),
    /// The history file could not be written.
    #[error("the history file: {0}")]
    History(String),
    /// The effects could not be counted.
    #[error("counting effects: {0}")]
    Effects(String),
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Found {
    /// Every operation sent.
    pub operations: Vec<Operation>,
    /// The effects per reference.
    pub effects: BTreeMap<String, u64>,
    /// The verdict.
    pub verdict: Verdict,
}

struct Attack {
    plan: Plan,
    http: reqwest::Client,
    next: AtomicU64,
    history: Mutex<Option<std::fs::File>>,
    operations: Mutex<Vec<Operation>>,
}

fn hash(bytes: &[u8]) -> String {
    let d = sha2::Sha256::digest(bytes);
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

impl Attack {
    fn write(&self, event: &Event) -> Result<(), CheckError> {
        let mut guard = self
            .history
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(f) = guard.as_mut() {
            writeln!(f, "{}", line(event)).map_err(|e| CheckError::History(e.to_string()))?;
        }
        Ok(())
    }

    /// Sends one operation and records it.
    async fn send(
        &self,
        process: u32,
        key: &str,
        tenant: Option<&str>,
        reference: &str,
        amount: u64,
    ) -> Result<(), CheckError> {
        let p = &self.plan;
        let body = p
            .body
            .replace("{reference}", reference)
            .replace("{amount}", &amount.to_string());
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let invoked_at = SystemClock.now().as_millis();
        let request = hash(body.as_bytes());
        self.write(&Event::Invoke {
            op: id,
            process,
            key: key.to_owned(),
            tenant: tenant.unwrap_or("").to_owned(),
            reference: reference.to_owned(),
            request: request.clone(),
            at: invoked_at,
        })?;
        let mut req = self
            .http
            .request(
                p.method.clone(),
                format!("{}{}", p.target.trim_end_matches('/'), p.path),
            )
            .timeout(p.timeout)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", key);
        for (name, value) in &p.headers {
            req = req.header(name, value);
        }
        if let (Some((header, _)), Some(t)) = (&p.tenants, tenant) {
            req = req.header(header, t);
        }
        let (outcome, echoed) = match req.body(body).send().await {
            Ok(answer) => {
                let status = answer.status().as_u16();
                match answer.bytes().await {
                    Ok(bytes) => {
                        let mut seen = status.to_be_bytes().to_vec();
                        seen.extend_from_slice(&bytes);
                        let echoed = find_reference(&String::from_utf8_lossy(&bytes));
                        (Outcome::of_status(status, hash(&seen)), echoed)
                    }
                    Err(e) => (
                        Outcome::Indeterminate {
                            reason: format!("the body was cut: {e}"),
                        },
                        None,
                    ),
                }
            }
            Err(e) if e.is_timeout() => (
                Outcome::Indeterminate {
                    reason: "timeout".into(),
                },
                None,
            ),
            Err(e) => (
                Outcome::Indeterminate {
                    reason: format!("no answer: {e}"),
                },
                None,
            ),
        };
        let completed_at = SystemClock.now().as_millis();
        self.write(&Event::Complete {
            op: id,
            at: completed_at,
            outcome: outcome.clone(),
            echoed: echoed.clone(),
        })?;
        self.operations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Operation {
                id,
                process,
                key: key.to_owned(),
                tenant: tenant.unwrap_or("").to_owned(),
                reference: reference.to_owned(),
                request,
                invoked_at,
                completed_at,
                outcome,
                echoed,
            });
        Ok(())
    }
}

/// The workloads, one per key in turn.
const WORKLOADS: [&str; 4] = ["sequential", "concurrent", "other body", "tenants"];

/// Runs `plan`, writing the history to `history` if given, and counts `effects`.
pub async fn run(
    plan: Plan,
    effects: &dyn Effects,
    history: Option<std::fs::File>,
) -> Result<Found, CheckError> {
    if !plan.body.contains("{reference}") {
        return Err(CheckError::Invalid(
            "the body must carry {reference}: effects are counted by it".into(),
        ));
    }
    if plan.keys == 0 || plan.repeats == 0 || plan.concurrency == 0 {
        return Err(CheckError::Invalid(
            "--keys, --repeats and --concurrency must be at least 1".into(),
        ));
    }
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(plan.concurrency)
        .build()
        .map_err(|e| CheckError::Invalid(e.to_string()))?;
    let run_id = format!("{:08x}", rand::random::<u32>());
    let attack = Arc::new(Attack {
        plan: plan.clone(),
        http,
        next: AtomicU64::new(1),
        history: Mutex::new(history),
        operations: Mutex::default(),
    });
    let mut references = Vec::new();
    for i in 0..plan.keys {
        let key = format!("chk-{run_id}-{i}");
        let reference = format!("chk_{run_id}_{i}_a");
        let amount = 100 + i as u64;
        let workload = WORKLOADS[i % WORKLOADS.len()];
        references.push(reference.clone());
        match workload {
            "sequential" => {
                for _ in 0..plan.repeats {
                    attack.send(0, &key, None, &reference, amount).await?;
                }
            }
            "concurrent" => {
                let mut tasks = tokio::task::JoinSet::new();
                for p in 0..plan.concurrency {
                    let (a, k, r) = (attack.clone(), key.clone(), reference.clone());
                    tasks.spawn(async move { a.send(p as u32, &k, None, &r, amount).await });
                }
                while let Some(j) = tasks.join_next().await {
                    j.map_err(|e| CheckError::Invalid(e.to_string()))??;
                }
                // Then once more, after the race: the settled answer.
                attack.send(0, &key, None, &reference, amount).await?;
            }
            "other body" => {
                attack.send(0, &key, None, &reference, amount).await?;
                let other = format!("chk_{run_id}_{i}_b");
                references.push(other.clone());
                attack.send(1, &key, None, &other, amount + 1).await?;
            }
            _ => match &plan.tenants {
                Some((_, tenants)) => {
                    for (j, t) in tenants.iter().enumerate() {
                        let r = format!("chk_{run_id}_{i}_t{j}");
                        references.push(r.clone());
                        attack.send(j as u32, &key, Some(t), &r, amount).await?;
                    }
                }
                None => attack.send(0, &key, None, &reference, amount).await?,
            },
        }
    }
    let mut operations = attack
        .operations
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    operations.sort_by_key(|o| o.id);
    let counted = effects
        .count(&references)
        .await
        .map_err(CheckError::Effects)?;
    let verdict = check(&operations, &counted);
    Ok(Found {
        operations,
        effects: counted,
        verdict,
    })
}
