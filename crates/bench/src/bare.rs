//! `oncely-bench --bare-proxy UPSTREAM`: the smallest reverse proxy that can be built on the
//! HTTP stack the gateway uses (hyper's HTTP/1 server, hyper-util's pooled client, one
//! current-thread tokio runtime per core accepting on a shared listener), with none of
//! oncely's code: no correlation ids, no tracing span, no engine, no header rewriting.
//!
//! `--cost` runs it as the target `hyper` (in a process of its own, so that its CPU is
//! counted alone). It is the floor the gateway's pass-through cost is measured against: what
//! the gateway spends above it is oncely's; what it spends below nginx is the stack's.

use std::convert::Infallible;

use http::{Request, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};

type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;

/// Runs the proxy until the process is killed. Prints `listening on http://ADDR` first, as
/// `oncely serve` does.
pub(crate) fn run(upstream: &str, workers: Option<usize>) -> Result<(), String> {
    let upstream: Uri = upstream
        .parse()
        .map_err(|e| format!("--bare-proxy: `{upstream}` is not a URL: {e}"))?;
    let authority = upstream
        .authority()
        .ok_or("--bare-proxy: the upstream URL has no host")?
        .clone();
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| format!("cannot listen: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot listen: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("cannot listen: {e}"))?;
    println!("listening on http://{addr}");
    let workers = workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let listener = listener.try_clone();
            let authority = authority.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let listener = listener.map_err(|e| e.to_string())?;
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(serve(listener, authority))
            })
        })
        .collect();
    for thread in threads {
        thread
            .join()
            .map_err(|_| "a proxy thread panicked".to_owned())??;
    }
    Ok(())
}

async fn serve(
    listener: std::net::TcpListener,
    authority: http::uri::Authority,
) -> Result<(), String> {
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|e| e.to_string())?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let client = client.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let client = client.clone();
                let authority = authority.clone();
                async move {
                    let (mut parts, body) = req.into_parts();
                    let mut uri = parts.uri.into_parts();
                    uri.scheme = Some(http::uri::Scheme::HTTP);
                    uri.authority = Some(authority);
                    parts.uri = Uri::from_parts(uri).unwrap_or_default();
                    let req = Request::from_parts(parts, body.boxed_unsync());
                    let resp = match client.request(req).await {
                        Ok(resp) => resp.map(|b| b.boxed_unsync()),
                        Err(_) => http::Response::builder()
                            .status(502)
                            .body(
                                http_body_util::Empty::new()
                                    .map_err(|never| match never {})
                                    .boxed_unsync(),
                            )
                            .unwrap_or_default(),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
