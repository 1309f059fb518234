//! What the process tests share: the binary, a child that never outlives its test, and the
//! line `oncely serve` announces itself with.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};

use oncely_testkit::services::{unique_name, Service};

pub(crate) fn oncely() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oncely"))
}

/// Runs `oncely` with `args` to its end: whether it succeeded, and its stdout and stderr.
pub(crate) fn oncely_output(args: &[&str]) -> (bool, String) {
    let out = oncely().args(args).output().expect("run oncely");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Kills the child when dropped, so a failing assertion never leaves a gateway running
/// (holding the test harness's stderr open).
pub(crate) struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KillOnDrop {
    /// SIGTERM, then waits for a clean exit: what a service manager does.
    pub(crate) fn stop(mut self) {
        signal(self.0.id(), libc::SIGTERM);
        let status = self.0.wait().expect("wait for the gateway");
        assert!(status.success(), "a stopped gateway exits 0: {status}");
    }
}

/// Sends `sig` to the process `pid` (a child of this test); kill(2)'s return value.
#[allow(unsafe_code)]
pub(crate) fn signal(pid: u32, sig: i32) -> i32 {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child's.
    unsafe { libc::kill(pid as i32, sig) }
}

/// Whether the tests run as root (root ignores file permissions).
#[allow(unsafe_code)]
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Starts `oncely serve` on the SQLite file `db` in front of `upstream`, with `config` if
/// given, and returns it with its base URL.
pub(crate) fn serve(
    upstream: &str,
    db: &std::path::Path,
    config: Option<&std::path::Path>,
) -> (Child, String) {
    let mut cmd = oncely();
    cmd.args(["--log-level", "warn", "serve", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--upstream", upstream])
        .arg("--store")
        .arg(format!("sqlite://{}", db.display()))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut child = cmd.spawn().expect("spawn oncely serve");
    let url = listening_url(&mut child);
    (child, url)
}

/// Reads the `listening on URL` line a starting `oncely serve` prints; returns the URL.
pub(crate) fn listening_url(child: &mut Child) -> String {
    let mut out = BufReader::new(child.stdout.take().expect("stdout piped"));
    announced(&mut out, "listening on ")
}

/// The `listening on URL` line and the `admin on URL` line after it: both URLs.
pub(crate) fn listening_and_admin_urls(child: &mut Child) -> (String, String) {
    let mut out = BufReader::new(child.stdout.take().expect("stdout piped"));
    let url = announced(&mut out, "listening on ");
    (url, announced(&mut out, "admin on "))
}

fn announced(out: &mut impl BufRead, prefix: &str) -> String {
    let mut line = String::new();
    out.read_line(&mut line)
        .expect("read a line of oncely serve");
    line.trim()
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("expected `{prefix}URL`, got {line:?}"))
        .to_owned()
}

/// A store URL for one test and what removes its data afterwards.
pub(crate) struct SharedStore {
    pub url: String,
    cleanup: Box<dyn FnOnce() + Send>,
}

impl Drop for SharedStore {
    fn drop(&mut self) {
        let cleanup = std::mem::replace(&mut self.cleanup, Box::new(|| {}));
        cleanup();
    }
}

pub(crate) fn postgres(test: &str) -> Option<SharedStore> {
    let base = Service::Postgres.available(test)?;
    let schema = unique_name("oncely_gw");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}schema={schema}");
    Some(SharedStore {
        url,
        cleanup: Box::new(move || {
            let _ = Command::new("psql")
                .args(["-q", &base, "-c"])
                .arg(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                .output();
        }),
    })
}

pub(crate) fn redis(test: &str) -> Option<SharedStore> {
    let base = Service::Redis.available(test)?;
    let prefix = unique_name("oncely_gw");
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}prefix={prefix}");
    // Records expire by themselves (PEXPIREAT); the longest TTL here is the default 24h, so
    // delete this test's keys rather than leave them for a day.
    Some(SharedStore {
        url,
        cleanup: Box::new(move || {
            let _ = Command::new("redis-cli")
                .args(["-u", &base, "--no-raw", "EVAL"])
                .arg(
                    "local n = 0 for _, k in ipairs(redis.call('KEYS', ARGV[1])) do \
                     redis.call('DEL', k) n = n + 1 end return n",
                )
                .args(["0", &format!("{prefix}:*")])
                .output();
        }),
    })
}
