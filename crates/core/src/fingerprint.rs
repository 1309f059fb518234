//! The request fingerprint: what makes two requests with one key "the same request".
//!
//! SHA-256 over the method, the path and query, the content type and the body. A JSON body
//! (by content type) that parses is hashed in its RFC 8785 canonical form; anything else,
//! including JSON that does not parse, is hashed as raw bytes. Each part is length-prefixed
//! so that no two different tuples can produce the same hashed stream.

use sha2::{Digest, Sha256};
use std::fmt;

/// The SHA-256 digest that tells whether two requests with one key are the same request
/// (see the module docs for what goes in). A request whose fingerprint differs from the
/// record's is answered 422 `idempotency-key-reused` and never executes.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Hashes a request's method, its path and query as sent, its `Content-Type` value
    /// (`None` hashes as an empty one) and its whole body. No other header counts.
    pub fn compute(
        method: &str,
        path_and_query: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Self {
        let mut h = Sha256::new();
        h.update(b"oncely-fp-v1");
        feed(&mut h, method.as_bytes());
        feed(&mut h, path_and_query.as_bytes());
        let ct = content_type.unwrap_or("");
        feed(&mut h, ct.as_bytes());
        let canonical = if is_json(ct) {
            crate::jcs::canonicalize(body)
        } else {
            None
        };
        match canonical {
            Some(c) => {
                h.update(b"J");
                feed(&mut h, &c);
            }
            None => {
                h.update(b"R");
                feed(&mut h, body);
            }
        }
        Fingerprint(h.finalize().into())
    }

    /// The digest as 64 lower-case hex digits, the form stores keep it in.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }

    /// Reads back the form of [`to_hex`](Self::to_hex); `None` unless `s` is exactly 64 hex
    /// digits.
    pub fn from_hex(s: &str) -> Option<Self> {
        let bytes = unhex(s)?;
        Some(Fingerprint(bytes.try_into().ok()?))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..12])
    }
}

fn feed(h: &mut Sha256, part: &[u8]) {
    h.update((part.len() as u64).to_be_bytes());
    h.update(part);
}

/// `application/json`, `application/problem+json`, `application/vnd.x+json; charset=utf-8`...
fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Inverse of [`hex`]; `None` on odd length or a non-hex digit.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");

    #[test]
    fn json_layout_does_not_matter() {
        let a = Fingerprint::compute("POST", "/orders", JSON, br#"{"amount":1.0,"item":"book"}"#);
        let b = Fingerprint::compute(
            "POST",
            "/orders",
            JSON,
            b"{ \"item\": \"book\",\n \"amount\": 1 }",
        );
        assert_eq!(a, b);
        let c = Fingerprint::compute(
            "POST",
            "/orders",
            Some("application/json; charset=utf-8"),
            br#"{"item":"book","amount":1}"#,
        );
        assert_ne!(a, c, "content type is part of the fingerprint");
    }

    #[test]
    fn every_part_counts() {
        let base = Fingerprint::compute("POST", "/orders", JSON, br#"{"a":1}"#);
        assert_ne!(
            base,
            Fingerprint::compute("PUT", "/orders", JSON, br#"{"a":1}"#)
        );
        assert_ne!(
            base,
            Fingerprint::compute("POST", "/orders?x=1", JSON, br#"{"a":1}"#)
        );
        assert_ne!(
            base,
            Fingerprint::compute("POST", "/orders", JSON, br#"{"a":2}"#)
        );
        assert_ne!(
            base,
            Fingerprint::compute("POST", "/orders", None, br#"{"a":1}"#)
        );
    }

    #[test]
    fn malformed_json_is_hashed_as_bytes() {
        let a = Fingerprint::compute("POST", "/o", JSON, b"{oops");
        let b = Fingerprint::compute("POST", "/o", JSON, b"{oops ");
        assert_ne!(a, b);
        assert_eq!(a, Fingerprint::compute("POST", "/o", JSON, b"{oops"));
    }

    #[test]
    fn non_json_is_raw() {
        let a = Fingerprint::compute("POST", "/o", Some("text/plain"), br#"{"a":1}"#);
        let b = Fingerprint::compute("POST", "/o", Some("text/plain"), br#"{ "a":1}"#);
        assert_ne!(a, b);
    }

    #[test]
    fn hex_round_trips() {
        let a = Fingerprint::compute("POST", "/o", None, b"x");
        assert_eq!(Fingerprint::from_hex(&a.to_hex()), Some(a));
        assert_eq!(unhex("zz"), None);
    }
}
