//! `oncely send`: a curl-like command that sends one logical request with the retry client.
//!
//! ```text
//! oncely send POST http://localhost:8080/orders -d @order.json -H 'Content-Type: application/json'
//! ```
//!
//! Each attempt is reported on stderr (status or error, the wait before the next attempt, and
//! why); the final response body goes to stdout, untouched.
//!
//! Exit codes:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | a 2xx answer |
//! | 1 | a final answer that is not 2xx and is not retried (400, 404, 422, 500...) |
//! | 2 | usage or local error: bad URL, header, method, flag, unreadable body file or state file |
//! | 3 | gave up while the server was answering with a retryable status (503, 429...): attempts, deadline or budget ran out, or `Retry-After` was longer than `--max-retry-after` |
//! | 4 | no HTTP answer: the last attempt failed to connect, timed out or lost its connection |
//!
//! After 3 or 4 the outcome is unknown or not achieved: re-run with the same `--key` (printed on
//! stderr) or the same `--state` file, and the server deduplicates.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use http::{Method, StatusCode};
use oncely_core::parse_duration;

use crate::budget::BudgetConfig;
use crate::client::{AttemptEvent, Client, Error, LastOutcome, Request, IDEMPOTENCY_KEY};
use crate::key;
use crate::policy::{fmt_duration, Decision, Outcome};
use oncely_core::sync::LockIgnoringPoison;

/// Arguments of `oncely send`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// HTTP method: POST, PUT, PATCH, DELETE, GET...
    pub method: String,
    /// The URL (http or https).
    pub url: String,
    /// The body: literal text, @FILE to read a file, or - (or @-) to read stdin.
    #[arg(short = 'd', long = "data", value_name = "DATA|@FILE|-")]
    pub data: Option<String>,
    /// A header, 'Name: value'. Repeatable.
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// The Idempotency-Key to use (default: a new UUIDv7, or the pending one in --state).
    #[arg(long)]
    pub key: Option<String>,
    /// Names the logical request in the --state file (default: a hash of method, URL and body).
    #[arg(long = "op", value_name = "NAME")]
    pub operation: Option<String>,
    /// Attempts in all, the first included.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_attempts: u32,
    /// No attempt starts later than this after the first (0: none). E.g. 30s, 500ms, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration, value_name = "DURATION")]
    pub deadline: Duration,
    /// The longest one attempt may take (0: none).
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Duration,
    /// The ceiling of the first wait; it doubles per retry.
    #[arg(long, default_value = "100ms", value_parser = parse_duration, value_name = "DURATION")]
    pub base_delay: Duration,
    /// The longest wait between attempts.
    #[arg(long, default_value = "10s", value_parser = parse_duration, value_name = "DURATION")]
    pub max_delay: Duration,
    /// The longest Retry-After honoured; a server asking for more makes the command give up at
    /// once (exit 3). 0: no limit but the deadline.
    #[arg(long, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub max_retry_after: Duration,
    /// A SQLite file of pending keys: a re-run of an unfinished request resumes its key.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// No per-attempt lines on stderr (errors are still printed).
    #[arg(short, long)]
    pub quiet: bool,
}

/// The exit status of `oncely send` (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// 0: a 2xx answer.
    Success,
    /// 1: a final non-2xx answer.
    HttpError,
    /// 2: usage or local error.
    Usage,
    /// 3: gave up while the server answered with retryable statuses.
    GaveUp,
    /// 4: no HTTP answer.
    Transport,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::HttpError => 1,
            Exit::Usage => 2,
            Exit::GaveUp => 3,
            Exit::Transport => 4,
        }
    }
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e.code())
    }
}

/// A writer shared between the command and the attempt hook.
pub type SharedWriter = Arc<Mutex<dyn Write + Send>>;

/// Where `oncely send` reads and writes; the process's own streams in [`run`], buffers in tests.
pub struct Io {
    /// Read when the body is `-`.
    pub stdin: Box<dyn Read + Send>,
    /// Receives the final response body.
    pub stdout: Box<dyn Write + Send>,
    /// Receives the attempt lines and errors.
    pub stderr: SharedWriter,
}

/// Runs `oncely send` on the process's stdin, stdout and stderr.
pub async fn run(args: SendArgs) -> ExitCode {
    let io = Io {
        stdin: Box::new(std::io::stdin()),
        stdout: Box::new(std::io::stdout()),
        stderr: Arc::new(Mutex::new(std::io::stderr())),
    };
    run_with(args, io).await.into()
}

fn say(w: &SharedWriter, line: &str) {
    let mut w = w.lock_ignoring_poison();
    // stderr going away (a closed pipe) must not change the outcome of the request.
    let _ = writeln!(w, "oncely: {line}");
    let _ = w.flush();
}

fn status_text(status: u16) -> String {
    match StatusCode::from_u16(status) {
        Ok(s) => s.to_string(),
        Err(_) => status.to_string(),
    }
}

/// One stderr line per attempt; `at` is when the attempt started, since the first one started.
fn describe(e: &AttemptEvent<'_>) -> String {
    let what = match (e.outcome, e.error) {
        (Outcome::Status { status, .. }, _) => status_text(*status),
        (Outcome::Transport(kind), Some(msg)) => format!("{kind}: {msg}"),
        (Outcome::Transport(kind), None) => kind.to_string(),
    };
    let next = match e.decision {
        Decision::Finish => "done".to_owned(),
        Decision::Retry { delay, reason } => {
            format!("retrying in {} ({reason})", fmt_duration(*delay))
        }
        Decision::GiveUp { stop, .. } => format!("giving up: {stop}"),
    };
    format!(
        "attempt {} at {}: {what} -> {next}",
        e.attempt,
        fmt_duration(e.started)
    )
}

/// Everything `oncely send` needs, checked before any network activity.
struct Prepared {
    request: Request,
    method: Method,
    url: String,
}

fn prepare(args: &SendArgs, stdin: &mut dyn Read) -> Result<Prepared, String> {
    let method = Method::from_bytes(args.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| format!("invalid method {:?}", args.method))?;
    let url =
        reqwest::Url::parse(&args.url).map_err(|e| format!("invalid URL {:?}: {e}", args.url))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "unsupported URL scheme {:?} (use http or https)",
            url.scheme()
        ));
    }
    let body: Vec<u8> = match args.data.as_deref() {
        None => Vec::new(),
        Some("-") | Some("@-") => {
            let mut buf = Vec::new();
            stdin
                .read_to_end(&mut buf)
                .map_err(|e| format!("cannot read the body from stdin: {e}"))?;
            buf
        }
        Some(d) => match d.strip_prefix('@') {
            Some(path) => std::fs::read(path)
                .map_err(|e| format!("cannot read the body file {path:?}: {e}"))?,
            None => d.as_bytes().to_vec(),
        },
    };
    let mut request = Request::new(method.clone(), args.url.clone());
    let mut key = args.key.clone();
    let mut has_content_type = false;
    for h in &args.headers {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("invalid header {h:?} (expected 'Name: value')"))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|_| format!("invalid header name in {h:?}"))?;
        let value = HeaderValue::from_str(value.trim())
            .map_err(|_| format!("invalid header value in {h:?}"))?;
        if name == IDEMPOTENCY_KEY {
            let v = value
                .to_str()
                .map_err(|_| format!("invalid Idempotency-Key in {h:?}"))?;
            match &key {
                Some(k) if k != v => {
                    return Err("--key and the Idempotency-Key header disagree".to_owned())
                }
                _ => key = Some(v.to_owned()),
            }
            continue;
        }
        has_content_type |= name == CONTENT_TYPE;
        request = request.header(name, value);
    }
    // A JSON body without a Content-Type is almost always meant as JSON; anything else is sent
    // without one rather than guessed.
    if !has_content_type
        && !body.is_empty()
        && serde_json::from_slice::<serde_json::Value>(&body).is_ok()
    {
        request = request.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    if let Some(k) = key {
        key::validate_key(&k)?;
        request = request.key(k);
    }
    if let Some(op) = &args.operation {
        request = request.operation(op.clone());
    }
    Ok(Prepared {
        request: request.body(body),
        method,
        url: args.url.clone(),
    })
}

fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Runs `oncely send` on the given streams and returns its exit status.
pub async fn run_with(args: SendArgs, io: Io) -> Exit {
    let Io {
        mut stdin,
        mut stdout,
        stderr,
    } = io;
    let prepared = match prepare(&args, &mut *stdin) {
        Ok(p) => p,
        Err(msg) => {
            say(&stderr, &format!("error: {msg}"));
            return Exit::Usage;
        }
    };
    let mut builder = Client::builder()
        .max_attempts(args.max_attempts)
        .deadline(nonzero(args.deadline))
        .attempt_timeout(nonzero(args.timeout))
        .base_delay(args.base_delay)
        .max_delay(args.max_delay)
        .max_retry_after(nonzero(args.max_retry_after))
        // One command sends one logical request, bounded by --max-attempts and --deadline; the
        // budget protects servers from long-lived clients sending many.
        .budget(BudgetConfig::unlimited());
    if let Some(state) = &args.state {
        builder = builder.state_file(state);
    }
    if !args.quiet {
        let (method, url, err) = (
            prepared.method.clone(),
            prepared.url.clone(),
            stderr.clone(),
        );
        builder = builder.hook(move |e: &AttemptEvent<'_>| {
            if e.attempt == 1 {
                say(
                    &err,
                    &format!(
                        "{method} {url} Idempotency-Key: {} ({})",
                        e.key, e.key_source
                    ),
                );
            }
            say(&err, &describe(e));
        });
    }
    let client = match builder.build() {
        Ok(c) => c,
        Err(e) => {
            say(&stderr, &format!("error: {e}"));
            return Exit::Usage;
        }
    };
    let mut print_body = |body: &[u8]| {
        // A closed stdout (`| head`) is not a failure of the request.
        let _ = stdout.write_all(body);
        let _ = stdout.flush();
    };
    match client.send(prepared.request).await {
        Ok(resp) => {
            print_body(&resp.body);
            if resp.status.is_success() {
                Exit::Success
            } else {
                Exit::HttpError
            }
        }
        Err(e) => {
            let hint = match &e {
                Error::GaveUp { key, .. } | Error::Transport { key, .. } => format!(
                    "; re-run with --key {key}{} to retry without risk of a duplicate",
                    if args.state.is_some() {
                        " (or the same --state)"
                    } else {
                        ""
                    }
                ),
                _ => String::new(),
            };
            say(&stderr, &format!("error: {e}{hint}"));
            match e {
                Error::GaveUp {
                    last: LastOutcome::Response(resp),
                    ..
                } => {
                    print_body(&resp.body);
                    Exit::GaveUp
                }
                Error::GaveUp {
                    last: LastOutcome::Transport { .. },
                    ..
                }
                | Error::Transport { .. } => Exit::Transport,
                Error::InvalidRequest(_) | Error::Store(_) | Error::Build(_) => Exit::Usage,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        send: SendArgs,
    }

    fn args(argv: &[&str]) -> SendArgs {
        let mut full = vec!["send"];
        full.extend_from_slice(argv);
        Cli::try_parse_from(full).unwrap().send
    }

    #[test]
    fn parses_curl_like_arguments() {
        let a = args(&[
            "post",
            "http://127.0.0.1:1/x",
            "-d",
            "{\"a\":1}",
            "-H",
            "X-A: 1",
            "-H",
            "X-B:2",
            "--max-attempts",
            "3",
            "--deadline",
            "2s",
            "--quiet",
        ]);
        assert_eq!(a.max_attempts, 3);
        assert!(a.quiet);
        let p = prepare(&a, &mut std::io::empty()).unwrap();
        assert_eq!(p.method, Method::POST);
        assert_eq!(p.request.url(), "http://127.0.0.1:1/x");
    }

    #[test]
    fn bad_input_is_a_message() {
        let cases: &[(&[&str], &str)] = &[
            (&["POST", "not a url"], "invalid URL"),
            (&["POST", "ftp://x/"], "unsupported URL scheme"),
            (&["P OST", "http://x/"], "invalid method"),
            (&["POST", "http://x/", "-H", "NoColon"], "invalid header"),
            (
                &["POST", "http://x/", "-H", "Bad Name: v"],
                "invalid header name",
            ),
            (
                &["POST", "http://x/", "-d", "@/no/such/file"],
                "cannot read the body file",
            ),
            (
                &[
                    "POST",
                    "http://x/",
                    "--key",
                    "a",
                    "-H",
                    "Idempotency-Key: b",
                ],
                "disagree",
            ),
            (
                &["POST", "http://x/", "--key", ""],
                "invalid Idempotency-Key",
            ),
            (
                &["POST", "http://x/", "--key", "a b"],
                "invalid Idempotency-Key",
            ),
            (
                &["POST", "http://x/", "-H", "Idempotency-Key: a b"],
                "invalid Idempotency-Key",
            ),
        ];
        for (argv, want) in cases {
            let e = prepare(&args(argv), &mut std::io::empty())
                .err()
                .unwrap_or_default();
            assert!(e.contains(want), "{argv:?}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn body_from_stdin() {
        let a = args(&["PUT", "http://x/", "-d", "-"]);
        let p = prepare(&a, &mut &b"hello"[..]).unwrap();
        assert_eq!(p.method, Method::PUT);
    }
}
