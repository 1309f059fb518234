//! The plan of an attack and its run: the workloads, one per key; every reference retried
//! until it settles; the nemesis acting meanwhile; the history written as it goes.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use oncely_core::check::history::{line, Event};
use oncely_core::check::{check, Fault, FaultKind, Operation, Outcome, Verdict};
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::{Clock, SystemClock};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use sha2::Digest as _;

use crate::effects::{find_reference, Effects};

/// What one key is put through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// The same key and body, again and again.
    Sequential,
    /// Many copies of one key at once.
    Concurrent,
    /// The same key with another body.
    OtherBody,
    /// One key string sent as each tenant.
    Tenants,
    /// The same JSON with its members reordered and its numbers respelled.
    Respelled,
    /// The body with a `Content-Length`, then the same body chunked.
    Chunked,
    /// A first attempt given up after a short timeout, then the retries.
    Timeout,
}

impl Workload {
    /// Every workload, in the order keys get them.
    pub const ALL: [Workload; 7] = [
        Workload::Sequential,
        Workload::Concurrent,
        Workload::OtherBody,
        Workload::Tenants,
        Workload::Respelled,
        Workload::Chunked,
        Workload::Timeout,
    ];

    /// Its name on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Workload::Sequential => "sequential",
            Workload::Concurrent => "concurrent",
            Workload::OtherBody => "other-body",
            Workload::Tenants => "tenants",
            Workload::Respelled => "respelled",
            Workload::Chunked => "chunked",
            Workload::Timeout => "timeout",
        }
    }

    /// The workload named `name`.
    pub fn parse(name: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.as_str() == name)
    }
}

/// Commands that take the system under test (or its store) down and bring it back.
#[derive(Debug, Clone, Default)]
pub struct Nemesis {
    /// Kills the system under test, and starts it again (`sh -c`).
    pub kill: Option<(String, String)>,
    /// Stops its store, and starts it again.
    pub store: Option<(String, String)>,
    /// The pause before each act.
    pub every: Duration,
    /// How long the system (or its store) stays down.
    pub down_for: Duration,
    /// Acts in all.
    pub max: usize,
}

/// What to attack, and how hard.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The target's base URL (`http://127.0.0.1:8080`).
    pub target: String,
    /// The method of the operation under test (usually POST).
    pub method: http::Method,
    /// Its path (`/payments`).
    pub path: String,
    /// The JSON body, with `{reference}` (unique per key and request: what effects are
    /// counted by) and optionally `{amount}`.
    pub body: String,
    /// Headers sent with every request (credentials, say).
    pub headers: Vec<(String, String)>,
    /// The header that names the tenant, and the tenants to send one key string as.
    pub tenants: Option<(String, Vec<String>)>,
    /// Keys to attack; each gets one of the workloads.
    pub keys: usize,
    /// The workloads to use.
    pub workloads: Vec<Workload>,
    /// Draw each key's workload at random (from `seed`) instead of in turn.
    pub mix: bool,
    /// The seed of every random choice (workloads, amounts, faults): the same seed repeats
    /// the same attack, under fresh keys.
    pub seed: u64,
    /// Keys attacked at once.
    pub parallel: usize,
    /// Requests per key in the sequential workload.
    pub repeats: usize,
    /// Copies sent at once in the concurrent workload.
    pub concurrency: usize,
    /// The bound on one request; past it the operation is indeterminate.
    pub timeout: Duration,
    /// The timeout workload's first attempt gives up after this.
    pub short_timeout: Duration,
    /// How long a reference is retried until it settles.
    pub settle: Duration,
    /// The nemesis's commands.
    pub nemesis: Nemesis,
    /// One connection per request (a fault proxy sits in front of the target).
    pub fresh_connections: bool,
    /// The `Host` header to send, when the target URL is a proxy's in front of it.
    pub host: Option<String>,
}

/// Why an attack could not be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// The plan cannot work.
    #[error("{0}")]
    Invalid(String),
    /// The history file could not be written.
    #[error("the history file: {0}")]
    History(String),
    /// The effects could not be counted.
    #[error("counting effects: {0}")]
    Effects(String),
    /// No request succeeded, so whatever the properties say proves nothing.
    #[error("no request succeeded ({0}): the attack proves nothing; check --target, --path, --header and --body")]
    NothingSucceeded(String),
}

/// What a run found.
#[derive(Debug, Clone)]
pub struct Found {
    /// Every operation sent.
    pub operations: Vec<Operation>,
    /// What the nemesis did.
    pub faults: Vec<Fault>,
    /// The effects per reference.
    pub effects: BTreeMap<String, u64>,
    /// The verdict.
    pub verdict: Verdict,
    /// The nemesis's commands that failed (the run's conclusions are in doubt).
    pub nemesis_failed: Vec<String>,
}

/// How `operations` were answered: the count per status or reason, most common first.
fn answers(operations: &[Operation]) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for o in operations {
        let what = match &o.outcome {
            Outcome::Success { status, .. } | Outcome::Failure { status } => status.to_string(),
            Outcome::Indeterminate { reason } => reason.clone(),
        };
        *counts.entry(what).or_default() += 1;
    }
    let mut counts: Vec<_> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
        .into_iter()
        .map(|(what, n)| format!("{n}x {what}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The history as it is written: operations and faults, to the file (if any) and in memory.
pub struct Journal {
    file: Mutex<Option<std::fs::File>>,
    failed: Mutex<Option<String>>,
    faults: Mutex<Vec<Fault>>,
}

impl Journal {
    /// A journal writing to `file`, if given.
    pub fn new(file: Option<std::fs::File>) -> Journal {
        Journal {
            file: Mutex::new(file),
            failed: Mutex::default(),
            faults: Mutex::default(),
        }
    }

    /// Whether a fault of one of `kinds` began between `from` and `to` (ms).
    pub fn any_fault_between(&self, from: i64, to: i64, kinds: &[FaultKind]) -> bool {
        self.faults
            .lock_ignoring_poison()
            .iter()
            .any(|f| f.at >= from && f.at <= to && kinds.contains(&f.kind))
    }

    fn write(&self, event: &Event) -> Result<(), CheckError> {
        if let Some(f) = self.file.lock_ignoring_poison().as_mut() {
            writeln!(f, "{}", line(event)).map_err(|e| CheckError::History(e.to_string()))?;
        }
        Ok(())
    }

    /// Records an act of the nemesis, now.
    pub fn fault(&self, kind: FaultKind, detail: String) {
        self.fault_at(SystemClock.now().as_millis(), kind, detail);
    }

    /// Records an act of the nemesis that began at `at`.
    pub fn fault_at(&self, at: i64, kind: FaultKind, detail: String) {
        let fault = Fault { at, kind, detail };
        if let Err(e) = self.write(&Event::Nemesis(fault.clone())) {
            // Seen by the run at its next write, which fails with it.
            *self.failed.lock_ignoring_poison() = Some(e.to_string());
        }
        self.faults.lock_ignoring_poison().push(fault);
    }
}

/// How one request's body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    Respelled,
    Chunked,
    Short,
}

/// One request: who sends it, under which key and tenant, for which reference.
#[derive(Debug, Clone)]
struct Request {
    process: u32,
    key: String,
    tenant: Option<String>,
    reference: String,
    amount: u64,
}

impl Request {
    fn as_process(&self, process: u32) -> Request {
        Request {
            process,
            ..self.clone()
        }
    }
}

struct Attack {
    plan: Plan,
    http: reqwest::Client,
    next: AtomicU64,
    journal: Arc<Journal>,
    operations: Mutex<Vec<Operation>>,
}

fn hash(bytes: &[u8]) -> String {
    let d = sha2::Sha256::digest(bytes);
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// `value` written with its members in another order, spaces around every token and whole
/// numbers spelled as decimals (`100` as `100.0`): the same JSON to any parser that reads
/// it as JSON, different bytes to one that compares bytes.
fn respell(value: &serde_json::Value, reverse: bool, out: &mut String) {
    use serde_json::Value;
    match value {
        Value::Object(members) => {
            out.push_str("{ ");
            let mut members: Vec<_> = members.iter().collect();
            if reverse {
                members.reverse();
            }
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(" , ");
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(" : ");
                respell(v, reverse, out);
            }
            out.push_str(" }");
        }
        Value::Array(items) => {
            out.push_str("[ ");
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(" , ");
                }
                respell(v, reverse, out);
            }
            out.push_str(" ]");
        }
        Value::Number(n) if n.is_i64() || n.is_u64() => out.push_str(&format!("{n}.0")),
        other => out.push_str(&other.to_string()),
    }
}

/// The respelled form of the JSON document `plain`, with its top-level members in an order
/// other than the one `plain` has; `None` if it is not a JSON object.
fn respelled(plain: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(plain).ok()?;
    let members = value.as_object()?;
    // The parsed members come sorted; reverse them unless `plain` already had them in
    // reverse, so that the order always changes.
    let positions: Vec<usize> = members
        .keys()
        .filter_map(|k| plain.find(&serde_json::Value::String(k.clone()).to_string()))
        .collect();
    let plain_is_reverse_sorted = positions.windows(2).all(|w| w[0] > w[1]);
    let mut out = String::new();
    respell(&value, !plain_is_reverse_sorted, &mut out);
    Some(out)
}

impl Attack {
    /// Key `i`'s workload and amount: in turn, or drawn from the seed and `i` alone, so
    /// that a run repeats whatever order its runners take the keys in.
    fn assignment(&self, i: usize) -> (Workload, u64) {
        let p = &self.plan;
        let mut rng =
            StdRng::seed_from_u64(p.seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let w = if p.mix {
            p.workloads[rng.random_range(0..p.workloads.len())]
        } else {
            p.workloads[i % p.workloads.len()]
        };
        (w, rng.random_range(100..100_000))
    }

    fn body(&self, r: &Request) -> String {
        self.plan
            .body
            .replace("{reference}", &r.reference)
            .replace("{amount}", &r.amount.to_string())
    }

    /// Sends one request and records it.
    async fn send(&self, r: &Request, style: Style) -> Result<Outcome, CheckError> {
        if let Some(e) = self.journal.failed.lock_ignoring_poison().take() {
            return Err(CheckError::History(e));
        }
        let p = &self.plan;
        let plain = self.body(r);
        let body = match style {
            Style::Respelled => respelled(&plain).unwrap_or_else(|| plain.clone()),
            _ => plain,
        };
        // Bodies that mean the same JSON are the same request: their answers must agree.
        let request = hash(
            &oncely_core::jcs::canonicalize(body.as_bytes()).unwrap_or_else(|| body.clone().into()),
        );
        let id = self.next.fetch_add(1, Ordering::SeqCst);
        let invoked_at = SystemClock.now().as_millis();
        let tenant = r.tenant.clone().unwrap_or_default();
        self.journal.write(&Event::Invoke {
            op: id,
            process: r.process,
            key: r.key.clone(),
            tenant: tenant.clone(),
            reference: r.reference.clone(),
            request: request.clone(),
            at: invoked_at,
        })?;
        let timeout = if style == Style::Short {
            p.short_timeout
        } else {
            p.timeout
        };
        let mut req = self
            .http
            .request(
                p.method.clone(),
                format!("{}{}", p.target.trim_end_matches('/'), p.path),
            )
            .timeout(timeout)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", &r.key);
        if let Some(host) = &p.host {
            req = req.header(http::header::HOST, host);
        }
        for (name, value) in &p.headers {
            req = req.header(name, value);
        }
        if let (Some((header, _)), Some(t)) = (&p.tenants, &r.tenant) {
            req = req.header(header, t);
        }
        let req = if style == Style::Chunked {
            // A stream of unknown length goes out with `Transfer-Encoding: chunked`.
            let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = body
                .into_bytes()
                .chunks(7)
                .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
                .collect();
            req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                chunks,
            )))
        } else {
            req.body(body)
        };
        let (outcome, echoed) = match req.send().await {
            Ok(answer) => {
                let status = answer.status().as_u16();
                match answer.bytes().await {
                    Ok(bytes) => {
                        let mut seen = status.to_be_bytes().to_vec();
                        seen.extend_from_slice(&bytes);
                        let echoed = find_reference(&String::from_utf8_lossy(&bytes));
                        (Outcome::of_status(status, hash(&seen)), echoed)
                    }
                    Err(e) => (
                        Outcome::Indeterminate {
                            reason: format!("the body was cut: {e}"),
                        },
                        None,
                    ),
                }
            }
            Err(e) if e.is_timeout() => (
                Outcome::Indeterminate {
                    reason: "timeout".into(),
                },
                None,
            ),
            Err(e) => (
                Outcome::Indeterminate {
                    reason: format!("no answer: {}", oncely_db::describe(&e)),
                },
                None,
            ),
        };
        let completed_at = SystemClock.now().as_millis();
        self.journal.write(&Event::Complete {
            op: id,
            at: completed_at,
            outcome: outcome.clone(),
            echoed: echoed.clone(),
        })?;
        self.operations.lock_ignoring_poison().push(Operation {
            id,
            process: r.process,
            key: r.key.clone(),
            tenant,
            reference: r.reference.clone(),
            request,
            invoked_at,
            completed_at,
            outcome: outcome.clone(),
            echoed,
        });
        Ok(outcome)
    }

    /// Sends `r` until it settles (a success or a definite failure), as a client that must
    /// learn the truth would, for at most the plan's settle time.
    async fn settle(&self, r: &Request, style: Style) -> Result<(), CheckError> {
        self.send_until(r, style, Outcome::is_settled).await
    }

    /// Sends `r` until `enough` says its answer will do, for at most the settle time.
    async fn send_until(
        &self,
        r: &Request,
        style: Style,
        enough: fn(&Outcome) -> bool,
    ) -> Result<(), CheckError> {
        let deadline = Instant::now() + self.plan.settle;
        let mut pause = Duration::from_millis(50);
        loop {
            let outcome = self.send(r, style).await?;
            let left = deadline.saturating_duration_since(Instant::now());
            if enough(&outcome) || left.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(pause.min(left)).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// Puts key `i` through `workload`, as runner `runner`; the references it used.
    async fn attack_key(
        self: &Arc<Self>,
        run_id: &str,
        runner: u32,
        i: usize,
        workload: Workload,
        amount: u64,
    ) -> Result<Vec<String>, CheckError> {
        let p = &self.plan;
        let reference = |variant: &str| format!("chk_{run_id}_{i}_{variant}");
        let base = Request {
            process: runner,
            key: format!("chk-{run_id}-{i}"),
            tenant: None,
            reference: reference("a"),
            amount,
        };
        let mut used = vec![base.reference.clone()];
        match workload {
            Workload::Sequential => {
                for _ in 1..p.repeats {
                    self.send(&base, Style::Plain).await?;
                }
                self.settle(&base, Style::Plain).await?;
            }
            Workload::Concurrent => {
                // Each copy is a client process of its own: a lane in the timeline.
                let first = (p.parallel + runner as usize * p.concurrency) as u32;
                let mut copies = tokio::task::JoinSet::new();
                for c in 0..p.concurrency {
                    let (me, r) = (self.clone(), base.as_process(first + c as u32));
                    copies.spawn(async move { me.send(&r, Style::Plain).await });
                }
                while let Some(copy) = copies.join_next().await {
                    copy.map_err(|e| CheckError::Invalid(e.to_string()))??;
                }
                self.settle(&base, Style::Plain).await?;
            }
            Workload::OtherBody => {
                self.settle(&base, Style::Plain).await?;
                let other = Request {
                    reference: reference("b"),
                    amount: amount + 1,
                    ..base.clone()
                };
                used.push(other.reference.clone());
                // Any refusal will do: 422 is the rule, but some APIs answer a reused key
                // with 409, which a retry would only get again.
                self.send_until(&other, Style::Plain, |o| {
                    o.is_settled() || matches!(o, Outcome::Failure { .. })
                })
                .await?;
            }
            Workload::Tenants => match &p.tenants {
                Some((_, tenants)) => {
                    used.clear();
                    for (j, t) in tenants.iter().enumerate() {
                        let as_tenant = Request {
                            tenant: Some(t.clone()),
                            reference: reference(&format!("t{j}")),
                            ..base.clone()
                        };
                        used.push(as_tenant.reference.clone());
                        self.settle(&as_tenant, Style::Plain).await?;
                    }
                }
                None => self.settle(&base, Style::Plain).await?,
            },
            Workload::Respelled => {
                self.settle(&base, Style::Plain).await?;
                self.settle(&base, Style::Respelled).await?;
            }
            Workload::Chunked => {
                self.settle(&base, Style::Plain).await?;
                self.settle(&base, Style::Chunked).await?;
            }
            Workload::Timeout => {
                // `_slow`: a recording upstream takes its time over these.
                let slow = Request {
                    reference: reference("slow"),
                    ..base
                };
                used = vec![slow.reference.clone()];
                self.send(&slow, Style::Short).await?;
                self.settle(&slow, Style::Plain).await?;
            }
        }
        Ok(used)
    }
}

/// The longest a nemesis command may take: one that runs a server in the foreground
/// (without `&`) would otherwise hold the attack for ever.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs a shell command of the nemesis: `Ok` with the command, or why it failed.
async fn shell(command: &str) -> Result<String, String> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .status();
    match tokio::time::timeout(COMMAND_TIMEOUT, status).await {
        Ok(Ok(s)) if s.success() => Ok(command.to_owned()),
        Ok(Ok(s)) => Err(format!("`{command}` failed: {s}")),
        Ok(Err(e)) => Err(format!("`{command}` did not run: {e}")),
        Err(_) => Err(format!(
            "`{command}` still ran after {COMMAND_TIMEOUT:?} (a server started without `&`?)"
        )),
    }
}

/// The nemesis's commands, act after act, until `done` or its bound; whatever it took down
/// is brought back before it returns. The commands that failed.
async fn haunt(nemesis: Nemesis, journal: Arc<Journal>, done: Arc<AtomicBool>) -> Vec<String> {
    let mut failed = Vec::new();
    let mut acts: Vec<(FaultKind, &str, FaultKind, &str)> = Vec::new();
    if let Some((kill, start)) = &nemesis.kill {
        acts.push((FaultKind::Kill, kill, FaultKind::Start, start));
    }
    if let Some((stop, start)) = &nemesis.store {
        acts.push((FaultKind::StoreStop, stop, FaultKind::StoreStart, start));
    }
    let wait = |d: Duration| {
        let done = done.clone();
        async move {
            let until = Instant::now() + d;
            while Instant::now() < until && !done.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    if acts.is_empty() {
        return failed;
    }
    for n in 0..nemesis.max {
        wait(nemesis.every).await;
        if done.load(Ordering::SeqCst) {
            break;
        }
        let (down, take_down, up, bring_up) = acts[n % acts.len()];
        // Timed from when the command starts: a slow kill is downtime too.
        for (kind, command) in [(down, take_down), (up, bring_up)] {
            let at = SystemClock.now().as_millis();
            let detail = shell(command).await.unwrap_or_else(|e| {
                failed.push(e.clone());
                e
            });
            journal.fault_at(at, kind, detail);
            if kind == down {
                // Stays down for its time even when the attack is over: a restart is
                // what is timed.
                tokio::time::sleep(nemesis.down_for).await;
            }
        }
    }
    failed
}

/// Runs `plan`, recording into `journal`, and counts `effects`.
pub async fn run(
    plan: Plan,
    effects: &dyn Effects,
    journal: Arc<Journal>,
) -> Result<Found, CheckError> {
    if !plan.body.contains("{reference}") {
        return Err(CheckError::Invalid(
            "the body must carry {reference}: effects are counted by it".into(),
        ));
    }
    if plan.keys == 0 || plan.repeats == 0 || plan.concurrency == 0 || plan.parallel == 0 {
        return Err(CheckError::Invalid(
            "--keys, --repeats, --concurrency and --parallel must be at least 1".into(),
        ));
    }
    if plan.workloads.is_empty() {
        return Err(CheckError::Invalid("no workload to run".into()));
    }
    if plan.workloads.contains(&Workload::Tenants) && plan.tenants.is_none() {
        return Err(CheckError::Invalid(
            "the tenants workload needs --tenant-header and --tenants".into(),
        ));
    }
    let http = reqwest::Client::builder()
        // A fault proxy spoils connections: one request per connection makes its rate a
        // rate of requests.
        .pool_max_idle_per_host(if plan.fresh_connections {
            0
        } else {
            plan.concurrency.max(plan.parallel)
        })
        // A redirect would send requests the history does not hold; a 3xx is an answer.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| CheckError::Invalid(e.to_string()))?;
    // Fresh keys and references on every run, seed or not: a second run against the same
    // system must not replay the first one's keys.
    let run_id = format!("{:08x}", rand::random::<u32>());
    let attack = Arc::new(Attack {
        plan: plan.clone(),
        http,
        next: AtomicU64::new(1),
        journal: journal.clone(),
        operations: Mutex::default(),
    });
    let done = Arc::new(AtomicBool::new(false));
    // While the nemesis has acts left the attack goes on past `keys`: a crash with no
    // traffic around it proves nothing.
    let haunting = Arc::new(AtomicBool::new(
        (plan.nemesis.kill.is_some() || plan.nemesis.store.is_some()) && plan.nemesis.max > 0,
    ));
    let nemesis = {
        let (nemesis, journal, done, haunting) = (
            plan.nemesis.clone(),
            journal.clone(),
            done.clone(),
            haunting.clone(),
        );
        tokio::spawn(async move {
            let failed = haunt(nemesis, journal, done).await;
            haunting.store(false, Ordering::SeqCst);
            failed
        })
    };

    // `parallel` runners take the keys in turn.
    let next_key = Arc::new(AtomicU64::new(0));
    let mut runners = tokio::task::JoinSet::new();
    for runner in 0..plan.parallel {
        let (attack, next_key, haunting, run_id) = (
            attack.clone(),
            next_key.clone(),
            haunting.clone(),
            run_id.clone(),
        );
        runners.spawn(async move {
            let mut used = Vec::new();
            loop {
                let i = next_key.fetch_add(1, Ordering::SeqCst) as usize;
                if i >= attack.plan.keys && !haunting.load(Ordering::SeqCst) {
                    return Ok::<_, CheckError>(used);
                }
                let (workload, amount) = attack.assignment(i);
                used.extend(
                    attack
                        .attack_key(&run_id, runner as u32, i, workload, amount)
                        .await?,
                );
            }
        });
    }
    let mut references = Vec::new();
    let mut failed = None;
    while let Some(r) = runners.join_next().await {
        match r.map_err(|e| CheckError::Invalid(e.to_string())) {
            Ok(Ok(used)) => references.extend(used),
            Ok(Err(e)) | Err(e) => failed = failed.or(Some(e)),
        }
    }
    done.store(true, Ordering::SeqCst);
    let nemesis_failed = nemesis.await.unwrap_or_default();
    if let Some(e) = failed {
        return Err(e);
    }
    if let Some(e) = journal.failed.lock_ignoring_poison().take() {
        return Err(CheckError::History(e));
    }
    let mut operations = attack.operations.lock_ignoring_poison().clone();
    operations.sort_by_key(|o| o.id);
    if !operations
        .iter()
        .any(|o| matches!(o.outcome, Outcome::Success { .. }))
    {
        return Err(CheckError::NothingSucceeded(answers(&operations)));
    }
    references.sort();
    references.dedup();
    let counted = effects
        .count(&references)
        .await
        .map_err(CheckError::Effects)?;
    let verdict = check(&operations, &counted);
    let faults = journal.faults.lock_ignoring_poison().clone();
    Ok(Found {
        operations,
        faults,
        effects: counted,
        verdict,
        nemesis_failed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_respelled_body_is_the_same_json_in_other_bytes() {
        for plain in [
            r#"{"reference":"chk_1_0_a","amount":120}"#,
            r#"{"amount":120,"reference":"chk_1_0_a","items":[{"sku":"a","qty":2}]}"#,
            r#"{"only":1}"#,
        ] {
            let other = respelled(plain).unwrap();
            assert_ne!(other, plain);
            assert_eq!(
                oncely_core::jcs::canonicalize(other.as_bytes()),
                oncely_core::jcs::canonicalize(plain.as_bytes()),
                "{other}"
            );
            let first_key = |s: &str| s.split('"').nth(1).map(str::to_owned);
            if plain.matches(':').count() > 1 {
                assert_ne!(first_key(&other), first_key(plain), "reordered: {other}");
            }
        }
        assert_eq!(respelled("[1,2]"), None, "only objects are respelled");
    }
}
