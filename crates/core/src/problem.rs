//! RFC 9457 problem types answered by oncely. Each has a stable `type` URI; clients match
//! on it (for instance, a retry client retries `request-in-progress` and nothing else).

use serde_json::json;

/// A problem oncely answers itself, in place of the upstream's answer. Each kind has a stable
/// `type` URI and a default status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProblemKind {
    /// 400 `missing-idempotency-key`: the route requires a key and none was sent.
    MissingKey,
    /// 400 `invalid-idempotency-key`: the key is empty, too long, has a character outside
    /// visible ASCII, is badly quoted, or was sent twice.
    InvalidKey,
    /// 422 (or 409 by configuration) `idempotency-key-reused`: the key was first used with
    /// another request (another fingerprint); nothing is forwarded.
    KeyReused,
    /// 409 `request-in-progress`, with `Retry-After`: the first request with the key is
    /// still running. A retry with the same key after the delay gets its outcome.
    RequestInProgress,
    /// 503 `idempotency-store-unavailable`, with `Retry-After`: the store could not be
    /// reached, so the request was not forwarded (fail closed).
    StoreUnavailable,
    /// 413 `request-body-too-large`: a keyed request's body is longer than the route's
    /// `max_body`; nothing is claimed or forwarded.
    BodyTooLarge,
    /// 502 `upstream-unavailable`: the upstream could not be reached before anything was
    /// sent (the key is released), or the connection failed after sending (outcome unknown).
    UpstreamUnavailable,
    /// 504 `upstream-timeout`: the upstream did not answer in time after the request was
    /// sent; whether it acted is unknown.
    UpstreamTimeout,
    /// 400 `request-body-unreadable`: the request body broke off (the client aborted)
    /// before it was read whole; nothing is claimed.
    BodyUnreadable,
    /// 408 `request-timeout`, then the connection closes: the request body stalled, or a
    /// keyed body was not complete in time. Nothing was claimed, so a retry executes.
    RequestTimeout,
    /// 412 (or 409 by policy) `precondition-failed`: an `If-Match`, `If-None-Match` or
    /// `If-Unmodified-Since` did not hold, so the write was not performed. The body carries
    /// the current representation where the service knows it.
    PreconditionFailed,
    /// 428 `precondition-required` (RFC 6585): the route accepts writes only when they say
    /// which version they were based on (`If-Match`), and none was sent.
    PreconditionRequired,
    /// 400 `invalid-precondition`: an `If-Match` or `If-None-Match` header is not a list of
    /// entity tags or `*`.
    InvalidPrecondition,
    /// 401 `webhook-refused`: a webhook whose signature does not verify, whose timestamp is
    /// outside the tolerance, or which lacks the Standard Webhooks headers; nothing applied.
    WebhookRefused,
    /// 422 `message-rejected`: a verified message (a webhook) that its consumer can never
    /// apply, such as a body that does not parse; nothing applied, and a retry will not help.
    MessageRejected,
    /// 503 `consumer-unavailable`, with `Retry-After`: the consumer could not apply a
    /// verified message now (its database is down); nothing applied, so the sender retries.
    ConsumerUnavailable,
}

impl ProblemKind {
    /// Every kind, in declaration order, for code that must cover them all.
    pub const ALL: [ProblemKind; 16] = [
        ProblemKind::MissingKey,
        ProblemKind::InvalidKey,
        ProblemKind::KeyReused,
        ProblemKind::RequestInProgress,
        ProblemKind::StoreUnavailable,
        ProblemKind::BodyTooLarge,
        ProblemKind::UpstreamUnavailable,
        ProblemKind::UpstreamTimeout,
        ProblemKind::BodyUnreadable,
        ProblemKind::RequestTimeout,
        ProblemKind::PreconditionFailed,
        ProblemKind::PreconditionRequired,
        ProblemKind::InvalidPrecondition,
        ProblemKind::WebhookRefused,
        ProblemKind::MessageRejected,
        ProblemKind::ConsumerUnavailable,
    ];

    /// The stable short name, the last part of the `type` URI (`request-in-progress`).
    pub fn slug(self) -> &'static str {
        match self {
            ProblemKind::MissingKey => "missing-idempotency-key",
            ProblemKind::InvalidKey => "invalid-idempotency-key",
            ProblemKind::KeyReused => "idempotency-key-reused",
            ProblemKind::RequestInProgress => "request-in-progress",
            ProblemKind::StoreUnavailable => "idempotency-store-unavailable",
            ProblemKind::BodyTooLarge => "request-body-too-large",
            ProblemKind::UpstreamUnavailable => "upstream-unavailable",
            ProblemKind::UpstreamTimeout => "upstream-timeout",
            ProblemKind::BodyUnreadable => "request-body-unreadable",
            ProblemKind::RequestTimeout => "request-timeout",
            ProblemKind::PreconditionFailed => "precondition-failed",
            ProblemKind::PreconditionRequired => "precondition-required",
            ProblemKind::InvalidPrecondition => "invalid-precondition",
            ProblemKind::WebhookRefused => "webhook-refused",
            ProblemKind::MessageRejected => "message-rejected",
            ProblemKind::ConsumerUnavailable => "consumer-unavailable",
        }
    }

    /// The RFC 9457 `type` member, `urn:oncely:problem:{slug}`: what clients match on,
    /// rather than the title or the detail.
    pub fn type_uri(self) -> String {
        format!("urn:oncely:problem:{}", self.slug())
    }

    /// The `title` member: a short English summary, the same for every problem of the kind.
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::MissingKey => "This route requires an Idempotency-Key header",
            ProblemKind::InvalidKey => "The Idempotency-Key header is not valid",
            ProblemKind::KeyReused => {
                "This Idempotency-Key was already used with a different request"
            }
            ProblemKind::RequestInProgress => {
                "A request with this Idempotency-Key is still in progress"
            }
            ProblemKind::StoreUnavailable => "The idempotency store is unavailable",
            ProblemKind::BodyTooLarge => "The request body is larger than this route buffers",
            ProblemKind::UpstreamUnavailable => "The upstream service could not be reached",
            ProblemKind::UpstreamTimeout => "The upstream service did not answer in time",
            ProblemKind::BodyUnreadable => "The request body could not be read",
            ProblemKind::RequestTimeout => "The request body did not arrive in time",
            ProblemKind::PreconditionFailed => {
                "The resource has changed since the version this request was based on"
            }
            ProblemKind::PreconditionRequired => {
                "This route requires an If-Match header naming the version being changed"
            }
            ProblemKind::InvalidPrecondition => "A precondition header is not valid",
            ProblemKind::WebhookRefused => "The webhook could not be verified",
            ProblemKind::MessageRejected => "The message can never be applied",
            ProblemKind::ConsumerUnavailable => "The consumer cannot apply the message now",
        }
    }

    /// The default status; `KeyReused` may be configured to 409 instead, and
    /// `PreconditionFailed` answered as 409 by a service's policy.
    pub fn default_status(self) -> u16 {
        match self {
            ProblemKind::MissingKey
            | ProblemKind::InvalidKey
            | ProblemKind::BodyUnreadable
            | ProblemKind::InvalidPrecondition => 400,
            ProblemKind::PreconditionFailed => 412,
            ProblemKind::PreconditionRequired => 428,
            ProblemKind::WebhookRefused => 401,
            ProblemKind::KeyReused | ProblemKind::MessageRejected => 422,
            ProblemKind::RequestInProgress => 409,
            ProblemKind::StoreUnavailable | ProblemKind::ConsumerUnavailable => 503,
            ProblemKind::BodyTooLarge => 413,
            ProblemKind::UpstreamUnavailable => 502,
            ProblemKind::UpstreamTimeout => 504,
            ProblemKind::RequestTimeout => 408,
        }
    }

    /// The `application/problem+json` body.
    pub fn body(self, status: u16, detail: &str) -> Vec<u8> {
        self.body_with(status, detail, &[])
    }

    /// The body with extension members (RFC 9457 §3.2), such as the request's correlation
    /// ids, after the standard ones.
    pub fn body_with(self, status: u16, detail: &str, extra: &[(&str, &str)]) -> Vec<u8> {
        let mut v = json!({
            "type": self.type_uri(),
            "title": self.title(),
            "status": status,
            "detail": detail,
        });
        if let Some(obj) = v.as_object_mut() {
            for (k, val) in extra {
                obj.insert((*k).to_owned(), json!(val));
            }
        }
        // Serialising a map of strings and a number cannot fail.
        serde_json::to_vec(&v).unwrap_or_default()
    }
}

/// The media type of every problem body (RFC 9457).
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_problem_json() {
        for kind in ProblemKind::ALL {
            let body: serde_json::Value =
                serde_json::from_slice(&kind.body(kind.default_status(), "why")).unwrap();
            assert_eq!(body["type"], kind.type_uri());
            assert_eq!(body["detail"], "why");
            assert_eq!(body["status"], kind.default_status());
            assert!(!body["title"].as_str().unwrap().is_empty());
        }
    }
}
