//! Which headers cross the proxy and which are stored for replay.

use http::header::{HeaderMap, HeaderName};

/// RFC 9110 §7.6.1: connection-specific fields a proxy must not forward, plus the fields the
/// `Connection` header itself names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over names already parsed, comparing against constants: most messages carry
    // none of these, or only `connection`, and removing each of nine names by string would
    // parse and hash every one of them (a tenth of a pass-through request's instructions).
    let present: Vec<HeaderName> = headers
        .keys()
        .filter(|name| HOP_BY_HOP.contains(name))
        .cloned()
        .collect();
    if present.is_empty() {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(&present) {
        headers.remove(name);
    }
}

// A `static`, not a `const`: a `const` array would be built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 9] = [
    http::header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    http::header::PROXY_AUTHENTICATE,
    http::header::PROXY_AUTHORIZATION,
    http::header::TE,
    http::header::TRAILER,
    http::header::TRANSFER_ENCODING,
    http::header::UPGRADE,
];

/// Headers worth replaying: everything but hop-by-hop fields, cookies (a session must never
/// be handed to whoever replays the key), and fields describing this one message's framing
/// or moment, which the server recomputes.
pub fn stored_headers(headers: &HeaderMap) -> Vec<(String, Vec<u8>)> {
    let mut h = headers.clone();
    strip_hop_by_hop(&mut h);
    h.iter()
        .filter(|(name, _)| {
            !matches!(
                name.as_str(),
                "set-cookie" | "set-cookie2" | "content-length" | "date"
            )
        })
        .map(|(name, value)| (name.as_str().to_owned(), value.as_bytes().to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "5".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn never_stores_cookies() {
        let mut h = HeaderMap::new();
        h.insert("set-cookie", "session=abc".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("content-length", "2".parse().unwrap());
        h.insert("location", "/orders/1".parse().unwrap());
        let stored = stored_headers(&h);
        let names: Vec<&str> = stored.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["content-type", "location"]);
    }
}
