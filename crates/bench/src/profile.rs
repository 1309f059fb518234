//! `oncely-bench --cost --profile callgrind|strace`: where a request's instructions,
//! allocations and system calls go, per target, with the same load, upstream and stores as
//! the cost table.
//!
//! - **callgrind** runs each gateway under `valgrind --tool=callgrind`. Instrumentation is
//!   switched on before the warm-up and the counters zeroed after it, so a profile holds only
//!   the measured requests. Instruction counts are repeatable to about 1 % on a noisy machine,
//!   which req/s never is. Allocations are the calls into glibc's `malloc`, `calloc` and
//!   `realloc` (the Rust allocator ends there).
//! - **strace** attaches `strace -c -f` to every thread of each target for the measured
//!   seconds only, the references (upstream, nginx) included, and counts system calls.
//!
//! The gateways run with `--workers 1` under either, so that one event loop is profiled.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use tokio::process::{Child, Command};

/// Which profiler, from `--profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profiler {
    Callgrind,
    Strace,
}

/// What one target's measured requests cost, divided by the requests served.
pub(crate) struct Profile {
    pub requests: f64,
    /// Guest instructions per request (callgrind).
    pub instructions: Option<f64>,
    /// `malloc`, `calloc` and `realloc` calls per request (callgrind).
    pub allocations: Option<f64>,
    /// The functions with the largest self cost: name and share of all instructions.
    pub top: Vec<(String, f64)>,
    /// System calls per request, most frequent first (strace).
    pub syscalls: Vec<(String, f64)>,
    /// The profiler's own output, kept.
    pub raw: PathBuf,
}

impl Profiler {
    pub(crate) fn parse(kind: &str) -> Result<Profiler, String> {
        match kind {
            "callgrind" => Ok(Profiler::Callgrind),
            "strace" => Ok(Profiler::Strace),
            other => Err(format!("--profile: `{other}` is not callgrind or strace")),
        }
    }

    /// Checks that the profiler's tools are installed, before anything is started.
    pub(crate) fn check_installed(self) -> Result<(), String> {
        let needed: &[&str] = match self {
            Profiler::Callgrind => &["valgrind", "callgrind_control"],
            Profiler::Strace => &["strace"],
        };
        for tool in needed {
            if crate::cost::find_on_path(tool, None).is_none() {
                let package = if *tool == "strace" {
                    "strace"
                } else {
                    "valgrind"
                };
                return Err(format!(
                    "--profile: {tool} is not installed (apt-get install -y {package})"
                ));
            }
        }
        Ok(())
    }

    /// Whether a target that is not a gateway (the upstream, nginx) can be profiled: strace
    /// attaches to any process, callgrind needs to start it.
    pub(crate) fn profiles_references(self) -> bool {
        self == Profiler::Strace
    }

    /// The command line in front of `oncely` that runs a gateway under this profiler.
    pub(crate) fn wrapper(self, dir: &Path, target: &str) -> Vec<OsString> {
        match self {
            Profiler::Callgrind => {
                let mut out = OsString::from("--callgrind-out-file=");
                // %p: the gateway's pid, so that no earlier run's dump is taken for this one's.
                out.push(dir.join(format!("callgrind.{target}.%p")));
                vec![
                    "valgrind".into(),
                    "--tool=callgrind".into(),
                    "--instr-atstart=no".into(),
                    out,
                ]
            }
            Profiler::Strace => Vec::new(),
        }
    }

    /// Before the warm-up: callgrind instruments from here on, so that the warm-up also warms
    /// its translation cache.
    pub(crate) async fn prepare(self, pid: u32) -> Result<(), String> {
        match self {
            Profiler::Callgrind => callgrind_control(&["-i", "on"], pid).await,
            Profiler::Strace => Ok(()),
        }
    }

    /// After the warm-up: counting starts now.
    pub(crate) async fn start(self, pids: &[u32], dir: &Path) -> Result<Session, String> {
        match self {
            Profiler::Callgrind => {
                let pid = *pids.first().ok_or("no gateway process to profile")?;
                callgrind_control(&["-z"], pid).await?;
                Ok(Session::Callgrind { pid })
            }
            Profiler::Strace => {
                let out = dir.join(format!("strace.{}", pids.first().copied().unwrap_or(0)));
                let mut cmd = Command::new("strace");
                cmd.args(["-c", "-f", "-o"]).arg(&out);
                for &pid in pids {
                    for tid in threads_of(pid) {
                        cmd.arg("-p").arg(tid.to_string());
                    }
                }
                let child = cmd
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("cannot run strace: {e}"))?;
                // strace needs a moment to attach to every thread before the load begins.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                Ok(Session::Strace(Box::new(StraceSession { child, out })))
            }
        }
    }
}

/// A profiler counting one target's measured requests.
pub(crate) enum Session {
    Callgrind { pid: u32 },
    // Boxed: a tokio Child is large and a session lives once per target.
    Strace(Box<StraceSession>),
}

pub(crate) struct StraceSession {
    child: Child,
    out: PathBuf,
}

impl Session {
    /// Stops counting and reads what was counted over `requests` requests.
    pub(crate) async fn finish(self, requests: f64, dir: &Path) -> Result<Profile, String> {
        let requests = requests.max(1.0);
        match self {
            Session::Callgrind { pid } => {
                let before = dumps(dir);
                callgrind_control(&["--dump=measured"], pid).await?;
                let _ = callgrind_control(&["-i", "off"], pid).await;
                let file = dumps(dir)
                    .into_iter()
                    .find(|f| !before.contains(f))
                    .ok_or("callgrind wrote no dump")?;
                let text = std::fs::read_to_string(&file)
                    .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
                let counts = CallgrindCounts::parse(&text);
                let total = counts.total.max(1) as f64;
                let mut top: Vec<(String, f64)> = counts
                    .self_cost
                    .into_iter()
                    .map(|(name, ir)| (name, ir as f64 / total))
                    .collect();
                top.sort_by(|a, b| b.1.total_cmp(&a.1));
                top.truncate(12);
                Ok(Profile {
                    requests,
                    instructions: Some(counts.total as f64 / requests),
                    allocations: Some(counts.allocations as f64 / requests),
                    top,
                    syscalls: Vec::new(),
                    raw: file,
                })
            }
            Session::Strace(session) => {
                let StraceSession { mut child, out } = *session;
                if let Some(pid) = child.id() {
                    // SIGINT makes strace detach and write its summary.
                    let _ = Command::new("kill")
                        .args(["-INT", &pid.to_string()])
                        .status()
                        .await;
                }
                let _ = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
                    .await
                    .map_err(|_| "strace did not stop within 10 s".to_owned())?;
                let text = std::fs::read_to_string(&out)
                    .map_err(|e| format!("strace wrote no summary to {}: {e}", out.display()))?;
                let mut syscalls: Vec<(String, f64)> = parse_strace_summary(&text)
                    .into_iter()
                    .map(|(name, calls)| (name, calls as f64 / requests))
                    .collect();
                syscalls.sort_by(|a, b| b.1.total_cmp(&a.1));
                Ok(Profile {
                    requests,
                    instructions: None,
                    allocations: None,
                    top: Vec::new(),
                    syscalls,
                    raw: out,
                })
            }
        }
    }
}

async fn callgrind_control(args: &[&str], pid: u32) -> Result<(), String> {
    let out = Command::new("callgrind_control")
        .args(args)
        .arg(pid.to_string())
        .output()
        .await
        .map_err(|e| format!("cannot run callgrind_control: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "callgrind_control {} {pid} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The callgrind dump files in `dir`.
fn dumps(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("callgrind."))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn threads_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_else(|_| vec![pid])
}

/// The glibc entry points every heap allocation goes through.
const ALLOCATORS: [&str; 6] = [
    "malloc",
    "calloc",
    "realloc",
    "__libc_malloc",
    "__libc_calloc",
    "__libc_realloc",
];

/// What a callgrind dump (format of callgrind 3.x, `events: Ir`) says.
#[derive(Debug, Default, PartialEq)]
struct CallgrindCounts {
    total: u64,
    /// Instructions spent in each function itself, calls excluded.
    self_cost: HashMap<String, u64>,
    /// Calls into [`ALLOCATORS`] from anything that is not one of them.
    allocations: u64,
}

impl CallgrindCounts {
    fn parse(text: &str) -> CallgrindCounts {
        let mut counts = CallgrindCounts::default();
        // Names are compressed: `(7) name` defines id 7, a later `(7)` refers to it.
        let mut names: HashMap<String, String> = HashMap::new();
        let mut resolve = |spec: &str| -> String {
            let spec = spec.trim();
            match spec.strip_prefix('(').and_then(|s| s.split_once(')')) {
                Some((id, rest)) => {
                    let rest = rest.trim();
                    if rest.is_empty() {
                        names.get(id).cloned().unwrap_or_default()
                    } else {
                        names.insert(id.to_owned(), rest.to_owned());
                        rest.to_owned()
                    }
                }
                None => spec.to_owned(),
            }
        };
        let mut current = String::new();
        let mut callee = String::new();
        // The cost line right after `calls=` is the call's inclusive cost, not self cost.
        let mut after_calls = false;
        for line in text.lines() {
            if let Some(spec) = line.strip_prefix("fn=") {
                current = resolve(spec);
            } else if let Some(spec) = line.strip_prefix("cfn=") {
                callee = resolve(spec);
            } else if let Some(rest) = line.strip_prefix("calls=") {
                if ALLOCATORS.contains(&callee.as_str()) && !ALLOCATORS.contains(&current.as_str())
                {
                    let n: u64 = rest
                        .split_whitespace()
                        .next()
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    counts.allocations += n;
                }
                after_calls = true;
            } else if let Some(total) = line
                .strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
            {
                counts.total = total.trim().parse().unwrap_or(counts.total);
            } else if line.starts_with(|c: char| c.is_ascii_digit() || "+-*".contains(c)) {
                if after_calls {
                    after_calls = false;
                    continue;
                }
                let ir: u64 = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0);
                *counts.self_cost.entry(current.clone()).or_default() += ir;
            }
        }
        counts
    }
}

/// `strace -c` summary rows: system call and number of calls (the `total` row left out).
fn parse_strace_summary(text: &str) -> Vec<(String, u64)> {
    text.lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let name = *fields.last()?;
            // Rows: % time, seconds, usecs/call, calls, [errors], syscall.
            if fields.len() < 5
                || name == "total"
                || !fields[0].starts_with(|c: char| c.is_ascii_digit())
            {
                return None;
            }
            Some((name.to_owned(), fields[3].parse().ok()?))
        })
        .collect()
}

/// Prints each target's profile after the cost tables.
pub(crate) fn print(profiles: &[(String, usize, Profile)]) {
    if profiles.is_empty() {
        return;
    }
    let callgrind = profiles.iter().any(|(_, _, p)| p.instructions.is_some());
    println!();
    if callgrind {
        println!("| target | concurrency | requests profiled | instructions per request | allocations per request |");
        println!("|---|---:|---:|---:|---:|");
        for (target, c, p) in profiles {
            println!(
                "| {target} | {c} | {:.0} | {:.1} k | {:.0} |",
                p.requests,
                p.instructions.unwrap_or(0.0) / 1e3,
                p.allocations.unwrap_or(0.0)
            );
        }
        for (target, c, p) in profiles {
            println!();
            println!(
                "{target}, c={c}: the functions with the most instructions of their own ({})",
                p.raw.display()
            );
            println!();
            println!("| share | function |");
            println!("|---:|---|");
            for (name, share) in &p.top {
                println!("| {:.1} % | `{}` |", share * 100.0, shorten(name));
            }
        }
    } else {
        println!("| target | concurrency | requests traced | system calls per request | the most frequent |");
        println!("|---|---:|---:|---:|---|");
        for (target, c, p) in profiles {
            let total: f64 = p.syscalls.iter().map(|(_, n)| n).sum();
            let most: Vec<String> = p
                .syscalls
                .iter()
                .take(4)
                .map(|(name, n)| format!("{name} {n:.2}"))
                .collect();
            println!(
                "| {target} | {c} | {:.0} | {total:.2} | {} |",
                p.requests,
                most.join(", ")
            );
        }
    }
}

/// A function name short enough for a table: generic arguments and long paths elided.
fn shorten(name: &str) -> String {
    let mut out = String::new();
    let mut depth = 0usize;
    for ch in name.chars() {
        match ch {
            '<' => {
                match depth {
                    0 => out.push('<'),
                    1 => out.push_str("<..>"),
                    _ => {}
                }
                depth += 1;
            }
            '>' => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    out.push('>');
                }
            }
            _ if depth <= 1 => out.push(ch),
            _ => {}
        }
    }
    if out.chars().count() > 110 {
        out = out.chars().take(107).collect::<String>() + "...";
    }
    out.replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "version: 1
creator: callgrind-3.19.0
events: Ir
fl=(1) ???
fn=(1) handle
16 100
+2 20
cfl=(2) malloc.c
cfn=(2) malloc
calls=3 0
16 300
cfn=(3) free
calls=3 0
* 90
fn=(2)
0 280
cfn=(4) __libc_malloc
calls=1 0
0 20
fn=(3)
0 90
totals: 490
";

    #[test]
    fn a_dump_gives_self_costs_and_allocations() {
        let counts = CallgrindCounts::parse(DUMP);
        assert_eq!(counts.total, 490);
        assert_eq!(counts.self_cost["handle"], 120);
        assert_eq!(counts.self_cost["malloc"], 280);
        assert_eq!(counts.self_cost["free"], 90);
        // malloc's own call into __libc_malloc is the same allocation, not a second one.
        assert_eq!(counts.allocations, 3);
    }

    #[test]
    fn the_strace_summary_gives_calls_per_system_call() {
        let text = "% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 56.38    0.012345          12      1000           recvfrom
 40.00    0.010000          10       998         2 writev
------ ----------- ----------- --------- --------- ----------------
100.00    0.022345                  1998         2 total
";
        assert_eq!(
            parse_strace_summary(text),
            vec![("recvfrom".to_owned(), 1000), ("writev".to_owned(), 998)]
        );
    }

    #[test]
    fn long_generic_names_are_shortened() {
        assert_eq!(
            shorten("<hyper::proto::h1::Conn<T, B> as Future>::poll"),
            "<hyper::proto::h1::Conn<..> as Future>::poll"
        );
    }
}
