//! A bounded in-process cache of completed records, so retries of finished requests are
//! replayed without a store round trip.
//!
//! Sound because a completed record never changes: it only disappears when it expires, and an
//! entry here carries that same expiry. The cache holds nothing about keys in progress, so
//! every claim still goes to the store. Eviction is first in, first out, by entry count and
//! by bytes.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use oncely_core::{Fingerprint, RecordKey, StoredResponse, Timestamp};

pub(crate) struct ReplayCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<RecordKey, Entry>,
    order: VecDeque<RecordKey>,
    bytes: usize,
}

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) expires_at: Timestamp,
    pub(crate) response: StoredResponse,
}

fn weight(key: &RecordKey, e: &Entry) -> usize {
    let headers: usize = e
        .response
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum();
    // Key strings and fixed overhead, so that many tiny entries are bounded too.
    e.response.body.len() + headers + key.key.as_str().len() + key.scope.route.len() + 128
}

impl ReplayCache {
    pub(crate) fn new(max_bytes: usize) -> Self {
        ReplayCache {
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update below leaves the maps consistent before it can panic.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The completed record for `key`, unless it has expired at `now`.
    pub(crate) fn get(&self, key: &RecordKey, now: Timestamp) -> Option<Entry> {
        if self.max_bytes == 0 {
            return None;
        }
        self.lock()
            .entries
            .get(key)
            .filter(|e| e.expires_at > now)
            .cloned()
    }

    pub(crate) fn insert(&self, key: RecordKey, entry: Entry) {
        let w = weight(&key, &entry);
        if w > self.max_bytes / 8 {
            // One huge response must not flush everything else.
            return;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.entries.insert(key.clone(), entry.clone()) {
            inner.bytes -= weight(&key, &old);
        } else {
            inner.order.push_back(key.clone());
        }
        inner.bytes += w;
        while inner.bytes > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(e) = inner.entries.remove(&oldest) {
                inner.bytes -= weight(&oldest, &e);
            }
        }
    }

    /// Forgets `key` (an operator evicted it): a linear pass over the order, fine at the
    /// rate of manual evictions.
    pub(crate) fn remove(&self, key: &RecordKey) {
        let mut inner = self.lock();
        if let Some(old) = inner.entries.remove(key) {
            inner.bytes -= weight(key, &old);
            inner.order.retain(|k| k != key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use oncely_core::{IdempotencyKey, Tenant};

    fn key(k: &str) -> RecordKey {
        RecordKey::new(
            Tenant::anonymous(),
            "POST",
            "/o",
            IdempotencyKey::new(k).unwrap(),
        )
    }
    fn entry(body: usize, expires: i64) -> Entry {
        Entry {
            fingerprint: Fingerprint::compute("POST", "/o", None, b""),
            expires_at: Timestamp(expires),
            response: StoredResponse {
                status: 201,
                headers: vec![],
                body: Bytes::from(vec![0; body]),
            },
        }
    }

    #[test]
    fn expired_entries_are_never_served() {
        let c = ReplayCache::new(1 << 20);
        c.insert(key("a"), entry(10, 100));
        assert!(c.get(&key("a"), Timestamp(99)).is_some());
        assert!(c.get(&key("a"), Timestamp(100)).is_none());
    }

    #[test]
    fn bounded_by_bytes_oldest_first() {
        let c = ReplayCache::new(8 * 1024);
        for i in 0..100 {
            c.insert(key(&format!("k{i}")), entry(500, 1000));
        }
        assert!(c.len() < 100 && c.len() > 5, "{}", c.len());
        assert!(c.get(&key("k99"), Timestamp(0)).is_some(), "newest kept");
        assert!(c.get(&key("k0"), Timestamp(0)).is_none(), "oldest evicted");
        c.insert(key("huge"), entry(4096, 1000));
        assert!(
            c.get(&key("huge"), Timestamp(0)).is_none(),
            "too large to cache"
        );
    }

    #[test]
    fn a_removed_entry_is_gone_and_its_bytes_freed() {
        let c = ReplayCache::new(1 << 20);
        c.insert(key("a"), entry(100, 10));
        c.insert(key("b"), entry(100, 10));
        c.remove(&key("a"));
        assert!(c.get(&key("a"), Timestamp(0)).is_none());
        assert!(c.get(&key("b"), Timestamp(0)).is_some());
        c.insert(key("a"), entry(100, 10));
        assert_eq!(c.len(), 2);
        assert_eq!(c.lock().order.len(), 2, "no stale place left behind");
        let one = weight(&key("a"), &entry(100, 10));
        assert_eq!(c.lock().bytes, 2 * one);
    }

    #[test]
    fn disabled_with_zero_bytes() {
        let c = ReplayCache::new(0);
        c.insert(key("a"), entry(1, 100));
        assert!(c.get(&key("a"), Timestamp(0)).is_none());
    }
}
