//! Who a record belongs to. A key is only ever looked up inside its scope, so the same key
//! sent by two tenants, or to two routes, names two independent records.

use sha2::{Digest, Sha256};
use std::fmt;

use crate::IdempotencyKey;

/// The party a request acts for. The prefixes keep the sources apart: a header value can
/// never collide with a credential hash or with the anonymous tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(String);

impl Tenant {
    /// The tenant shared by every request without one of its own: the route's source is
    /// `anonymous`, or the header it names is absent.
    pub fn anonymous() -> Self {
        Tenant("anon".to_owned())
    }
    /// A tenant named by a trusted header (set by an authenticating proxy in front). Values
    /// that are not UTF-8 are kept as hex, so two different byte strings never name one tenant.
    pub fn from_header_value(v: &[u8]) -> Self {
        match std::str::from_utf8(v) {
            Ok(s) => Tenant(format!("hdr:{s}")),
            Err(_) => Tenant(format!("hdrx:{}", crate::fingerprint::hex(v))),
        }
    }
    /// A tenant derived from the `Authorization` value. Only a hash is kept: two different
    /// credentials never share a tenant, and the credential itself is never stored.
    pub fn from_authorization(v: &[u8]) -> Self {
        let digest = Sha256::digest(v);
        Tenant(format!("auth:{}", crate::fingerprint::hex(&digest[..16])))
    }
    /// Rebuilds a tenant from its stored form.
    pub fn from_stored(s: String) -> Self {
        Tenant(s)
    }
    /// The stored form, with its source's prefix (`auth:`, `hdr:`, `hdrx:`, or `anon`);
    /// [`from_stored`](Self::from_stored) reads it back.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// (tenant, method, route): the namespace of keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope {
    /// Who the request acts for; a stored response is never replayed to another tenant.
    pub tenant: Tenant,
    /// The request method as sent (`POST`).
    pub method: String,
    /// The request path without its query.
    pub route: String,
}

/// The full identity of one record.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordKey {
    /// The namespace the key is looked up in.
    pub scope: Scope,
    /// The client's key, unique only within `scope`.
    pub key: IdempotencyKey,
}

impl RecordKey {
    /// The record of `key` sent by `tenant` with `method` to `route` (the request path
    /// without its query).
    pub fn new(tenant: Tenant, method: &str, route: &str, key: IdempotencyKey) -> Self {
        RecordKey {
            scope: Scope {
                tenant,
                method: method.to_owned(),
                route: route.to_owned(),
            },
            key,
        }
    }

    /// Gives back whatever spare capacity its strings have, for a key kept a long time (the
    /// replay cache charges each entry for exactly what it holds).
    pub fn shrink_to_fit(&mut self) {
        self.scope.tenant.0.shrink_to_fit();
        self.scope.method.shrink_to_fit();
        self.scope.route.shrink_to_fit();
        self.key.shrink_to_fit();
    }
}

impl fmt::Display for RecordKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} key={}",
            self.scope.tenant, self.scope.method, self.scope.route, self.key
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_sources_never_collide() {
        let a = Tenant::from_authorization(b"Bearer one");
        let b = Tenant::from_authorization(b"Bearer two");
        assert_ne!(a, b);
        assert_eq!(a, Tenant::from_authorization(b"Bearer one"));
        assert!(!a.as_str().contains("one"), "the credential is never kept");
        assert_ne!(Tenant::from_header_value(b"anon"), Tenant::anonymous());
        assert_ne!(Tenant::from_header_value(a.as_str().as_bytes()), a);
        assert_ne!(
            Tenant::from_header_value(b"\xff"),
            Tenant::from_header_value(b"\xfe")
        );
        assert_ne!(
            Tenant::from_header_value(b"\xff"),
            Tenant::from_header_value("\u{fffd}".as_bytes())
        );
    }
}
