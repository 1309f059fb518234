//! What is retried, and when to stop: a pure decision over the outcome of one attempt.
//!
//! Retried, because the failure may be transient and the same `Idempotency-Key` makes a second
//! execution impossible:
//! - connect errors (nothing was sent), timeouts and connections lost before a full answer (the
//!   outcome is unknown; with the same key the server deduplicates);
//! - 502, 503, 504 (a proxy or the server says "not now");
//! - 429 (rate limited);
//! - 409 whose problem+json `type` is exactly the gateway's `urn:oncely:problem:request-in-progress`
//!   ([`oncely_core::ProblemKind::RequestInProgress`]): the gateway is still running the first
//!   attempt of this key and will replay its answer once done. Any other 409 is final.
//!
//! Never retried: every other status (other 4xx are the caller's mistake and repeat identically;
//! 500 and 501 are not "try again" signals), and local errors such as an invalid request.

use std::fmt;
use std::time::{Duration, SystemTime};

use oncely_core::ProblemKind;
use rand::Rng;

use crate::backoff::Backoff;

/// Why a request failed without an HTTP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// The connection could not be made: nothing was sent.
    Connect,
    /// The attempt timed out (per-attempt timeout or the end of the deadline).
    Timeout,
    /// The connection was lost after the request was sent, before a full answer.
    Closed,
    /// Anything else (an invalid request, a redirect loop): retrying cannot help.
    Other,
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransportKind::Connect => "connect error",
            TransportKind::Timeout => "timed out",
            TransportKind::Closed => "connection lost before an answer",
            TransportKind::Other => "request error",
        })
    }
}

/// The outcome of one attempt, reduced to what the decision needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer.
    Status {
        /// The status code.
        status: u16,
        /// The parsed `Retry-After`, if any.
        retry_after: Option<Duration>,
        /// A 409 whose problem `type` is the gateway's `request-in-progress`.
        in_progress: bool,
    },
    /// No HTTP answer.
    Transport(TransportKind),
}

impl Outcome {
    /// A plain status with no `Retry-After`.
    pub fn status(status: u16) -> Self {
        Outcome::Status {
            status,
            retry_after: None,
            in_progress: false,
        }
    }
}

/// Why an outcome is worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// A transport failure of this kind.
    Transport(TransportKind),
    /// 502, 503, 504 or 429.
    Status(u16),
    /// 409 `request-in-progress`.
    InProgress,
}

impl fmt::Display for RetryReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RetryReason::Transport(kind) => write!(f, "{kind}"),
            RetryReason::Status(429) => f.write_str("429: rate limited"),
            RetryReason::Status(s) => write!(f, "{s}: upstream unavailable"),
            RetryReason::InProgress => f.write_str("409: request in progress"),
        }
    }
}

/// Why the client stopped retrying an outcome that was worth retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The configured number of attempts was made.
    MaxAttempts(u32),
    /// The next attempt would start after the overall deadline.
    Deadline,
    /// The server asked to wait (`Retry-After`) past the overall deadline.
    RetryAfterBeyondDeadline(Duration),
    /// The server asked to wait (`Retry-After`) longer than the client accepts to wait.
    RetryAfterTooLong {
        /// What the server asked for.
        asked: Duration,
        /// The longest `Retry-After` the client honours ([`Policy::max_retry_after`]).
        max: Duration,
    },
    /// The client's retry budget is empty: the upstream looks sick.
    Budget,
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopReason::MaxAttempts(n) => write!(f, "max attempts reached ({n})"),
            StopReason::Deadline => f.write_str("deadline reached"),
            StopReason::RetryAfterBeyondDeadline(d) => {
                write!(f, "Retry-After {} is past the deadline", fmt_duration(*d))
            }
            StopReason::RetryAfterTooLong { asked, max } => write!(
                f,
                "the server asked to wait {} (Retry-After), longer than max-retry-after {}",
                fmt_duration(*asked),
                fmt_duration(*max)
            ),
            StopReason::Budget => f.write_str("retry budget exhausted (upstream looks unhealthy)"),
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// The outcome is final: return it.
    Finish,
    /// Wait `delay`, then try again with the same key.
    Retry {
        /// How long to wait before the next attempt.
        delay: Duration,
        /// Why the outcome is retried.
        reason: RetryReason,
    },
    /// The outcome was worth retrying but a limit says stop.
    GiveUp {
        /// Why the outcome was worth retrying.
        reason: RetryReason,
        /// Which limit stopped it.
        stop: StopReason,
    },
}

/// Per-request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The backoff schedule.
    pub backoff: Backoff,
    /// Attempts in all, the first included (at least 1).
    pub max_attempts: u32,
    /// No attempt starts later than this after the first one.
    pub deadline: Option<Duration>,
    /// With a deadline, no retry starts with less than this left before it: an attempt needs
    /// time to get an answer, and one cut off by the deadline at once only adds load.
    pub min_attempt_time: Duration,
    /// The longest `Retry-After` honoured. A server asking for more makes the client give up at
    /// once ([`StopReason::RetryAfterTooLong`]) instead of sleeping for minutes or forever.
    /// `None`: no limit other than the deadline.
    pub max_retry_after: Option<Duration>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            max_attempts: 5,
            deadline: Some(Duration::from_secs(30)),
            min_attempt_time: DEFAULT_MIN_ATTEMPT_TIME,
            max_retry_after: Some(DEFAULT_MAX_RETRY_AFTER),
        }
    }
}

/// The default [`Policy::min_attempt_time`].
pub const DEFAULT_MIN_ATTEMPT_TIME: Duration = Duration::from_millis(50);

/// The default [`Policy::max_retry_after`].
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Whether an outcome is worth retrying at all.
pub fn retry_reason(outcome: &Outcome) -> Option<RetryReason> {
    match outcome {
        Outcome::Transport(TransportKind::Other) => None,
        Outcome::Transport(kind) => Some(RetryReason::Transport(*kind)),
        Outcome::Status { status, .. } if matches!(status, 429 | 502 | 503 | 504) => {
            Some(RetryReason::Status(*status))
        }
        Outcome::Status {
            status: 409,
            in_progress: true,
            ..
        } => Some(RetryReason::InProgress),
        Outcome::Status { .. } => None,
    }
}

/// Decides what follows attempt number `attempt` (1 for the first) which ended in `outcome`,
/// `elapsed` after the first attempt started.
///
/// The jitter is drawn from `rng`; the budget is consulted last, through `withdraw`, so a token
/// is only spent on a retry that will really happen.
pub fn decide<R: Rng + ?Sized>(
    policy: &Policy,
    attempt: u32,
    outcome: &Outcome,
    elapsed: Duration,
    rng: &mut R,
    withdraw: impl FnOnce() -> bool,
) -> Decision {
    let Some(reason) = retry_reason(outcome) else {
        return Decision::Finish;
    };
    if attempt >= policy.max_attempts {
        return Decision::GiveUp {
            reason,
            stop: StopReason::MaxAttempts(attempt),
        };
    }
    let retry = attempt.saturating_sub(1);
    let retry_after = match outcome {
        Outcome::Status { retry_after, .. } => *retry_after,
        Outcome::Transport(_) => None,
    };
    // With a deadline, the next attempt must start early enough to leave it `min_attempt_time`:
    // the wait is drawn from what is left, so a short wait that fits is never refused because a
    // long one was drawn.
    let window = match policy.deadline {
        Some(deadline) => {
            let window = deadline
                .saturating_sub(elapsed)
                .saturating_sub(policy.min_attempt_time);
            if window.is_zero() {
                return Decision::GiveUp {
                    reason,
                    stop: StopReason::Deadline,
                };
            }
            if let Some(ra) = retry_after.filter(|ra| *ra >= window) {
                return Decision::GiveUp {
                    reason,
                    stop: StopReason::RetryAfterBeyondDeadline(ra),
                };
            }
            Some(window)
        }
        None => None,
    };
    if let (Some(ra), Some(max)) = (retry_after, policy.max_retry_after) {
        if ra > max {
            return Decision::GiveUp {
                reason,
                stop: StopReason::RetryAfterTooLong { asked: ra, max },
            };
        }
    }
    let jitter = match window {
        Some(window) => policy.backoff.full_jitter_below(retry, window, rng),
        None => policy.backoff.full_jitter(retry, rng),
    };
    // The server's Retry-After is a floor: waiting less would only earn another 429/503.
    let delay = retry_after.map_or(jitter, |ra| ra.max(jitter));
    if !withdraw() {
        return Decision::GiveUp {
            reason,
            stop: StopReason::Budget,
        };
    }
    Decision::Retry { delay, reason }
}

/// Parses `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3). A date in the past
/// means "now". Anything else is ignored, as the RFC asks of unparseable values.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether a 409 body is the gateway's `request-in-progress` problem. The content type must be
/// JSON (problem+json or plain JSON) and `type` must be exactly the gateway's
/// (`urn:oncely:problem:request-in-progress`), so an application's own 409, whatever its type, is
/// never retried.
pub fn is_request_in_progress(content_type: Option<&str>, body: &[u8]) -> bool {
    let json = content_type.is_some_and(|ct| ct.to_ascii_lowercase().contains("json"));
    if !json {
        return false;
    }
    let expected = ProblemKind::RequestInProgress.type_uri();
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.get("type")
                .and_then(|t| t.as_str())
                .map(|t| t == expected)
        })
        .unwrap_or(false)
}

/// Durations for humans: `850ms`, `1.25s`, and whole seconds from a minute on (`1000s`), exact
/// up to [`Duration::MAX`].
pub fn fmt_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d >= Duration::from_secs(60) {
        format!("{}s", d.as_secs())
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        let s = s.trim_end_matches('0').trim_end_matches('.');
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    fn policy() -> Policy {
        Policy {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            max_attempts: 4,
            deadline: Some(Duration::from_secs(10)),
            min_attempt_time: Duration::from_millis(50),
            max_retry_after: Some(Duration::from_secs(60)),
        }
    }

    fn run(outcome: &Outcome, attempt: u32, elapsed_ms: u64, budget: bool) -> Decision {
        let mut rng = StdRng::seed_from_u64(1);
        decide(
            &policy(),
            attempt,
            outcome,
            Duration::from_millis(elapsed_ms),
            &mut rng,
            || budget,
        )
    }

    #[test]
    fn retried_statuses() {
        for s in [429, 502, 503, 504] {
            assert!(matches!(
                run(&Outcome::status(s), 1, 0, true),
                Decision::Retry { .. }
            ));
        }
        for s in [
            200, 201, 204, 301, 400, 401, 403, 404, 409, 410, 422, 500, 501, 505,
        ] {
            assert_eq!(
                run(&Outcome::status(s), 1, 0, true),
                Decision::Finish,
                "{s}"
            );
        }
        let in_progress = Outcome::Status {
            status: 409,
            retry_after: None,
            in_progress: true,
        };
        assert!(matches!(
            run(&in_progress, 1, 0, true),
            Decision::Retry {
                reason: RetryReason::InProgress,
                ..
            }
        ));
    }

    #[test]
    fn transport_errors() {
        for k in [
            TransportKind::Connect,
            TransportKind::Timeout,
            TransportKind::Closed,
        ] {
            assert!(matches!(
                run(&Outcome::Transport(k), 1, 0, true),
                Decision::Retry { .. }
            ));
        }
        assert_eq!(
            run(&Outcome::Transport(TransportKind::Other), 1, 0, true),
            Decision::Finish
        );
    }

    #[test]
    fn limits() {
        let o = Outcome::status(503);
        assert_eq!(
            run(&o, 4, 0, true),
            Decision::GiveUp {
                reason: RetryReason::Status(503),
                stop: StopReason::MaxAttempts(4)
            }
        );
        assert_eq!(
            run(&o, 1, 10_000, true),
            Decision::GiveUp {
                reason: RetryReason::Status(503),
                stop: StopReason::Deadline
            }
        );
        assert_eq!(
            run(&o, 1, 0, false),
            Decision::GiveUp {
                reason: RetryReason::Status(503),
                stop: StopReason::Budget
            }
        );
    }

    #[test]
    fn retry_after_is_a_floor_and_respects_the_deadline() {
        let o = Outcome::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(3)),
            in_progress: false,
        };
        assert_eq!(
            run(&o, 1, 0, true),
            Decision::Retry {
                delay: Duration::from_secs(3),
                reason: RetryReason::Status(429)
            }
        );
        assert_eq!(
            run(&o, 1, 8_000, true),
            Decision::GiveUp {
                reason: RetryReason::Status(429),
                stop: StopReason::RetryAfterBeyondDeadline(Duration::from_secs(3))
            }
        );
    }

    #[test]
    fn budget_is_not_spent_when_another_limit_stops() {
        let mut spent = false;
        let mut rng = StdRng::seed_from_u64(1);
        let d = decide(
            &policy(),
            4,
            &Outcome::status(503),
            Duration::ZERO,
            &mut rng,
            || {
                spent = true;
                true
            },
        );
        assert!(matches!(d, Decision::GiveUp { .. }));
        assert!(!spent);
        let d = decide(
            &policy(),
            1,
            &Outcome::status(400),
            Duration::ZERO,
            &mut rng,
            || {
                spent = true;
                true
            },
        );
        assert_eq!(d, Decision::Finish);
        assert!(!spent);
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(parse_retry_after("2", now), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(5));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(5)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(5));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
    }

    #[test]
    fn in_progress_detection() {
        let body = format!(
            r#"{{"type":"{}","status":409}}"#,
            ProblemKind::RequestInProgress.type_uri()
        );
        let body = body.as_bytes();
        assert!(is_request_in_progress(
            Some("application/problem+json"),
            body
        ));
        assert!(is_request_in_progress(Some("application/json"), body));
        // Only the gateway's exact type: another service's type that merely ends alike is an
        // application conflict, never retried.
        for other in [
            "https://oncely.dev/problems/request-in-progress",
            "urn:other:request-in-progress",
            "request-in-progress",
            "urn:oncely:problem:request-in-progress/x",
            "URN:ONCELY:PROBLEM:REQUEST-IN-PROGRESS",
        ] {
            let body = format!(r#"{{"type":"{other}","status":409}}"#);
            assert!(
                !is_request_in_progress(Some("application/problem+json"), body.as_bytes()),
                "{other}"
            );
        }
        assert!(!is_request_in_progress(Some("text/plain"), body));
        assert!(!is_request_in_progress(None, body));
        assert!(!is_request_in_progress(
            Some("application/problem+json"),
            br#"{"type":"https://x/idempotency-key-reused"}"#
        ));
        assert!(!is_request_in_progress(
            Some("application/json"),
            b"not json"
        ));
    }

    #[test]
    fn durations_for_humans() {
        assert_eq!(fmt_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(fmt_duration(Duration::from_millis(1250)), "1.25s");
        assert_eq!(fmt_duration(Duration::from_secs(3)), "3s");
        assert_eq!(fmt_duration(Duration::from_millis(59_500)), "59.5s");
        assert_eq!(fmt_duration(Duration::from_secs(1000)), "1000s");
        assert_eq!(
            fmt_duration(Duration::from_secs(u64::MAX)),
            "18446744073709551615s"
        );
        assert_eq!(fmt_duration(Duration::MAX), "18446744073709551615s");
    }

    #[test]
    fn a_retry_after_longer_than_the_maximum_gives_up_without_a_deadline() {
        let p = Policy {
            deadline: None,
            ..policy()
        };
        let mut rng = StdRng::seed_from_u64(1);
        for secs in [61, 1000, u64::MAX] {
            let o = Outcome::Status {
                status: 503,
                retry_after: Some(Duration::from_secs(secs)),
                in_progress: false,
            };
            let d = decide(&p, 1, &o, Duration::ZERO, &mut rng, || true);
            let stop = StopReason::RetryAfterTooLong {
                asked: Duration::from_secs(secs),
                max: Duration::from_secs(60),
            };
            assert_eq!(
                d,
                Decision::GiveUp {
                    reason: RetryReason::Status(503),
                    stop
                }
            );
            assert!(!stop.to_string().contains('\n'));
        }
        assert_eq!(
            StopReason::RetryAfterTooLong {
                asked: Duration::from_secs(1000),
                max: Duration::from_secs(60)
            }
            .to_string(),
            "the server asked to wait 1000s (Retry-After), longer than max-retry-after 60s"
        );
        // At the maximum it is honoured; with no maximum, any wait is.
        let o = Outcome::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(60)),
            in_progress: false,
        };
        assert!(matches!(
            decide(&p, 1, &o, Duration::ZERO, &mut rng, || true),
            Decision::Retry { delay, .. } if delay == Duration::from_secs(60)
        ));
        let unlimited = Policy {
            max_retry_after: None,
            ..p
        };
        let o = Outcome::Status {
            status: 429,
            retry_after: Some(Duration::from_secs(1000)),
            in_progress: false,
        };
        assert!(matches!(
            decide(&unlimited, 1, &o, Duration::ZERO, &mut rng, || true),
            Decision::Retry { .. }
        ));
    }

    /// A wait that fits before the deadline is always found: the draw is limited to the time
    /// left, so being close to the deadline never gives up while a shorter wait would do.
    #[test]
    fn close_to_the_deadline_a_shorter_wait_is_drawn() {
        // Attempt 4 failed: ceiling 800 ms; 500 ms left, 450 ms once the attempt's minimum is
        // kept. A draw over the whole ceiling would pass the deadline about 44% of the time.
        for seed in 0..500 {
            let mut rng = StdRng::seed_from_u64(seed);
            let p = Policy {
                max_attempts: 10,
                ..policy()
            };
            match decide(
                &p,
                4,
                &Outcome::status(503),
                Duration::from_millis(9_500),
                &mut rng,
                || true,
            ) {
                Decision::Retry { delay, .. } => {
                    assert!(delay < Duration::from_millis(450), "{delay:?}")
                }
                other => panic!("seed {seed}: {other:?}"),
            }
        }
    }

    /// No retry starts with less than `min_attempt_time` left before the deadline.
    #[test]
    fn no_retry_is_started_with_almost_no_time_left() {
        for elapsed_ms in [9_950, 9_960, 9_999, 10_000, 12_000] {
            assert_eq!(
                run(&Outcome::status(503), 1, elapsed_ms, true),
                Decision::GiveUp {
                    reason: RetryReason::Status(503),
                    stop: StopReason::Deadline
                },
                "{elapsed_ms}"
            );
        }
        assert!(matches!(
            run(&Outcome::status(503), 1, 9_940, true),
            Decision::Retry { delay, .. } if delay < Duration::from_millis(10)
        ));
    }

    /// The waits the decision produces (not only the backoff function) are full jitter over the
    /// ceiling of their retry number: attempt 3 failed means retry index 2, ceiling base * 4.
    /// Seeded, with tolerances of 6+ standard errors: deterministic and seed-independent.
    #[test]
    fn decided_waits_are_uniform_over_the_right_ceiling() {
        let p = Policy {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(60)),
            max_attempts: 10,
            deadline: None,
            ..Policy::default()
        };
        let mut rng = StdRng::seed_from_u64(2026);
        let n = 20_000;
        let mut xs: Vec<f64> = (0..n)
            .map(|_| {
                match decide(
                    &p,
                    3,
                    &Outcome::status(503),
                    Duration::ZERO,
                    &mut rng,
                    || true,
                ) {
                    Decision::Retry { delay, .. } => delay.as_secs_f64() / 0.4,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        xs.sort_by(f64::total_cmp);
        assert!(xs[n - 1] <= 1.0 && xs[0] >= 0.0);
        let mean = xs.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.015, "mean {mean}");
        for q in [0.05, 0.5, 0.95] {
            let got = xs[(q * n as f64) as usize];
            assert!((got - q).abs() < 0.025, "quantile {q}: {got}");
        }
    }

    proptest! {
        #[test]
        fn a_retry_never_passes_the_deadline_nor_the_cap(status in 100u16..600, attempt in 1u32..10,
                elapsed in 0u64..20_000, ra in proptest::option::of(0u64..20), seed: u64) {
            let p = policy();
            let o = Outcome::Status { status, retry_after: ra.map(Duration::from_secs), in_progress: false };
            let mut rng = StdRng::seed_from_u64(seed);
            let elapsed = Duration::from_millis(elapsed);
            match decide(&p, attempt, &o, elapsed, &mut rng, || true) {
                Decision::Retry { delay, .. } => {
                    prop_assert!(matches!(status, 429 | 502 | 503 | 504));
                    prop_assert!(attempt < p.max_attempts);
                    prop_assert!(elapsed + delay + p.min_attempt_time < Duration::from_secs(10));
                    let floor = ra.map_or(Duration::ZERO, Duration::from_secs);
                    prop_assert!(delay >= floor);
                    prop_assert!(delay <= p.backoff.cap.max(floor));
                }
                Decision::Finish => prop_assert!(!matches!(status, 429 | 502 | 503 | 504)),
                Decision::GiveUp { .. } => prop_assert!(matches!(status, 429 | 502 | 503 | 504)),
            }
        }

        #[test]
        fn retry_after_never_panics(s in "\\PC*") {
            let _ = parse_retry_after(&s, SystemTime::UNIX_EPOCH);
            let _ = is_request_in_progress(Some("application/json"), s.as_bytes());
        }
    }
}
