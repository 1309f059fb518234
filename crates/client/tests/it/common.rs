//! A real, scriptable, flaky HTTP/1.1 server on 127.0.0.1 for the client's tests.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What the server does with one request.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Answer with a status, headers and a body.
    Respond(u16, Vec<(&'static str, String)>, &'static str),
    /// Read the request, then close the connection without answering.
    Drop,
    /// Wait, then answer 200 (the client has usually timed out by then).
    Delay(Duration),
}

pub(crate) fn status(s: u16) -> Action {
    Action::Respond(s, vec![], "")
}

pub(crate) fn body(s: u16, body: &'static str) -> Action {
    Action::Respond(s, vec![], body)
}

/// A 409 problem+json answer whose `type` is `problem_type`.
pub(crate) fn conflict(problem_type: &str) -> Action {
    let body = format!(r#"{{"type":"{problem_type}","title":"conflict","status":409}}"#);
    Action::Respond(
        409,
        vec![("content-type", "application/problem+json".into())],
        Box::leak(body.into_boxed_str()),
    )
}

/// The gateway's own `request-in-progress` 409.
pub(crate) fn in_progress() -> Action {
    conflict(&oncely_core::ProblemKind::RequestInProgress.type_uri())
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(crate) struct Seen {
    /// Since the server started (monotonic).
    pub at: Duration,
    /// The wall-clock time it arrived.
    pub wall: SystemTime,
    pub key: Option<String>,
    pub content_type: Option<String>,
    pub body: Bytes,
}

/// A server following a script: the n-th request gets `script[n]`, and requests past its end get
/// the last action.
pub(crate) struct Flaky {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("dropped on purpose")
    }
}
impl std::error::Error for Dropped {}

impl Flaky {
    pub(crate) async fn start(script: Vec<Action>) -> Flaky {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(script);
        let start = Instant::now();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (seen, script) = (seen2.clone(), script.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (seen, script) = (seen.clone(), script.clone());
                        async move {
                            let (parts, incoming) = req.into_parts();
                            let body = incoming
                                .collect()
                                .await
                                .map(|c| c.to_bytes())
                                .unwrap_or_default();
                            let header = |n: &str| {
                                parts
                                    .headers
                                    .get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .map(str::to_owned)
                            };
                            let n = {
                                let mut seen = seen.lock().unwrap();
                                seen.push(Seen {
                                    at: start.elapsed(),
                                    wall: SystemTime::now(),
                                    key: header("idempotency-key"),
                                    content_type: header("content-type"),
                                    body,
                                });
                                seen.len() - 1
                            };
                            let action = script
                                .get(n)
                                .or(script.last())
                                .cloned()
                                .unwrap_or(Action::Drop);
                            match action {
                                Action::Respond(status, headers, body) => {
                                    let mut resp = hyper::Response::builder().status(status);
                                    for (k, v) in headers {
                                        resp = resp.header(k, v);
                                    }
                                    Ok(resp
                                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                                        .unwrap())
                                }
                                Action::Drop => Err(Dropped),
                                Action::Delay(d) => {
                                    tokio::time::sleep(d).await;
                                    Ok(hyper::Response::new(Full::new(Bytes::from_static(b"late"))))
                                }
                            }
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Flaky { addr, seen, task }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub(crate) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub(crate) fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Flaky {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address on which nothing listens: connections are refused.
pub(crate) async fn refused_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}
