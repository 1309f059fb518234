//! `oncely send` in-process: exit codes, stdout, stderr.

use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::common::{body, conflict, refused_addr, status, Action, Flaky};
use clap::Parser;
use oncely_client::send::{run_with, Exit, Io, SendArgs};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

struct Ran {
    exit: Exit,
    stdout: String,
    stderr: String,
}

async fn send(argv: &[&str], stdin: &'static [u8]) -> Ran {
    let mut full = vec!["send", "--base-delay", "5ms", "--max-delay", "20ms"];
    full.extend_from_slice(argv);
    let args = Cli::try_parse_from(full).unwrap().send;
    let (out, err) = (Buf::default(), Buf::default());
    let io = Io {
        stdin: Box::new(stdin),
        stdout: Box::new(out.clone()),
        stderr: Arc::new(Mutex::new(err.clone())),
    };
    let exit = run_with(args, io).await;
    Ran {
        exit,
        stdout: out.text(),
        stderr: err.text(),
    }
}

#[tokio::test]
async fn success_after_retries_exits_0_and_prints_every_attempt() {
    let server = Flaky::start(vec![status(503), Action::Drop, body(201, "{\"id\":7}")]).await;
    let url = server.url("/orders");
    let r = send(
        &["POST", &url, "-d", "{\"sku\":1}", "-H", "X-Trace: abc"],
        b"",
    )
    .await;
    assert_eq!(r.exit, Exit::Success, "{}", r.stderr);
    assert_eq!(r.exit.code(), 0);
    assert_eq!(r.stdout, "{\"id\":7}");
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(
        lines[0].starts_with(&format!("oncely: POST {url} Idempotency-Key: ")),
        "{}",
        r.stderr
    );
    assert!(lines[0].ends_with("(new)"));
    assert!(lines[1].contains("attempt 1") && lines[1].contains("503 Service Unavailable"));
    assert!(lines[1].contains("retrying in") && lines[1].contains("upstream unavailable"));
    assert!(lines[2].contains("attempt 2") && lines[2].contains("connection lost"));
    assert!(lines[3].contains("attempt 3") && lines[3].contains("201 Created -> done"));
    let seen = server.seen();
    assert!(seen.iter().all(|s| s.key == seen[0].key));
    // A JSON body is sent as JSON.
    assert_eq!(seen[0].content_type.as_deref(), Some("application/json"));
}

#[tokio::test]
async fn a_client_error_exits_1_without_retrying() {
    for s in [400u16, 422] {
        let server = Flaky::start(vec![body(s, "{\"title\":\"bad\"}")]).await;
        let r = send(&["POST", &server.url("/"), "-d", "x"], b"").await;
        assert_eq!(r.exit.code(), 1);
        assert_eq!(r.stdout, "{\"title\":\"bad\"}");
        assert_eq!(server.count(), 1);
    }
}

#[tokio::test]
async fn a_409_that_is_not_the_gateways_in_progress_exits_1() {
    let server = Flaky::start(vec![
        conflict("https://oncely.dev/problems/request-in-progress"),
        body(201, "done"),
    ])
    .await;
    let r = send(&["POST", &server.url("/"), "-d", "x"], b"").await;
    assert_eq!(r.exit.code(), 1, "{}", r.stderr);
    assert!(r.stdout.contains("request-in-progress"));
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn usage_errors_exit_2_with_one_line() {
    let server = Flaky::start(vec![status(200)]).await;
    let url = server.url("/");
    let long = "k".repeat(256);
    let cases: Vec<Vec<&str>> = vec![
        vec!["POST", "not-a-url"],
        vec!["POST", &url, "-H", "no colon"],
        vec!["POST", &url, "-d", "@/definitely/not/here.json"],
        vec!["B@D", &url],
        // Keys the gateway would reject: with a space, non-ASCII, longer than 255.
        vec!["POST", &url, "--key", "two words"],
        vec!["POST", &url, "--key", "clé"],
        vec!["POST", &url, "--key", &long],
        vec!["POST", &url, "-H", "Idempotency-Key: two words"],
    ];
    for argv in cases {
        let r = send(&argv, b"").await;
        assert_eq!(r.exit.code(), 2, "{argv:?}");
        assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
        assert!(r.stderr.starts_with("oncely: error: "));
        assert!(r.stdout.is_empty());
    }
    assert_eq!(server.count(), 0);
}

#[tokio::test]
async fn persistent_503_exits_3_and_prints_the_last_body() {
    let server = Flaky::start(vec![body(503, "busy")]).await;
    let r = send(&["PUT", &server.url("/"), "--max-attempts", "3"], b"").await;
    assert_eq!(r.exit.code(), 3);
    assert_eq!(r.stdout, "busy");
    assert_eq!(server.count(), 3);
    let last = r.stderr.lines().last().unwrap();
    assert!(
        last.contains("gave up after 3 attempt(s): max attempts reached (3)"),
        "{last}"
    );
    assert!(last.contains("re-run with --key"), "{last}");
}

/// Without a deadline, a server asking to wait 1000 s (or forever) makes the command give up at
/// once with exit 3, naming the limit, instead of sleeping.
#[tokio::test]
async fn a_retry_after_above_the_maximum_exits_3_at_once() {
    for value in ["1000", "18446744073709551615"] {
        let server = Flaky::start(vec![
            Action::Respond(503, vec![("retry-after", value.into())], "later"),
            status(201),
        ])
        .await;
        let url = server.url("/");
        let argv = ["POST", url.as_str(), "--deadline", "0"];
        let r = tokio::time::timeout(std::time::Duration::from_secs(60), send(&argv, b""))
            .await
            .expect("send slept on the Retry-After");
        assert_eq!(r.exit.code(), 3, "{}", r.stderr);
        assert_eq!(r.stdout, "later");
        assert_eq!(server.count(), 1);
        let last = r.stderr.lines().last().unwrap();
        assert!(
            last.contains("(Retry-After), longer than max-retry-after 60s"),
            "{last}"
        );
        assert!(last.contains(&format!("wait {value}s")), "{last}");
    }
    // The flag sets the limit: 1 s is above 500 ms, within 2 s.
    for (max, code, attempts) in [("500ms", 3, 1), ("2s", 0, 2)] {
        let server = Flaky::start(vec![
            Action::Respond(429, vec![("retry-after", "1".into())], ""),
            status(201),
        ])
        .await;
        let r = send(&["POST", &server.url("/"), "--max-retry-after", max], b"").await;
        assert_eq!(r.exit.code(), code, "{}", r.stderr);
        assert_eq!(server.count(), attempts);
    }
}

/// The time on each attempt line is when the attempt started: the first is at 0 ms even when
/// its answer took long.
#[tokio::test]
async fn attempt_lines_show_when_the_attempt_started() {
    let server = Flaky::start(vec![Action::Delay(std::time::Duration::from_millis(300))]).await;
    let r = send(&["POST", &server.url("/")], b"").await;
    assert_eq!(r.exit.code(), 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().collect();
    assert!(
        lines[1].starts_with("oncely: attempt 1 at 0ms: 200 OK -> done"),
        "{}",
        r.stderr
    );
}

#[tokio::test]
async fn no_answer_exits_4() {
    let addr = refused_addr().await;
    let url = format!("http://{addr}/");
    let r = send(&["POST", &url, "--max-attempts", "2"], b"").await;
    assert_eq!(r.exit.code(), 4, "{}", r.stderr);
    assert!(r.stderr.to_lowercase().contains("connect error"));
}

#[tokio::test]
async fn the_body_comes_from_a_file_or_stdin() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.txt");
    std::fs::write(&file, "from file").unwrap();
    let server = Flaky::start(vec![status(200)]).await;
    let at_file = format!("@{}", file.display());
    let r = send(&["POST", &server.url("/"), "-d", &at_file, "-q"], b"").await;
    assert_eq!(r.exit.code(), 0);
    assert!(r.stderr.is_empty(), "--quiet: {}", r.stderr);
    let r = send(&["POST", &server.url("/"), "-d", "-", "-q"], b"from stdin").await;
    assert_eq!(r.exit.code(), 0);
    let seen = server.seen();
    assert_eq!(&seen[0].body[..], b"from file");
    assert_eq!(seen[0].content_type, None);
    assert_eq!(&seen[1].body[..], b"from stdin");
}

#[tokio::test]
async fn a_rerun_with_the_state_file_resumes_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("send.db");
    let state = state.to_str().unwrap();
    let server = Flaky::start(vec![status(503), status(503), body(201, "ok")]).await;
    let url = server.url("/pay");
    let args = [
        "POST",
        &url,
        "-d",
        "{\"eur\":5}",
        "--state",
        state,
        "--max-attempts",
        "2",
    ];
    let first = send(&args, b"").await;
    assert_eq!(first.exit.code(), 3);
    let second = send(&args, b"").await;
    assert_eq!(second.exit.code(), 0, "{}", second.stderr);
    assert!(second
        .stderr
        .lines()
        .next()
        .unwrap()
        .ends_with("(resumed from state file)"));
    let seen = server.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|s| s.key == seen[0].key));
}

#[tokio::test]
async fn a_given_key_goes_on_every_attempt() {
    let server = Flaky::start(vec![status(502), status(200)]).await;
    let r = send(&["POST", &server.url("/"), "--key", "order-1-v1"], b"").await;
    assert_eq!(r.exit.code(), 0);
    assert!(server
        .seen()
        .iter()
        .all(|s| s.key.as_deref() == Some("order-1-v1")));
    let server = Flaky::start(vec![status(200)]).await;
    let r = send(
        &[
            "POST",
            &server.url("/"),
            "-H",
            "Idempotency-Key: from-header",
        ],
        b"",
    )
    .await;
    assert_eq!(r.exit.code(), 0);
    assert_eq!(server.seen()[0].key.as_deref(), Some("from-header"));
}
