//! Per-route policy: which requests are keyed, and how each situation of the contract is
//! answered on that route.

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{StatusPolicy, Tenant};

/// Whether a route needs an `Idempotency-Key` (the `key` setting; default `Optional`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRequirement {
    /// A request without a key is refused with 400 `missing-idempotency-key`.
    Required,
    /// Keyed when a key is sent; passed straight through otherwise.
    Optional,
    /// The key is ignored: the route is passed through untouched.
    Ignored,
}

/// Whether a route's writes must say which version they change (the `precondition` setting;
/// default `Optional`). Checked at the edge, before a key is claimed, so that a write that
/// could lose an update never reaches the service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PreconditionRequirement {
    /// Precondition headers are passed through untouched; the service decides.
    Optional,
    /// A request with one of these methods and no `If-Match`, `If-None-Match` or
    /// `If-Unmodified-Since` is refused with 428 `precondition-required`, and one whose
    /// `If-Match` or `If-None-Match` is not a valid list with 400 `invalid-precondition`.
    Required(Vec<http::Method>),
}

impl PreconditionRequirement {
    /// `Required` for the methods that change a resource in place: PUT, PATCH and DELETE.
    pub fn required_for_updates() -> Self {
        PreconditionRequirement::Required(vec![
            http::Method::PUT,
            http::Method::PATCH,
            http::Method::DELETE,
        ])
    }

    /// Whether a request with `method` must carry a precondition.
    pub fn applies_to(&self, method: &http::Method) -> bool {
        match self {
            PreconditionRequirement::Optional => false,
            PreconditionRequirement::Required(methods) => methods.contains(method),
        }
    }
}

/// Where a request's tenant comes from (the `tenant` setting; default `Authorization`). A key
/// names a record only within its tenant, so the source decides which requests share records
/// and so whose stored responses a request may be answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantSource {
    /// The value of a header set by a trusted authenticating proxy; absent means anonymous.
    Header(http::HeaderName),
    /// A hash of the `Authorization` value; absent means anonymous.
    Authorization,
    /// Everyone shares one tenant (single-tenant services).
    Anonymous,
}

impl TenantSource {
    /// The tenant of a request with these headers. A header that appears several times
    /// names the tenant by all its values together, so an extra client-sent copy cannot
    /// borrow another tenant.
    pub fn tenant_of(&self, headers: &http::HeaderMap) -> Tenant {
        let (name, from_header) = match self {
            TenantSource::Header(name) => (name, true),
            TenantSource::Authorization => (&http::header::AUTHORIZATION, false),
            TenantSource::Anonymous => return Tenant::anonymous(),
        };
        // Every value counts: if a client sends its own copy of the header and the trusted
        // proxy appends its value instead of replacing it, the pair is a tenant of its own
        // rather than whichever value happens to come first.
        let mut values = headers.get_all(name).iter();
        let Some(first) = values.next() else {
            return Tenant::anonymous();
        };
        let mut raw = first.as_bytes().to_vec();
        for v in values {
            raw.push(b'\n');
            raw.extend_from_slice(v.as_bytes());
        }
        if from_header {
            Tenant::from_header_value(&raw)
        } else {
            Tenant::from_authorization(&raw)
        }
    }
}

/// What a duplicate gets while the first request with its key is still running (the
/// `in_flight` setting; default `Reject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlightMode {
    /// Answer 409 `request-in-progress` with `Retry-After`.
    Reject,
    /// Hold the duplicate until the first completes (then replay) or `max_wait` passes (409).
    Wait {
        /// The longest a duplicate is held (the `max_wait` setting, 10 s in the gateway's
        /// defaults); then it gets 409.
        max_wait: Duration,
    },
}

/// What happens to the key when the upstream may or may not have acted: a reset or timeout
/// after the request was sent, or a response too large to store (the `unknown_outcome`
/// setting; default `Hold`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownOutcomePolicy {
    /// Keep the key held until its lease ends: retries get 409 meanwhile, then execute again
    /// with the same key forwarded so the upstream can dedupe.
    Hold,
    /// Release at once: a retry executes again immediately.
    Release,
}

/// What a keyed request gets when the store cannot be reached (the `store_unavailable`
/// setting; default `FailClosed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailureMode {
    /// 503 `idempotency-store-unavailable`: no execution without protection.
    FailClosed,
    /// Forward without idempotency protection (availability over safety).
    FailOpen,
}

/// How one route applies the contract: the policy fields of `[defaults]` and `[[routes]]`
/// (docs/configuration.md). [`Default`] gives the gateway's defaults.
#[derive(Debug, Clone)]
pub struct RoutePolicy {
    /// Whether a key is required, optional or ignored (default optional).
    pub key: KeyRequirement,
    /// How long a completed key replays, counted from its completion (default 24 h). The
    /// gateway requires it to be at least `lease`.
    pub ttl: Duration,
    /// How long a holder that stopped (crashed, frozen) blocks its key before a retry may
    /// take it over (default 60 s; the gateway requires at least 50 ms).
    pub lease: Duration,
    /// Where the tenant comes from (default a hash of `Authorization`).
    pub tenant: TenantSource,
    /// What a duplicate gets while the first request runs (default 409 at once).
    pub in_flight: InFlightMode,
    /// 422 by default; 409 where a client convention needs it.
    pub mismatch_status: http::StatusCode,
    /// Which upstream statuses are final, stored and replayed (default 2xx and 4xx except
    /// 408, 409, 425 and 429); any other status releases the key.
    pub stored_statuses: StatusPolicy,
    /// Largest request body buffered for fingerprinting; larger gets 413.
    pub max_body: usize,
    /// Largest response body stored for replay; a larger one is passed on and treated as an
    /// unknown outcome, since it cannot be replayed.
    pub max_response: usize,
    /// After an unknown outcome: hold the key until its lease ends (default) or release it.
    pub unknown_outcome: UnknownOutcomePolicy,
    /// After a store failure: answer 503 (default) or forward unprotected.
    pub store_failure: StoreFailureMode,
    /// `Retry-After` seconds sent with 409 `request-in-progress`.
    pub retry_after: Duration,
    /// Renew the lease while the upstream works (every third of the lease), so that only a
    /// holder that stopped (crashed, frozen) is ever taken over.
    pub renew_lease: bool,
    /// Whether writes must carry `If-Match` (or another precondition); default optional.
    /// Applies even where `key` is ignored.
    pub precondition: PreconditionRequirement,
}

impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy {
            key: KeyRequirement::Optional,
            ttl: Duration::from_secs(24 * 3600),
            lease: Duration::from_secs(60),
            tenant: TenantSource::Authorization,
            in_flight: InFlightMode::Reject,
            mismatch_status: http::StatusCode::UNPROCESSABLE_ENTITY,
            stored_statuses: StatusPolicy::default(),
            max_body: 1 << 20,
            max_response: 4 << 20,
            unknown_outcome: UnknownOutcomePolicy::Hold,
            store_failure: StoreFailureMode::FailClosed,
            retry_after: Duration::from_secs(1),
            renew_lease: true,
            precondition: PreconditionRequirement::Optional,
        }
    }
}

/// A path pattern: literal segments, `{name}` for exactly one segment, and a final `*` for
/// any rest (including nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathPattern {
    source: String,
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param,
    Rest,
}

impl PathPattern {
    /// Reads a pattern such as `/orders/{id}/pay` or `/files/*`. The error says what is
    /// wrong: no leading `/`, a `*` before the last segment, or a segment mixing a literal
    /// with `{}` or `*`.
    pub fn parse(source: &str) -> Result<Self, String> {
        if !source.starts_with('/') {
            return Err(format!("path pattern `{source}` must start with `/`"));
        }
        let parts: Vec<&str> = source[1..].split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let seg = if *part == "*" {
                if i + 1 != parts.len() {
                    return Err(format!("in `{source}`, `*` may only be the last segment"));
                }
                Segment::Rest
            } else if part.starts_with('{') && part.ends_with('}') && part.len() > 2 {
                Segment::Param
            } else if part.contains(['{', '}', '*']) {
                return Err(format!(
                    "in `{source}`, segment `{part}` mixes a literal with `{{}}` or `*`"
                ));
            } else {
                Segment::Literal((*part).to_owned())
            };
            segments.push(seg);
        }
        Ok(PathPattern {
            source: source.to_owned(),
            segments,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `path` (without its query) matches. A `{name}` segment must not be empty;
    /// literal segments compare byte for byte, without case folding or percent-decoding.
    pub fn matches(&self, path: &str) -> bool {
        let Some(path) = path.strip_prefix('/') else {
            return false;
        };
        let mut parts = path.split('/');
        for seg in &self.segments {
            match seg {
                Segment::Rest => return true,
                Segment::Param => match parts.next() {
                    Some(p) if !p.is_empty() => {}
                    _ => return false,
                },
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// One configured route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Upper-case methods; empty means any method.
    pub methods: Vec<http::Method>,
    /// The paths the route applies to.
    pub path: PathPattern,
    /// The policy of matching requests; with its key `Ignored`, they pass through unkeyed.
    pub policy: Arc<RoutePolicy>,
}

/// The routing table: the first matching route decides; a request no route matches falls
/// back to `fallback` (if any) or is passed through unkeyed.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    /// The configured routes, in order; the first whose methods and path match decides.
    pub routes: Vec<Route>,
    /// Applied to unmatched requests whose method is in `fallback_methods`.
    pub fallback: Option<Arc<RoutePolicy>>,
    /// The methods `fallback` keys (`[defaults].methods`, POST and PATCH by default); when
    /// empty, every unmatched request passes through.
    pub fallback_methods: Vec<http::Method>,
}

impl Routes {
    /// The default without a config file: POST and PATCH are keyed when a key is sent.
    pub fn keyed_post_and_patch(policy: RoutePolicy) -> Self {
        Routes {
            routes: Vec::new(),
            fallback: Some(Arc::new(policy)),
            fallback_methods: vec![http::Method::POST, http::Method::PATCH],
        }
    }

    /// The policy for a request, or `None` when it is not keyed: no route matches and the
    /// fallback does not cover its method, or the deciding policy ignores keys. Such a
    /// request is passed through untouched.
    pub fn policy_for(&self, method: &http::Method, path: &str) -> Option<&Arc<RoutePolicy>> {
        self.route_for(method, path)
            .filter(|p| p.key != KeyRequirement::Ignored)
    }

    /// The policy of the route a request matches, even one whose key is ignored (its other
    /// settings, such as `precondition`, still apply).
    pub fn route_for(&self, method: &http::Method, path: &str) -> Option<&Arc<RoutePolicy>> {
        for r in &self.routes {
            if (r.methods.is_empty() || r.methods.contains(method)) && r.path.matches(path) {
                return Some(&r.policy);
            }
        }
        self.fallback
            .as_ref()
            .filter(|_| self.fallback_methods.contains(method))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_segments() {
        let p = PathPattern::parse("/orders/{id}/pay").unwrap();
        assert!(p.matches("/orders/42/pay"));
        assert!(!p.matches("/orders//pay"));
        assert!(!p.matches("/orders/42/pay/x"));
        assert!(!p.matches("/orders/42"));
        let p = PathPattern::parse("/files/*").unwrap();
        assert!(p.matches("/files/a/b") && p.matches("/files/") && !p.matches("/filesx"));
        assert!(PathPattern::parse("/a/*/b").is_err());
        assert!(PathPattern::parse("orders").is_err());
        assert!(PathPattern::parse("/a{b}").is_err());
        assert!(PathPattern::parse("/").unwrap().matches("/"));
    }

    #[test]
    fn first_route_wins_then_fallback() {
        let ignored = Arc::new(RoutePolicy {
            key: KeyRequirement::Ignored,
            ..Default::default()
        });
        let required = Arc::new(RoutePolicy {
            key: KeyRequirement::Required,
            ..Default::default()
        });
        let mut routes = Routes::keyed_post_and_patch(RoutePolicy::default());
        routes.routes.push(Route {
            methods: vec![],
            path: PathPattern::parse("/health").unwrap(),
            policy: ignored,
        });
        routes.routes.push(Route {
            methods: vec![http::Method::PUT],
            path: PathPattern::parse("/orders/{id}").unwrap(),
            policy: required,
        });
        assert!(routes.policy_for(&http::Method::POST, "/health").is_none());
        assert_eq!(
            routes
                .policy_for(&http::Method::PUT, "/orders/1")
                .unwrap()
                .key,
            KeyRequirement::Required
        );
        assert_eq!(
            routes.policy_for(&http::Method::POST, "/x").unwrap().key,
            KeyRequirement::Optional
        );
        assert!(routes.policy_for(&http::Method::GET, "/x").is_none());
    }

    #[test]
    fn tenants_from_sources() {
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer a".parse().unwrap());
        h.insert("x-tenant", "acme".parse().unwrap());
        let by_header =
            TenantSource::Header(http::HeaderName::from_static("x-tenant")).tenant_of(&h);
        assert_eq!(by_header, Tenant::from_header_value(b"acme"));
        assert_eq!(
            TenantSource::Authorization.tenant_of(&h),
            Tenant::from_authorization(b"Bearer a")
        );
        assert_eq!(
            TenantSource::Authorization.tenant_of(&http::HeaderMap::new()),
            Tenant::anonymous()
        );
    }
}
