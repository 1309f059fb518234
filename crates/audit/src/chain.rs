//! The audit trail's chain, as pure functions over values.
//!
//! Every event of a chain carries the SHA-256 of its predecessor, so editing, deleting,
//! inserting or reordering any event breaks the chain from that event on, and [`verify`] names
//! the first event that does not fit. Each writer (a gateway process) appends to a chain of
//! its own, so concurrent writers never contend for one "last hash".
//!
//! Personal fields (actor, IP address, user agent) enter the hash only through a *commitment*:
//! HMAC-SHA256 under a secret redaction key. Redacting a field replaces its value by that
//! commitment, which the hash already covered, so the chain stays valid; without the key
//! nobody can recover or guess-and-check the value. `verify` checks the chain without the key;
//! given the key it also checks that every value not redacted matches its commitment, and
//! that every event carries the MAC only a holder of the key can compute (so an event
//! appended by someone with write access to the table but not the key is named too).
//!
//! A hash chain alone cannot show that its newest events were deleted. Each time a writer
//! opens its chain it first appends an anchor ([`CHAIN_OPENED`]) naming every other chain's
//! head, and the verifier checks that each anchored event is still there, unchanged.
//!
//! Nothing here reads or writes anything: storage is [`crate::log`], writing
//! [`crate::writer`].

use sha2::{Digest, Sha256};

/// 32 bytes of SHA-256 or HMAC-SHA256 output: an event's hash and its predecessor's, a
/// commitment, a MAC.
pub type Hash = [u8; 32];

/// The hash a chain's first event points back to.
pub const GENESIS: Hash = [0; 32];

/// A personal field: its value, or, once redacted, only its commitment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Personal {
    /// The value as recorded. Its commitment is kept beside it in [`Event::commitments`],
    /// and with the key the verifier checks the two agree.
    Value(String),
    /// The value was redacted: only its commitment (HMAC-SHA256 under the redaction key)
    /// remains, which is all the event's hash ever covered.
    Redacted(Hash),
}

/// One event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The name of the chain the event belongs to (see [`validate_chain`]): each writer,
    /// such as one gateway process, appends to a chain of its own.
    pub chain: String,
    /// The event's place in its chain: 0, 1, 2, ... without gaps, so a missing number is a
    /// deleted event ([`Broken::Gap`]).
    pub seq: u64,
    /// Identifies the event across every chain of the trail (the table refuses a second
    /// event with the same id); writers use 128 random bits in hex
    /// ([`crate::writer::new_event_id`]).
    pub event_id: String,
    /// When the event happened, in milliseconds since the Unix epoch, on the writer's clock.
    /// The hash covers it, but nothing checks its order: writers' clocks may disagree.
    pub timestamp_ms: i64,
    /// Who acted (for the gateway, the tenant: `anon`, `hdr:VALUE` or `auth:HASH`); None
    /// for events nobody caused, such as a writer's own anchors. A personal field.
    pub actor: Option<Personal>,
    /// What kind of actor `actor` is: the gateway writes `tenant` or `anonymous`, and a
    /// writer's own events say `system`.
    pub actor_type: String,
    /// What happened: for the gateway the request's outcome (`executed`, `replayed`,
    /// `mismatch`, ...), for a writer's own events [`CHAIN_OPENED`] or [`EVENTS_DROPPED`].
    pub action: String,
    /// The kind of thing acted on: `idempotency_key` for the gateway's events,
    /// `audit_chain` for a writer's own.
    pub resource_type: String,
    /// Which thing of that kind was acted on: for an idempotency key `METHOD ROUTE KEY`, for
    /// a chain its name.
    pub resource_id: String,
    /// The resource's value before the action, where the event records one (the gateway's
    /// events leave it empty).
    pub old_value: Option<String>,
    /// The resource's value after the action: for the gateway the status the client was
    /// answered, for [`CHAIN_OPENED`] the anchor ([`anchor_value`]), for [`EVENTS_DROPPED`]
    /// how many events were lost.
    pub new_value: Option<String>,
    /// Ties the event to the request and to its log lines elsewhere (for the gateway, the
    /// request's `X-Request-Id`).
    pub correlation_id: Option<String>,
    /// The client's network address as the writer saw it (for the gateway, the socket's
    /// peer). A personal field.
    pub ip_address: Option<Personal>,
    /// The client's `User-Agent` header. A personal field.
    pub user_agent: Option<Personal>,
    /// Commitments of the personal fields, in the order actor, IP address, user agent, as
    /// computed when the event was sealed; the hash covers these, never the values.
    pub commitments: [Option<Hash>; 3],
    /// The hash of the chain's previous event, or [`GENESIS`] for its first: the link that
    /// shows a deleted, inserted or reordered event ([`Broken::Link`]).
    pub prev_hash: Hash,
    /// [`event_hash`] of this event, as computed when it was sealed: an edit of any field it
    /// covers makes the two disagree ([`Broken::Edited`]), and the next event links to it.
    pub hash: Hash,
    /// HMAC-SHA256 of `hash` under the writer's key: anyone can compute a hash, so without
    /// this someone with write access could append a well-formed event to a chain; with the
    /// key, [`Verifier`] tells such an event from the writers' own.
    pub mac: Hash,
}

/// The MAC of an event's hash under `key`.
pub fn event_mac(key: &[u8], hash: &Hash) -> Hash {
    let mut msg = Vec::with_capacity(16 + hash.len());
    msg.extend_from_slice(b"oncely-audit-mac");
    msg.extend_from_slice(hash);
    hmac_sha256(key, &msg)
}

/// The names of the personal fields, as commitments are keyed.
pub const PERSONAL_FIELDS: [&str; 3] = ["actor", "ip_address", "user_agent"];

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Hash {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// The commitment to a personal field's value: keyed by the field's name too, so one value
/// in two fields does not show as equal.
pub fn commitment(key: &[u8], field: &str, value: &str) -> Hash {
    let mut msg = Vec::with_capacity(field.len() + 1 + value.len());
    msg.extend_from_slice(field.as_bytes());
    msg.push(0);
    msg.extend_from_slice(value.as_bytes());
    hmac_sha256(key, &msg)
}

fn feed(h: &mut Sha256, part: &[u8]) {
    h.update((part.len() as u64).to_be_bytes());
    h.update(part);
}

fn feed_opt(h: &mut Sha256, part: Option<&[u8]>) {
    match part {
        None => h.update([0u8]),
        Some(p) => {
            h.update([1u8]);
            feed(h, p);
        }
    }
}

/// The hash of an event: over its predecessor's hash and every field but the personal
/// values (their commitments instead), each length-prefixed.
pub fn event_hash(e: &Event) -> Hash {
    let mut h = Sha256::new();
    h.update(b"oncely-audit-v1");
    h.update(e.prev_hash);
    feed(&mut h, e.chain.as_bytes());
    h.update(e.seq.to_be_bytes());
    feed(&mut h, e.event_id.as_bytes());
    h.update(e.timestamp_ms.to_be_bytes());
    feed(&mut h, e.actor_type.as_bytes());
    feed(&mut h, e.action.as_bytes());
    feed(&mut h, e.resource_type.as_bytes());
    feed(&mut h, e.resource_id.as_bytes());
    feed_opt(&mut h, e.old_value.as_deref().map(str::as_bytes));
    feed_opt(&mut h, e.new_value.as_deref().map(str::as_bytes));
    feed_opt(&mut h, e.correlation_id.as_deref().map(str::as_bytes));
    for c in &e.commitments {
        feed_opt(&mut h, c.as_ref().map(|c| &c[..]));
    }
    h.finalize().into()
}

/// The end of a chain, where the next event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The chain's name.
    pub chain: String,
    /// The seq the next event gets, which is also how many events the chain holds.
    pub next_seq: u64,
    /// The hash of the chain's newest event, which the next event must point back to;
    /// [`GENESIS`] while the chain is empty.
    pub last_hash: Hash,
}

impl Head {
    /// The head of an empty chain named `chain`: its first event gets seq 0 and points back
    /// to [`GENESIS`]. The name is not checked here (see [`validate_chain`]).
    pub fn new(chain: impl Into<String>) -> Head {
        Head {
            chain: chain.into(),
            next_seq: 0,
            last_hash: GENESIS,
        }
    }

    /// Seals `e` as the next event of this chain (its `chain`, `seq`, commitments and hashes
    /// are set here) and moves the head past it.
    pub fn seal(&mut self, mut e: Event, key: &[u8]) -> Event {
        e.chain = self.chain.clone();
        e.seq = self.next_seq;
        e.prev_hash = self.last_hash;
        for (i, field) in [&e.actor, &e.ip_address, &e.user_agent]
            .into_iter()
            .enumerate()
        {
            e.commitments[i] = field.as_ref().map(|p| match p {
                Personal::Value(v) => commitment(key, PERSONAL_FIELDS[i], v),
                Personal::Redacted(c) => *c,
            });
        }
        e.hash = event_hash(&e);
        e.mac = event_mac(key, &e.hash);
        self.next_seq += 1;
        self.last_hash = e.hash;
        e
    }
}

/// An event before it is sealed into a chain: what a writer is handed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Draft {
    /// Unique across the trail, as [`Event::event_id`]; [`crate::writer::new_event_id`]
    /// makes one.
    pub event_id: String,
    /// When it happened, in milliseconds since the Unix epoch ([`Event::timestamp_ms`]).
    pub timestamp_ms: i64,
    /// Who acted, in plain text; sealing commits to it ([`Event::actor`]).
    pub actor: Option<String>,
    /// What kind of actor that is ([`Event::actor_type`]).
    pub actor_type: String,
    /// What happened ([`Event::action`]).
    pub action: String,
    /// The kind of thing acted on ([`Event::resource_type`]).
    pub resource_type: String,
    /// Which thing was acted on ([`Event::resource_id`]).
    pub resource_id: String,
    /// The value before the action, if any ([`Event::old_value`]).
    pub old_value: Option<String>,
    /// The value after the action, if any ([`Event::new_value`]).
    pub new_value: Option<String>,
    /// The request this event belongs to ([`Event::correlation_id`]).
    pub correlation_id: Option<String>,
    /// The client's address, in plain text; sealing commits to it ([`Event::ip_address`]).
    pub ip_address: Option<String>,
    /// The client's `User-Agent`, in plain text; sealing commits to it
    /// ([`Event::user_agent`]).
    pub user_agent: Option<String>,
}

impl Head {
    /// Seals a copy of `d` as the next event of this chain (see [`Head::seal`]).
    pub fn seal_draft(&mut self, d: &Draft, key: &[u8]) -> Event {
        let personal = |v: &Option<String>| v.clone().map(Personal::Value);
        let e = Event {
            chain: String::new(),
            seq: 0,
            event_id: d.event_id.clone(),
            timestamp_ms: d.timestamp_ms,
            actor: personal(&d.actor),
            actor_type: d.actor_type.clone(),
            action: d.action.clone(),
            resource_type: d.resource_type.clone(),
            resource_id: d.resource_id.clone(),
            old_value: d.old_value.clone(),
            new_value: d.new_value.clone(),
            correlation_id: d.correlation_id.clone(),
            ip_address: personal(&d.ip_address),
            user_agent: personal(&d.user_agent),
            commitments: [None; 3],
            prev_hash: GENESIS,
            hash: GENESIS,
            mac: GENESIS,
        };
        self.seal(e, key)
    }
}

/// Replaces a personal field's value by its commitment. The chain stays valid: the hash
/// covered only the commitment.
pub fn redact(e: &mut Event, field: &str) -> bool {
    let Some(i) = PERSONAL_FIELDS.iter().position(|f| *f == field) else {
        return false;
    };
    let Some(c) = e.commitments[i] else {
        return false;
    };
    let slot = match i {
        0 => &mut e.actor,
        1 => &mut e.ip_address,
        _ => &mut e.user_agent,
    };
    *slot = Some(Personal::Redacted(c));
    true
}

/// The action of the event a writer appends first each time it opens its chain. Its
/// `new_value` lists the heads of every other chain as the writer found them (see
/// [`anchor_value`]), so deleting the newest events of a chain, which no link reveals, is
/// found once any later writer start has seen them.
pub const CHAIN_OPENED: &str = "audit.chain_opened";

/// The action of the event a writer appends after it had to drop events (its queue was full
/// while the database was away): `new_value` is how many. The trail records its own gaps.
pub const EVENTS_DROPPED: &str = "audit.events_dropped";

/// A chain name: 1 to 64 of `A-Z a-z 0-9 . _ : -`, so it is safe in anchors and logs.
pub fn validate_chain(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a chain name (1 to 64 of A-Z a-z 0-9 . _ : -)"
        ))
    }
}

/// The `new_value` of a [`CHAIN_OPENED`] event: one line `chain seq hash` per head of a
/// chain that has events (`seq` its newest event, `hash` that event's hash in hex).
pub fn anchor_value(heads: &[Head]) -> String {
    let mut lines: Vec<String> = heads
        .iter()
        .filter(|h| h.next_seq > 0)
        .map(|h| format!("{} {} {}", h.chain, h.next_seq - 1, to_hex(&h.last_hash)))
        .collect();
    lines.sort();
    lines.join("\n")
}

/// The heads an anchor names, or None if `value` is not an anchor.
pub fn parse_anchor(value: &str) -> Option<Vec<(String, u64, Hash)>> {
    value
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut parts = l.split(' ');
            let chain = parts.next()?.to_owned();
            let seq = parts.next()?.parse().ok()?;
            let hash = from_hex(parts.next()?)?;
            parts.next().is_none().then_some((chain, seq, hash))
        })
        .collect()
}

/// `h` as 64 lower-case hex characters, as anchors and `verify`'s head lines write it.
pub fn to_hex(h: &Hash) -> String {
    h.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash that [`to_hex`] wrote as `s`, or None if `s` is not 64 hex digits.
pub fn from_hex(s: &str) -> Option<Hash> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut h = [0u8; 32];
    for (i, b) in h.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(h)
}

/// Why a chain does not verify, naming the first event (by chain and seq) that breaks it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Broken {
    /// The chain's next stored event is not the one expected: events were deleted or moved,
    /// or their seq numbers edited.
    #[error("chain {chain}: event {seq} is missing (found {found} where {seq} was expected)")]
    Gap {
        /// The chain that does not verify.
        chain: String,
        /// The seq expected next.
        seq: u64,
        /// The seq of the event read in its place.
        found: u64,
    },
    /// The event does not carry its predecessor's hash: events before it were deleted,
    /// inserted or reordered, or its predecessor was edited and hashed again.
    #[error("chain {chain}: event {seq} does not point to its predecessor (deleted, inserted or reordered events before it)")]
    Link {
        /// The chain that does not verify.
        chain: String,
        /// The first event whose link is wrong.
        seq: u64,
    },
    /// The event's stored hash does not match its content: a field the hash covers was
    /// edited in place.
    #[error("chain {chain}: event {seq} was edited (its hash does not match its content)")]
    Edited {
        /// The chain that does not verify.
        chain: String,
        /// The edited event.
        seq: u64,
    },
    /// The event's MAC was not made with the writers' key (checked only when the verifier
    /// has the key): someone with write access but without the key appended or resealed it.
    #[error("chain {chain}: event {seq} was not written with the key (forged, or sealed again by someone without it)")]
    Forged {
        /// The chain that does not verify.
        chain: String,
        /// The event without a valid MAC.
        seq: u64,
    },
    /// A personal field does not fit its commitment: a value edited in place (found with the
    /// key), a redacted field whose commitment changed, or a field and its commitment not
    /// both present or both absent.
    #[error("chain {chain}: event {seq}: {field} does not match its commitment (edited)")]
    Personal {
        /// The chain that does not verify.
        chain: String,
        /// The event whose field was edited.
        seq: u64,
        /// The field, one of [`PERSONAL_FIELDS`].
        field: &'static str,
    },
    /// The event at this place is not the one an anchor or a recorded head saw there: the
    /// chain was rewritten from there on, consistently enough that its links still hold.
    #[error("chain {chain}: event {seq} is not the event {witness} saw there (the chain was rewritten from there on)")]
    Rewritten {
        /// The chain that does not verify.
        chain: String,
        /// The place whose event changed.
        seq: u64,
        /// Who saw the original event: `chain B event N` (an anchor) or a head given to the
        /// verifier.
        witness: String,
    },
    /// The chain ends before an event that an anchor or a recorded head saw: its newest
    /// events were deleted, which no link can show.
    #[error("chain {chain} ends before event {seq}, which {witness} saw (its newest events were deleted)")]
    Truncated {
        /// The chain that lost its newest events (or all of them).
        chain: String,
        /// The seen event that is gone.
        seq: u64,
        /// Who saw it: `chain B event N` (an anchor) or a head given to the verifier.
        witness: String,
    },
}

/// What a whole trail that verifies holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// How many events the trail holds, over all its chains.
    pub events: u64,
    /// Each chain's head, by chain name. Kept somewhere else, they let a later `verify` find
    /// deleted newest events that no anchor covers yet.
    pub heads: Vec<Head>,
}

/// Checks a trail event by event, as a store reads it out: any order of chains, each
/// chain's events in `seq` order. With a key, it also checks each unredacted personal
/// value against its commitment.
pub struct Verifier<'k> {
    key: Option<&'k [u8]>,
    heads: std::collections::HashMap<String, Head>,
    /// (chain, seq) -> (the hash seen there, and who saw it).
    anchored: std::collections::HashMap<(String, u64), (Hash, String)>,
    events: u64,
}

impl<'k> Verifier<'k> {
    /// A verifier of links, hashes and anchors. With `key` (the writers' key, which seals
    /// events and commits to personal values alike) it also checks every event's MAC and
    /// every unredacted personal value.
    pub fn new(key: Option<&'k [u8]>) -> Self {
        Verifier {
            key,
            heads: Default::default(),
            anchored: Default::default(),
            events: 0,
        }
    }

    /// Takes the anchors out of `events` (the trail's [`CHAIN_OPENED`] events, read before
    /// the trail itself): each head they name must be found as it was seen. The anchors' own
    /// integrity is checked when [`Verifier::push`] reaches them.
    pub fn expect_anchors<'e>(&mut self, events: impl IntoIterator<Item = &'e Event>) {
        for e in events {
            let heads = (e.action == CHAIN_OPENED)
                .then(|| e.new_value.as_deref().and_then(parse_anchor))
                .flatten();
            for (chain, seq, hash) in heads.into_iter().flatten() {
                let witness = format!("chain {} event {}", e.chain, e.seq);
                self.anchored.entry((chain, seq)).or_insert((hash, witness));
            }
        }
    }

    /// Expects `chain` to hold, at `seq`, the event whose hash is `hash`: a head recorded
    /// from an earlier verification, which covers the newest events no anchor saw yet.
    pub fn expect_head(&mut self, chain: &str, seq: u64, hash: Hash) {
        self.anchored.insert(
            (chain.to_owned(), seq),
            (hash, "the head given to verify".to_owned()),
        );
    }

    /// Checks the next event.
    pub fn push(&mut self, e: &Event) -> Result<(), Broken> {
        let (expected, prev) = self
            .heads
            .get(e.chain.as_str())
            .map_or((0, GENESIS), |h| (h.next_seq, h.last_hash));
        let at = |chain: &str, seq| (chain.to_owned(), seq);
        if e.seq != expected {
            return Err(Broken::Gap {
                chain: e.chain.clone(),
                seq: expected,
                found: e.seq,
            });
        }
        if e.prev_hash != prev {
            return Err(Broken::Link {
                chain: e.chain.clone(),
                seq: e.seq,
            });
        }
        if event_hash(e) != e.hash {
            return Err(Broken::Edited {
                chain: e.chain.clone(),
                seq: e.seq,
            });
        }
        if self.key.is_some_and(|key| event_mac(key, &e.hash) != e.mac) {
            return Err(Broken::Forged {
                chain: e.chain.clone(),
                seq: e.seq,
            });
        }
        for (i, field) in [&e.actor, &e.ip_address, &e.user_agent]
            .into_iter()
            .enumerate()
        {
            let ok = match (field, &e.commitments[i]) {
                (None, None) => true,
                (Some(Personal::Redacted(c)), Some(k)) => c == k,
                (Some(Personal::Value(v)), Some(k)) => match self.key {
                    Some(key) => commitment(key, PERSONAL_FIELDS[i], v) == *k,
                    None => true,
                },
                _ => false,
            };
            if !ok {
                return Err(Broken::Personal {
                    chain: e.chain.clone(),
                    seq: e.seq,
                    field: PERSONAL_FIELDS[i],
                });
            }
        }
        if let Some((hash, witness)) = self.anchored.remove(&at(&e.chain, e.seq)) {
            if hash != e.hash {
                return Err(Broken::Rewritten {
                    chain: e.chain.clone(),
                    seq: e.seq,
                    witness,
                });
            }
        }
        let head = self
            .heads
            .entry(e.chain.clone())
            .or_insert_with(|| Head::new(e.chain.clone()));
        head.next_seq = e.seq + 1;
        head.last_hash = e.hash;
        self.events += 1;
        Ok(())
    }

    /// Ends the check: every anchored head must have been found.
    pub fn finish(self) -> Result<Summary, Broken> {
        // The first missing head, in a stable order.
        let mut missing: Vec<_> = self.anchored.into_iter().collect();
        missing.sort();
        if let Some(((chain, seq), (_, witness))) = missing.into_iter().next() {
            return Err(Broken::Truncated {
                chain,
                seq,
                witness,
            });
        }
        let mut heads: Vec<Head> = self.heads.into_values().collect();
        heads.sort_by(|a, b| a.chain.cmp(&b.chain));
        Ok(Summary {
            events: self.events,
            heads,
        })
    }
}

/// Checks a whole trail held in memory (see [`Verifier`]); returns how many events it has.
pub fn verify(events: &[Event], key: Option<&[u8]>) -> Result<u64, Broken> {
    let mut v = Verifier::new(key);
    v.expect_anchors(events);
    for e in events {
        v.push(e)?;
    }
    v.finish().map(|s| s.events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oncely_core::fingerprint::hex;
    use proptest::prelude::*;

    const KEY: &[u8] = b"redaction key of the tests";

    fn event(i: u64) -> Event {
        Event {
            chain: String::new(),
            seq: 0,
            event_id: format!("ev-{i}"),
            timestamp_ms: 1_700_000_000_000 + i as i64,
            actor: Some(Personal::Value(format!("auth:{i:04x}"))),
            actor_type: "tenant".into(),
            action: "executed".into(),
            resource_type: "idempotency_key".into(),
            resource_id: format!("POST /orders k-{i}"),
            old_value: None,
            new_value: Some("201".into()),
            correlation_id: Some(format!("req-{i}")),
            ip_address: Some(Personal::Value(format!("10.0.0.{i}"))),
            user_agent: (i & 1 == 0).then(|| Personal::Value("curl/8".into())),
            commitments: [None; 3],
            prev_hash: GENESIS,
            hash: GENESIS,
            mac: GENESIS,
        }
    }

    fn chain(name: &str, n: u64) -> Vec<Event> {
        let mut head = Head::new(name);
        (0..n).map(|i| head.seal(event(i), KEY)).collect()
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test cases 1 and 2.
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block.
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn an_untouched_trail_verifies_with_and_without_the_key() {
        let mut all = chain("gw-a", 5);
        all.extend(chain("gw-b", 3));
        assert_eq!(verify(&all, None), Ok(8));
        assert_eq!(verify(&all, Some(KEY)), Ok(8));
        assert_eq!(verify(&[], None), Ok(0));
    }

    #[test]
    fn edits_deletions_insertions_and_swaps_name_the_event() {
        let good = chain("gw", 6);
        let broken = |f: &dyn Fn(&mut Vec<Event>)| {
            let mut v = good.clone();
            f(&mut v);
            verify(&v, None).unwrap_err()
        };
        assert_eq!(
            broken(&|v| v[3].action = "replayed".into()),
            Broken::Edited {
                chain: "gw".into(),
                seq: 3
            }
        );
        assert_eq!(
            broken(&|v| {
                v.remove(2);
            }),
            Broken::Gap {
                chain: "gw".into(),
                seq: 2,
                found: 3
            }
        );
        // Deleting and renumbering the rest still breaks the link at the next event.
        assert_eq!(
            broken(&|v| {
                v.remove(2);
                for e in v.iter_mut().skip(2) {
                    e.seq -= 1;
                }
            }),
            Broken::Link {
                chain: "gw".into(),
                seq: 2
            }
        );
        assert_eq!(
            broken(&|v| v.swap(1, 4)),
            Broken::Gap {
                chain: "gw".into(),
                seq: 1,
                found: 4
            }
        );
        assert_eq!(
            broken(&|v| {
                v.swap(1, 4);
                v[1].seq = 1;
                v[4].seq = 4;
            }),
            Broken::Link {
                chain: "gw".into(),
                seq: 1
            }
        );
        // An edited event re-hashed by the forger breaks its successor's link instead.
        assert_eq!(
            broken(&|v| {
                v[2].new_value = Some("500".into());
                v[2].hash = event_hash(&v[2]);
            }),
            Broken::Link {
                chain: "gw".into(),
                seq: 3
            }
        );
    }

    #[test]
    fn redaction_keeps_the_chain_and_hides_the_value() {
        let mut v = chain("gw", 4);
        assert!(redact(&mut v[1], "ip_address"));
        assert!(redact(&mut v[1], "actor"));
        assert!(!redact(&mut v[1], "action"), "only personal fields");
        assert!(!redact(&mut v[1], "user_agent"), "absent on odd events");
        assert_eq!(verify(&v, Some(KEY)), Ok(4));
        assert_eq!(verify(&v, None), Ok(4));
        assert!(!format!("{:?}", v[1]).contains("10.0.0.1"));
        // A personal value edited in place is found with the key.
        v[2].ip_address = Some(Personal::Value("192.168.1.1".into()));
        assert_eq!(
            verify(&v, None),
            Ok(4),
            "without the key only the chain is checked"
        );
        assert_eq!(
            verify(&v, Some(KEY)),
            Err(Broken::Personal {
                chain: "gw".into(),
                seq: 2,
                field: "ip_address"
            })
        );
        // A forged commitment is an edit of the hashed content.
        let mut w = chain("gw", 2);
        w[1].commitments[1] = Some([7; 32]);
        assert_eq!(
            verify(&w, None),
            Err(Broken::Edited {
                chain: "gw".into(),
                seq: 1
            })
        );
    }

    #[test]
    fn recorded_heads_reveal_a_deleted_tail_and_a_rewrite() {
        let good = chain("gw", 5);
        let head = |v: &[Event], seq: usize| {
            let mut ver = Verifier::new(None);
            ver.expect_head("gw", seq as u64, good[seq].hash);
            v.iter().try_for_each(|e| ver.push(e))?;
            ver.finish()
        };
        assert_eq!(head(&good, 4).unwrap().events, 5);
        let witness = "the head given to verify".to_owned();
        assert_eq!(
            head(&good[..3], 4),
            Err(Broken::Truncated {
                chain: "gw".into(),
                seq: 4,
                witness: witness.clone()
            })
        );
        // The tail rewritten consistently from event 3 on: only the recorded head shows it.
        let mut forged = good[..3].to_vec();
        let mut h = Head {
            chain: "gw".into(),
            next_seq: 3,
            last_hash: good[2].hash,
        };
        forged.extend((3..5).map(|i| h.seal(event(i + 100), KEY)));
        assert_eq!(verify(&forged, None), Ok(5));
        assert_eq!(
            head(&forged, 4),
            Err(Broken::Rewritten {
                chain: "gw".into(),
                seq: 4,
                witness
            })
        );
    }

    proptest! {
        /// Any change to any stored byte that the hash covers is found, at that event or at
        /// the link after it.
        #[test]
        fn every_edit_is_found(n in 2u64..8, at in 0usize..8, field in 0usize..6, bit in 0u8..8) {
            let mut v = chain("gw", n);
            let at = at % v.len();
            let flip = |s: &mut String| {
                let mut b = std::mem::take(s).into_bytes();
                if b.is_empty() { b.push(b'x'); } else { b[0] ^= 1 << (bit % 7); }
                *s = String::from_utf8_lossy(&b).into_owned();
            };
            match field {
                0 => flip(&mut v[at].event_id),
                1 => v[at].timestamp_ms ^= 1 << bit,
                2 => flip(&mut v[at].action),
                3 => flip(&mut v[at].resource_id),
                4 => v[at].new_value = None,
                _ => v[at].correlation_id = Some("other".into()),
            }
            prop_assert!(verify(&v, None).is_err());
        }
    }
}
