//! What the process tests share: the binary, a child that never outlives its test, and the
//! line `oncely serve` announces itself with.

// Each test file uses its own part of this module.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command};

pub fn oncely() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oncely"))
}

/// Kills the child when dropped, so a failing assertion never leaves a gateway running
/// (holding the test harness's stderr open).
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KillOnDrop {
    /// SIGTERM, then waits for a clean exit: what a service manager does.
    pub fn stop(mut self) {
        // SAFETY: signalling a child process we spawned and have not reaped yet.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let status = self.0.wait().expect("wait for the gateway");
        assert!(status.success(), "a stopped gateway exits 0: {status}");
    }
}

/// Reads the `listening on URL` line a starting `oncely serve` prints; returns the URL.
pub fn listening_url(child: &mut Child) -> String {
    let mut out = BufReader::new(child.stdout.take().expect("stdout piped"));
    announced(&mut out, "listening on ")
}

/// The `listening on URL` line and the `admin on URL` line after it: both URLs.
pub fn listening_and_admin_urls(child: &mut Child) -> (String, String) {
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
