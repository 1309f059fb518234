//! How effects are counted: by a recording upstream put behind the target (a gateway or a
//! proxy), or by asking a ledger URL the team exposes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;

/// Counts how many times each reference took effect in the system under test.
#[async_trait]
pub trait Effects: Send + Sync {
    /// The counts of `references` (absent: none).
    async fn count(&self, references: &[String]) -> Result<BTreeMap<String, u64>, String>;
}

/// An upstream that executes every request it receives: it counts the references in their
/// bodies and answers 201 with a fresh id and the reference it saw, so that an execution
/// repeated behind the target also shows as a different answer.
#[derive(Default)]
pub struct Recorder {
    seen: Mutex<BTreeMap<String, u64>>,
}

impl Recorder {
    /// The router to serve (any method, any path).
    pub fn router(self: &Arc<Self>) -> Router {
        let me = self.clone();
        Router::new().fallback(move |body: Bytes| {
            let me = me.clone();
            async move {
                let text = String::from_utf8_lossy(&body);
                let reference = find_reference(&text);
                if let Some(r) = &reference {
                    *me.seen
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .entry(r.clone())
                        .or_default() += 1;
                }
                let id = format!("ex_{:016x}", rand::random::<u64>());
                (
                    StatusCode::CREATED,
                    [(http::header::CONTENT_TYPE, "application/json")],
                    serde_json::json!({ "id": id, "reference": reference }).to_string(),
                )
                    .into_response()
            }
        })
    }

    /// Executions per reference so far.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Effects for Recorder {
    async fn count(&self, references: &[String]) -> Result<BTreeMap<String, u64>, String> {
        let all = self.counts();
        Ok(references
            .iter()
            .filter_map(|r| all.get(r).map(|n| (r.clone(), *n)))
            .collect())
    }
}

/// A ledger the team exposes: `GET {url}?reference=R` answers the number of effects of `R`
/// (a JSON number, `{"count": n}`, or an array of the effects).
pub struct Ledger {
    url: String,
    http: reqwest::Client,
}

impl Ledger {
    /// The ledger at `url`.
    pub fn new(url: &str) -> Ledger {
        Ledger {
            url: url.to_owned(),
            http: reqwest::Client::new(),
        }
    }
}

#[async_trait]
impl Effects for Ledger {
    async fn count(&self, references: &[String]) -> Result<BTreeMap<String, u64>, String> {
        let mut counts = BTreeMap::new();
        for r in references {
            let answer = self
                .http
                .get(&self.url)
                .query(&[("reference", r)])
                .send()
                .await
                .map_err(|e| format!("the ledger {}: {e}", self.url))?;
            let status = answer.status();
            let body = answer
                .bytes()
                .await
                .map_err(|e| format!("the ledger {}: {e}", self.url))?;
            if !status.is_success() {
                return Err(format!("the ledger {} answered {status} for {r}", self.url));
            }
            let v: serde_json::Value = serde_json::from_slice(&body)
                .map_err(|e| format!("the ledger's answer for {r} is not JSON: {e}"))?;
            let n = v
                .as_u64()
                .or_else(|| v["count"].as_u64())
                .or_else(|| v.as_array().map(|a| a.len() as u64))
                .ok_or_else(|| format!("the ledger's answer for {r} has no count: {v}"))?;
            if n > 0 {
                counts.insert(r.clone(), n);
            }
        }
        Ok(counts)
    }
}

/// The check's references look like `chk_<run>_<n>_<variant>`: the first one in `text`.
pub fn find_reference(text: &str) -> Option<String> {
    let start = text.find("chk_")?;
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    Some(rest[..end].to_owned())
}
