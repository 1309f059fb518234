//! `oncely-bench --cost`: what one request costs the gateway, measured the way an operator
//! comparing proxies would: an external load generator (`wrk`), an external upstream (nginx
//! answering a fixed 201), nginx as the reference reverse proxy in the same run, and for each
//! target the CPU time its own processes used per request (user + system, from
//! `/proc/PID/stat`), its peak resident memory and the latency percentiles.
//!
//! Without `wrk` or nginx installed, the built-in load generator and upstream stand in (they
//! run inside this process, so they share its CPU with nothing else measured), and the
//! output says so.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use oncely_testkit::CountingUpstream;

use crate::gateway::{
    bench_body, find_nginx, load, mib, ms, spawn_gateway_under, spawn_nginx_serving, BenchArgs,
    Load, Nginx, Stats,
};
use crate::process::{cpu_seconds, memory_of, reset_peak_rss};
use crate::profile::{Profile, Profiler};

/// The targets, in the order they are measured and printed.
const TARGETS: [&str; 8] = [
    "direct",
    "nginx",
    "hyper",
    "pass-through",
    "memory",
    "sqlite",
    "redis",
    "postgres",
];

/// One measured target at one concurrency.
struct Row {
    target: String,
    concurrency: usize,
    stats: Stats,
    /// CPU of the target's own processes per request served, in microseconds.
    cpu_us: f64,
    /// Whose CPU that is, when it is not the proxy's alone.
    cpu_note: &'static str,
    peak: Option<u64>,
}

/// How load is generated.
enum Loader {
    /// `wrk`, one thread: keys and the body come from a generated Lua script.
    Wrk(PathBuf),
    /// The benchmark's own closed-loop client.
    Builtin,
}

/// The upstream every target ends at.
enum Upstream {
    Nginx(Box<Nginx>, String),
    Builtin(CountingUpstream),
}

impl Upstream {
    fn url(&self) -> String {
        match self {
            Upstream::Nginx(_, url) => url.clone(),
            Upstream::Builtin(u) => u.url(),
        }
    }

    fn pids(&self) -> Vec<u32> {
        match self {
            Upstream::Nginx(n, _) => n.pids(),
            // In this process: its CPU is the upstream's (and the built-in loader's, if used).
            Upstream::Builtin(_) => vec![std::process::id()],
        }
    }
}

pub(crate) async fn run(args: &BenchArgs, oncely: &Path, tmp: &Path) -> Result<(), String> {
    let wanted = wanted_targets(args.targets.as_deref())?;
    if let Some(kind) = args
        .load
        .as_deref()
        .filter(|k| !matches!(*k, "wrk" | "builtin"))
    {
        return Err(format!("--load: `{kind}` is not wrk or builtin"));
    }
    let loader = match find_on_path("wrk", args.wrk.clone()) {
        Some(wrk) if args.load.as_deref() != Some("builtin") => Loader::Wrk(wrk),
        _ if args.load.as_deref() == Some("wrk") => {
            return Err("--load wrk: wrk is not installed (apt-get install -y wrk)".into())
        }
        _ => Loader::Builtin,
    };
    let nginx_bin = if args.no_nginx {
        None
    } else {
        find_nginx(args.nginx.clone())
    };
    let upstream = match (&nginx_bin, args.upstream.as_deref()) {
        (Some(bin), None | Some("nginx")) => {
            let (n, url) = spawn_nginx_serving(
                bin,
                &tmp.join("nginx-upstream"),
                "1",
                "default_type application/json;",
                r#"return 201 '{"id":"ord_1","status":"created"}';"#,
            )
            .await?;
            Upstream::Nginx(Box::new(n), url)
        }
        (None, Some("nginx")) => {
            return Err(
                "--upstream nginx: nginx is not installed (apt-get install -y nginx-light)".into(),
            )
        }
        (_, None | Some("builtin")) => Upstream::Builtin(CountingUpstream::start().await),
        (_, Some(other)) => return Err(format!("--upstream: `{other}` is not nginx or builtin")),
    };
    let profiler = args.profile.as_deref().map(Profiler::parse).transpose()?;
    let profile_dir = args.profile_dir.clone();
    if let Some(p) = profiler {
        p.check_installed()?;
        std::fs::create_dir_all(&profile_dir)
            .map_err(|e| format!("cannot create {}: {e}", profile_dir.display()))?;
        eprintln!(
            "profiling with {p:?}: the raw profiles go to {}",
            profile_dir.display()
        );
    }
    // One event loop per gateway under a profiler, so that its profile is one thread's.
    let gateway_flags: Vec<String> = match profiler {
        Some(_) => vec!["--workers".into(), "1".into()],
        None => Vec::new(),
    };
    let spawn = |target: &str, store: String| {
        let wrapper = profiler.map_or_else(Vec::new, |p| p.wrapper(&profile_dir, target));
        let upstream = upstream.url();
        let flags = gateway_flags.clone();
        async move { spawn_gateway_under(&wrapper, oncely, &upstream, &store, &flags).await }
    };
    let body = bench_body(args.body_bytes);
    let duration = Duration::from_secs(args.seconds.max(1));
    let mut concurrency = args.concurrency.clone();
    concurrency.sort_unstable_by(|a, b| b.cmp(a));
    eprintln!(
        "load: {} | upstream: {} | body {} bytes | {} s per target and concurrency",
        match &loader {
            Loader::Wrk(p) => format!("{} (1 thread)", p.display()),
            Loader::Builtin => "built-in client (in this process)".into(),
        },
        match &upstream {
            Upstream::Nginx(_, url) => format!("nginx, 1 worker, at {url}"),
            Upstream::Builtin(u) => format!("built-in, at {}", u.url()),
        },
        body.len(),
        duration.as_secs()
    );
    let bench = Bench {
        loader,
        body,
        duration,
        concurrency,
        dir: tmp.to_owned(),
        profiler,
        profiles: Mutex::new(Vec::new()),
        profile_dir: profile_dir.clone(),
    };

    let mut rows = Vec::new();
    for target in wanted {
        match target {
            "direct" => {
                let pids = upstream.pids();
                let note = match upstream {
                    Upstream::Nginx(..) => " (upstream)",
                    Upstream::Builtin(_) => " (upstream, in this process)",
                };
                rows.extend(
                    bench
                        .measure(
                            "upstream directly",
                            &upstream.url(),
                            &pids,
                            false,
                            note,
                            false,
                        )
                        .await,
                );
            }
            "nginx" => match &nginx_bin {
                Some(bin) => {
                    let (proxy, url) = spawn_nginx_serving(
                        bin,
                        &tmp.join("nginx-proxy"),
                        "auto",
                        &format!(
                            "upstream up {{ server {}; keepalive 256; }}",
                            upstream.url().trim_start_matches("http://")
                        ),
                        "proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection \"\";",
                    )
                    .await?;
                    rows.extend(
                        bench
                            .measure(
                                "nginx as a plain reverse proxy",
                                &url,
                                &proxy.pids(),
                                false,
                                "",
                                false,
                            )
                            .await,
                    );
                }
                None => eprintln!("skipped nginx: not installed (apt-get install -y nginx-light)"),
            },
            "hyper" => {
                let wrapper = profiler.map_or_else(Vec::new, |p| p.wrapper(&profile_dir, target));
                let (mut proxy, url) =
                    spawn_bare_proxy(&wrapper, &upstream.url(), profiler.is_some()).await?;
                let pids: Vec<u32> = proxy.id().into_iter().collect();
                rows.extend(
                    bench
                        .measure(
                            "bare hyper proxy, no oncely code",
                            &url,
                            &pids,
                            false,
                            "",
                            true,
                        )
                        .await,
                );
                let _ = proxy.kill().await;
            }
            "pass-through" | "memory" => {
                let keyed = target == "memory";
                let (mut gw, url) = spawn(target, "memory://".into()).await?;
                let pids: Vec<u32> = gw.id().into_iter().collect();
                let name = if keyed {
                    "keyed, memory:// store"
                } else {
                    "oncely serve, no key (pass-through)"
                };
                rows.extend(bench.measure(name, &url, &pids, keyed, "", true).await);
                let _ = gw.kill().await;
            }
            "sqlite" => {
                let store = format!("sqlite://{}", tmp.join("cost.db").display());
                let (mut gw, url) = spawn(target, store).await?;
                let pids: Vec<u32> = gw.id().into_iter().collect();
                rows.extend(
                    bench
                        .measure("keyed, SQLite", &url, &pids, true, "", true)
                        .await,
                );
                let _ = gw.kill().await;
            }
            "redis" | "postgres" => {
                let shared = SharedStore::for_target(target, args);
                match spawn(target, shared.url.clone()).await {
                    Ok((mut gw, url)) => {
                        let pids: Vec<u32> = gw.id().into_iter().collect();
                        let name = if target == "redis" {
                            "keyed, Redis"
                        } else {
                            "keyed, PostgreSQL"
                        };
                        rows.extend(
                            bench
                                .measure(name, &url, &pids, true, " (gateway side only)", true)
                                .await,
                        );
                        let _ = gw.kill().await;
                    }
                    Err(e) => eprintln!("skipped {target}: {e}"),
                }
                shared.drop_data().await;
            }
            _ => {}
        }
    }
    drop(upstream);
    print_tables(&rows, &bench);
    crate::profile::print(&bench.profiles.lock().unwrap_or_else(|e| e.into_inner()));
    Ok(())
}

/// This program again, as the bare hyper proxy of [`crate::bare`], in a process of its own
/// (under `wrapper`, a profiler's command line, when there is one; then with one event loop,
/// as the gateways get).
async fn spawn_bare_proxy(
    wrapper: &[std::ffi::OsString],
    upstream: &str,
    one_worker: bool,
) -> Result<(tokio::process::Child, String), String> {
    use tokio::io::AsyncBufReadExt as _;
    let me = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = tokio::process::Command::new(program);
            c.args(args).arg(me);
            c
        }
        None => tokio::process::Command::new(me),
    };
    if one_worker {
        command.args(["--bare-workers", "1"]);
    }
    let mut child = command
        .args(["--bare-proxy", upstream])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start the bare proxy: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout from the bare proxy")?;
    let line = tokio::time::timeout(
        Duration::from_secs(if wrapper.is_empty() { 10 } else { 120 }),
        tokio::io::BufReader::new(stdout).lines().next_line(),
    )
    .await
    .map_err(|_| "the bare proxy did not start in time".to_owned())?
    .map_err(|e| e.to_string())?
    .ok_or("the bare proxy exited before listening")?;
    let url = line
        .strip_prefix("listening on ")
        .ok_or(format!("unexpected bare proxy output: {line}"))?
        .to_owned();
    Ok((child, url))
}

/// What every measurement shares.
struct Bench {
    loader: Loader,
    body: String,
    duration: Duration,
    /// Highest first.
    concurrency: Vec<usize>,
    dir: PathBuf,
    profiler: Option<Profiler>,
    /// Target, concurrency and profile of each profiled measurement.
    profiles: Mutex<Vec<(String, usize, Profile)>>,
    /// Where the profilers write (kept after the run, for `callgrind_annotate`).
    profile_dir: PathBuf,
}

impl Bench {
    /// Loads `url` at every concurrency (after a one-second warm-up at that concurrency),
    /// charging the CPU and peak memory of `pids`, and profiling them if asked (a `wrapped`
    /// target was started under callgrind; strace attaches to anything).
    async fn measure(
        &self,
        name: &str,
        url: &str,
        pids: &[u32],
        keyed: bool,
        cpu_note: &'static str,
        wrapped: bool,
    ) -> Vec<Row> {
        let profiler = self.profiler.filter(|p| wrapped || p.profiles_references());
        let mut rows = Vec::new();
        for &c in &self.concurrency {
            eprintln!("running: {name}, c={c} ...");
            let tag = format!("{}-{c}", name.split_whitespace().last().unwrap_or("t"));
            if let (Some(p), Some(&pid)) = (profiler, pids.first()) {
                if let Err(e) = p.prepare(pid).await {
                    eprintln!("  {name}, c={c}: {e}");
                }
            }
            let _ = self
                .once(url, keyed, c, Duration::from_secs(1), &format!("w{tag}"))
                .await;
            for &pid in pids {
                reset_peak_rss(pid);
            }
            let session = match profiler {
                Some(p) => match p.start(pids, &self.profile_dir).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        eprintln!("  {name}, c={c}: {e}");
                        None
                    }
                },
                None => None,
            };
            let before = cpu_seconds(pids);
            let stats = match self
                .once(url, keyed, c, self.duration, &format!("m{tag}"))
                .await
            {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("  {name}, c={c}: {e}");
                    continue;
                }
            };
            let used = cpu_seconds(pids) - before;
            let served = (stats.rps * self.duration.as_secs_f64()).max(1.0);
            if let Some(session) = session {
                match session.finish(served, &self.profile_dir).await {
                    Ok(profile) => self
                        .profiles
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((name.to_owned(), c, profile)),
                    Err(e) => eprintln!("  {name}, c={c}: {e}"),
                }
            }
            let peak = pids
                .iter()
                .filter_map(|&p| memory_of(p))
                .map(|m| m.peak)
                .sum::<u64>();
            rows.push(Row {
                target: name.to_owned(),
                concurrency: c,
                stats,
                cpu_us: used * 1e6 / served,
                cpu_note,
                peak: (peak > 0).then_some(peak),
            });
        }
        rows
    }

    async fn once(
        &self,
        url: &str,
        keyed: bool,
        concurrency: usize,
        duration: Duration,
        tag: &str,
    ) -> Result<Stats, String> {
        match &self.loader {
            Loader::Builtin => Ok(load(
                url,
                &Load {
                    concurrency,
                    duplicate_share: 0.0,
                    keyed,
                    ordered: false,
                    duration,
                    max_requests: None,
                },
                &self.body,
                &format!("{tag}-{}", std::process::id()),
            )
            .await),
            Loader::Wrk(wrk) => {
                let script = self.dir.join(format!("{tag}.lua"));
                std::fs::write(&script, wrk_script(keyed, tag, &self.body))
                    .map_err(|e| format!("cannot write {}: {e}", script.display()))?;
                let out = tokio::process::Command::new(wrk)
                    .args(["-t1", &format!("-c{concurrency}")])
                    .arg(format!("-d{}s", duration.as_secs().max(1)))
                    .args(["--timeout", "10s", "-s"])
                    .arg(&script)
                    .arg(format!("{url}/orders"))
                    .output()
                    .await
                    .map_err(|e| format!("cannot run {}: {e}", wrk.display()))?;
                let text = String::from_utf8_lossy(&out.stdout);
                parse_wrk(&text).ok_or_else(|| {
                    format!(
                        "wrk gave no result: {}{}",
                        text.trim(),
                        String::from_utf8_lossy(&out.stderr).trim()
                    )
                })
            }
        }
    }
}

/// A wrk script: a POST of `body` to /orders, each with a fresh `Idempotency-Key` when
/// `keyed`, and one machine-readable result line at the end.
fn wrk_script(keyed: bool, tag: &str, body: &str) -> String {
    let run = format!("{tag}-{}", std::process::id());
    format!(
        r#"local n = 0
local keyed = {keyed}
local body = [==[{body}]==]
request = function()
  local headers = {{ ["Content-Type"] = "application/json" }}
  if keyed then
    n = n + 1
    headers["Idempotency-Key"] = "{run}-" .. n
  end
  return wrk.format("POST", nil, headers, body)
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("ONCELY-RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99),
    e.status + e.connect + e.read + e.write + e.timeout))
end
"#
    )
}

/// The result line of [`wrk_script`]: requests, duration (µs), p50 and p99 (µs), errors.
fn parse_wrk(out: &str) -> Option<Stats> {
    let line = out.lines().find_map(|l| l.strip_prefix("ONCELY-RESULT "))?;
    let n: Vec<f64> = line
        .split_whitespace()
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let [requests, duration_us, p50, p99, errors] = n[..] else {
        return None;
    };
    Some(Stats {
        rps: (requests - errors) / (duration_us / 1e6).max(1e-9),
        p50_us: p50 as u64,
        p99_us: p99 as u64,
        errors: errors as u64,
    })
}

/// A Redis key prefix or a PostgreSQL schema of this run's own, removed afterwards.
struct SharedStore {
    url: String,
    kind: &'static str,
    base: String,
    name: String,
}

impl SharedStore {
    fn for_target(target: &str, args: &BenchArgs) -> SharedStore {
        let env_or =
            |var: &str, default: &str| std::env::var(var).unwrap_or_else(|_| default.into());
        let name = format!("oncely_bench_cost_{}", std::process::id());
        let (kind, base, option) = if target == "redis" {
            let base = args
                .redis
                .clone()
                .unwrap_or_else(|| env_or("ONCELY_TEST_REDIS", "redis://127.0.0.1:6379/"));
            ("redis", base, "prefix")
        } else {
            let base = args.postgres.clone().unwrap_or_else(|| {
                env_or(
                    "ONCELY_TEST_POSTGRES",
                    "postgres://postgres@127.0.0.1:5432/postgres",
                )
            });
            ("postgres", base, "schema")
        };
        let sep = if base.contains('?') { '&' } else { '?' };
        SharedStore {
            url: format!("{base}{sep}{option}={name}"),
            kind,
            base,
            name,
        }
    }

    async fn drop_data(&self) {
        if self.kind == "redis" {
            crate::stores::drop_redis_prefix(&self.url, &self.name).await;
        } else {
            crate::stores::drop_postgres_schema(&self.base, &self.name).await;
        }
    }
}

fn wanted_targets(list: Option<&str>) -> Result<Vec<&'static str>, String> {
    let Some(list) = list else {
        return Ok(TARGETS.to_vec());
    };
    let asked: Vec<&str> = list.split(',').map(str::trim).collect();
    if let Some(bad) = asked.iter().find(|t| !TARGETS.contains(t)) {
        return Err(format!(
            "--targets: `{bad}` is not one of {}",
            TARGETS.join(", ")
        ));
    }
    Ok(TARGETS
        .iter()
        .copied()
        .filter(|t| asked.contains(t))
        .collect())
}

pub(crate) fn find_on_path(name: &str, explicit: Option<PathBuf>) -> Option<PathBuf> {
    if explicit.is_some() {
        return explicit;
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn print_tables(rows: &[Row], bench: &Bench) {
    for &c in &bench.concurrency {
        let at: Vec<&Row> = rows.iter().filter(|r| r.concurrency == c).collect();
        if at.is_empty() {
            continue;
        }
        let nginx = at
            .iter()
            .find(|r| r.target.starts_with("nginx"))
            .map(|r| r.stats.rps);
        let direct = at
            .iter()
            .find(|r| r.target.starts_with("upstream"))
            .map(|r| r.stats.p50_us);
        println!();
        println!("| target (c={c}) | req/s | vs nginx proxy | p50 | added p50 | p99 | CPU per request | peak RSS | errors |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        for r in at {
            let vs = match (nginx, r.target.starts_with("upstream")) {
                (_, true) | (None, _) => "-".to_owned(),
                (Some(n), false) => format!("{:.2}", r.stats.rps / n.max(1.0)),
            };
            let added = match (direct, r.target.starts_with("upstream")) {
                (Some(d), false) => format!("{} µs", r.stats.p50_us.saturating_sub(d)),
                _ => "-".to_owned(),
            };
            println!(
                "| {} | {:.0} | {vs} | {} | {added} | {} | {:.1} µs{} | {} | {} |",
                r.target,
                r.stats.rps,
                ms(r.stats.p50_us),
                ms(r.stats.p99_us),
                r.cpu_us,
                r.cpu_note,
                r.peak.map_or("-".to_owned(), mib),
                r.stats.errors
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_result_line_of_the_script() {
        let s = parse_wrk("Running 5s test\nONCELY-RESULT 1000 2000000 120 900 10\n").unwrap();
        assert_eq!((s.p50_us, s.p99_us, s.errors), (120, 900, 10));
        assert!((s.rps - 495.0).abs() < 1e-6, "{}", s.rps);
        assert!(parse_wrk("no result").is_none());
    }

    #[test]
    fn targets_are_checked_and_kept_in_order() {
        assert_eq!(
            wanted_targets(Some("sqlite,direct")).unwrap(),
            vec!["direct", "sqlite"]
        );
        assert!(wanted_targets(Some("mongo")).unwrap_err().contains("mongo"));
    }
}
