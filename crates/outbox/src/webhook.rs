//! Webhooks per the Standard Webhooks specification (feature `webhook`): the publisher that
//! POSTs events, and the verification a receiver runs before it applies one.
//!
//! Each request carries `webhook-id` (the event id, also sent as `Idempotency-Key`),
//! `webhook-timestamp` (seconds since the epoch) and `webhook-signature`: `v1,` and the
//! base64 HMAC-SHA256, under the shared secret, of `{id}.{timestamp}.{body}`. A receiver
//! refuses a signature that does not verify and a timestamp outside its tolerance (a
//! replayed old request), then dedupes by `webhook-id` in its inbox and answers 2xx to a
//! duplicate, so that the sender stops retrying it.
//!
//! [`WebhookReceiver`] is that receiver, ready for an axum router: verification, then the
//! application's [`Handler`] (which applies the effect once through its inbox), then the
//! answer the sender needs.

use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use oncely_core::problem::ProblemKind;
use sha2::{Digest as _, Sha256};

use crate::consume::{HandleError, Handler, Message, Outcome};
use crate::metrics::ConsumerMetrics;
use crate::relay::{PublishError, Publisher};
use crate::OutboxEvent;

/// A shared signing secret: `whsec_` and base64, as the specification writes it.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    /// Reads `whsec_<base64>` (or bare base64).
    pub fn parse(text: &str) -> Result<Self, WebhookError> {
        let b64 = text.strip_prefix("whsec_").unwrap_or(text);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|_| WebhookError::BadSecret)?;
        if bytes.len() < 16 {
            return Err(WebhookError::BadSecret);
        }
        Ok(WebhookSecret(bytes))
    }

    /// A secret of these bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        WebhookSecret(bytes.to_vec())
    }

    /// `whsec_` and the base64 of the secret.
    pub fn to_text(&self) -> String {
        format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(&self.0)
        )
    }
}

/// HMAC-SHA256 (RFC 2104).
fn hmac_sha256(key: &[u8], message: &[&[u8]]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    for part in message {
        inner.update(part);
    }
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The `webhook-signature` value for a message.
pub fn sign(secret: &WebhookSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(&secret.0, &[id.as_bytes(), b".", ts.as_bytes(), b".", body]);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac)
    )
}

/// Why a webhook was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    /// A `webhook-*` header is absent or not text.
    #[error("the {0} header is missing")]
    Missing(&'static str),
    /// `webhook-timestamp` is not a number of seconds.
    #[error("webhook-timestamp is not a number of seconds")]
    BadTimestamp,
    /// The timestamp is further from now than the tolerance (a replay, or a clock far off).
    #[error("webhook-timestamp is {0} s away from now, more than the tolerance")]
    OutsideTolerance(i64),
    /// No `v1` signature in the header matches.
    #[error("no signature matches")]
    BadSignature,
    /// The secret is not `whsec_` and at least 16 bytes of base64.
    #[error("the webhook secret is not whsec_ and at least 16 bytes of base64")]
    BadSecret,
}

impl WebhookError {
    /// The RFC 9457 answer: 401 `webhook-refused`.
    pub fn problem(&self) -> (u16, Vec<u8>) {
        let kind = ProblemKind::WebhookRefused;
        (
            kind.default_status(),
            kind.body(kind.default_status(), &self.to_string()),
        )
    }
}

/// Verifies a received webhook: its headers (`webhook-id`, `webhook-timestamp`,
/// `webhook-signature`, which may list several space-separated signatures during a secret
/// rotation) against `body`, at `now` (seconds since the epoch) within `tolerance`. Returns
/// the message id, to dedupe by.
pub fn verify(
    secret: &WebhookSecret,
    headers: &http::HeaderMap,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<String, WebhookError> {
    let header = |name: &'static str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(WebhookError::Missing(name))
    };
    let id = header("webhook-id")?;
    let timestamp: i64 = header("webhook-timestamp")?
        .trim()
        .parse()
        .map_err(|_| WebhookError::BadTimestamp)?;
    let skew = now.saturating_sub(timestamp);
    if skew.unsigned_abs() > tolerance.as_secs() {
        return Err(WebhookError::OutsideTolerance(skew));
    }
    let expected = sign(secret, id, timestamp, body);
    let expected = expected.as_bytes();
    let matches = header("webhook-signature")?
        .split(' ')
        .any(|candidate| constant_time_eq(candidate.as_bytes(), expected));
    if matches {
        Ok(id.to_owned())
    } else {
        Err(WebhookError::BadSignature)
    }
}

/// Compares without an early exit, so that timing does not reveal how much matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// POSTs events to one URL, signed.
pub struct WebhookPublisher {
    url: http::Uri,
    secret: WebhookSecret,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl WebhookPublisher {
    /// Events go to `url` (plain `http://`; TLS comes with the other TLS work), signed with
    /// `secret`; each request may take `timeout`.
    pub fn new(url: &str, secret: WebhookSecret, timeout: Duration) -> Result<Self, PublishError> {
        let url: http::Uri = url
            .parse()
            .map_err(|e| PublishError::new(format!("webhook URL `{url}`: {e}")))?;
        if url.scheme_str() != Some("http") {
            return Err(PublishError::new(
                "webhook URLs must be http:// for now (https:// comes with TLS support)",
            ));
        }
        Ok(WebhookPublisher {
            url,
            secret,
            client: Client::builder(TokioExecutor::new()).build_http(),
            timeout,
        })
    }

    /// The JSON body sent for an event: the Standard Webhooks envelope.
    pub fn body_of(event: &OutboxEvent) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "type": event.event_type,
            "timestamp": oncely_core::conditional::format_rfc3339(event.created_at),
            "data": event.payload,
            "aggregate": {
                "type": event.aggregate_type,
                "id": event.aggregate_id,
                "sequence": event.sequence,
            },
        }))
        .unwrap_or_default()
    }
}

#[async_trait]
impl Publisher for WebhookPublisher {
    fn name(&self) -> &str {
        "webhook"
    }

    async fn publish(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        let id = event.id.to_string();
        let body = Self::body_of(event);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let mut req = http::Request::post(self.url.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", sign(&self.secret, &id, now, &body))
            .header("idempotency-key", &id)
            .header(
                crate::consume::header::CREATED_AT,
                event.created_at.as_millis().to_string(),
            );
        for (name, value) in &event.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| PublishError::new(format!("webhook request: {e}")))?;
        let send = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| PublishError::new(format!("webhook: {e}")))?;
            let status = resp.status();
            // Read the body so that the connection can be reused.
            let _ = resp.into_body().collect().await;
            if status.is_success() {
                Ok(())
            } else if status.is_client_error()
                && status != http::StatusCode::REQUEST_TIMEOUT
                && status != http::StatusCode::TOO_MANY_REQUESTS
            {
                // The receiver refused this event for good (a bad signature, a body it can
                // never apply): retrying would only hold its aggregate back.
                Err(PublishError::permanent(format!(
                    "webhook answered {status}"
                )))
            } else {
                Err(PublishError::new(format!("webhook answered {status}")))
            }
        };
        tokio::time::timeout(self.timeout, send)
            .await
            .map_err(|_| {
                PublishError::new(format!("no webhook answer within {:?}", self.timeout))
            })?
    }
}

/// A webhook endpoint for an axum router: verifies each request (signature under any of its
/// secrets, timestamp within the tolerance), hands the event to a [`Handler`], and answers:
///
/// | What happened | Answer |
/// |---|---|
/// | applied now | 204 |
/// | applied before (a repeat) | 200, so that the sender stops |
/// | not verified | 401 `webhook-refused` |
/// | verified, but the body is not a webhook envelope, or the handler rejects it | 422 `message-rejected` |
/// | the handler cannot apply it now | 503 `consumer-unavailable`, `Retry-After: 1` |
pub struct WebhookReceiver<H> {
    secrets: Vec<WebhookSecret>,
    tolerance: Duration,
    handler: H,
    metrics: std::sync::Arc<ConsumerMetrics>,
}

impl<H: Handler> WebhookReceiver<H> {
    /// A receiver named `name` (its inbox name) checking signatures with `secret`, with the
    /// specification's tolerance of five minutes.
    pub fn new(name: &str, secret: WebhookSecret, handler: H) -> Self {
        WebhookReceiver {
            secrets: vec![secret],
            tolerance: Duration::from_secs(300),
            handler,
            metrics: std::sync::Arc::new(ConsumerMetrics::new(name)),
        }
    }

    /// Also accepts signatures made with `secret`: during a rotation, the old secret and the
    /// new one both verify.
    pub fn also_accepting(mut self, secret: WebhookSecret) -> Self {
        self.secrets.push(secret);
        self
    }

    /// How far a request's timestamp may be from now (default 5 min).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// This receiver's counts, for `/metrics`.
    pub fn metrics(&self) -> std::sync::Arc<ConsumerMetrics> {
        self.metrics.clone()
    }

    /// Answers one request.
    pub async fn receive(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> http::Response<Full<Bytes>> {
        let now = oncely_core::Clock::now(&oncely_core::SystemClock);
        let mut verdict = Err(WebhookError::BadSignature);
        for secret in &self.secrets {
            verdict = verify(
                secret,
                headers,
                body,
                now.0.div_euclid(1000),
                self.tolerance,
            );
            if !matches!(verdict, Err(WebhookError::BadSignature)) {
                break;
            }
        }
        let id = match verdict {
            Ok(id) => id,
            Err(e) => {
                let (status, problem) = e.problem();
                return problem_response(status, problem);
            }
        };
        let result = match message_of(id, headers, body) {
            Ok(message) => self.metrics.handle(&self.handler, message).await,
            Err(e) => {
                let result = Err(e);
                self.metrics.record(&result, None, now);
                result
            }
        };
        match result {
            Ok(Outcome::Applied) => empty(http::StatusCode::NO_CONTENT),
            Ok(Outcome::Duplicate) => empty(http::StatusCode::OK),
            Err(HandleError::Reject(detail)) => {
                let kind = ProblemKind::MessageRejected;
                problem_response(
                    kind.default_status(),
                    kind.body(kind.default_status(), &detail),
                )
            }
            Err(HandleError::Retry(detail)) => {
                let kind = ProblemKind::ConsumerUnavailable;
                let mut r = problem_response(
                    kind.default_status(),
                    kind.body(kind.default_status(), &detail),
                );
                r.headers_mut().insert(
                    http::header::RETRY_AFTER,
                    http::HeaderValue::from_static("1"),
                );
                r
            }
        }
    }

    /// The receiver as an axum `POST` route: `Router::new().route("/hooks", receiver.into_route())`.
    pub fn into_route<S: Clone + Send + Sync + 'static>(self) -> axum::routing::MethodRouter<S> {
        let receiver = std::sync::Arc::new(self);
        axum::routing::post(move |headers: http::HeaderMap, body: Bytes| async move {
            receiver.receive(&headers, &body).await
        })
    }
}

/// The event in a verified request: the envelope [`WebhookPublisher::body_of`] writes.
fn message_of(id: String, headers: &http::HeaderMap, body: &[u8]) -> Result<Message, HandleError> {
    let envelope: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| HandleError::Reject(format!("the body is not JSON: {e}")))?;
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let aggregate = &envelope["aggregate"];
    let passed = headers.iter().filter_map(|(name, value)| {
        let name = name.as_str();
        let skip = name.starts_with("webhook-")
            || matches!(
                name,
                "content-type" | "content-length" | "host" | "idempotency-key"
            );
        (!skip).then(|| Some((name.to_owned(), value.to_str().ok()?.to_owned())))?
    });
    let mut message = Message::from_parts(id, Vec::new(), passed.collect::<Vec<_>>());
    message.event_type = text(&envelope["type"]);
    message.aggregate_type = text(&aggregate["type"]);
    message.aggregate_id = text(&aggregate["id"]);
    message.sequence = aggregate["sequence"].as_i64();
    message.payload = match envelope.get("data") {
        Some(data) => serde_json::to_vec(data).unwrap_or_default(),
        None => return Err(HandleError::Reject("the body has no `data`".into())),
    };
    Ok(message)
}

fn problem_response(status: u16, body: Vec<u8>) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(oncely_core::problem::PROBLEM_CONTENT_TYPE),
    );
    r
}

fn empty(status: http::StatusCode) -> http::Response<Full<Bytes>> {
    let mut r = http::Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        let mac = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn the_specifications_example_verifies() {
        // From the Standard Webhooks specification's reference tests.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let sig = sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body);
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    fn headers(id: &str, ts: i64, sig: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("webhook-id", id.parse().unwrap());
        h.insert("webhook-timestamp", ts.to_string().parse().unwrap());
        h.insert("webhook-signature", sig.parse().unwrap());
        h
    }

    proptest! {
        #[test]
        fn only_the_signed_body_at_a_fresh_time_verifies(
            body in prop::collection::vec(any::<u8>(), 0..200),
            other in prop::collection::vec(any::<u8>(), 0..200),
            skew in -600i64..600,
        ) {
            let secret = WebhookSecret::from_bytes(b"0123456789abcdef0123");
            let now = 1_800_000_000;
            let ts = now - skew;
            let sig = sign(&secret, "m1", ts, &body);
            let tolerance = Duration::from_secs(300);
            let verdict = verify(&secret, &headers("m1", ts, &format!("v1,bogus {sig}")), &body, now, tolerance);
            if skew.abs() <= 300 {
                prop_assert_eq!(verdict, Ok("m1".to_owned()));
                if other != body {
                    prop_assert_eq!(
                        verify(&secret, &headers("m1", ts, &sig), &other, now, tolerance),
                        Err(WebhookError::BadSignature)
                    );
                }
                prop_assert_eq!(
                    verify(&secret, &headers("m2", ts, &sig), &body, now, tolerance),
                    Err(WebhookError::BadSignature),
                    "the id is signed too"
                );
                let wrong = WebhookSecret::from_bytes(b"another secret, 16+ bytes");
                prop_assert_eq!(
                    verify(&wrong, &headers("m1", ts, &sig), &body, now, tolerance),
                    Err(WebhookError::BadSignature)
                );
            } else {
                prop_assert_eq!(verdict, Err(WebhookError::OutsideTolerance(skew)));
            }
        }
    }

    #[test]
    fn missing_headers_and_bad_secrets_are_errors() {
        let secret = WebhookSecret::from_bytes(b"0123456789abcdef");
        assert_eq!(
            verify(
                &secret,
                &http::HeaderMap::new(),
                b"",
                0,
                Duration::from_secs(5)
            ),
            Err(WebhookError::Missing("webhook-id"))
        );
        assert_eq!(
            WebhookSecret::parse("whsec_!!").unwrap_err(),
            WebhookError::BadSecret
        );
        assert_eq!(
            WebhookSecret::parse("whsec_c2hvcnQ=").unwrap_err(),
            WebhookError::BadSecret
        );
        let round = WebhookSecret::parse(&secret.to_text()).unwrap();
        assert_eq!(round.0, secret.0);
        let (status, body) = WebhookError::BadSignature.problem();
        assert_eq!(status, 401);
        assert!(String::from_utf8(body)
            .unwrap()
            .contains("urn:oncely:problem:webhook-refused"));
    }
}
