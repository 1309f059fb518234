//! Between rows and the model's values.
//!
//! Every column is read with `try_get` into an `Option` and checked by hand, so a malformed
//! row becomes a [`StoreError::Corrupt`] naming the key and the column: never a panic, and
//! never a misleading "unavailable" that would make the gateway fail closed forever.

use bytes::Bytes;
use oncely_core::{Fingerprint, LeaseToken, Record, RecordState, StoredResponse, Timestamp};
use oncely_store::{StoreError, StoreResult};
use tokio_postgres::Row;

pub(crate) const STATE_IN_PROGRESS: i16 = 0;
pub(crate) const STATE_COMPLETED: i16 = 1;

/// The record columns, in the order [`record_from_row`] reads them from `first`.
pub(crate) const RECORD_COLUMNS: &str = "r.fingerprint, r.created_at, r.expires_at, r.state, \
     r.lease_token, r.lease_expires_at, r.status, r.headers, r.body";

/// Any failure to reach or use the database: the engine fails closed on it. The message
/// carries the whole chain of causes ("error connecting to server: Connection refused"),
/// since the outermost one alone rarely says what to fix.
pub(crate) fn unavailable(e: impl std::error::Error) -> StoreError {
    StoreError::Unavailable(format!("postgres: {}", oncely_db::describe(&e)))
}

/// An operation past its bound counts as the store being unavailable too: the gateway fails
/// closed rather than hang.
pub(crate) fn no_answer(e: oncely_db::postgres::NoAnswer) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(crate) fn token_bytes(t: LeaseToken) -> Vec<u8> {
    // Big-endian so the bytea reads like the hex form in logs.
    t.0.to_be_bytes().to_vec()
}

pub(crate) fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// Reads the record columns starting at column `first`.
pub(crate) fn record_from_row(
    row: &Row,
    first: usize,
    what: &dyn std::fmt::Display,
) -> StoreResult<Record> {
    let corrupt =
        |column: &str, why: &str| StoreError::Corrupt(format!("{what}: column {column} {why}"));
    let int = |i: usize, name: &str| -> StoreResult<i64> {
        row.try_get::<_, Option<i64>>(first + i)
            .map_err(|_| corrupt(name, "has the wrong type"))?
            .ok_or_else(|| corrupt(name, "is NULL"))
    };
    let small = |i: usize, name: &str| -> StoreResult<i16> {
        row.try_get::<_, Option<i16>>(first + i)
            .map_err(|_| corrupt(name, "has the wrong type"))?
            .ok_or_else(|| corrupt(name, "is NULL"))
    };
    let blob = |i: usize, name: &str| -> StoreResult<&[u8]> {
        row.try_get::<_, Option<&[u8]>>(first + i)
            .map_err(|_| corrupt(name, "has the wrong type"))?
            .ok_or_else(|| corrupt(name, "is NULL"))
    };

    let fingerprint = blob(0, "fingerprint")?
        .try_into()
        .map(Fingerprint)
        .map_err(|_| corrupt("fingerprint", "is not 32 bytes"))?;
    let created_at = Timestamp(int(1, "created_at")?);
    let expires_at = Timestamp(int(2, "expires_at")?);
    let state = match small(3, "state")? {
        STATE_IN_PROGRESS => RecordState::InProgress {
            token: blob(4, "lease_token")?
                .try_into()
                .map(|b: [u8; 16]| LeaseToken(u128::from_be_bytes(b)))
                .map_err(|_| corrupt("lease_token", "is not 16 bytes"))?,
            lease_expires_at: Timestamp(int(5, "lease_expires_at")?),
        },
        STATE_COMPLETED => {
            let status = u16::try_from(small(6, "status")?)
                .ok()
                .filter(|s| (100..=999).contains(s))
                .ok_or_else(|| corrupt("status", "is not an HTTP status"))?;
            let headers = StoredResponse::decode_headers(blob(7, "headers")?)
                .ok_or_else(|| corrupt("headers", "does not decode"))?;
            let body = Bytes::copy_from_slice(blob(8, "body")?);
            RecordState::Completed {
                response: StoredResponse {
                    status,
                    headers,
                    body,
                },
            }
        }
        other => return Err(corrupt("state", &format!("holds an unknown state {other}"))),
    };
    Ok(Record {
        fingerprint,
        created_at,
        expires_at,
        state,
    })
}
