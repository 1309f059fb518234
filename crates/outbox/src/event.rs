//! Events as the application enqueues them and as a relay claims them.

use std::collections::BTreeMap;
use std::fmt;

use oncely_core::Timestamp;

/// An event's id: a UUIDv7 (RFC 9562), so ids sort roughly by creation time and carry no
/// coordination. It is the message id every publisher sends, for the broker's and the
/// consumer's dedupe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(u128);

impl EventId {
    /// A version 7 id for an event created at `now`, from 74 random bits.
    pub fn v7(now: Timestamp, random: u128) -> EventId {
        let ms = u128::from(u64::try_from(now.0.max(0)).unwrap_or(0) & 0xffff_ffff_ffff);
        let rand_a = (random >> 62) & 0xfff;
        let rand_b = random & ((1 << 62) - 1);
        EventId((ms << 80) | (0x7 << 76) | (rand_a << 64) | (0b10 << 62) | rand_b)
    }

    /// A fresh id for an event created at `now`.
    pub fn new(now: Timestamp) -> EventId {
        EventId::v7(now, rand::random())
    }

    /// Parses the hyphenated form.
    pub fn parse(text: &str) -> Option<EventId> {
        let bytes = text.as_bytes();
        if bytes.len() != 36 || [8, 13, 18, 23].iter().any(|&i| bytes[i] != b'-') {
            return None;
        }
        let hex: String = text.chars().filter(|&c| c != '-').collect();
        if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        u128::from_str_radix(&hex, 16).ok().map(EventId)
    }

    /// The milliseconds since the epoch the id was made at.
    pub fn created_ms(self) -> i64 {
        i64::try_from(self.0 >> 80).unwrap_or(0)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }
}

/// An event as the application enqueues it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// What kind of thing changed (`order`).
    pub aggregate_type: String,
    /// Which one (`o-42`). Events of one aggregate are published in commit order.
    pub aggregate_id: String,
    /// What happened (`order.placed`).
    pub event_type: String,
    /// The event's body.
    pub payload: serde_json::Value,
    /// Carried to the broker as message headers: at least `traceparent` and `x-request-id`
    /// of the request that caused the event, where there was one.
    pub headers: BTreeMap<String, String>,
}

impl NewEvent {
    /// An event with no headers.
    pub fn new(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: serde_json::Value,
    ) -> NewEvent {
        NewEvent {
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            payload,
            headers: BTreeMap::new(),
        }
    }

    /// The same event with one more header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }
}

/// An event as stored, and as a relay claims it.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEvent {
    /// Its id.
    pub id: EventId,
    /// What kind of thing changed.
    pub aggregate_type: String,
    /// Which one.
    pub aggregate_id: String,
    /// Its place among its aggregate's events: 1, 2, 3... in commit order.
    pub sequence: i64,
    /// What happened.
    pub event_type: String,
    /// The body.
    pub payload: serde_json::Value,
    /// The message headers.
    pub headers: BTreeMap<String, String>,
    /// When it was enqueued.
    pub created_at: Timestamp,
    /// Publish attempts so far, this claim included.
    pub attempts: u32,
    /// Why the last attempt failed, if one did.
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn v7_layout() {
        let id = EventId::v7(Timestamp(0x0190_1234_5678), u128::MAX);
        let text = id.to_string();
        assert_eq!(&text[..13], "01901234-5678");
        assert_eq!(&text[14..15], "7", "version 7: {text}");
        assert!(
            matches!(&text[19..20], "8" | "9" | "a" | "b"),
            "variant 10: {text}"
        );
        assert_eq!(id.created_ms(), 0x0190_1234_5678);
    }

    proptest! {
        #[test]
        fn ids_round_trip_and_sort_by_time(a in 0i64..1 << 47, b in 0i64..1 << 47, ra: u128, rb: u128) {
            let (x, y) = (EventId::v7(Timestamp(a), ra), EventId::v7(Timestamp(b), rb));
            prop_assert_eq!(EventId::parse(&x.to_string()), Some(x));
            if a < b {
                prop_assert!(x < y);
                prop_assert!(x.to_string() < y.to_string(), "text sorts as the number");
            }
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = EventId::parse(&s);
        }
    }
}
