//! `oncely demo`: the reference shop (`oncely-shop`: the API, the saga, the order history,
//! reconciliation and the UI in one process). `oncely demo --tour` is the earlier demo: a
//! small orders service behind the gateway, and a guided tour of what the gateway does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use oncely_gateway::{Config, Gateway};
use oncely_open::StoreUrl;
use tokio::net::TcpListener;

#[derive(Args)]
pub(crate) struct DemoArgs {
    /// The gateway tour instead of the shop: an orders service behind the gateway, and
    /// real requests showing replays, conflicts and refusals.
    #[arg(long)]
    tour: bool,
    /// The shop's address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR", conflicts_with_all = ["port", "tour"])]
    listen: Option<SocketAddr>,
    /// The port on 127.0.0.1 (the shop's, or with --tour the gateway's; 0 picks a free one).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The shop's database: sqlite://PATH [default: a fresh SQLite file in a temporary
    /// directory, removed at exit].
    #[arg(long, value_name = "URL", conflicts_with = "tour")]
    db: Option<String>,
    /// How often the shop's payments reconciliation runs by itself.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = oncely_core::parse_duration, conflicts_with = "tour")]
    reconcile_every: Duration,
    /// How far the shop's order history lags behind its writes (e.g. `3s`), to watch
    /// eventual consistency and read-your-writes at work.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = oncely_core::parse_duration, conflicts_with = "tour")]
    history_lag: Duration,
    /// With --tour: the gateway's store URL [default: a SQLite file in a temporary directory].
    #[arg(long, value_name = "URL", requires = "tour")]
    store: Option<String>,
    /// With --tour: how long the orders service works on each order, in milliseconds.
    #[arg(long, default_value_t = 1500, requires = "tour")]
    work_ms: u64,
    /// With --tour: skip the guided tour; just serve.
    #[arg(long, requires = "tour")]
    no_tour: bool,
    /// With --tour: exit after the tour instead of serving until Ctrl-C.
    #[arg(long, requires = "tour")]
    exit_after_tour: bool,
}

pub(crate) async fn run(args: DemoArgs) -> Result<(), String> {
    if args.tour {
        return run_tour(args).await;
    }
    let listen = args
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], args.port)));
    let db = match &args.db {
        Some(url) => Some(oncely_shop::DbUrl::parse(url)?),
        None => None,
    };
    let config = oncely_shop::Config {
        listen,
        db,
        reconcile_every: Some(args.reconcile_every),
        history_lag: args.history_lag,
        ..oncely_shop::Config::default()
    };
    oncely_shop::serve_until(config, crate::serve::shutdown_signal())
        .await
        .map_err(|e| match e {
            oncely_shop::ShopError::Listen { .. } => {
                format!("{e}; pass --port to use another port (0 picks a free one)")
            }
            other => other.to_string(),
        })
}

async fn run_tour(args: DemoArgs) -> Result<(), String> {
    let orders = OrdersService::start(Duration::from_millis(args.work_ms)).await?;
    let tmp = std::env::temp_dir().join(format!("oncely-demo-{}", std::process::id()));
    let store = match &args.store {
        Some(s) => StoreUrl::parse(s)?,
        None => {
            std::fs::create_dir_all(&tmp)
                .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            StoreUrl::sqlite(tmp.join("oncely.db"))
        }
    };
    let listen: SocketAddr = format!("127.0.0.1:{}", args.port)
        .parse()
        .map_err(|e| format!("--port: {e}"))?;
    let upstream = format!("http://{}", orders.addr)
        .parse()
        .map_err(|e| format!("{e}"))?;
    let config = Config::new(listen, Some(upstream), store.clone())
        .apply_toml(
            r#"
        [defaults]
        tenant = "authorization"
        [[routes]]
        path = "/orders"
        methods = ["POST"]
        key = "required"
        "#,
        )
        .map_err(|e| e.to_string())?;
    let gateway = Gateway::open(config)
        .await
        .map_err(|e| e.to_string())?
        .start()
        .await
        .map_err(|e| format!("{e}; pass --port to use another port (0 picks a free one)"))?;
    let url = format!("http://{}", gateway.addr());
    println!("oncely demo");
    println!("  orders service (direct): http://{}", orders.addr);
    println!("  gateway (protected):     {url}");
    println!("  store:                   {store}");
    println!();

    if !args.no_tour {
        tour(&url, &orders).await?;
    }
    print_curls(&url, args.work_ms);
    if args.exit_after_tour {
        gateway.shutdown().await;
    } else {
        println!("Serving until Ctrl-C.");
        gateway.run_until(crate::serve::shutdown_signal()).await;
    }
    if args.store.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
}

async fn tour(url: &str, orders: &OrdersService) -> Result<(), String> {
    let client = DemoClient::default();
    let orders_url = format!("{url}/orders");
    let key = format!("demo-{}", std::process::id());
    let body = r#"{"item":"book","quantity":1}"#;
    let json = ("content-type", "application/json");
    println!("Tour (each step is a real HTTP request to the gateway):");
    let keyed = [json, ("idempotency-key", key.as_str())];
    let post_with_key = |body: &'static str| client.send("POST", &orders_url, &keyed, body);

    let first = post_with_key(body).await?;
    println!(
        "  1. POST /orders with Idempotency-Key {key}: {} {}",
        first.status,
        String::from_utf8_lossy(&first.body)
    );
    for i in 2..=3 {
        let again = post_with_key(body).await?;
        println!(
            "  {i}. the same request again (a retry):     {} replayed={} identical body={}",
            again.status,
            again.replayed(),
            again.body == first.body
        );
    }
    let reordered = r#"{ "quantity": 1.0, "item": "book" }"#;
    let same = post_with_key(reordered).await?;
    println!(
        "  4. same JSON, other key order and spacing: {} replayed={} (bodies are compared canonically)",
        same.status,
        same.replayed()
    );
    let other = post_with_key(r#"{"item":"lamp","quantity":9}"#).await?;
    println!(
        "  5. the same key with another body:       {} {}",
        other.status,
        problem_title(&other)
    );

    let key2 = format!("demo-race-{}", std::process::id());
    let mut racers = Vec::new();
    for _ in 0..10 {
        let (client, u, k) = (client.clone(), orders_url.clone(), key2.clone());
        racers.push(tokio::spawn(async move {
            client
                .send(
                    "POST",
                    &u,
                    &[
                        ("content-type", "application/json"),
                        ("idempotency-key", &k),
                    ],
                    r#"{"item":"pen","quantity":2}"#,
                )
                .await
        }));
    }
    let mut by_status: BTreeMap<u16, usize> = BTreeMap::new();
    for r in racers {
        let a = r.await.map_err(|e| e.to_string())??;
        *by_status.entry(a.status).or_default() += 1;
    }
    println!("  6. ten concurrent double-clicks with one new key: statuses {by_status:?} (one created, the rest told to retry)");
    let missing = client.send("POST", &orders_url, &[json], body).await?;
    println!(
        "  7. no key on a keyed route:                {} {}",
        missing.status,
        problem_title(&missing)
    );
    // 3 + 1 + 1 + 10 + 1 requests were sent above.
    println!(
        "  The orders service executed {} order(s) for those 16 requests.",
        orders.executions.load(Ordering::SeqCst)
    );
    println!();
    Ok(())
}

/// The few things the tour prints of an answer.
struct Answer {
    status: u16,
    replayed: bool,
    body: bytes::Bytes,
}

impl Answer {
    fn replayed(&self) -> bool {
        self.replayed
    }
}

/// A plain HTTP client for the tour's requests.
#[derive(Clone, Default)]
struct DemoClient(reqwest::Client);

impl DemoClient {
    async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &'static str,
    ) -> Result<Answer, String> {
        let method: reqwest::Method = method.parse().map_err(|_| format!("bad method {method}"))?;
        let mut req = self.0.request(method, url).body(body);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| format!("the gateway did not answer: {e}"))?;
        let status = resp.status().as_u16();
        let replayed = resp
            .headers()
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true");
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        Ok(Answer {
            status,
            replayed,
            body,
        })
    }
}

fn problem_title(a: &Answer) -> String {
    let j: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
    format!(
        "{} ({})",
        j["title"].as_str().unwrap_or(""),
        j["type"].as_str().unwrap_or("")
    )
}

fn print_curls(url: &str, work_ms: u64) {
    println!("Try it yourself:");
    println!("  # create an order; run it twice: the second answer is a replay (Idempotent-Replayed: true)");
    println!("  curl -i -X POST {url}/orders -H 'Idempotency-Key: k1' -H 'Content-Type: application/json' -d '{{\"item\":\"book\",\"quantity\":1}}'");
    println!("  # the same key with another body: 422 idempotency-key-reused, nothing executed");
    println!("  curl -i -X POST {url}/orders -H 'Idempotency-Key: k1' -H 'Content-Type: application/json' -d '{{\"item\":\"lamp\",\"quantity\":3}}'");
    println!("  # two at once with a fresh key (the service works {work_ms} ms): one 201, one 409 request-in-progress");
    println!("  for i in 1 2; do curl -s -X POST {url}/orders -H 'Idempotency-Key: k2' -H 'Content-Type: application/json' -d '{{\"item\":\"pen\"}}' & done; wait");
    println!("  # what the service really did");
    println!("  curl -s {url}/orders");
    println!();
}

/// The demo's upstream: creates orders with fresh ids and counts executions.
struct OrdersService {
    addr: SocketAddr,
    executions: Arc<AtomicU64>,
}

#[derive(Default)]
struct OrdersState {
    orders: Vec<serde_json::Value>,
}

impl OrdersService {
    async fn start(work: Duration) -> Result<OrdersService, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("cannot start the orders service: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let executions = Arc::new(AtomicU64::new(0));
        let state = Arc::new(Mutex::new(OrdersState::default()));
        let execs = executions.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, execs) = (state.clone(), execs.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        orders(req, state.clone(), execs.clone(), work)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(OrdersService { addr, executions })
    }
}

async fn orders(
    req: Request<Incoming>,
    state: Arc<Mutex<OrdersState>>,
    executions: Arc<AtomicU64>,
    work: Duration,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: StatusCode, v: serde_json::Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
        *r.status_mut() = status;
        r.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/json"),
        );
        Ok(r)
    };
    match (req.method().clone(), req.uri().path()) {
        (Method::GET, "/orders") => {
            let list = state.lock().map(|s| s.orders.clone()).unwrap_or_default();
            reply(
                StatusCode::OK,
                serde_json::json!({ "orders": list, "executions": executions.load(Ordering::SeqCst) }),
            )
        }
        (Method::POST, "/orders") => {
            let key = req
                .headers()
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = req
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let Ok(input) = serde_json::from_slice::<serde_json::Value>(&body) else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    serde_json::json!({ "error": "the body must be JSON" }),
                );
            };
            let n = executions.fetch_add(1, Ordering::SeqCst) + 1;
            // Simulated work: long enough for a human to send a duplicate meanwhile.
            tokio::time::sleep(work).await;
            let order = serde_json::json!({
                "id": format!("ord_{n:04}"),
                "item": input.get("item").cloned().unwrap_or(serde_json::Value::Null),
                "quantity": input.get("quantity").cloned().unwrap_or(serde_json::json!(1)),
                "idempotency_key": key,
            });
            if let Ok(mut s) = state.lock() {
                s.orders.push(order.clone());
            }
            reply(StatusCode::CREATED, order)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            serde_json::json!({ "error": "try POST /orders or GET /orders" }),
        ),
    }
}
