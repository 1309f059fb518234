//! A fault-injecting TCP proxy: tests put it between a client and a real server (a broker, a
//! database) and cut the connection whenever they choose, instead of stopping the machine's
//! shared service.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use oncely_core::sync::LockIgnoringPoison;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

struct Shared {
    upstream: SocketAddr,
    down: AtomicBool,
    links: Mutex<Vec<AbortHandle>>,
    accepted: AtomicU64,
}

/// A proxy on 127.0.0.1 with an ephemeral port, forwarding to one upstream address.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: AbortHandle,
}

impl FaultProxy {
    /// Starts forwarding to `upstream`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            upstream,
            down: AtomicBool::new(false),
            links: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
        });
        let s = shared.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                // `down` is read and the link registered under the one lock `cut` drains,
                // so no connection slips through a cut.
                let mut links = s.links.lock_ignoring_poison();
                if s.down.load(Ordering::SeqCst) {
                    // Refused: the connection closes at once, as to a server that is away.
                    drop(client);
                    continue;
                }
                s.accepted.fetch_add(1, Ordering::Relaxed);
                let upstream = s.upstream;
                let link = tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let mut client = client;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
                links.retain(|l| !l.is_finished());
                links.push(link.abort_handle());
            }
        });
        FaultProxy {
            addr,
            shared,
            accept: accept.abort_handle(),
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Drops every open connection and refuses new ones until [`FaultProxy::restore`]:
    /// bytes in flight are lost, as when a network path breaks.
    pub fn cut(&self) {
        let mut links = self.shared.links.lock_ignoring_poison();
        self.shared.down.store(true, Ordering::SeqCst);
        for link in links.drain(..) {
            link.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.shared.down.store(false, Ordering::SeqCst);
    }

    /// Connections accepted so far (a reconnect shows as one more).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
