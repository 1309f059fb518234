//! The nemesis's fault proxy: a TCP proxy put between the attack and the target, or between
//! the target and its upstream, that spoils some of the connections it carries. It works on
//! bytes, not on HTTP, so it serves any protocol and sees exactly what a broken network does.
//!
//! What it does to a connection it picks:
//! - `drop-response`: lets the request through and, once the first bytes of the answer come
//!   back (the far side has acted), resets the near side without passing them on;
//! - `reset`: passes the first bytes of the request on, then resets both sides at once;
//! - `delay`: holds the answer back for a while, then lets everything through;
//! - `black-hole`: takes the request and never answers, until its hold time ends.
//!
//! It is bounded: at most `max` faults in all, each at most `hold` long, and it listens on
//! loopback only (the nemesis attacks the user's own system, never a third party's path).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oncely_core::check::FaultKind;
use oncely_core::sync::LockIgnoringPoison;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// The faults a proxy may inject.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    /// The kinds to pick from (only the proxy's own: drop-response, reset, delay, black-hole).
    pub kinds: Vec<FaultKind>,
    /// The share of connections spoiled, from 0 to 1.
    pub rate: f64,
    /// At most this many faults in all.
    pub max: u64,
    /// How long a delay holds an answer, and how long a black hole keeps a connection.
    pub hold: Duration,
    /// The seed of the choices, for a run that can be repeated.
    pub seed: u64,
}

/// The kinds the proxy can inject.
pub const PROXY_FAULTS: [FaultKind; 4] = [
    FaultKind::DropResponse,
    FaultKind::Reset,
    FaultKind::Delay,
    FaultKind::BlackHole,
];

/// Told about each fault as the proxy injects it: its kind and which connection.
pub type OnFault = Arc<dyn Fn(FaultKind, String) + Send + Sync>;

struct Shared {
    to: String,
    plan: FaultPlan,
    rng: Mutex<StdRng>,
    injected: AtomicU64,
    on_fault: OnFault,
    /// The connections being carried, stopped with the proxy.
    links: Mutex<Vec<AbortHandle>>,
}

/// A running fault proxy; dropping it stops it.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl FaultProxy {
    /// Listens on `listen` (a loopback address) and forwards to `to` (`host:port`).
    pub async fn start(
        listen: SocketAddr,
        to: &str,
        plan: FaultPlan,
        on_fault: OnFault,
    ) -> Result<FaultProxy, String> {
        if !listen.ip().is_loopback() {
            return Err(format!(
                "the fault proxy listens on loopback only, not {listen}"
            ));
        }
        if let Some(k) = plan.kinds.iter().find(|k| !PROXY_FAULTS.contains(k)) {
            return Err(format!("the fault proxy cannot inject {}", k.as_str()));
        }
        if !(0.0..=1.0).contains(&plan.rate) {
            return Err(format!(
                "a fault rate is between 0 and 1, not {}",
                plan.rate
            ));
        }
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| format!("the fault proxy on {listen}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let shared = Arc::new(Shared {
            to: to.to_owned(),
            rng: Mutex::new(StdRng::seed_from_u64(plan.seed)),
            plan,
            injected: AtomicU64::new(0),
            on_fault,
            links: Mutex::default(),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            let mut n = 0u64;
            loop {
                let (client, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    // Out of descriptors, say: a pause, not the end of the proxy.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                n += 1;
                let fault = s.pick();
                let link = {
                    let s = s.clone();
                    tokio::spawn(async move {
                        let _ = client.set_nodelay(true);
                        carry(&s, client, fault, format!("connection {n} from {peer}")).await;
                    })
                };
                let mut links = s.links.lock_ignoring_poison();
                links.retain(|l| !l.is_finished());
                links.push(link.abort_handle());
            }
        });
        Ok(FaultProxy {
            addr,
            shared,
            accept: accept.abort_handle(),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Faults injected so far.
    pub fn injected(&self) -> u64 {
        self.shared.injected.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        for link in self.shared.links.lock_ignoring_poison().drain(..) {
            link.abort();
        }
    }
}

impl Shared {
    /// The fault meant for the next connection, if any, drawn at the plan's rate.
    fn pick(&self) -> Option<FaultKind> {
        if self.plan.kinds.is_empty() || self.injected.load(Ordering::SeqCst) >= self.plan.max {
            return None;
        }
        let mut rng = self.rng.lock_ignoring_poison();
        if !rng.random_bool(self.plan.rate) {
            return None;
        }
        Some(self.plan.kinds[rng.random_range(0..self.plan.kinds.len())])
    }

    /// Takes one fault from the plan's bound and records it; `false` once the bound is
    /// reached, and the connection is carried untouched. Counted when applied, not when
    /// picked: a connection that ends before its fault spends none.
    fn inject(&self, kind: FaultKind, detail: String) -> bool {
        let taken = self
            .injected
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.plan.max).then_some(n + 1)
            })
            .is_ok();
        if taken {
            (self.on_fault)(kind, detail);
        }
        taken
    }
}

/// Resets `stream`: the peer reads an error, not an orderly end.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn carry(s: &Shared, mut client: TcpStream, fault: Option<FaultKind>, who: String) {
    let hold = s.plan.hold;
    if fault == Some(FaultKind::BlackHole) && s.inject(FaultKind::BlackHole, who.clone()) {
        // Take whatever comes and say nothing, until the hold ends.
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(hold, async {
            while matches!(client.read(&mut sink).await, Ok(n) if n > 0) {}
            std::future::pending::<()>().await
        })
        .await;
        return;
    }
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&s.to));
    let Ok(Ok(mut server)) = connect.await else {
        // The far side is down: the near side sees what it would see without the proxy.
        reset(client);
        return;
    };
    let _ = server.set_nodelay(true);
    match fault {
        None | Some(FaultKind::BlackHole) => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
        Some(FaultKind::Reset) => {
            let mut buf = vec![0u8; 16 * 1024];
            let Ok(n @ 1..) = client.read(&mut buf).await else {
                return;
            };
            if server.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if s.inject(FaultKind::Reset, who) {
                reset(client);
                reset(server);
            } else {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        }
        Some(kind) => {
            // drop-response and delay both wait for the answer's first bytes, carrying the
            // request up meanwhile.
            let Some((answer, n)) = until_answer(&mut client, &mut server).await else {
                return;
            };
            let detail = if kind == FaultKind::Delay {
                format!("{who}: answer held {hold:?}")
            } else {
                who
            };
            let injected = s.inject(kind, detail);
            if injected && kind == FaultKind::DropResponse {
                reset(client);
                return;
            }
            if injected {
                tokio::time::sleep(hold).await;
            }
            if client.write_all(&answer[..n]).await.is_ok() {
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            }
        }
    }
}

/// Carries the request from `client` to `server` until the answer's first bytes arrive:
/// those bytes and their length, or `None` if either side went away first.
async fn until_answer(client: &mut TcpStream, server: &mut TcpStream) -> Option<(Vec<u8>, usize)> {
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    let mut client_open = true;
    loop {
        tokio::select! {
            r = client.read(&mut up), if client_open => match r {
                Ok(0) | Err(_) => {
                    client_open = false;
                    let _ = server.shutdown().await;
                }
                Ok(n) => server.write_all(&up[..n]).await.ok()?,
            },
            r = server.read(&mut down) => match r {
                Ok(n @ 1..) => return Some((down, n)),
                _ => return None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A server that reads one request line, counts it, and answers `pong`.
    async fn server() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::new(AtomicU64::new(0));
        let s = served.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    if matches!(c.read(&mut buf).await, Ok(n) if n > 0) {
                        s.fetch_add(1, Ordering::SeqCst);
                        let _ = c.write_all(b"pong").await;
                    }
                });
            }
        });
        (addr, served)
    }

    async fn proxy(
        to: SocketAddr,
        kinds: &[FaultKind],
        max: u64,
    ) -> (FaultProxy, Arc<Mutex<Vec<FaultKind>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let p = FaultProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            &to.to_string(),
            FaultPlan {
                kinds: kinds.to_vec(),
                rate: 1.0,
                max,
                hold: Duration::from_millis(300),
                seed: 1,
            },
            Arc::new(move |k, _| s.lock().unwrap().push(k)),
        )
        .await
        .unwrap();
        (p, seen)
    }

    /// One exchange through the proxy: what came back (an error as `Err`) and how long it took.
    async fn ping(addr: SocketAddr) -> (Result<Vec<u8>, std::io::ErrorKind>, Duration) {
        let started = Instant::now();
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"ping\n").await.unwrap();
        let mut answer = Vec::new();
        let got =
            match tokio::time::timeout(Duration::from_secs(2), c.read_to_end(&mut answer)).await {
                Ok(Ok(_)) => Ok(answer),
                Ok(Err(e)) => Err(e.kind()),
                Err(_) => Err(std::io::ErrorKind::TimedOut),
            };
        (got, started.elapsed())
    }

    #[tokio::test]
    async fn each_fault_does_what_it_says_and_no_more_than_its_bound() {
        let (to, served) = server().await;

        // drop-response: the server acted, the client reads a reset and no answer.
        let (p, seen) = proxy(to, &[FaultKind::DropResponse], 1).await;
        let (got, _) = ping(p.addr()).await;
        assert_eq!(got, Err(std::io::ErrorKind::ConnectionReset));
        assert_eq!(served.load(Ordering::SeqCst), 1, "the request got through");
        // Its bound reached, the next connection is carried untouched.
        assert_eq!(ping(p.addr()).await.0, Ok(b"pong".to_vec()));
        assert_eq!(*seen.lock().unwrap(), [FaultKind::DropResponse]);
        assert_eq!(p.injected(), 1);

        // delay: the answer arrives whole, after the hold.
        let (p, _) = proxy(to, &[FaultKind::Delay], 1).await;
        let (got, took) = ping(p.addr()).await;
        assert_eq!(got, Ok(b"pong".to_vec()));
        assert!(took >= Duration::from_millis(300), "{took:?}");

        // black-hole: nothing reaches the server, nothing comes back, then the close.
        let before = served.load(Ordering::SeqCst);
        let (p, _) = proxy(to, &[FaultKind::BlackHole], 1).await;
        let (got, took) = ping(p.addr()).await;
        assert_eq!(got, Ok(Vec::new()));
        assert!(took >= Duration::from_millis(300), "{took:?}");
        assert_eq!(served.load(Ordering::SeqCst), before);

        // reset: the client reads an error.
        let (p, _) = proxy(to, &[FaultKind::Reset], 1).await;
        let (got, _) = ping(p.addr()).await;
        assert!(got.is_err(), "{got:?}");
    }

    #[tokio::test]
    async fn it_listens_on_loopback_only_and_injects_only_its_own_faults() {
        let plan = |kinds: Vec<FaultKind>, rate| FaultPlan {
            kinds,
            rate,
            max: 1,
            hold: Duration::from_millis(10),
            seed: 1,
        };
        let quiet: OnFault = Arc::new(|_, _| {});
        let err = FaultProxy::start(
            "0.0.0.0:0".parse().unwrap(),
            "127.0.0.1:9",
            plan(vec![], 0.1),
            quiet.clone(),
        )
        .await
        .err()
        .unwrap();
        assert!(err.contains("loopback only"), "{err}");
        let err = FaultProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:9",
            plan(vec![FaultKind::Kill], 0.1),
            quiet.clone(),
        )
        .await
        .err()
        .unwrap();
        assert!(err.contains("cannot inject kill"), "{err}");
        let err = FaultProxy::start(
            "127.0.0.1:0".parse().unwrap(),
            "127.0.0.1:9",
            plan(vec![], 1.5),
            quiet,
        )
        .await
        .err()
        .unwrap();
        assert!(err.contains("between 0 and 1"), "{err}");
    }
}
