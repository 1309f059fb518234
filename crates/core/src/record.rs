//! The life cycle of one idempotency record, as pure transitions.
//!
//! ```text
//!   (absent) --claim--> in_progress{token, lease} --complete(token)--> completed{response}
//!                          |    ^                                       |
//!          release(token)  |    | claim after the lease expired         | expires_at passes
//!                          v    | (same fingerprint): new token         v
//!                       (absent)  = takeover                         (absent)
//! ```
//!
//! The lease token is a fencing token: every claim and takeover mints a new one, and a
//! completion, release or renewal presenting any other token is refused. A holder that was
//! paused past its lease and replaced can therefore never overwrite its successor's outcome.
//!
//! Every store backend implements exactly these transitions (the in-memory store calls them
//! directly; SQL backends express them as single statements) and the conformance suite checks
//! each backend against them.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;

use crate::{Fingerprint, Timestamp};

/// A fencing token: 128 random bits, fresh for every claim and takeover.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(pub u128);

impl LeaseToken {
    /// A fresh token from the thread's random generator. Stores call it; the transitions
    /// take the token as an argument and stay deterministic.
    pub fn random() -> Self {
        LeaseToken(rand::random())
    }
    /// The token as 32 lower-case hex digits, the form stores keep it in.
    pub fn to_hex(self) -> String {
        format!("{:032x}", self.0)
    }
    /// Reads a token back from hex; `None` if `s` is not a hex number of at most 128 bits.
    pub fn from_hex(s: &str) -> Option<Self> {
        u128::from_str_radix(s, 16).ok().map(LeaseToken)
    }
}

impl fmt::Debug for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LeaseToken({:08x}…)", (self.0 >> 96) as u32)
    }
}

/// A response as it is stored and replayed: status, the headers worth replaying, body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// The upstream's status code, replayed as it was.
    pub status: u16,
    /// Header names in lower case, values as raw bytes, in the order received.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The whole response body, replayed byte for byte.
    pub body: Bytes,
}

impl StoredResponse {
    /// Encodes the headers as one blob for storage: `name:len:value` records.
    pub fn encode_headers(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in &self.headers {
            out.extend_from_slice(&(name.len() as u32).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    /// Inverse of [`encode_headers`](Self::encode_headers); `None` if the blob is corrupt.
    pub fn decode_headers(mut blob: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
        fn take<'a>(blob: &mut &'a [u8]) -> Option<&'a [u8]> {
            let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
            let part = blob.get(4..4 + len)?;
            *blob = &blob[4 + len..];
            Some(part)
        }
        let mut headers = Vec::new();
        while !blob.is_empty() {
            let name = std::str::from_utf8(take(&mut blob)?).ok()?.to_owned();
            let value = take(&mut blob)?.to_vec();
            headers.push((name, value));
        }
        Some(headers)
    }
}

/// Where a live record stands. A released or expired record has no state: it is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// Claimed and executing. Only the holder of `token` may complete, release or renew it;
    /// duplicates get 409 (or wait) until the lease ends, when a retry of the same request
    /// may take the key over.
    InProgress {
        /// The current holder's fencing token.
        token: LeaseToken,
        /// When the lease ends unless renewed, on the store's clock.
        lease_expires_at: Timestamp,
    },
    /// Finished: every request with the same fingerprint is answered `response` until the
    /// record expires.
    Completed {
        /// What every replay answers.
        response: StoredResponse,
    },
}

/// One idempotency record: the request that claimed its key, and where it stands. Its
/// instants are on the store's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The fingerprint of the request that claimed the key. A request with another one is
    /// answered 422 and never takes the key over, even after the lease.
    pub fingerprint: Fingerprint,
    /// When the key was first claimed; a takeover keeps it.
    pub created_at: Timestamp,
    /// After this instant the record no longer exists, whatever its state.
    pub expires_at: Timestamp,
    /// In progress under a lease, or completed with a response.
    pub state: RecordState,
}

impl Record {
    /// Whether the record is gone at `now`. Expiry is inclusive: at `expires_at` itself the
    /// key is already free.
    pub fn is_expired(&self, now: Timestamp) -> bool {
        self.expires_at <= now
    }
    /// Whether a response is stored.
    pub fn is_completed(&self) -> bool {
        matches!(self.state, RecordState::Completed { .. })
    }
}

/// What a claim attempt asks for.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    /// The fingerprint of the request claiming the key.
    pub fingerprint: Fingerprint,
    /// The store's current time, at which liveness is decided.
    pub now: Timestamp,
    /// How long the claimant holds the key without a renewal; after that a retry of the same
    /// request may take it over (the route's `lease`, default 60 s).
    pub lease: Duration,
    /// How long the record lives from the claim (the route's `ttl`, default 24 h); a
    /// completion counts it again from the completion.
    pub ttl: Duration,
    /// The token to install if the claim wins; minted by the caller so the transition stays pure.
    pub token: LeaseToken,
}

/// What a store answers to a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// The caller holds the key and must execute, then complete or release it.
    Claimed {
        /// The token to present when completing, releasing or renewing.
        token: LeaseToken,
        /// When the new lease ends unless renewed, on the store's clock.
        lease_expires_at: Timestamp,
        /// The key was held by a holder whose lease had expired.
        takeover: bool,
    },
    /// Someone else's live record: in progress under a valid lease, completed, or with
    /// another fingerprint. The caller decides (replay, 409, 422) with [`decide_existing`].
    Exists(Record),
}

/// Why a transition presenting a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No live record: released, expired or purged.
    Missing,
    /// The record is held under another token: the caller's lease was taken over.
    StaleToken,
    /// The record is already completed.
    AlreadyCompleted,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Missing => "no live record for this key",
            Refusal::StaleToken => "the lease token is stale (the key was taken over)",
            Refusal::AlreadyCompleted => "the record is already completed",
        })
    }
}

/// The claim transition. Returns the record to write (if any) and the outcome to report.
pub fn claim(existing: Option<&Record>, req: &ClaimRequest) -> (Option<Record>, ClaimOutcome) {
    let fresh = |takeover: bool, created_at: Timestamp| {
        let lease_expires_at = req.now.plus(req.lease);
        let record = Record {
            fingerprint: req.fingerprint,
            created_at,
            expires_at: req.now.plus(req.ttl),
            state: RecordState::InProgress {
                token: req.token,
                lease_expires_at,
            },
        };
        let outcome = ClaimOutcome::Claimed {
            token: req.token,
            lease_expires_at,
            takeover,
        };
        (Some(record), outcome)
    };
    match existing {
        None => fresh(false, req.now),
        Some(r) if r.is_expired(req.now) => fresh(false, req.now),
        Some(r) => match &r.state {
            RecordState::InProgress {
                lease_expires_at, ..
            } if *lease_expires_at <= req.now && r.fingerprint == req.fingerprint => {
                fresh(true, r.created_at)
            }
            _ => (None, ClaimOutcome::Exists(r.clone())),
        },
    }
}

/// The completion transition: only the current holder may store the outcome.
pub fn complete(
    existing: Option<&Record>,
    token: LeaseToken,
    response: StoredResponse,
    now: Timestamp,
    ttl: Duration,
) -> Result<Record, Refusal> {
    let r = live(existing, now)?;
    check_holder(r, token)?;
    Ok(Record {
        fingerprint: r.fingerprint,
        created_at: r.created_at,
        // Retention counts from the moment the outcome is known, but never shrinks below
        // what the claim promised: a wall clock stepped backwards must not shorten it.
        expires_at: now.plus(ttl).max(r.expires_at),
        state: RecordState::Completed { response },
    })
}

/// The release transition: the holder gives the key back; the record disappears.
pub fn release(
    existing: Option<&Record>,
    token: LeaseToken,
    now: Timestamp,
) -> Result<(), Refusal> {
    check_holder(live(existing, now)?, token)
}

/// Extends the holder's lease (a heartbeat while the upstream works).
pub fn renew(
    existing: Option<&Record>,
    token: LeaseToken,
    now: Timestamp,
    lease: Duration,
) -> Result<Record, Refusal> {
    let r = live(existing, now)?;
    check_holder(r, token)?;
    let mut renewed = r.clone();
    let lease_expires_at = now.plus(lease);
    renewed.state = RecordState::InProgress {
        token,
        lease_expires_at,
    };
    // A record never expires under a live lease: otherwise a holder renewing past its TTL
    // would see its record vanish and a duplicate claim it afresh, beside it.
    renewed.expires_at = renewed.expires_at.max(lease_expires_at);
    Ok(renewed)
}

fn live(existing: Option<&Record>, now: Timestamp) -> Result<&Record, Refusal> {
    existing
        .filter(|r| !r.is_expired(now))
        .ok_or(Refusal::Missing)
}

fn check_holder(r: &Record, token: LeaseToken) -> Result<(), Refusal> {
    match &r.state {
        RecordState::InProgress { token: t, .. } if *t == token => Ok(()),
        RecordState::InProgress { .. } => Err(Refusal::StaleToken),
        RecordState::Completed { .. } => Err(Refusal::AlreadyCompleted),
    }
}

/// What to answer a request whose claim found someone else's live record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExistingDecision {
    /// Completed with the same fingerprint: answer the stored response, with
    /// `Idempotent-Replayed: true`.
    Replay(StoredResponse),
    /// Claimed with another fingerprint, in progress or completed: answer 422 (or 409)
    /// `idempotency-key-reused` and never execute.
    KeyReused,
    /// The same request is still running under a live lease: answer 409
    /// `request-in-progress`, or hold the duplicate in `wait` mode.
    InProgress {
        /// When the holder's lease ends unless renewed; from then on a claim may take over.
        lease_expires_at: Timestamp,
    },
}

/// Decides the answer to a request with `fingerprint` whose claim found `record` live
/// ([`ClaimOutcome::Exists`]). The fingerprint is compared first, so a mismatched request
/// learns nothing of the record's state.
pub fn decide_existing(record: &Record, fingerprint: Fingerprint) -> ExistingDecision {
    if record.fingerprint != fingerprint {
        return ExistingDecision::KeyReused;
    }
    match &record.state {
        RecordState::Completed { response } => ExistingDecision::Replay(response.clone()),
        RecordState::InProgress {
            lease_expires_at, ..
        } => ExistingDecision::InProgress {
            lease_expires_at: *lease_expires_at,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: &[u8]) -> Fingerprint {
        Fingerprint::compute("POST", "/x", None, b)
    }
    fn req(f: Fingerprint, now: i64, token: u128) -> ClaimRequest {
        ClaimRequest {
            fingerprint: f,
            now: Timestamp(now),
            lease: Duration::from_millis(100),
            ttl: Duration::from_millis(1000),
            token: LeaseToken(token),
        }
    }
    fn resp() -> StoredResponse {
        StoredResponse {
            status: 201,
            headers: vec![("content-type".into(), b"application/json".to_vec())],
            body: Bytes::from_static(b"{}"),
        }
    }

    #[test]
    fn first_claim_wins_then_duplicates_see_it() {
        let (rec, out) = claim(None, &req(fp(b"a"), 0, 1));
        assert!(matches!(
            out,
            ClaimOutcome::Claimed {
                takeover: false,
                ..
            }
        ));
        let rec = rec.unwrap();
        let (none, out) = claim(Some(&rec), &req(fp(b"a"), 50, 2));
        assert!(none.is_none());
        let ClaimOutcome::Exists(r) = out else {
            panic!()
        };
        assert!(matches!(
            decide_existing(&r, fp(b"a")),
            ExistingDecision::InProgress { .. }
        ));
        assert_eq!(decide_existing(&r, fp(b"b")), ExistingDecision::KeyReused);
    }

    #[test]
    fn takeover_after_lease_fences_the_old_holder() {
        let (rec, _) = claim(None, &req(fp(b"a"), 0, 1));
        let rec = rec.unwrap();
        // Another fingerprint never takes over, even after the lease.
        let (none, _) = claim(Some(&rec), &req(fp(b"b"), 200, 2));
        assert!(none.is_none());
        let (taken, out) = claim(Some(&rec), &req(fp(b"a"), 200, 3));
        assert!(matches!(out, ClaimOutcome::Claimed { takeover: true, .. }));
        let taken = taken.unwrap();
        assert_eq!(
            complete(
                Some(&taken),
                LeaseToken(1),
                resp(),
                Timestamp(210),
                Duration::from_secs(1)
            ),
            Err(Refusal::StaleToken)
        );
        assert_eq!(
            release(Some(&taken), LeaseToken(1), Timestamp(210)),
            Err(Refusal::StaleToken)
        );
        let done = complete(
            Some(&taken),
            LeaseToken(3),
            resp(),
            Timestamp(210),
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            decide_existing(&done, fp(b"a")),
            ExistingDecision::Replay(resp())
        );
        assert_eq!(
            complete(
                Some(&done),
                LeaseToken(3),
                resp(),
                Timestamp(220),
                Duration::from_secs(1)
            ),
            Err(Refusal::AlreadyCompleted)
        );
    }

    #[test]
    fn expiry_frees_the_key() {
        let (rec, _) = claim(None, &req(fp(b"a"), 0, 1));
        let done = complete(
            rec.as_ref(),
            LeaseToken(1),
            resp(),
            Timestamp(10),
            Duration::from_millis(1000),
        )
        .unwrap();
        assert_eq!(
            done.expires_at,
            Timestamp(1010),
            "retention counts from the completion"
        );
        let (_, out) = claim(Some(&done), &req(fp(b"b"), 1009, 2));
        assert!(matches!(out, ClaimOutcome::Exists(_)));
        let (_, out) = claim(Some(&done), &req(fp(b"b"), 1010, 2));
        assert!(matches!(
            out,
            ClaimOutcome::Claimed {
                takeover: false,
                ..
            }
        ));
    }

    #[test]
    fn completion_never_shortens_retention() {
        let (rec, _) = claim(None, &req(fp(b"a"), 0, 1));
        let done = complete(
            rec.as_ref(),
            LeaseToken(1),
            resp(),
            Timestamp(10),
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!(done.expires_at, Timestamp(1000), "the claim promised 1000");
    }

    #[test]
    fn renewal_keeps_the_record_alive_past_its_ttl() {
        let (rec, _) = claim(None, &req(fp(b"a"), 0, 1));
        let renewed = renew(
            rec.as_ref(),
            LeaseToken(1),
            Timestamp(990),
            Duration::from_millis(100),
        )
        .unwrap();
        assert_eq!(renewed.expires_at, Timestamp(1090));
    }

    #[test]
    fn headers_blob_round_trips_and_rejects_corruption() {
        let r = resp();
        let blob = r.encode_headers();
        assert_eq!(StoredResponse::decode_headers(&blob), Some(r.headers));
        assert_eq!(
            StoredResponse::decode_headers(&blob[..blob.len() - 1]),
            None
        );
        assert_eq!(StoredResponse::decode_headers(&[]), Some(vec![]));
    }

    #[test]
    fn token_hex_round_trips() {
        let t = LeaseToken::random();
        assert_eq!(LeaseToken::from_hex(&t.to_hex()), Some(t));
    }
}
