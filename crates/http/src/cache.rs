//! A bounded in-process cache of completed records, so retries of finished requests are
//! replayed without a store round trip.
//!
//! Sound because a completed record never changes: it only disappears when it expires, and an
//! entry here carries that same expiry. The cache holds nothing about keys in progress, so
//! every claim still goes to the store. Eviction is first in, first out.
//!
//! The bound is on memory really held, not on payload bytes: every entry is charged for each
//! of its allocations as the allocator sizes them, plus its share of the set and the queue.
//! Two things keep that charge true:
//! - an entry owns exactly what it charges for: bodies are copied out of the buffer they were
//!   read into (a response read by hyper is a slice of the connection's whole read buffer,
//!   which a slice keeps alive), and header lists are shrunk to their length;
//! - the set and the eviction queue share one allocation per entry.

use std::borrow::Borrow;
use std::collections::{HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::mem::size_of;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use oncely_core::sync::LockIgnoringPoison;
use oncely_core::{Fingerprint, RecordKey, StoredResponse, Timestamp};

pub(crate) struct ReplayCache {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashSet<Slot>,
    order: VecDeque<Slot>,
    /// What the entries hold, without the set's and queue's tables.
    entry_bytes: usize,
    /// The most the set's capacity has been: its table never shrinks, while `capacity()`
    /// drops as removed slots' markers accumulate.
    set_capacity: usize,
}

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) fingerprint: Fingerprint,
    pub(crate) expires_at: Timestamp,
    pub(crate) response: StoredResponse,
}

struct Cached {
    key: RecordKey,
    entry: Entry,
}

/// One allocation per entry, shared by the set and the eviction queue, so a table slot is a
/// pointer: growing the set never copies (or briefly doubles) the entries themselves.
#[derive(Clone)]
struct Slot(Arc<Cached>);

impl Borrow<RecordKey> for Slot {
    fn borrow(&self) -> &RecordKey {
        &self.0.key
    }
}
impl Hash for Slot {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.key.hash(state)
    }
}
impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.0.key == other.0.key
    }
}
impl Eq for Slot {}

/// What the allocator really hands out for a request of `n` bytes: glibc's malloc adds an
/// 8-byte header, rounds to 16 and never gives less than 32. Other allocators are close to it.
fn allocation(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        ((n + 8 + 15) & !15).max(32)
    }
}

/// The memory one entry holds, once compacted: its shared allocation, the key's four strings,
/// the header list and the body.
fn held_by(c: &Cached) -> usize {
    let key = &c.key;
    let response = &c.entry.response;
    let key_strings = allocation(key.scope.tenant.as_str().len())
        + allocation(key.scope.method.len())
        + allocation(key.scope.route.len())
        + allocation(key.key.as_str().len());
    let headers: usize = response
        .headers
        .iter()
        .map(|(n, v)| allocation(n.capacity()) + allocation(v.capacity()))
        .sum::<usize>()
        + allocation(response.headers.capacity() * size_of::<(String, Vec<u8>)>());
    // A body copied into a `Vec` of its exact length becomes `Bytes` without a new allocation,
    // and gains a small shared header the first time it is cloned (every replay clones it).
    let body = if response.body.is_empty() {
        0
    } else {
        allocation(response.body.len()) + allocation(3 * size_of::<usize>())
    };
    // The Arc's allocation: two counters and the entry.
    allocation(2 * size_of::<usize>() + size_of::<Cached>()) + key_strings + headers + body
}

impl Inner {
    /// The set's and the queue's tables. hashbrown keeps one control byte per bucket and at
    /// most 7/8 of its buckets full.
    fn table_bytes(&self) -> usize {
        self.set_capacity * 8 / 7 * (size_of::<Slot>() + 1)
            + self.order.capacity() * size_of::<Slot>()
    }

    fn held(&self) -> usize {
        self.entry_bytes + self.table_bytes()
    }

    fn forget(&mut self, key: &RecordKey) -> bool {
        match self.entries.take(key) {
            Some(slot) => {
                self.entry_bytes -= held_by(&slot.0);
                true
            }
            None => false,
        }
    }
}

/// The same entry, owning exactly what it needs and nothing it shares with a larger buffer.
fn compact(mut key: RecordKey, mut e: Entry) -> Cached {
    key.shrink_to_fit();
    e.response.body = Bytes::from(e.response.body.to_vec());
    for (n, v) in &mut e.response.headers {
        n.shrink_to_fit();
        v.shrink_to_fit();
    }
    e.response.headers.shrink_to_fit();
    Cached { key, entry: e }
}

impl ReplayCache {
    pub(crate) fn new(max_bytes: usize) -> Self {
        ReplayCache {
            max_bytes,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update below leaves the set and the queue consistent before it can panic.
        self.inner.lock_ignoring_poison()
    }

    /// The completed record for `key`, unless it has expired at `now`.
    pub(crate) fn get(&self, key: &RecordKey, now: Timestamp) -> Option<Entry> {
        if self.max_bytes == 0 {
            return None;
        }
        self.lock()
            .entries
            .get(key)
            .map(|slot| &slot.0.entry)
            .filter(|e| e.expires_at > now)
            .cloned()
    }

    /// Keeps `entry` for `key`, unless an entry still live at `now` is there already: a
    /// completed record never changes, so that one is the same (and replacing it would cost a
    /// pass over the queue, on a path every concurrent retry of a finished key takes).
    pub(crate) fn insert(&self, key: RecordKey, entry: Entry, now: Timestamp) {
        // One huge response must not flush everything else; checked before the copy below.
        if self.max_bytes == 0 || entry.response.body.len() > self.max_bytes / 8 {
            return;
        }
        let live = |inner: &Inner| {
            inner
                .entries
                .get(&key)
                .is_some_and(|slot| slot.0.entry.expires_at > now)
        };
        if live(&self.lock()) {
            return;
        }
        let cached = compact(key, entry);
        let weight = held_by(&cached);
        if weight > self.max_bytes / 8 {
            return;
        }
        let slot = Slot(Arc::new(cached));
        let mut inner = self.lock();
        // An expired entry for the key, or one that raced in since the check above.
        if inner.forget(&slot.0.key) {
            inner.order.retain(|s| s != &slot);
        }
        inner.entries.insert(slot.clone());
        inner.set_capacity = inner.set_capacity.max(inner.entries.capacity());
        inner.order.push_back(slot);
        inner.entry_bytes += weight;
        while inner.held() > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.forget(&oldest.0.key);
        }
    }

    /// Forgets `key` (an operator evicted it): a linear pass over the order, fine at the
    /// rate of manual evictions.
    pub(crate) fn remove(&self, key: &RecordKey) {
        let mut inner = self.lock();
        if inner.forget(key) {
            inner.order.retain(|s| s.0.key != *key);
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
    use crate::test_alloc::net_allocated;
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

    /// An entry as the gateway makes one from an upstream's answer: a short JSON body that is
    /// a slice of hyper's 8 KiB read buffer, and the headers a typical service sends.
    fn proxied_entry(i: usize) -> (RecordKey, Entry) {
        let read_buffer = Bytes::from(vec![b' '; 8192]);
        let body = read_buffer.slice(100..147);
        drop(read_buffer);
        let mut headers = Vec::with_capacity(16);
        headers.push(("content-type".to_owned(), b"application/json".to_vec()));
        headers.push((
            "x-request-id".to_owned(),
            format!("req-{i:032}").into_bytes(),
        ));
        headers.push(("location".to_owned(), format!("/orders/{i}").into_bytes()));
        let key = RecordKey::new(
            Tenant::from_authorization(b"Bearer secret"),
            "POST",
            "/orders",
            IdempotencyKey::new(&format!("0190a5c8-7d3e-7{i:03x}-8f00-{i:012x}")).unwrap(),
        );
        let entry = Entry {
            fingerprint: Fingerprint::compute("POST", "/orders", None, b"{}"),
            expires_at: Timestamp(i64::MAX),
            response: StoredResponse {
                status: 201,
                headers,
                body,
            },
        };
        (key, entry)
    }

    #[test]
    fn holds_no_more_memory_than_its_bound() {
        // Counted by the allocator on this thread (the sizes asked for; malloc's own overhead,
        // which the charge adds, is not seen here), not by the cache's own arithmetic.
        for max in [256 << 10, 2 << 20] {
            let before = net_allocated();
            let cache = ReplayCache::new(max);
            for i in 0..40_000 {
                let (k, e) = proxied_entry(i);
                cache.insert(k, e, Timestamp(0));
                // Replays clone entries; what a clone adds to the stored body stays counted.
                if i % 7 == 0 {
                    let _ = cache.get(&proxied_entry(i).0, Timestamp(0));
                }
            }
            let held = net_allocated() - before;
            let entries = cache.len();
            assert!(
                held <= max as isize,
                "a {max}-byte cache holds {held} bytes in {entries} entries"
            );
            // And the charge is not so cautious that the cache wastes most of its room.
            assert!(
                held >= max as isize / 2,
                "a {max}-byte cache holds only {held} bytes in {entries} entries"
            );
            assert!(cache.get(&proxied_entry(39_999).0, Timestamp(0)).is_some());
            drop(cache);
            assert!(net_allocated() - before <= 0, "dropping the cache frees it");
        }
    }

    #[test]
    fn expired_entries_are_never_served() {
        let c = ReplayCache::new(1 << 20);
        c.insert(key("a"), entry(10, 100), Timestamp(0));
        assert!(c.get(&key("a"), Timestamp(99)).is_some());
        assert!(c.get(&key("a"), Timestamp(100)).is_none());
    }

    #[test]
    fn bounded_by_bytes_oldest_first() {
        let c = ReplayCache::new(32 * 1024);
        for i in 0..100 {
            c.insert(key(&format!("k{i}")), entry(500, 1000), Timestamp(0));
        }
        assert!(c.len() < 100 && c.len() > 5, "{}", c.len());
        assert!(c.get(&key("k99"), Timestamp(0)).is_some(), "newest kept");
        assert!(c.get(&key("k0"), Timestamp(0)).is_none(), "oldest evicted");
        c.insert(key("huge"), entry(4096, 1000), Timestamp(0));
        assert!(
            c.get(&key("huge"), Timestamp(0)).is_none(),
            "too large to cache"
        );
    }

    #[test]
    fn a_removed_entry_is_gone_and_its_bytes_freed() {
        let c = ReplayCache::new(1 << 20);
        c.insert(key("a"), entry(100, 10), Timestamp(0));
        c.insert(key("b"), entry(100, 10), Timestamp(0));
        let two = c.lock().entry_bytes;
        c.remove(&key("a"));
        assert!(c.get(&key("a"), Timestamp(0)).is_none());
        assert!(c.get(&key("b"), Timestamp(0)).is_some());
        assert_eq!(c.lock().entry_bytes, two / 2);
        c.insert(key("a"), entry(100, 10), Timestamp(0));
        assert_eq!(c.len(), 2);
        assert_eq!(c.lock().order.len(), 2, "no stale place left behind");
        assert_eq!(c.lock().entry_bytes, two);
        // A live entry is kept as it is (a completed record never changes)...
        c.insert(key("a"), entry(200, 10), Timestamp(0));
        assert_eq!(c.lock().entry_bytes, two);
        // ...an expired one is replaced, with its place in the queue.
        c.insert(key("a"), entry(200, 30), Timestamp(20));
        assert_eq!(c.lock().order.len(), 2);
        let hit = c.get(&key("a"), Timestamp(20)).expect("the new entry");
        assert_eq!(hit.response.body.len(), 200);
        assert!(c.lock().entry_bytes > two);
    }

    #[test]
    fn disabled_with_zero_bytes() {
        let c = ReplayCache::new(0);
        c.insert(key("a"), entry(1, 100), Timestamp(0));
        assert!(c.get(&key("a"), Timestamp(0)).is_none());
    }
}
