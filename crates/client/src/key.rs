//! Idempotency keys and the names of logical requests.
//!
//! One logical request gets one key, generated before its first attempt and sent on every
//! retry: a new key per attempt would turn a retry into a second execution. Keys are UUIDv7
//! (RFC 9562): time-ordered, so stores index them well and a key tells when its request began.
//! Their random bits come from the operating system's generator, never from the seeded source
//! used for jitter, so two processes seeded alike still never share a key.

use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use sha2::{Digest, Sha256};

/// Formats a UUIDv7 from a Unix time in milliseconds and 10 random bytes (74 bits are used).
pub fn uuid_v7(unix_ms: u64, random: [u8; 10]) -> String {
    let mut b = [0u8; 16];
    // 48-bit big-endian timestamp.
    b[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    b[6..].copy_from_slice(&random);
    b[6] = 0x70 | (b[6] & 0x0f); // version 7
    b[8] = 0x80 | (b[8] & 0x3f); // variant 10
    let h = hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// A fresh UUIDv7 key from the clock and the operating system's random source.
pub fn new_key() -> String {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let mut random = [0u8; 10];
    rand::rng().fill_bytes(&mut random);
    uuid_v7(ms, random)
}

/// Checks a caller's key before anything is sent: the gateway's own rule
/// ([`oncely_core::parse_idempotency_key`]: 1 to 255 visible ASCII characters, or an sf-string),
/// and no surrounding whitespace, which a header would silently drop. A key the gateway would
/// reject fails locally, with a one-line message, instead of costing a round trip per attempt.
pub fn validate_key(key: &str) -> Result<(), String> {
    if key.trim_matches([' ', '\t']) != key {
        return Err("invalid Idempotency-Key: it has leading or trailing whitespace".to_owned());
    }
    oncely_core::parse_idempotency_key(key.as_bytes())
        .map(|_| ())
        .map_err(|e| format!("invalid Idempotency-Key: {e}"))
}

/// Names a logical request that the caller did not name: `sha256:` of method, URL and body.
///
/// Used only to find a persisted key again after a restart. The same command re-run after a
/// crash resumes its key; a deliberate second identical request after the first one finished
/// gets a new key, because a finished request's entry is removed from the state file.
pub fn derive_operation(method: &str, url: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    // Lengths first so that ("a", "bc") and ("ab", "c") cannot collide.
    for part in [method.as_bytes(), url.as_bytes(), body] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    format!("sha256:{}", hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_v7_layout() {
        // The RFC 9562 appendix example: 2022-02-22T19:22:22Z = 0x017F22E279B0 ms.
        let k = uuid_v7(
            0x017F_22E2_79B0,
            [0x0C, 0xC3, 0x18, 0xC4, 0xDC, 0x0C, 0x0C, 0x07, 0x39, 0x8F],
        );
        assert_eq!(k, "017f22e2-79b0-7cc3-98c4-dc0c0c07398f");
    }

    #[test]
    fn fresh_keys_differ_and_sort_by_time() {
        let a = new_key();
        let b = new_key();
        assert_ne!(a, b);
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "7");
        let early = uuid_v7(1, [0xff; 10]);
        let late = uuid_v7(2, [0; 10]);
        assert!(early < late);
    }

    #[test]
    fn operations_separate_their_parts() {
        assert_eq!(
            derive_operation("POST", "http://x/a", b"1"),
            derive_operation("POST", "http://x/a", b"1")
        );
        assert_ne!(
            derive_operation("POST", "http://x/a", b"1"),
            derive_operation("POST", "http://x/a1", b"")
        );
        assert_ne!(
            derive_operation("POST", "http://x/a", b"1"),
            derive_operation("PUT", "http://x/a", b"1")
        );
    }

    #[test]
    fn keys_the_gateway_rejects_fail_locally() {
        for good in [
            "a",
            "order-42",
            "\"quoted-key\"",
            &"k".repeat(255),
            &new_key(),
        ] {
            assert_eq!(validate_key(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "a b",
            " a",
            "a ",
            "clé",
            "tab\tkey",
            "line\nbreak",
            "\"unterminated",
            "\"quoted key\"",
            &"k".repeat(256),
        ] {
            let e = validate_key(bad).unwrap_err();
            assert!(e.starts_with("invalid Idempotency-Key"), "{bad:?}: {e}");
            assert!(!e.contains('\n'));
        }
    }

    proptest! {
        #[test]
        fn v7_shape(ms in 0u64..(1 << 48), random: [u8; 10]) {
            let k = uuid_v7(ms, random);
            let parts: Vec<&str> = k.split('-').collect();
            prop_assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), vec![8, 4, 4, 4, 12]);
            prop_assert!(parts[2].starts_with('7'));
            prop_assert!(matches!(parts[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'));
            let ts = u64::from_str_radix(&format!("{}{}", parts[0], parts[1]), 16).unwrap();
            prop_assert_eq!(ts, ms);
        }
    }
}
