//! Parsing the `Idempotency-Key` header (draft-ietf-httpapi-idempotency-key-header).
//!
//! The draft makes the value an RFC 9651 sf-string (`"abc"`), but many real clients send a
//! bare token (`abc`). Both are accepted; either way the key is 1 to 255 visible ASCII
//! characters once unquoted.

use std::fmt;

/// Longest key accepted, in bytes (all characters are ASCII).
pub const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key: 1..=255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key as the client meant it: unquoted and unescaped, so `"abc"` and `abc` both
    /// read `abc`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
    pub(crate) fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
    /// Validates an already unquoted key.
    pub fn new(raw: &str) -> Result<Self, KeyError> {
        validate(raw)?;
        Ok(IdempotencyKey(raw.to_owned()))
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a header value is not a usable key. The message is shown to clients, in the `detail`
/// of a 400 `invalid-idempotency-key` problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Nothing is left once surrounding whitespace is trimmed, or the quoted string is `""`.
    #[error("the Idempotency-Key header is empty")]
    Empty,
    /// Longer than [`MAX_KEY_LEN`] once unquoted; carries the length in bytes.
    #[error("the Idempotency-Key is {0} characters long; at most 255 are allowed")]
    TooLong(usize),
    /// A byte outside visible ASCII (`!` to `~`): a space, a control character, UTF-8, or a
    /// `"` inside a bare token. Carries the offending byte's offset.
    #[error("the Idempotency-Key contains a character that is not visible ASCII (at byte {0})")]
    InvalidCharacter(usize),
    /// Starts with `"` but is not one well-formed sf-string: unterminated, an escape other
    /// than `\"` or `\\`, or anything after the closing quote (parameters included).
    #[error("the Idempotency-Key is a malformed quoted string")]
    MalformedQuoted,
    /// The request carried several `Idempotency-Key` headers, so it names no single key.
    /// Reported by whoever reads the header map; [`parse_idempotency_key`] sees one value.
    #[error("more than one Idempotency-Key header was sent")]
    Multiple,
}

fn is_visible_ascii(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

fn validate(key: &str) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if let Some(pos) = key.bytes().position(|b| !is_visible_ascii(b)) {
        return Err(KeyError::InvalidCharacter(pos));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(key.len()));
    }
    Ok(())
}

/// Parses one header value, given as raw bytes because a header may carry any octet.
///
/// Surrounding optional whitespace (SP / HTAB) is ignored, as HTTP field parsing allows.
pub fn parse_idempotency_key(value: &[u8]) -> Result<IdempotencyKey, KeyError> {
    let value = trim_ows(value);
    if value.is_empty() {
        return Err(KeyError::Empty);
    }
    if value[0] == b'"' {
        return parse_sf_string(value);
    }
    // Bare token: every byte must be visible ASCII. A stray quote inside is allowed only in
    // the quoted form, so reject it here to keep the two spellings unambiguous.
    if let Some(pos) = value
        .iter()
        .position(|&b| !is_visible_ascii(b) || b == b'"')
    {
        return Err(KeyError::InvalidCharacter(pos));
    }
    if value.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(value.len()));
    }
    // All bytes are ASCII, so this cannot fail; map defensively rather than unwrap.
    let s = std::str::from_utf8(value).map_err(|_| KeyError::InvalidCharacter(0))?;
    Ok(IdempotencyKey(s.to_owned()))
}

/// RFC 9651 §4.2.5: `"` then chars 0x20..=0x7E with `\"` and `\\` escapes, then `"`.
fn parse_sf_string(value: &[u8]) -> Result<IdempotencyKey, KeyError> {
    let mut out = String::with_capacity(value.len());
    let mut i = 1;
    loop {
        let Some(&b) = value.get(i) else {
            return Err(KeyError::MalformedQuoted);
        };
        match b {
            b'\\' => {
                match value.get(i + 1) {
                    Some(&e @ (b'"' | b'\\')) => out.push(char::from(e)),
                    _ => return Err(KeyError::MalformedQuoted),
                }
                i += 2;
            }
            b'"' => {
                if i + 1 != value.len() {
                    // Parameters or trailing garbage after the string are not a key.
                    return Err(KeyError::MalformedQuoted);
                }
                break;
            }
            0x20..=0x7e => {
                out.push(char::from(b));
                i += 1;
            }
            _ => return Err(KeyError::InvalidCharacter(i)),
        }
    }
    validate(&out)?;
    Ok(IdempotencyKey(out))
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_bare_and_quoted() {
        assert_eq!(
            parse_idempotency_key(b"abc-123").unwrap().as_str(),
            "abc-123"
        );
        assert_eq!(
            parse_idempotency_key(b"\"abc-123\"").unwrap().as_str(),
            "abc-123"
        );
        assert_eq!(parse_idempotency_key(b"  abc \t").unwrap().as_str(), "abc");
        assert_eq!(
            parse_idempotency_key(br#""a\"b\\c""#).unwrap().as_str(),
            "a\"b\\c"
        );
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!(parse_idempotency_key(b""), Err(KeyError::Empty));
        assert_eq!(parse_idempotency_key(b"   "), Err(KeyError::Empty));
        assert_eq!(parse_idempotency_key(b"\"\""), Err(KeyError::Empty));
        assert_eq!(
            parse_idempotency_key(&[b'k'; 256]),
            Err(KeyError::TooLong(256))
        );
        assert!(parse_idempotency_key(&[b'k'; 255]).is_ok());
        assert_eq!(
            parse_idempotency_key(b"a\x01b"),
            Err(KeyError::InvalidCharacter(1))
        );
        assert_eq!(
            parse_idempotency_key("clé".as_bytes()),
            Err(KeyError::InvalidCharacter(2))
        );
        assert_eq!(
            parse_idempotency_key(b"a b"),
            Err(KeyError::InvalidCharacter(1))
        );
        assert_eq!(
            parse_idempotency_key(b"\"abc"),
            Err(KeyError::MalformedQuoted)
        );
        assert_eq!(
            parse_idempotency_key(b"\"abc\";p=1"),
            Err(KeyError::MalformedQuoted)
        );
        assert_eq!(
            parse_idempotency_key(br#""a\nb""#),
            Err(KeyError::MalformedQuoted)
        );
        // A space is legal inside an sf-string but not in a key.
        assert_eq!(
            parse_idempotency_key(b"\"a b\""),
            Err(KeyError::InvalidCharacter(1))
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_valid_keys_are_visible_ascii(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(k) = parse_idempotency_key(&bytes) {
                prop_assert!(!k.as_str().is_empty() && k.as_str().len() <= MAX_KEY_LEN);
                prop_assert!(k.as_str().bytes().all(is_visible_ascii));
            }
        }

        #[test]
        fn quoting_round_trips(key in "[!#-\\[\\]-~]{1,255}") {
            // Any visible-ASCII key without quote or backslash parses the same bare or quoted.
            let quoted = format!("\"{key}\"");
            prop_assert_eq!(parse_idempotency_key(key.as_bytes()).unwrap().as_str().to_owned(), key.clone());
            prop_assert_eq!(parse_idempotency_key(quoted.as_bytes()).unwrap().as_str().to_owned(), key);
        }
    }
}
