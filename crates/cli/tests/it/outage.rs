//! The store goes away under load and comes back: keyed requests get 503
//! `idempotency-store-unavailable` within a bounded time (never a hang), unkeyed requests
//! still pass, the gateway recovers by itself, and nothing completed before the outage is
//! lost.
//!
//! Each test runs its own real PostgreSQL or Redis server on a free port in a temporary
//! directory and stops it with a crash-like stop (`pg_ctl -m immediate`, SIGKILL), so the
//! machine's shared servers, which other tests use, are never touched. Without the server
//! binaries a test is skipped, or fails under `ONCELY_REQUIRE_SERVICES=1`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oncely_testkit::services::REQUIRE_VAR;
use oncely_testkit::{CountingUpstream, TestClient};

fn skip(test: &str, why: &str) -> bool {
    let msg = format!("{test}: {why}");
    if std::env::var(REQUIRE_VAR).is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("{msg} ({REQUIRE_VAR}=1 turns this skip into a failure)");
    }
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing
    // tests, and a skip must be seen.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!("SKIPPED {msg}\n").as_bytes(),
    );
    true
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?}: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn wait_until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < limit, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A private PostgreSQL cluster. PostgreSQL refuses to run as root, so as root its commands
/// run as the `postgres` user.
struct PrivatePostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    fn bin_dir() -> Option<PathBuf> {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("pg_ctl").is_file() && b.join("initdb").is_file())
            .collect();
        dirs.sort();
        dirs.pop()
    }

    fn command(&self, program: &str) -> Command {
        as_postgres(&self.bin.join(program))
    }

    fn start(bin: PathBuf) -> Result<PrivatePostgres, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        if crate::common::is_root() {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:")
                .arg(dir.path()))?;
        }
        let pg = PrivatePostgres {
            bin,
            dir,
            port: free_port(),
        };
        run(pg
            .command("initdb")
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "-D",
            ])
            .arg(pg.data()))?;
        pg.up()?;
        Ok(pg)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn up(&self) -> Result<(), String> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        run(self
            .command("pg_ctl")
            .args(["-w", "-t", "30", "-o", &opts, "-l"])
            .arg(self.dir.path().join("log"))
            .arg("-D")
            .arg(self.data())
            .arg("start")
            .stdout(Stdio::null()))
    }

    /// Like a crash: no checkpoint, connections cut.
    fn down(&self) -> Result<(), String> {
        run(self
            .command("pg_ctl")
            .args(["-w", "-m", "immediate", "-D"])
            .arg(self.data())
            .arg("stop")
            .stdout(Stdio::null()))
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.down();
    }
}

fn as_postgres(program: &Path) -> Command {
    if crate::common::is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A private Redis with the append-only file synced on every write, so that records survive
/// its restart. (Without persistence, a Redis restart forgets every record: a retry of a
/// completed request would execute again. That trade-off is documented with the store.)
struct PrivateRedis {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl PrivateRedis {
    fn start() -> Result<PrivateRedis, String> {
        let mut r = PrivateRedis {
            child: None,
            dir: tempfile::tempdir().map_err(|e| e.to_string())?,
            port: free_port(),
        };
        r.up()?;
        Ok(r)
    }

    fn up(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?;
        self.child = Some(child);
        let port = self.port.to_string();
        wait_until("redis-server answers", Duration::from_secs(10), || {
            Command::new("redis-cli")
                .args(["-p", &port, "ping"])
                .output()
                .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
        });
        Ok(())
    }

    fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.down();
    }
}

struct Gateway(Child, String);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn gateway(upstream: &str, store: &str, dir: &Path, extra_config: &str) -> Gateway {
    let config = dir.join("oncely.toml");
    // No replay cache: replays after the outage must come from the store itself.
    std::fs::write(
        &config,
        format!("[server]\nreplay_cache = \"0\"\n{extra_config}"),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_oncely"))
        .args(["--log-level", "error", "serve", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .args(["--upstream", upstream, "--store", store])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        // One error line per refused request is expected here; keep the test output readable.
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn oncely serve");
    let url = crate::common::listening_url(&mut child);
    Gateway(child, url)
}

/// One answer seen by the background load.
struct Seen {
    keyed: bool,
    status: Option<u16>,
    problem: Option<String>,
    started: Instant,
    ended: Instant,
}

/// How many keyed and unkeyed requests sent since `since` have been answered.
fn answered_since(seen: &[Seen], since: Instant) -> (usize, usize) {
    let (keyed, unkeyed): (Vec<&Seen>, Vec<&Seen>) = seen
        .iter()
        .filter(|s| s.started >= since)
        .partition(|s| s.keyed);
    (keyed.len(), unkeyed.len())
}

/// The whole scenario, with `stop` and `start` acting on the store's server.
async fn outage(store_url: &str, stop: impl FnOnce(), start: impl FnOnce()) {
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&upstream.url(), store_url, dir.path(), "");
    let orders = format!("{}/orders", gw.1);
    let client = TestClient::new();

    let mut before = Vec::new();
    for i in 0..3 {
        let (key, request) = (format!("before-{i}"), format!(r#"{{"n":{i}}}"#));
        let a = client
            .post_keyed(&orders, &key, &request, &[])
            .await
            .unwrap();
        assert_eq!(a.status, 201);
        before.push((key, request, a.body));
    }

    let running = Arc::new(AtomicBool::new(true));
    let seen = Arc::new(Mutex::new(Vec::<Seen>::new()));
    let mut load = Vec::new();
    for w in 0..4 {
        let (running, seen, client, orders) = (
            running.clone(),
            seen.clone(),
            client.clone(),
            orders.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut i = 0;
            while running.load(Ordering::SeqCst) {
                i += 1;
                let keyed = i % 2 == 0;
                let key = format!("load-{w}-{i}");
                let mut headers = vec![("content-type", "application/json")];
                if keyed {
                    headers.push(("idempotency-key", key.as_str()));
                }
                let started = Instant::now();
                let answer = tokio::time::timeout(
                    Duration::from_secs(10),
                    client.send("POST", &orders, &headers, r#"{"load":true}"#),
                )
                .await;
                let (status, problem) = match answer {
                    Ok(Ok(a)) => (Some(a.status), a.problem_type()),
                    _ => (None, None),
                };
                seen.lock().unwrap().push(Seen {
                    keyed,
                    status,
                    problem,
                    started,
                    ended: Instant::now(),
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_millis(500)).await;
    stop();
    let stopped = Instant::now();
    // The store stays down for at least 3 s and until the load has seen the outage from
    // both sides (a keyed request can take a whole store timeout to be refused, and a
    // loaded machine stretches that), but never longer than 20 s.
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let (keyed, unkeyed) = answered_since(&seen.lock().unwrap(), stopped);
        let enough = keyed >= 3 && unkeyed >= 3;
        if (enough && stopped.elapsed() >= Duration::from_secs(3))
            || stopped.elapsed() >= Duration::from_secs(20)
        {
            break;
        }
    }
    let restarting = Instant::now();
    start();
    let restarted = Instant::now();
    let recovered = loop {
        let a = client
            .post_keyed(
                &orders,
                &format!("probe-{}", restarted.elapsed().as_millis()),
                "{}",
                &[],
            )
            .await
            .unwrap();
        if a.status == 201 {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(15),
            "the gateway recovers by itself once the store is back (last answer {})",
            a.status
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let recovered_at = Instant::now();
    // The load goes on until one of its keyed requests sent after the recovery succeeded
    // (on a loaded machine its workers may still be finishing requests sent during the
    // outage), at most 10 s: the assertion below says whether one did.
    let load_back = Instant::now();
    while load_back.elapsed() < Duration::from_secs(10)
        && !seen
            .lock()
            .unwrap()
            .iter()
            .any(|s| s.keyed && s.started >= recovered_at && s.status == Some(201))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.store(false, Ordering::SeqCst);
    for l in load {
        l.await.unwrap();
    }

    let seen = std::mem::take(&mut *seen.lock().unwrap());
    // Every request sent while the store was down was answered within a bound: no hang.
    let sent_down: Vec<&Seen> = seen
        .iter()
        .filter(|s| s.started >= stopped && s.started < restarting)
        .collect();
    let slowest = sent_down
        .iter()
        .map(|s| s.ended - s.started)
        .max()
        .unwrap_or_default();
    assert!(
        slowest < Duration::from_secs(3),
        "answers within a bounded time, not a hang: slowest {slowest:?} over {} requests",
        sent_down.len()
    );
    // Those answered before the restart show the outage itself.
    let (keyed, unkeyed): (Vec<&Seen>, Vec<&Seen>) = sent_down
        .iter()
        .filter(|s| s.ended < restarting)
        .partition(|s| s.keyed);
    assert!(
        keyed.len() >= 3 && unkeyed.len() >= 3,
        "load ran during the outage: {} keyed, {} unkeyed answered",
        keyed.len(),
        unkeyed.len()
    );
    for s in &keyed {
        assert_eq!(
            s.status,
            Some(503),
            "keyed during the outage: {:?}",
            s.problem
        );
        assert!(
            s.problem
                .as_deref()
                .is_some_and(|t| t.ends_with("idempotency-store-unavailable")),
            "{:?}",
            s.problem
        );
    }
    for s in &unkeyed {
        assert_eq!(
            s.status,
            Some(201),
            "unkeyed requests pass during the outage"
        );
    }
    assert!(
        seen.iter()
            .any(|s| s.keyed && s.started >= recovered_at && s.status == Some(201)),
        "keyed load succeeds again after recovery"
    );
    eprintln!(
        "outage on {store_url}: {} keyed 503s, {} unkeyed passed, slowest answer {slowest:?}, recovered {recovered:?} after the restart",
        keyed.len(),
        unkeyed.len()
    );

    for (key, request, body) in &before {
        let again = client.post_keyed(&orders, key, request, &[]).await.unwrap();
        assert!(again.replayed(), "{key} survived the outage");
        assert_eq!(&again.body, body, "{key} replays byte for byte");
        assert_eq!(upstream.executions(key), 1, "{key} executed once");
    }
}

/// A private PostgreSQL for `test`, or None after saying why it is skipped.
fn private_postgres(test: &str) -> Option<PrivatePostgres> {
    let Some(bin) = PrivatePostgres::bin_dir() else {
        skip(
            test,
            "no PostgreSQL server binaries under /usr/lib/postgresql",
        );
        return None;
    };
    match PrivatePostgres::start(bin) {
        Ok(pg) => Some(pg),
        Err(e) => {
            skip(test, &format!("cannot start a private PostgreSQL: {e}"));
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_closed_and_recovers() {
    let test = "postgres_outage_fails_closed_and_recovers";
    let Some(pg) = private_postgres(test) else {
        return;
    };
    let url = format!("{}?timeout=1s", pg.url());
    outage(
        &url,
        || pg.down().expect("stop PostgreSQL"),
        || pg.up().expect("start PostgreSQL"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_fails_closed_and_recovers() {
    let test = "redis_outage_fails_closed_and_recovers";
    let installed = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    if !installed {
        skip(test, "redis-server is not installed");
        return;
    }
    let redis = Arc::new(Mutex::new(match PrivateRedis::start() {
        Ok(r) => r,
        Err(e) => {
            skip(test, &format!("cannot start a private Redis: {e}"));
            return;
        }
    }));
    let url = format!("{}?timeout=1s", redis.lock().unwrap().url());
    let (r1, r2) = (redis.clone(), redis.clone());
    outage(
        &url,
        move || r1.lock().unwrap().down(),
        move || r2.lock().unwrap().up().expect("start Redis"),
    )
    .await;
}

/// The audit trail's database goes away under keyed load: no request waits for it, the
/// events wait in the queue and reach the table once it is back; those a full queue could
/// not keep are counted in the trail itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_database_outage_never_blocks_requests() {
    let test = "audit_database_outage_never_blocks_requests";
    let Some(pg) = private_postgres(test) else {
        return;
    };
    let audit_db = format!("{}?timeout=1s&schema=audit", pg.url());
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("keys.db").display());
    let gw = gateway(
        &upstream.url(),
        &store,
        dir.path(),
        &format!("[audit]\nurl = \"{audit_db}\"\nchain = \"gw\"\nqueue = 20\n"),
    );
    let orders = format!("{}/orders", gw.1);
    let client = TestClient::new();
    let mut sent = 0;
    let mut send_keyed = |n: usize| {
        let keys: Vec<String> = (sent..sent + n).map(|i| format!("k-{i}")).collect();
        sent += n;
        let (client, orders) = (client.clone(), orders.clone());
        async move {
            let mut slowest = Duration::ZERO;
            for key in keys {
                let started = Instant::now();
                let a = client.post_keyed(&orders, &key, "{}", &[]).await.unwrap();
                assert_eq!(a.status, 201, "{key}");
                slowest = slowest.max(started.elapsed());
            }
            slowest
        }
    };
    send_keyed(5).await;
    pg.down().expect("stop PostgreSQL");
    // While the writer retries: answers as fast as ever, and a burst that overflows the
    // queue of 20.
    let slowest = send_keyed(60).await;
    // Waiting for the audit database would take its whole timeout (1 s) or longer.
    assert!(
        slowest < Duration::from_secs(1),
        "no request waits for the audit database: slowest {slowest:?}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pg.up().expect("start PostgreSQL");

    // Within the writer's longest backoff (5 s) and a bit, the queue reaches the table.
    let audit = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_oncely"))
            .args(["audit", "--db", &audit_db])
            .args(args)
            .output()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let (executed, dropped) = loop {
        let out = audit(&["list", "--json", "--limit", "1000"]);
        let events: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        let executed = events.iter().filter(|e| e["action"] == "executed").count() as u64;
        let dropped: u64 = events
            .iter()
            .filter(|e| e["action"] == "audit.events_dropped")
            .map(|e| e["new_value"].as_str().unwrap().parse::<u64>().unwrap())
            .sum();
        if executed + dropped == 65 {
            break (executed, dropped);
        }
        assert!(
            Instant::now() < deadline,
            "every answer is in the trail or counted as dropped: {executed} + {dropped}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(dropped > 0, "the burst overflowed the queue of 20");
    assert!(
        executed >= 25,
        "the 5 before and the queue's 20 were kept: {executed}"
    );
    let out = audit(&["verify"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("audit outage: {executed} events kept, {dropped} dropped and counted, slowest answer {slowest:?}");
    drop(gw);
}
