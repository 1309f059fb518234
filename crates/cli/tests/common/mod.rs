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
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout piped"))
        .read_line(&mut line)
        .expect("read the listening line");
    line.trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("unexpected output: {line:?}"))
        .to_owned()
}
