//! Conditional requests (RFC 9110 §8.8 and §13): entity tags, the precondition headers, and
//! their evaluation against the current state of a resource, in the RFC's order.
//!
//! Pure values in, a decision out: the caller reads the resource (or learns it is absent),
//! hands its validators here with the request's headers, and acts on the [`Decision`]. The
//! writes that must not be lost then carry the version they were based on down to the
//! database (a versioned `UPDATE`), so that a race between evaluating and writing is caught
//! there too.

use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, Method};

use crate::clock::Timestamp;

/// An entity tag (RFC 9110 §8.8.3): an opaque validator of one representation, strong or
/// weak (`W/`). Strong tags change whenever the bytes change; weak ones only when the meaning
/// does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityTag {
    weak: bool,
    opaque: String,
}

/// Why a text is not an entity tag or a precondition header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidPrecondition {
    /// The value is not `"..."` or `W/"..."` with visible ASCII other than `"` inside.
    #[error("`{0}` is not an entity tag (expected \"opaque\" or W/\"opaque\")")]
    EntityTag(String),
    /// `*` was sent together with entity tags, which the grammar does not allow.
    #[error("`*` must stand alone in {0}")]
    StarInList(&'static str),
    /// The header value is not visible ASCII.
    #[error("{0} is not visible ASCII")]
    NotAscii(&'static str),
}

impl EntityTag {
    /// A strong tag with `opaque` between the quotes.
    pub fn strong(opaque: impl Into<String>) -> Result<Self, InvalidPrecondition> {
        Self::new(false, opaque.into())
    }

    /// A weak tag, `W/"opaque"`.
    pub fn weak(opaque: impl Into<String>) -> Result<Self, InvalidPrecondition> {
        Self::new(true, opaque.into())
    }

    fn new(weak: bool, opaque: String) -> Result<Self, InvalidPrecondition> {
        if opaque.bytes().all(is_etagc) {
            Ok(EntityTag { weak, opaque })
        } else {
            Err(InvalidPrecondition::EntityTag(opaque))
        }
    }

    /// The strong tag of a row version: `"v7"` for version 7. Versions only grow, so a tag
    /// is never reused for other content.
    pub fn from_version(version: u64) -> Self {
        EntityTag {
            weak: false,
            opaque: format!("v{version}"),
        }
    }

    /// The strong tag of exact content: the first 128 bits of its SHA-256, in hex.
    pub fn from_content(content: &[u8]) -> Self {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(content);
        let mut opaque = String::with_capacity(32);
        for byte in &digest[..16] {
            opaque.push(char::from(HEX[usize::from(byte >> 4)]));
            opaque.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        EntityTag {
            weak: false,
            opaque,
        }
    }

    /// Whether the tag is weak (`W/`).
    pub fn is_weak(&self) -> bool {
        self.weak
    }

    /// What is between the quotes.
    pub fn opaque(&self) -> &str {
        &self.opaque
    }

    /// The version a [`from_version`](Self::from_version) tag names, if it is one.
    pub fn version(&self) -> Option<u64> {
        let digits = self.opaque.strip_prefix('v')?;
        // `v07` is not what from_version writes: refuse it rather than equate it with `v7`.
        if digits.starts_with('0') && digits.len() > 1 {
            return None;
        }
        digits.parse().ok()
    }

    /// Strong comparison (RFC 9110 §8.8.3.2): both strong and the same opaque value. What
    /// `If-Match` uses, so that a weak tag never authorises a write.
    pub fn strong_eq(&self, other: &EntityTag) -> bool {
        !self.weak && !other.weak && self.opaque == other.opaque
    }

    /// Weak comparison: the same opaque value, weak or not. What `If-None-Match` uses.
    pub fn weak_eq(&self, other: &EntityTag) -> bool {
        self.opaque == other.opaque
    }

    /// Parses one entity tag, such as an `ETag` header's value.
    pub fn parse(text: &str) -> Result<Self, InvalidPrecondition> {
        match parse_one(text.trim_matches(is_ows)) {
            Some((tag, "")) => Ok(tag),
            _ => Err(InvalidPrecondition::EntityTag(text.to_owned())),
        }
    }
}

impl fmt::Display for EntityTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.weak {
            f.write_str("W/")?;
        }
        write!(f, "\"{}\"", self.opaque)
    }
}

impl std::str::FromStr for EntityTag {
    type Err = InvalidPrecondition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EntityTag::parse(s)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `etagc = %x21 / %x23-7E / obs-text`; obs-text (bytes above 0x7E) is refused here, since
/// header values outside visible ASCII are refused everywhere else in oncely.
fn is_etagc(b: u8) -> bool {
    b == 0x21 || (0x23..=0x7e).contains(&b)
}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// One entity tag at the start of `text`, and what follows it.
fn parse_one(text: &str) -> Option<(EntityTag, &str)> {
    let (weak, rest) = match text.strip_prefix("W/") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    let opaque = &rest[..end];
    if !opaque.bytes().all(is_etagc) {
        return None;
    }
    Some((
        EntityTag {
            weak,
            opaque: opaque.to_owned(),
        },
        &rest[end + 1..],
    ))
}

/// The value of `If-Match` or `If-None-Match`: `*` or a list of entity tags (possibly
/// empty, which matches nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagList {
    /// `*`: any current representation.
    Any,
    /// The listed tags.
    Tags(Vec<EntityTag>),
}

impl TagList {
    /// Parses every line of one header as one list (RFC 9110 §5.3: lines of a list field
    /// are one list). Empty list elements are allowed and skipped.
    pub fn parse<'a>(
        name: &'static str,
        lines: impl IntoIterator<Item = &'a str>,
    ) -> Result<TagList, InvalidPrecondition> {
        let mut tags = Vec::new();
        let mut star = false;
        let mut elements = 0usize;
        for line in lines {
            let mut rest = line;
            loop {
                rest = rest.trim_start_matches(|c| is_ows(c) || c == ',');
                if rest.is_empty() {
                    break;
                }
                elements += 1;
                if let Some(after) = rest.strip_prefix('*') {
                    star = true;
                    rest = after;
                } else {
                    let (tag, after) = parse_one(rest)
                        .ok_or_else(|| InvalidPrecondition::EntityTag(line.to_owned()))?;
                    tags.push(tag);
                    rest = after;
                }
                let after = rest.trim_start_matches(is_ows);
                if !(after.is_empty() || after.starts_with(',')) {
                    return Err(InvalidPrecondition::EntityTag(line.to_owned()));
                }
                rest = after;
            }
        }
        match (star, elements) {
            (true, 1) => Ok(TagList::Any),
            (true, _) => Err(InvalidPrecondition::StarInList(name)),
            (false, _) => Ok(TagList::Tags(tags)),
        }
    }

    /// `If-Match`: true for `*` when a representation exists, or when a listed tag strongly
    /// matches the current one.
    fn if_match(&self, current: Option<&Validators>) -> bool {
        match (self, current) {
            (_, None) => false,
            (TagList::Any, Some(_)) => true,
            (TagList::Tags(tags), Some(v)) => v
                .etag
                .as_ref()
                .is_some_and(|etag| tags.iter().any(|t| t.strong_eq(etag))),
        }
    }

    /// `If-None-Match`: false for `*` when a representation exists, or when a listed tag
    /// weakly matches the current one.
    fn if_none_match(&self, current: Option<&Validators>) -> bool {
        match (self, current) {
            (_, None) => true,
            (TagList::Any, Some(_)) => false,
            (TagList::Tags(tags), Some(v)) => !v
                .etag
                .as_ref()
                .is_some_and(|etag| tags.iter().any(|t| t.weak_eq(etag))),
        }
    }
}

impl fmt::Display for TagList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagList::Any => f.write_str("*"),
            TagList::Tags(tags) => {
                for (i, tag) in tags.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{tag}")?;
                }
                Ok(())
            }
        }
    }
}

/// What identifies the current representation of a resource: the validators a response
/// carries as `ETag` and `Last-Modified`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Validators {
    /// The current entity tag, if the resource has one.
    pub etag: Option<EntityTag>,
    /// When it last changed, if known.
    pub last_modified: Option<Timestamp>,
}

/// The precondition headers of one request, parsed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Preconditions {
    /// `If-Match`.
    pub if_match: Option<TagList>,
    /// `If-None-Match`.
    pub if_none_match: Option<TagList>,
    /// `If-Modified-Since`, in whole seconds (an HTTP-date has no finer precision).
    pub if_modified_since: Option<Timestamp>,
    /// `If-Unmodified-Since`, in whole seconds.
    pub if_unmodified_since: Option<Timestamp>,
}

/// Which precondition decided a request's fate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Condition {
    /// `If-Match`.
    IfMatch,
    /// `If-Unmodified-Since`.
    IfUnmodifiedSince,
    /// `If-None-Match`.
    IfNoneMatch,
    /// `If-Modified-Since`.
    IfModifiedSince,
}

impl Condition {
    /// The header's name, as it is written in the RFC.
    pub fn header_name(self) -> &'static str {
        match self {
            Condition::IfMatch => "If-Match",
            Condition::IfUnmodifiedSince => "If-Unmodified-Since",
            Condition::IfNoneMatch => "If-None-Match",
            Condition::IfModifiedSince => "If-Modified-Since",
        }
    }
}

/// What to do with a request after its preconditions are evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Perform the method.
    Proceed,
    /// `304 Not Modified` (GET and HEAD only): the client's copy is current.
    NotModified(Condition),
    /// `412 Precondition Failed`: the method must not be performed.
    PreconditionFailed(Condition),
}

impl Preconditions {
    /// The four precondition headers of a request. Malformed entity tag lists are an error
    /// (answered with 400); a date that is not a valid HTTP-date, or that is sent more than
    /// once, is ignored, as RFC 9110 §13.1.3 and §13.1.4 require.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, InvalidPrecondition> {
        Ok(Preconditions {
            if_match: tag_list(headers, http::header::IF_MATCH, "If-Match")?,
            if_none_match: tag_list(headers, http::header::IF_NONE_MATCH, "If-None-Match")?,
            if_modified_since: http_date(headers, http::header::IF_MODIFIED_SINCE),
            if_unmodified_since: http_date(headers, http::header::IF_UNMODIFIED_SINCE),
        })
    }

    /// Whether the request carries any precondition a write can be based on (`If-Match`,
    /// `If-None-Match` or `If-Unmodified-Since`), which a route that requires one checks.
    pub fn guards_a_write(&self) -> bool {
        self.if_match.is_some()
            || self.if_none_match.is_some()
            || self.if_unmodified_since.is_some()
    }

    /// Evaluates the preconditions against the resource's current state (`None`: it does
    /// not exist), in the order of RFC 9110 §13.2.2.
    pub fn evaluate(&self, method: &Method, current: Option<&Validators>) -> Decision {
        let read = method == Method::GET || method == Method::HEAD;
        // Step 1, and step 2 only when If-Match is absent.
        if let Some(list) = &self.if_match {
            if !list.if_match(current) {
                return Decision::PreconditionFailed(Condition::IfMatch);
            }
        } else if let Some(date) = self.if_unmodified_since {
            // Ignored when the resource has no modification date to compare (§13.1.4).
            let modified = current.and_then(|v| v.last_modified);
            if modified.is_some_and(|m| whole_seconds(m) > date) {
                return Decision::PreconditionFailed(Condition::IfUnmodifiedSince);
            }
        }
        // Step 3, and step 4 only when If-None-Match is absent.
        if let Some(list) = &self.if_none_match {
            if !list.if_none_match(current) {
                return if read {
                    Decision::NotModified(Condition::IfNoneMatch)
                } else {
                    Decision::PreconditionFailed(Condition::IfNoneMatch)
                };
            }
        } else if let (true, Some(date)) = (read, self.if_modified_since) {
            let modified = current.and_then(|v| v.last_modified);
            if modified.is_some_and(|m| whole_seconds(m) <= date) {
                return Decision::NotModified(Condition::IfModifiedSince);
            }
        }
        Decision::Proceed
    }
}

/// What a write's preconditions demand of a versioned row (one whose entity tag is
/// [`EntityTag::from_version`] of its version), in a form a database checks in the `WHERE`
/// clause of the write itself. Evaluating first and writing after would leave a window in
/// which another writer gets in between; a guard in the statement leaves none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WriteGuard {
    /// The row must exist (`If-Match`).
    pub must_exist: bool,
    /// The row must not exist (`If-None-Match: *`). Both at once admit nothing.
    pub must_be_absent: bool,
    /// The row's version must be one of these (`If-Match` with tags; weak and foreign tags
    /// never match strongly, so they are left out, and an empty list admits no row).
    pub version_in: Option<Vec<u64>>,
    /// The row's version must be none of these (`If-None-Match` with tags, weakly compared).
    pub version_not_in: Vec<u64>,
    /// The row must have changed before this instant (`If-Unmodified-Since` without
    /// `If-Match`: the date's second, plus one).
    pub changed_before: Option<Timestamp>,
}

impl WriteGuard {
    /// Whether the request carries no precondition at all: a blind write.
    pub fn is_unconditional(&self) -> bool {
        *self == WriteGuard::default()
    }

    /// Whether a row in this state (`None`: absent; else its version and when it last
    /// changed) may be written. Agrees with [`Preconditions::evaluate`] for every write
    /// method, as a property test checks; the SQL helpers express the same test in SQL.
    pub fn admits(&self, current: Option<(u64, Timestamp)>) -> bool {
        match current {
            None => !self.must_exist,
            Some((version, changed_at)) => {
                !self.must_be_absent
                    && self
                        .version_in
                        .as_ref()
                        .is_none_or(|vs| vs.contains(&version))
                    && !self.version_not_in.contains(&version)
                    && self.changed_before.is_none_or(|t| changed_at < t)
            }
        }
    }
}

impl Preconditions {
    /// The guard a write with these preconditions puts on a versioned row.
    /// `If-Modified-Since` is left out: it applies to reads only.
    pub fn write_guard(&self) -> WriteGuard {
        let mut guard = WriteGuard::default();
        match &self.if_match {
            Some(TagList::Any) => guard.must_exist = true,
            Some(TagList::Tags(tags)) => {
                guard.must_exist = true;
                guard.version_in = Some(
                    tags.iter()
                        .filter(|t| !t.weak)
                        .filter_map(EntityTag::version)
                        .collect(),
                );
            }
            None => {
                guard.changed_before = self
                    .if_unmodified_since
                    .map(|date| Timestamp(whole_seconds(date).0.saturating_add(1000)));
            }
        }
        match &self.if_none_match {
            Some(TagList::Any) => guard.must_be_absent = true,
            Some(TagList::Tags(tags)) => {
                guard.version_not_in = tags.iter().filter_map(EntityTag::version).collect();
            }
            None => {}
        }
        guard
    }
}

fn tag_list(
    headers: &HeaderMap,
    header: http::header::HeaderName,
    name: &'static str,
) -> Result<Option<TagList>, InvalidPrecondition> {
    let mut values = headers.get_all(&header).iter().peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    let lines: Vec<&str> = values
        .map(|v| v.to_str().map_err(|_| InvalidPrecondition::NotAscii(name)))
        .collect::<Result<_, _>>()?;
    TagList::parse(name, lines).map(Some)
}

fn http_date(headers: &HeaderMap, header: http::header::HeaderName) -> Option<Timestamp> {
    let mut values = headers.get_all(header).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    let time = httpdate::parse_http_date(value.to_str().ok()?).ok()?;
    let ms = match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).ok()?,
        Err(before) => -i64::try_from(before.duration().as_millis()).ok()?,
    };
    Some(Timestamp(ms))
}

/// An instant as an HTTP-date can carry it: the whole second it falls in.
fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp(t.0.div_euclid(1000) * 1000)
}

/// The `Last-Modified` (or any HTTP-date) header value of an instant.
pub fn format_http_date(t: Timestamp) -> String {
    let secs = whole_seconds(t).0 / 1000;
    let time = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    httpdate::fmt_http_date(time)
}

/// An instant as RFC 3339 in UTC with milliseconds (`2026-12-03T06:42:28.120Z`): what a
/// JSON body carries, for clients that show "changed 2 minutes ago".
pub fn format_rfc3339(t: Timestamp) -> String {
    let days = t.0.div_euclid(86_400_000);
    let ms_of_day = t.0.rem_euclid(86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        ms_of_day / 3_600_000,
        ms_of_day / 60_000 % 60,
        ms_of_day / 1000 % 60,
        ms_of_day % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn tag(s: &str) -> EntityTag {
        EntityTag::parse(s).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn at(etag: &str) -> Validators {
        Validators {
            etag: Some(tag(etag)),
            last_modified: None,
        }
    }

    /// RFC 9110 §8.8.3.2's table of strong and weak comparison.
    #[test]
    fn the_rfc_comparison_table() {
        let rows = [
            (r#"W/"1""#, r#"W/"1""#, false, true),
            (r#"W/"1""#, r#"W/"2""#, false, false),
            (r#"W/"1""#, r#""1""#, false, true),
            (r#""1""#, r#""1""#, true, true),
        ];
        for (a, b, strong, weak) in rows {
            assert_eq!(tag(a).strong_eq(&tag(b)), strong, "{a} {b} strong");
            assert_eq!(tag(a).weak_eq(&tag(b)), weak, "{a} {b} weak");
        }
    }

    /// The RFC's own examples of ETag, If-Match and If-None-Match values (§8.8.3, §13.1.1,
    /// §13.1.2) parse and print back unchanged.
    #[test]
    fn the_rfc_examples_parse_and_print_back() {
        for etag in [r#""xyzzy""#, r#"W/"xyzzy""#, r#""""#] {
            assert_eq!(tag(etag).to_string(), etag);
        }
        for list in [
            r#""xyzzy""#,
            r#""xyzzy", "r2d2xxxx", "c3piozzzz""#,
            r#"W/"xyzzy""#,
            r#"W/"xyzzy", W/"r2d2xxxx", W/"c3piozzzz""#,
            "*",
        ] {
            let parsed = TagList::parse("If-Match", [list]).unwrap();
            assert_eq!(parsed.to_string(), list);
        }
        assert_eq!(tag(r#"W/"xyzzy""#).opaque(), "xyzzy");
        assert!(tag(r#"W/"xyzzy""#).is_weak());
    }

    #[test]
    fn lists_span_lines_and_skip_empty_elements() {
        let parsed = TagList::parse("If-Match", [r#" , "a",,"b" "#, r#"W/"c""#]).unwrap();
        assert_eq!(
            parsed,
            TagList::Tags(vec![tag(r#""a""#), tag(r#""b""#), tag(r#"W/"c""#)])
        );
        assert_eq!(
            TagList::parse("If-Match", [""]).unwrap(),
            TagList::Tags(vec![])
        );
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "xyzzy",
            r#""xyzzy"#,
            r#"w/"x""#,
            r#""a" "b""#,
            r#""a"b"#,
            r#"W/ "x""#,
            "\"a\u{7f}\"",
            r#""a" ; x"#,
        ] {
            assert!(
                matches!(
                    TagList::parse("If-Match", [bad]),
                    Err(InvalidPrecondition::EntityTag(_))
                ),
                "{bad:?}"
            );
        }
        assert_eq!(
            TagList::parse("If-Match", [r#"*, "a""#]),
            Err(InvalidPrecondition::StarInList("If-Match"))
        );
        assert_eq!(
            TagList::parse("If-None-Match", ["*", "*"]),
            Err(InvalidPrecondition::StarInList("If-None-Match"))
        );
        assert!(EntityTag::parse(r#""a" x"#).is_err());
        assert!(EntityTag::strong("a\"b").is_err());
    }

    #[test]
    fn version_tags_round_trip() {
        let t = EntityTag::from_version(7);
        assert_eq!(t.to_string(), r#""v7""#);
        assert_eq!(t.version(), Some(7));
        assert_eq!(tag(r#""v07""#).version(), None);
        assert_eq!(tag(r#""x7""#).version(), None);
        let c = EntityTag::from_content(b"hello");
        assert_eq!(c.opaque().len(), 32);
        assert_ne!(c, EntityTag::from_content(b"hello!"));
    }

    #[test]
    fn if_match_is_strong_and_needs_a_representation() {
        let p = Preconditions::from_headers(&headers(&[("if-match", r#"W/"v1""#)])).unwrap();
        assert_eq!(
            p.evaluate(&Method::PUT, Some(&at(r#""v1""#))),
            Decision::PreconditionFailed(Condition::IfMatch),
            "a weak tag never satisfies If-Match"
        );
        let p = Preconditions::from_headers(&headers(&[("if-match", r#""v0", "v1""#)])).unwrap();
        assert_eq!(
            p.evaluate(&Method::PUT, Some(&at(r#""v1""#))),
            Decision::Proceed
        );
        let p = Preconditions::from_headers(&headers(&[("if-match", "*")])).unwrap();
        assert_eq!(
            p.evaluate(&Method::PUT, Some(&at(r#""v1""#))),
            Decision::Proceed
        );
        assert_eq!(
            p.evaluate(&Method::PUT, None),
            Decision::PreconditionFailed(Condition::IfMatch)
        );
    }

    #[test]
    fn if_none_match_star_creates_only() {
        let p = Preconditions::from_headers(&headers(&[("if-none-match", "*")])).unwrap();
        assert_eq!(p.evaluate(&Method::PUT, None), Decision::Proceed);
        assert_eq!(
            p.evaluate(&Method::PUT, Some(&Validators::default())),
            Decision::PreconditionFailed(Condition::IfNoneMatch)
        );
        let p = Preconditions::from_headers(&headers(&[("if-none-match", r#"W/"v1""#)])).unwrap();
        assert_eq!(
            p.evaluate(&Method::GET, Some(&at(r#""v1""#))),
            Decision::NotModified(Condition::IfNoneMatch),
            "If-None-Match compares weakly"
        );
    }

    #[test]
    fn dates_compare_in_whole_seconds_and_bad_dates_are_ignored() {
        let date = "Sat, 29 Oct 1994 19:43:31 GMT";
        let secs = 783_459_811_i64;
        let modified = |ms: i64| Validators {
            etag: None,
            last_modified: Some(Timestamp(ms)),
        };
        let p = Preconditions::from_headers(&headers(&[("if-unmodified-since", date)])).unwrap();
        assert_eq!(p.if_unmodified_since, Some(Timestamp(secs * 1000)));
        // 400 ms into the same second is not "after" the date.
        assert_eq!(
            p.evaluate(&Method::PUT, Some(&modified(secs * 1000 + 400))),
            Decision::Proceed
        );
        assert_eq!(
            p.evaluate(&Method::PUT, Some(&modified((secs + 1) * 1000))),
            Decision::PreconditionFailed(Condition::IfUnmodifiedSince)
        );
        let p = Preconditions::from_headers(&headers(&[("if-modified-since", date)])).unwrap();
        assert_eq!(
            p.evaluate(&Method::GET, Some(&modified(secs * 1000 + 999))),
            Decision::NotModified(Condition::IfModifiedSince)
        );
        assert_eq!(
            p.evaluate(&Method::POST, Some(&modified(secs * 1000))),
            Decision::Proceed,
            "If-Modified-Since applies to GET and HEAD only"
        );
        for ignored in [
            headers(&[("if-unmodified-since", "yesterday")]),
            headers(&[("if-unmodified-since", date), ("if-unmodified-since", date)]),
        ] {
            assert_eq!(
                Preconditions::from_headers(&ignored)
                    .unwrap()
                    .if_unmodified_since,
                None
            );
        }
        assert_eq!(format_http_date(Timestamp(secs * 1000 + 250)), date);
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(format_rfc3339(Timestamp(0)), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(Timestamp(1_796_366_548_120)),
            "2026-12-04T06:42:28.120Z"
        );
        assert_eq!(
            format_rfc3339(Timestamp(951_782_400_000)),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(format_rfc3339(Timestamp(-1)), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn if_match_present_makes_if_unmodified_since_irrelevant() {
        let p = Preconditions::from_headers(&headers(&[
            ("if-match", r#""v2""#),
            ("if-unmodified-since", "Sat, 29 Oct 1994 19:43:31 GMT"),
        ]))
        .unwrap();
        let current = Validators {
            etag: Some(tag(r#""v2""#)),
            last_modified: Some(Timestamp(1_700_000_000_000)),
        };
        assert_eq!(
            p.evaluate(&Method::PATCH, Some(&current)),
            Decision::Proceed
        );
    }

    /// A second reading of §13.2.2, written as the RFC words it rather than as the
    /// evaluator is structured: the model the property test checks the evaluator against.
    fn reference(p: &Preconditions, method: &Method, current: Option<&Validators>) -> Decision {
        let exists = current.is_some();
        let etag = current.and_then(|v| v.etag.clone());
        let modified = current
            .and_then(|v| v.last_modified)
            .map(|t| t.0 / 1000 * 1000);
        let get_or_head = *method == Method::GET || *method == Method::HEAD;
        let matches_strongly = |tags: &[EntityTag]| {
            etag.as_ref()
                .is_some_and(|e| !e.weak && tags.iter().any(|t| !t.weak && t.opaque == e.opaque))
        };
        let matches_weakly = |tags: &[EntityTag]| {
            etag.as_ref()
                .is_some_and(|e| tags.iter().any(|t| t.opaque == e.opaque))
        };
        // 1. If-Match present: false when there is no current representation, for * when
        //    there is none, and for a list unless one tag matches strongly.
        if let Some(m) = &p.if_match {
            let ok = match m {
                TagList::Any => exists,
                TagList::Tags(tags) => exists && matches_strongly(tags),
            };
            if !ok {
                return Decision::PreconditionFailed(Condition::IfMatch);
            }
        }
        // 2. If-Match absent and If-Unmodified-Since present.
        if p.if_match.is_none() {
            if let (Some(date), Some(m)) = (p.if_unmodified_since, modified) {
                if m > date.0 {
                    return Decision::PreconditionFailed(Condition::IfUnmodifiedSince);
                }
            }
        }
        // 3. If-None-Match present.
        if let Some(n) = &p.if_none_match {
            let ok = match n {
                TagList::Any => !exists,
                TagList::Tags(tags) => !(exists && matches_weakly(tags)),
            };
            if !ok {
                return if get_or_head {
                    Decision::NotModified(Condition::IfNoneMatch)
                } else {
                    Decision::PreconditionFailed(Condition::IfNoneMatch)
                };
            }
        }
        // 4. GET or HEAD, If-None-Match absent, If-Modified-Since present.
        if get_or_head && p.if_none_match.is_none() {
            if let (Some(date), Some(m)) = (p.if_modified_since, modified) {
                if m <= date.0 {
                    return Decision::NotModified(Condition::IfModifiedSince);
                }
            }
        }
        Decision::Proceed
    }

    fn any_tag() -> impl Strategy<Value = EntityTag> {
        (
            any::<bool>(),
            prop::sample::select(vec!["v1", "v2", "v3", ""]),
        )
            .prop_map(|(weak, o)| EntityTag {
                weak,
                opaque: o.to_owned(),
            })
    }

    fn any_list() -> impl Strategy<Value = Option<TagList>> {
        prop_oneof![
            Just(None),
            Just(Some(TagList::Any)),
            prop::collection::vec(any_tag(), 0..3).prop_map(|t| Some(TagList::Tags(t))),
        ]
    }

    fn any_time() -> impl Strategy<Value = Option<Timestamp>> {
        prop::option::of((0i64..4_000).prop_map(|ms| Timestamp(1_000_000 + ms)))
    }

    proptest! {
        #[test]
        fn the_write_guard_agrees_with_the_evaluator(
            if_match in any_list(),
            if_none_match in any_list(),
            ius in any_time(),
            version in prop::option::of(1u64..4),
            modified in 0i64..4_000,
            method in prop::sample::select(vec![Method::PUT, Method::PATCH, Method::DELETE, Method::POST]),
        ) {
            let p = Preconditions {
                if_match,
                if_none_match,
                if_modified_since: None,
                if_unmodified_since: ius.map(whole_seconds),
            };
            let changed_at = Timestamp(1_000_000 + modified);
            let validators = version.map(|v| Validators {
                etag: Some(EntityTag::from_version(v)),
                last_modified: Some(changed_at),
            });
            let proceeds = p.evaluate(&method, validators.as_ref()) == Decision::Proceed;
            prop_assert_eq!(
                p.write_guard().admits(version.map(|v| (v, changed_at))),
                proceeds,
                "{:?} on {:?}", p, version
            );
        }
    }

    proptest! {
        #[test]
        fn the_evaluator_agrees_with_the_reference(
            if_match in any_list(),
            if_none_match in any_list(),
            ims in any_time(),
            ius in any_time(),
            exists in any::<bool>(),
            etag in prop::option::of(any_tag()),
            modified in any_time(),
            method in prop::sample::select(vec![Method::GET, Method::HEAD, Method::PUT, Method::PATCH, Method::DELETE, Method::POST]),
        ) {
            let whole = |t: Option<Timestamp>| t.map(whole_seconds);
            let p = Preconditions {
                if_match,
                if_none_match,
                if_modified_since: whole(ims),
                if_unmodified_since: whole(ius),
            };
            let current = exists.then_some(Validators { etag, last_modified: modified });
            let decision = p.evaluate(&method, current.as_ref());
            prop_assert_eq!(decision, reference(&p, &method, current.as_ref()));
            // What must hold whatever the inputs:
            let read = method == Method::GET || method == Method::HEAD;
            if !read {
                prop_assert!(!matches!(decision, Decision::NotModified(_)));
            }
            if let (Some(TagList::Tags(tags)), Decision::Proceed) = (&p.if_match, decision) {
                prop_assert!(tags.iter().any(|t| !t.is_weak()), "a weak tag authorised a write");
            }
            if p.if_none_match == Some(TagList::Any) && exists && !read {
                prop_assert_ne!(decision, Decision::Proceed);
            }
        }

        #[test]
        fn printed_lists_parse_back(tags in prop::collection::vec(any_tag(), 1..4)) {
            let list = TagList::Tags(tags);
            prop_assert_eq!(TagList::parse("If-Match", [list.to_string().as_str()]).unwrap(), list);
        }

        #[test]
        fn parsing_never_panics(text in "\\PC{0,40}") {
            let _ = TagList::parse("If-Match", [text.as_str()]);
            let _ = EntityTag::parse(&text);
        }
    }
}
