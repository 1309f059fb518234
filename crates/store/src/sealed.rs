//! Stored responses encrypted at rest: a store that seals every response with AES-256-GCM
//! before another store keeps it, and opens it again on the way back. Responses hold order
//! and payment data; whoever reads the database (a backup, a replica, an operator) then
//! sees ciphertext, and a record copied under another key does not open.
//!
//! - The associated data is the record's key (scope and idempotency key) and its status,
//!   so a sealed response moved to another record, or given another status, fails to open.
//! - Each sealed record names the key that sealed it. A [`Keyring`] holds several keys:
//!   the first seals, all of them open, so keys rotate without losing a replay (put the new
//!   key first, keep the old one until its records have expired).
//! - A record sealed with a key the ring lacks is [`StoreError::Corrupt`], naming the key:
//!   the engine fails closed on it and never executes the request again.
//! - Records stored before sealing was turned on open as they are.
//!
//! The sealed form keeps the status in clear and replaces the headers with one marker,
//! `:sealed` (a name no HTTP header can have) whose value is the key id; the body is
//! `nonce (12 bytes) || ciphertext || tag` over `len(headers) || headers || body`. Nonces
//! are random: rotate a key well before 2^32 responses (NIST SP 800-38D).

use std::collections::BTreeMap;
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use bytes::Bytes;
use oncely_core::{
    ClaimOutcome, Fingerprint, LeaseToken, Record, RecordKey, RecordState, StoredResponse,
    Timestamp,
};

use crate::{IdempotencyStore, StoreAdmin, StoreError, StoreResult, StoreStats};

/// The header that marks a sealed response; its value is the id of the key that sealed it.
const MARKER: &str = ":sealed";
const NONCE: usize = 12;

/// Why a keyring could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// No key at all.
    #[error("an encryption keyring needs at least one key")]
    Empty,
    /// A key id that cannot be stored beside a record.
    #[error("key id {0:?}: use 1-64 characters among a-z, A-Z, 0-9, `-`, `_` and `.`")]
    BadId(String),
    /// A key that is not 32 bytes written as 64 hex digits.
    #[error("key {0:?}: expected 64 hex digits (32 bytes), as `openssl rand -hex 32` writes")]
    BadKey(String),
    /// Two keys with one id.
    #[error("key id {0:?} is given twice")]
    Duplicate(String),
}

/// The keys a [`SealedStore`] seals and opens with: the first seals, every one opens.
#[derive(Clone)]
pub struct Keyring {
    sealing: String,
    keys: BTreeMap<String, Aes256Gcm>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material.
        f.debug_struct("Keyring")
            .field("sealing", &self.sealing)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Keyring {
    /// A ring of `(id, key as 64 hex digits)` pairs; the first seals.
    pub fn from_hex<'a>(
        keys: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Keyring, KeyringError> {
        let mut ring = BTreeMap::new();
        let mut sealing = None;
        for (id, hex) in keys {
            let valid_id = !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !valid_id {
                return Err(KeyringError::BadId(id.to_owned()));
            }
            let bytes = oncely_core::fingerprint::unhex(hex.trim())
                .filter(|b| b.len() == 32)
                .ok_or_else(|| KeyringError::BadKey(id.to_owned()))?;
            let cipher = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&bytes));
            if ring.insert(id.to_owned(), cipher).is_some() {
                return Err(KeyringError::Duplicate(id.to_owned()));
            }
            sealing.get_or_insert_with(|| id.to_owned());
        }
        Ok(Keyring {
            sealing: sealing.ok_or(KeyringError::Empty)?,
            keys: ring,
        })
    }

    /// The id of the key that seals.
    pub fn sealing_key(&self) -> &str {
        &self.sealing
    }

    fn aad(key: &RecordKey, status: u16) -> Vec<u8> {
        let mut aad = key.to_string().into_bytes();
        aad.extend_from_slice(&status.to_be_bytes());
        aad
    }

    /// `response` sealed for the record `key`.
    pub fn seal(&self, key: &RecordKey, response: &StoredResponse) -> StoreResult<StoredResponse> {
        let cipher = self
            .keys
            .get(&self.sealing)
            .ok_or_else(|| StoreError::Corrupt("the sealing key is missing".into()))?;
        let headers = response.encode_headers();
        let mut plain = Vec::with_capacity(4 + headers.len() + response.body.len());
        plain.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        plain.extend_from_slice(&headers);
        plain.extend_from_slice(&response.body);
        let nonce: [u8; NONCE] = rand::random();
        let aad = Self::aad(key, response.status);
        let sealed = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| StoreError::Corrupt("sealing a response failed".into()))?;
        let mut body = Vec::with_capacity(NONCE + sealed.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&sealed);
        Ok(StoredResponse {
            status: response.status,
            headers: vec![(MARKER.to_owned(), self.sealing.clone().into_bytes())],
            body: Bytes::from(body),
        })
    }

    /// `stored` opened, if it is sealed; as it is otherwise (a record from before sealing).
    pub fn open(&self, key: &RecordKey, stored: StoredResponse) -> StoreResult<StoredResponse> {
        let [(name, id)] = stored.headers.as_slice() else {
            return Ok(stored);
        };
        if name != MARKER {
            return Ok(stored);
        }
        let id = String::from_utf8_lossy(id).into_owned();
        let cipher = self.keys.get(&id).ok_or_else(|| {
            StoreError::Corrupt(format!(
                "the response of {key} is sealed with key {id:?}, which is not in the keyring (loaded: {})",
                self.keys.keys().cloned().collect::<Vec<_>>().join(", ")
            ))
        })?;
        let unreadable = || {
            StoreError::Corrupt(format!(
                "the sealed response of {key} does not open with key {id:?}: altered, or moved from another record"
            ))
        };
        if stored.body.len() < NONCE {
            return Err(unreadable());
        }
        let (nonce, sealed) = stored.body.split_at(NONCE);
        let plain = cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &Self::aad(key, stored.status),
                },
            )
            .map_err(|_| unreadable())?;
        let len = plain
            .get(..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(|b| u32::from_be_bytes(b) as usize)
            .ok_or_else(unreadable)?;
        let headers = plain
            .get(4..4 + len)
            .and_then(StoredResponse::decode_headers)
            .ok_or_else(unreadable)?;
        Ok(StoredResponse {
            status: stored.status,
            headers,
            body: Bytes::copy_from_slice(&plain[4 + len..]),
        })
    }

    fn open_record(&self, key: &RecordKey, mut record: Record) -> StoreResult<Record> {
        if let RecordState::Completed { response } = record.state {
            record.state = RecordState::Completed {
                response: self.open(key, response)?,
            };
        }
        Ok(record)
    }
}

/// A store whose completed responses are sealed in `inner` (see the module's notes).
pub struct SealedStore<S> {
    inner: S,
    ring: Keyring,
}

impl<S> SealedStore<S> {
    /// Seals what goes into `inner` with `ring`.
    pub fn new(inner: S, ring: Keyring) -> SealedStore<S> {
        SealedStore { inner, ring }
    }
}

#[async_trait]
impl<S: IdempotencyStore> IdempotencyStore for SealedStore<S> {
    async fn claim(
        &self,
        key: &RecordKey,
        fingerprint: Fingerprint,
        lease: Duration,
        ttl: Duration,
    ) -> StoreResult<ClaimOutcome> {
        match self.inner.claim(key, fingerprint, lease, ttl).await? {
            ClaimOutcome::Exists(record) => {
                Ok(ClaimOutcome::Exists(self.ring.open_record(key, record)?))
            }
            other => Ok(other),
        }
    }

    async fn complete(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        response: StoredResponse,
        ttl: Duration,
    ) -> StoreResult<()> {
        let sealed = self.ring.seal(key, &response)?;
        self.inner.complete(key, token, sealed, ttl).await
    }

    async fn release(&self, key: &RecordKey, token: LeaseToken) -> StoreResult<()> {
        self.inner.release(key, token).await
    }

    async fn renew(
        &self,
        key: &RecordKey,
        token: LeaseToken,
        lease: Duration,
    ) -> StoreResult<Timestamp> {
        self.inner.renew(key, token, lease).await
    }

    async fn get(&self, key: &RecordKey) -> StoreResult<Option<Record>> {
        match self.inner.get(key).await? {
            Some(record) => Ok(Some(self.ring.open_record(key, record)?)),
            None => Ok(None),
        }
    }
}

#[async_trait]
impl<S: StoreAdmin> StoreAdmin for SealedStore<S> {
    async fn purge_expired(&self, batch: usize) -> StoreResult<u64> {
        self.inner.purge_expired(batch).await
    }

    async fn stats(&self) -> StoreResult<StoreStats> {
        self.inner.stats().await
    }

    async fn evict(&self, key: &RecordKey) -> StoreResult<bool> {
        self.inner.evict(key).await
    }

    async fn list_in_progress(&self, limit: usize) -> StoreResult<Vec<(RecordKey, Record)>> {
        // In-progress records hold no response: nothing to open.
        self.inner.list_in_progress(limit).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oncely_core::{IdempotencyKey, Tenant};

    fn key(k: &str) -> RecordKey {
        RecordKey::new(
            Tenant::from_header_value(b"acme"),
            "POST",
            "/payments",
            IdempotencyKey::new(k).unwrap(),
        )
    }

    fn response() -> StoredResponse {
        StoredResponse {
            status: 201,
            headers: vec![
                ("content-type".into(), b"application/json".to_vec()),
                ("location".into(), b"/payments/7".to_vec()),
            ],
            body: Bytes::from_static(br#"{"id":7,"card":"4242"}"#),
        }
    }

    fn ring(keys: &[(&str, char)]) -> Keyring {
        let hex: Vec<(String, String)> = keys
            .iter()
            .map(|(id, c)| ((*id).to_owned(), c.to_string().repeat(64)))
            .collect();
        Keyring::from_hex(hex.iter().map(|(i, h)| (i.as_str(), h.as_str()))).unwrap()
    }

    #[test]
    fn a_sealed_response_opens_byte_identical_and_hides_its_content() {
        let r = ring(&[("k1", 'a')]);
        let sealed = r.seal(&key("x"), &response()).unwrap();
        assert_eq!(sealed.status, 201);
        assert_eq!(sealed.headers, [(MARKER.to_owned(), b"k1".to_vec())]);
        let text = String::from_utf8_lossy(&sealed.body);
        assert!(
            !text.contains("4242") && !text.contains("location"),
            "{text}"
        );
        assert_eq!(r.open(&key("x"), sealed.clone()).unwrap(), response());
        // A fresh nonce each time: the same response never seals to the same bytes.
        assert_ne!(r.seal(&key("x"), &response()).unwrap().body, sealed.body);
    }

    #[test]
    fn keys_rotate_without_losing_a_replay() {
        let old = ring(&[("2026-06", 'a')]);
        let sealed_before = old.seal(&key("x"), &response()).unwrap();
        // The new key first, the old one kept.
        let rotated = ring(&[("2026-12", 'b'), ("2026-06", 'a')]);
        assert_eq!(rotated.sealing_key(), "2026-12");
        assert_eq!(
            rotated.open(&key("x"), sealed_before.clone()).unwrap(),
            response()
        );
        let sealed_after = rotated.seal(&key("y"), &response()).unwrap();
        assert_eq!(sealed_after.headers[0].1, b"2026-12");
        // The old key dropped too early: a clear error naming the missing key.
        let too_early = ring(&[("2026-12", 'b')]);
        let err = too_early
            .open(&key("x"), sealed_before)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sealed with key \"2026-06\"") && err.contains("loaded: 2026-12"),
            "{err}"
        );
    }

    #[test]
    fn a_response_moved_altered_or_restatused_does_not_open() {
        let r = ring(&[("k1", 'a')]);
        let sealed = r.seal(&key("x"), &response()).unwrap();
        let moved = r.open(&key("y"), sealed.clone()).unwrap_err().to_string();
        assert!(moved.contains("does not open"), "{moved}");
        let mut altered = sealed.clone();
        let mut body = altered.body.to_vec();
        body[20] ^= 1;
        altered.body = body.into();
        assert!(r.open(&key("x"), altered).is_err());
        let restatused = StoredResponse {
            status: 200,
            ..sealed.clone()
        };
        assert!(r.open(&key("x"), restatused).is_err());
        let short = StoredResponse {
            body: Bytes::from_static(b"abc"),
            ..sealed
        };
        assert!(r.open(&key("x"), short).is_err());
    }

    #[test]
    fn records_from_before_sealing_open_as_they_are() {
        let r = ring(&[("k1", 'a')]);
        assert_eq!(r.open(&key("x"), response()).unwrap(), response());
        let one_header = StoredResponse {
            headers: vec![("content-type".into(), b"text/plain".to_vec())],
            ..response()
        };
        assert_eq!(r.open(&key("x"), one_header.clone()).unwrap(), one_header);
    }

    #[test]
    fn bad_keyrings_are_refused_with_a_reason() {
        let hex = "ab".repeat(32);
        assert_eq!(Keyring::from_hex([]).unwrap_err(), KeyringError::Empty);
        assert!(matches!(
            Keyring::from_hex([("k 1", hex.as_str())]),
            Err(KeyringError::BadId(_))
        ));
        assert!(matches!(
            Keyring::from_hex([("k1", "abcd")]),
            Err(KeyringError::BadKey(_))
        ));
        assert!(matches!(
            Keyring::from_hex([("k1", hex.as_str()), ("k1", hex.as_str())]),
            Err(KeyringError::Duplicate(_))
        ));
        let r = Keyring::from_hex([("k1", hex.as_str())]).unwrap();
        assert!(!format!("{r:?}").contains(&hex), "no key material in Debug");
    }
}
