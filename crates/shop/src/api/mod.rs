//! The public router: the API under `/api` (docs/shop-api.md), the UI everywhere else.
//!
//! Around every request: a correlation id (`X-Correlation-Id`, the client's when it is
//! sound, else a new one) and, under `/api` except `/api/users` and `/api/openapi.json`,
//! the caller (`X-Shop-User`, 401 when missing or unknown). Inside that, any error answer
//! that is not problem+json yet (a framework rejection, a 405) becomes one. The two writes
//! that must happen once sit behind the idempotency layer, keyed per user.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderValue, Method, Response, StatusCode};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::routing::{get, post, put, MethodRouter};
use axum::Router;
use oncely_core::problem::PROBLEM_CONTENT_TYPE;
use oncely_http::{Engine, IdempotencyLayer};

use crate::app::{Shop, USER_HEADER};
use crate::catalog::User;
use crate::problem::Problem;

mod admin;
mod cart;
mod catalog;
mod checkout;
mod orders;
mod profile;

/// The header every answer carries, and the audit trail records.
pub const CORRELATION_HEADER: &str = "x-correlation-id";

/// Who is asking, and from where: what the handlers act for and the audit trail records.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The named user (`X-Shop-User`).
    pub user: &'static User,
    /// The request's correlation id.
    pub correlation_id: String,
    /// The client's address, as the listener saw it.
    pub client_addr: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
}

/// Routes and the list of what they are (method and path), kept together so that the
/// OpenAPI document can be checked against the router.
struct Api {
    router: Router<Arc<Shop>>,
    routes: Vec<(Method, &'static str)>,
}

impl Api {
    fn new() -> Self {
        Api {
            router: Router::new(),
            routes: Vec::new(),
        }
    }

    /// `route` at `path`, which answers `methods`.
    fn at(
        mut self,
        path: &'static str,
        methods: &[Method],
        route: MethodRouter<Arc<Shop>>,
    ) -> Self {
        self.router = self.router.route(path, route);
        self.routes
            .extend(methods.iter().map(|m| (m.clone(), path)));
        self
    }
}

/// Everything but the two keyed writes.
fn plain() -> Api {
    use Method as M;
    Api::new()
        .at("/api/users", &[M::GET], get(catalog::users))
        .at("/api/products", &[M::GET], get(catalog::products))
        .at("/api/favourites", &[M::GET], get(catalog::favourites))
        .at(
            "/api/favourites/{product}",
            &[M::PUT, M::DELETE],
            put(catalog::add_favourite).delete(catalog::remove_favourite),
        )
        .at(
            "/api/cart",
            &[M::GET, M::PUT],
            get(cart::get_cart).put(cart::put_cart),
        )
        .at("/api/checkouts/{id}", &[M::GET], get(checkout::progress))
        .at("/api/orders", &[M::GET], get(orders::list))
        .at("/api/orders/{id}", &[M::GET], get(orders::one))
        .at(
            "/api/profile",
            &[M::GET, M::PUT],
            get(profile::get_profile).put(profile::put_profile),
        )
        .at("/api/profile/notes", &[M::PUT], put(profile::put_notes))
        .at(
            "/api/profile/addresses/{id}",
            &[M::DELETE],
            axum::routing::delete(profile::remove_address),
        )
        .at("/api/notifications", &[M::GET], get(orders::notifications))
        .at("/api/audit", &[M::GET], get(admin::audit))
        .at("/api/audit/redact", &[M::POST], post(admin::redact))
        .at(
            "/api/admin/reconciliation",
            &[M::GET],
            get(admin::reconciliation),
        )
        .at(
            "/api/admin/reconciliation/run",
            &[M::POST],
            post(admin::run_reconciliation),
        )
        .at("/api/admin/outbox", &[M::GET], get(admin::outbox))
        .at("/api/admin/provider", &[M::GET], get(admin::provider))
        .at(
            "/api/chaos",
            &[M::GET, M::PUT],
            get(admin::chaos).put(admin::set_chaos),
        )
        .at("/api/reset", &[M::POST], post(admin::reset))
        .at("/api/openapi.json", &[M::GET], get(admin::openapi))
}

/// The writes that must happen once; the idempotency layer goes around them.
fn keyed() -> Api {
    Api::new()
        .at("/api/checkout", &[Method::POST], post(checkout::start))
        .at(
            "/api/orders/{id}/cancel",
            &[Method::POST],
            post(checkout::cancel),
        )
}

/// Every route of the API, as the router has it (method and path pattern).
pub(crate) fn routes() -> Vec<(Method, &'static str)> {
    let mut all = plain().routes;
    all.extend(keyed().routes);
    all
}

/// The shop's public router.
pub(crate) fn router(shop: Arc<Shop>, engine: Arc<Engine>) -> Router {
    let keyed = keyed().router.layer(IdempotencyLayer::new(engine));
    plain()
        .router
        .merge(keyed)
        .fallback(fallback)
        .layer(middleware::from_fn(as_problems))
        .layer(middleware::from_fn(identify))
        .with_state(shop)
}

/// Outside `/api`: the UI. Inside: no such route.
async fn fallback(method: Method, uri: axum::http::Uri) -> Response<Body> {
    let path = uri.path();
    if path == "/api" || path.starts_with("/api/") {
        return Problem::new(
            StatusCode::NOT_FOUND,
            "no-such-route",
            "No such route",
            format!("{method} {path} is not a route of the shop's API (GET /api/openapi.json lists them)"),
        )
        .into_response();
    }
    if method != Method::GET && method != Method::HEAD {
        return Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "Method not allowed",
            "the UI is read with GET",
        )
        .into_response();
    }
    crate::web::answer(path)
}

/// A correlation id as a client may send it: 1 to 200 visible ASCII characters.
fn sound_correlation(v: &HeaderValue) -> Option<String> {
    let bytes = v.as_bytes();
    let sound =
        !bytes.is_empty() && bytes.len() <= 200 && bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    sound.then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// The paths a caller needs not name themselves for.
fn anonymous(path: &str) -> bool {
    matches!(path, "/api/users" | "/api/openapi.json")
        || !(path == "/api" || path.starts_with("/api/"))
}

/// Sets the correlation id and the caller; 401 for an unknown caller.
async fn identify(mut req: Request, next: Next) -> Response<Body> {
    let correlation = req
        .headers()
        .get(CORRELATION_HEADER)
        .and_then(sound_correlation)
        .unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
    let mut answer = if anonymous(req.uri().path()) {
        next.run(req).await
    } else {
        let mut named = req.headers().get_all(USER_HEADER).iter();
        // Two values would make the idempotency layer's tenant both users at once.
        let user = match (named.next(), named.next()) {
            (Some(v), None) => v.to_str().ok().and_then(crate::catalog::user),
            _ => None,
        };
        match user {
            Some(user) => {
                let client_addr = req
                    .extensions()
                    .get::<ConnectInfo<SocketAddr>>()
                    .map(|c| c.0.ip().to_string());
                let user_agent = req
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.chars().take(512).collect());
                req.extensions_mut().insert(Caller {
                    user,
                    correlation_id: correlation.clone(),
                    client_addr,
                    user_agent,
                });
                next.run(req).await
            }
            None => Problem::new(
                StatusCode::UNAUTHORIZED,
                "unknown-user",
                "Who is asking?",
                "send X-Shop-User with one of the shop's users (GET /api/users lists them)",
            )
            .into_response(),
        }
    };
    if let Ok(v) = HeaderValue::from_str(&correlation) {
        answer.headers_mut().insert(CORRELATION_HEADER, v);
    }
    answer
}

/// Any error answer that is not a problem document yet (a rejection of the framework's, a
/// 405) becomes one, so that a client always reads the same shape.
async fn as_problems(req: Request, next: Next) -> Response<Body> {
    let answer = next.run(req).await;
    let status = answer.status();
    let is_problem = answer
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(PROBLEM_CONTENT_TYPE));
    if status.as_u16() < 400 || is_problem {
        return answer;
    }
    let (slug, title, detail) = match status {
        StatusCode::METHOD_NOT_ALLOWED => (
            "method-not-allowed",
            "Method not allowed",
            "this route does not take this method (see the Allow header)",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("too-large", "Too large", "the body is too large"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "unsupported-media-type",
            "Unsupported media type",
            "send JSON",
        ),
        s if s.is_client_error() => (
            "invalid-request",
            "The request cannot be read",
            "the request is not what this route takes",
        ),
        _ => ("error", "The shop failed", "the shop could not answer"),
    };
    let (mut parts, _) = answer.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let problem = Problem::new(status, slug, title, detail).into_response();
    let (problem_parts, body) = problem.into_parts();
    parts.headers.extend(problem_parts.headers);
    Response::from_parts(parts, body)
}

impl From<crate::DbError> for Problem {
    fn from(e: crate::DbError) -> Self {
        Problem::unavailable(e)
    }
}
