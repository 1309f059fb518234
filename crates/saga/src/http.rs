//! Steps that call another service over HTTP: each attempt is one logical request of
//! `oncely-client` (its retry rules, full jitter, `Retry-After`, one key on every attempt),
//! sent with the step's derived key (`{saga id}/{step}/do` or `/undo`), so that the service's
//! own idempotency makes a repeated attempt a replay.
//!
//! The answer is classified for the state machine, by the same rule an idempotency layer
//! uses to decide what it stores ([`StatusPolicy`]'s default): a 2xx is done (its JSON body
//! is the step's output); a 4xx it stores (any but 408, 409, 425 and 429) is a business
//! answer that a retry with the same key would only replay ([`StepError::Failed`]);
//! everything else, and no answer at all, is [`StepError::Retryable`] and tried again with
//! the same key.

use std::sync::Arc;

use http::{header, HeaderValue, Method, StatusCode};
use oncely_client::{Client, Error, Request};
use oncely_core::StatusPolicy;

use crate::{StepContext, StepError};

/// Sends steps' requests through one client.
#[derive(Clone)]
pub struct HttpSteps {
    client: Arc<Client>,
}

/// A final answer of a step's request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its body as JSON (`null` when empty or not JSON).
    pub body: serde_json::Value,
}

impl HttpSteps {
    /// Steps sent through `client` (its attempt timeout and deadline bound each step
    /// attempt; keep them below half the runner's lease).
    pub fn new(client: Arc<Client>) -> Self {
        HttpSteps { client }
    }

    /// POSTs `body` as JSON to `url` with the step's key, and classifies the answer.
    pub async fn post(
        &self,
        cx: &StepContext,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, StepError> {
        let answer = self.send(cx, Method::POST, url, body).await?;
        classify(answer)
    }

    /// Sends one request with the step's key; a final answer whatever its status, or
    /// [`StepError::Retryable`] when none came.
    pub async fn send(
        &self,
        cx: &StepContext,
        method: Method,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<Answer, StepError> {
        let bytes = serde_json::to_vec(body).map_err(|e| StepError::Failed(e.to_string()))?;
        let request = Request::new(method, url)
            .key(cx.key.clone())
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .body(bytes);
        match self.client.send(request).await {
            Ok(r) => Ok(Answer {
                status: r.status,
                body: serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null),
            }),
            // A URL or key that cannot be sent never will be: a business failure (before the
            // pivot the saga turns back; a compensation keeps trying and parks as stuck).
            Err(Error::InvalidRequest(e)) | Err(Error::Build(e)) => Err(StepError::Failed(e)),
            Err(e) => Err(StepError::Retryable(e.to_string())),
        }
    }
}

/// A final answer as a step's result: see the module's rules.
pub fn classify(answer: Answer) -> Result<serde_json::Value, StepError> {
    let s = answer.status;
    if s.is_success() {
        return Ok(answer.body);
    }
    let detail = format!("{} {}", s.as_u16(), compact(&answer.body));
    // A 4xx the service stored is final for the key; anything it released is worth another
    // attempt under the same key.
    if s.is_client_error() && StatusPolicy::default().is_stored(s.as_u16()) {
        Err(StepError::Failed(detail))
    } else {
        Err(StepError::Retryable(detail))
    }
}

/// A body for a log line: short, on one line.
fn compact(body: &serde_json::Value) -> String {
    let mut s = match body {
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    if s.len() > 200 {
        let mut end = 200;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            body: serde_json::json!({"error": "x"}),
        }
    }

    #[test]
    fn answers_are_classified_for_the_state_machine() {
        assert_eq!(
            classify(answer(201)).unwrap(),
            serde_json::json!({"error": "x"})
        );
        for s in [400, 402, 404, 410, 422, 423] {
            assert!(
                matches!(classify(answer(s)), Err(StepError::Failed(_))),
                "{s}"
            );
        }
        for s in [408, 409, 425, 429, 500, 502, 503, 504, 302] {
            assert!(
                matches!(classify(answer(s)), Err(StepError::Retryable(_))),
                "{s}"
            );
        }
        assert!(matches!(
            classify(answer(402)),
            Err(StepError::Failed(d)) if d == r#"402 {"error":"x"}"#
        ));
    }
}
