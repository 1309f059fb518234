//! Request correlation: the `X-Request-Id` a client or proxy sent, and the W3C Trace Context
//! `traceparent` (<https://www.w3.org/TR/trace-context/>), validated as values. Making fresh ones
//! needs randomness, which the caller supplies as bytes.

use crate::fingerprint::hex;

/// The longest `X-Request-Id` accepted; longer ones are replaced by a fresh id.
pub const MAX_REQUEST_ID: usize = 200;

/// Whether a client's `X-Request-Id` can be kept: 1-200 visible ASCII characters (it goes
/// into logs, headers and problem bodies as it is).
pub fn valid_request_id(v: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID).contains(&v.len()) && v.iter().all(|b| b.is_ascii_graphic())
}

/// A request id from 16 random bytes, in the UUID version 4 layout.
pub fn request_id_from(mut bytes: [u8; 16]) -> String {
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    // Written straight into one allocation: every request without an id of its own gets one.
    let mut id = String::with_capacity(36);
    for (i, b) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push('-');
        }
        push_hex(&mut id, *b);
    }
    id
}

/// Appends `b` as two lower-case hex digits.
fn push_hex(s: &mut String, b: u8) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    s.push(char::from(DIGITS[usize::from(b >> 4)]));
    s.push(char::from(DIGITS[usize::from(b & 0xf)]));
}

/// A parsed `traceparent` header: `version-traceid-parentid-flags`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace's id: 32 lower-case hex digits, never all zeros. Logs and problem bodies
    /// carry it as `trace_id`.
    pub trace_id: String,
    /// The id of the caller's span: 16 lower-case hex digits, never all zeros.
    pub parent_id: String,
    /// The trace flags as two lower-case hex digits: `01` means sampled; a fresh trace gets
    /// `00`.
    pub flags: String,
}

impl TraceParent {
    /// Parses a `traceparent` value per Trace Context level 1: version `00` exactly as
    /// specified; a higher version is read by its first four fields, as the spec asks; `ff`,
    /// all-zero ids, upper-case hex or a wrong length are invalid.
    pub fn parse(v: &str) -> Option<TraceParent> {
        let v = v.trim_matches([' ', '\t']);
        let mut parts = v.split('-');
        let version = parts.next()?;
        let trace_id = parts.next()?;
        let parent_id = parts.next()?;
        let flags = parts.next()?;
        let rest = parts.next();
        let lower_hex = |s: &str, n: usize| {
            s.len() == n
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !lower_hex(version, 2) || version == "ff" {
            return None;
        }
        if version == "00" && rest.is_some() {
            return None;
        }
        if !lower_hex(trace_id, 32) || trace_id.bytes().all(|b| b == b'0') {
            return None;
        }
        if !lower_hex(parent_id, 16) || parent_id.bytes().all(|b| b == b'0') {
            return None;
        }
        if !lower_hex(flags, 2) {
            return None;
        }
        Some(TraceParent {
            trace_id: trace_id.to_owned(),
            parent_id: parent_id.to_owned(),
            flags: flags.to_owned(),
        })
    }

    /// A new trace (not sampled) from random bytes; all-zero ids, which are invalid, are
    /// nudged to one.
    pub fn fresh(mut trace: [u8; 16], mut parent: [u8; 8]) -> TraceParent {
        if trace.iter().all(|b| *b == 0) {
            trace[15] = 1;
        }
        if parent.iter().all(|b| *b == 0) {
            parent[7] = 1;
        }
        TraceParent {
            trace_id: hex(&trace),
            parent_id: hex(&parent),
            flags: "00".to_owned(),
        }
    }

    /// The header value, always written as version `00`.
    pub fn header_value(&self) -> String {
        let mut v = String::with_capacity(
            3 + self.trace_id.len() + 1 + self.parent_id.len() + 1 + self.flags.len(),
        );
        for part in [
            "00-",
            &self.trace_id,
            "-",
            &self.parent_id,
            "-",
            &self.flags,
        ] {
            v.push_str(part);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_ids_are_uuid_v4_text() {
        let bytes: [u8; 16] = std::array::from_fn(|i| i as u8);
        assert_eq!(
            request_id_from(bytes),
            "00010203-0405-4607-8809-0a0b0c0d0e0f"
        );
        assert_eq!(
            request_id_from([0xff; 16]),
            "ffffffff-ffff-4fff-bfff-ffffffffffff"
        );
    }

    #[test]
    fn traceparents_follow_the_spec() {
        let ok = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let tp = TraceParent::parse(ok).unwrap();
        assert_eq!(tp.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.header_value(), ok);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A future version keeps its first four fields.
        assert!(TraceParent::parse(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever"
        )
        .is_some());
    }

    #[test]
    fn fresh_ids_are_valid() {
        let tp = TraceParent::fresh([0; 16], [0; 8]);
        assert_eq!(TraceParent::parse(&tp.header_value()), Some(tp));
        let id = request_id_from([0xff; 16]);
        assert_eq!(id.len(), 36);
        assert!(valid_request_id(id.as_bytes()));
        assert_eq!(&id[14..15], "4");
    }

    #[test]
    fn request_ids_are_bounded_visible_ascii() {
        assert!(valid_request_id(b"req-123"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"a b"));
        assert!(!valid_request_id("é".as_bytes()));
        assert!(!valid_request_id(&[b'a'; 201]));
    }

    proptest! {
        #[test]
        fn parsing_never_panics_and_round_trips(v in ".{0,80}") {
            if let Some(tp) = TraceParent::parse(&v) {
                prop_assert_eq!(TraceParent::parse(&tp.header_value()), Some(tp));
            }
        }

        #[test]
        fn fresh_traceparents_parse(t in any::<[u8; 16]>(), p in any::<[u8; 8]>()) {
            let tp = TraceParent::fresh(t, p);
            prop_assert_eq!(TraceParent::parse(&tp.header_value()), Some(tp));
        }
    }
}
