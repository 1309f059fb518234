//! RFC 8785 JSON Canonicalization Scheme.
//!
//! Two JSON documents that mean the same thing (other key order, other whitespace, `1.0`
//! instead of `1`, `\u0041` instead of `A`) canonicalise to the same bytes, so a client that
//! re-serialises its retry differently still replays instead of being told the key was
//! reused.
//!
//! Numbers are IEEE 754 doubles serialised as ECMAScript's `Number.prototype.toString` does,
//! as the RFC requires. Two kinds of input are not canonicalised, so that the caller hashes
//! their raw bytes instead and two different requests never share a fingerprint:
//! - a number whose magnitude exceeds 2^53, where doubles stop being exact (account numbers
//!   and 64-bit ids that differ in their last digit would otherwise collide);
//! - an object with a duplicated member name, which parsers resolve differently (the RFC
//!   forbids it; a canonical form would have to pick one value).

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Canonical bytes of `input`, or `None` if it is not a single valid JSON text or holds
/// something JCS cannot represent faithfully (see the module notes).
pub fn canonicalize(input: &[u8]) -> Option<Vec<u8>> {
    let Strict(value) = serde_json::from_slice(input).ok()?;
    let mut out = Vec::with_capacity(input.len());
    write_value(&value, &mut out);
    Some(out)
}

/// Beyond this magnitude not every integer is a double.
const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0;
const EXACT_INT: u64 = 1 << 53;

/// A JSON value parsed with the two refusals described in the module notes.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Value, E> {
        if n > EXACT_INT {
            return Err(E::custom("integer beyond the exact range of a double"));
        }
        Ok(Value::Number(n.into()))
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Value, E> {
        if n.unsigned_abs() > EXACT_INT {
            return Err(E::custom("integer beyond the exact range of a double"));
        }
        Ok(Value::Number(n.into()))
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Value, E> {
        if n.abs() > EXACT_LIMIT {
            return Err(E::custom("number beyond the exact range of a double"));
        }
        Number::from_f64(n)
            .map(Value::Number)
            .ok_or_else(|| E::custom("not a finite number"))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            let Strict(v) = map.next_value()?;
            if out.insert(name, v).is_some() {
                return Err(de::Error::custom("duplicate member name"));
            }
        }
        Ok(Value::Object(out))
    }
}

fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            // RFC 8785 §3.2.3: sort by the UTF-16 code units of the names.
            members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            out.push(b'{');
            for (i, (name, value)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(name, out);
                out.push(b':');
                write_value(value, out);
            }
            out.push(b'}');
        }
    }
}

fn write_number(n: &serde_json::Number, out: &mut Vec<u8>) {
    // Every JSON number is a double in JCS, whatever spelling it arrived in.
    let f = n.as_f64().unwrap_or(0.0);
    if f == 0.0 {
        // Both 0 and -0 are written "0" by ECMAScript.
        out.push(b'0');
        return;
    }
    let mut buf = ryu_js::Buffer::new();
    out.extend_from_slice(buf.format_finite(f).as_bytes());
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\u{8}' => out.extend_from_slice(b"\\b"),
            '\u{9}' => out.extend_from_slice(b"\\t"),
            '\u{a}' => out.extend_from_slice(b"\\n"),
            '\u{c}' => out.extend_from_slice(b"\\f"),
            '\u{d}' => out.extend_from_slice(b"\\r"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes());
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn canon(s: &str) -> String {
        String::from_utf8(canonicalize(s.as_bytes()).unwrap()).unwrap()
    }

    #[test]
    fn sorts_keys_and_drops_whitespace() {
        assert_eq!(
            canon(r#" { "b" : 1, "a" : [ 1 , 2 ] } "#),
            r#"{"a":[1,2],"b":1}"#
        );
    }

    #[test]
    fn numbers_follow_ecmascript() {
        assert_eq!(canon("1.0"), "1");
        assert_eq!(canon("1e2"), "100");
        assert_eq!(canon("-0"), "0");
        assert_eq!(canon("0.000001"), "0.000001");
        assert_eq!(canon("1e-7"), "1e-7");
        assert_eq!(canon("1e15"), "1000000000000000");
        assert_eq!(canon("123456.789e3"), "123456789");
        assert_eq!(canon("-1.5E-3"), "-0.0015");
        assert_eq!(canon("4.50"), "4.5");
    }

    #[test]
    fn rfc8785_example_strings_and_sorting() {
        // Names sort by UTF-16 code units: "\u{20ac}" (0x20AC) before "\u{1f600}" (0xD83D ...).
        assert_eq!(
            canon(r#"{"\u20ac":1,"\ud83d\ude00":2,"\r":3,"1":4,"\u0080":5}"#),
            "{\"\\r\":3,\"1\":4,\"\u{80}\":5,\"\u{20ac}\":1,\"\u{1f600}\":2}"
        );
        assert_eq!(canon(r#""\u0041\u001f\/""#), "\"A\\u001f/\"");
    }

    #[test]
    fn inexact_numbers_and_duplicate_names_are_not_canonicalised() {
        assert!(canonicalize(b"9007199254740993").is_none());
        assert!(canonicalize(br#"{"id":-9007199254740993}"#).is_none());
        assert!(canonicalize(b"1e300").is_none());
        assert!(
            canonicalize(b"9007199254740992").is_some(),
            "2^53 itself is exact"
        );
        assert!(canonicalize(br#"{"a":1,"a":2}"#).is_none());
        assert!(
            canonicalize(br#"{"a":{"b":1},"c":{"b":2}}"#).is_some(),
            "same name in two objects is fine"
        );
    }

    #[test]
    fn invalid_json_is_none() {
        assert!(canonicalize(b"{").is_none());
        assert!(canonicalize(b"{} {}").is_none());
        assert!(canonicalize(b"").is_none());
        assert!(canonicalize(b"\xff").is_none());
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i32>().prop_map(Value::from),
            (-1.0e6f64..1.0e6).prop_map(Value::from),
            "[a-z\\u{80}-\\u{10ffff}\"\\\\\n]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_form_is_a_fixed_point_and_ignores_layout(v in arb_json()) {
            let compact = serde_json::to_vec(&v).unwrap();
            let pretty = serde_json::to_vec_pretty(&v).unwrap();
            let a = canonicalize(&compact).unwrap();
            let b = canonicalize(&pretty).unwrap();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(canonicalize(&a).unwrap(), a);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = canonicalize(&bytes);
        }
    }
}
