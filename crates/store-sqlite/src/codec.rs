//! Between the row layout and the model's values.
//!
//! Rows are read through `ValueRef` and checked by hand rather than with typed `get`s so
//! that every malformed column becomes a [`StoreError::Corrupt`] naming the key and the
//! column, and never a panic or a misleading "unavailable".

use bytes::Bytes;
use oncely_core::{Fingerprint, LeaseToken, Record, RecordState, StoredResponse, Timestamp};
use oncely_store::{StoreError, StoreResult};
use rusqlite::types::ValueRef;
use rusqlite::Row;

/// In-progress records: lease columns set, response columns NULL.
pub(crate) const STATE_IN_PROGRESS: i64 = 0;
/// Completed records: response columns set, lease columns NULL.
pub(crate) const STATE_COMPLETED: i64 = 1;

/// The columns [`record_from_row`] expects, in order. A macro rather than a `const` so that
/// statements can be built with `concat!` and stay `&'static str` for the statement cache.
macro_rules! record_columns {
    () => {
        "fingerprint, created_at, expires_at, state, lease_token, lease_expires_at, status, \
         headers, body"
    };
}
pub(crate) use record_columns;

/// Any I/O-side failure of SQLite: the engine fails closed on it.
pub(crate) fn unavailable(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {}", oncely_db::describe(&e)))
}

pub(crate) fn token_bytes(t: LeaseToken) -> [u8; 16] {
    // Big-endian so that the blob reads like the hex form in logs.
    t.0.to_be_bytes()
}

pub(crate) fn token_from_bytes(b: &[u8]) -> Option<LeaseToken> {
    Some(LeaseToken(u128::from_be_bytes(b.try_into().ok()?)))
}

/// Reads one row of [`RECORD_COLUMNS`]. `what` names the record in error messages.
pub(crate) fn record_from_row(row: &Row<'_>, what: &dyn std::fmt::Display) -> StoreResult<Record> {
    let corrupt =
        |column: &str, why: &str| StoreError::Corrupt(format!("{what}: column {column} {why}"));
    let col = |i: usize, name: &str| row.get_ref(i).map_err(|_| corrupt(name, "is missing"));
    let int = |i: usize, name: &str| match col(i, name)? {
        ValueRef::Integer(v) => Ok(v),
        _ => Err(corrupt(name, "is not an integer")),
    };
    let blob = |i: usize, name: &str| match col(i, name)? {
        ValueRef::Blob(b) => Ok(b),
        _ => Err(corrupt(name, "is not a blob")),
    };

    let fingerprint = blob(0, "fingerprint")?
        .try_into()
        .map(Fingerprint)
        .map_err(|_| corrupt("fingerprint", "is not 32 bytes"))?;
    let created_at = Timestamp(int(1, "created_at")?);
    let expires_at = Timestamp(int(2, "expires_at")?);
    let state = match int(3, "state")? {
        STATE_IN_PROGRESS => RecordState::InProgress {
            token: token_from_bytes(blob(4, "lease_token")?)
                .ok_or_else(|| corrupt("lease_token", "is not 16 bytes"))?,
            lease_expires_at: Timestamp(int(5, "lease_expires_at")?),
        },
        STATE_COMPLETED => {
            let status = u16::try_from(int(6, "status")?)
                .map_err(|_| corrupt("status", "is out of range"))?;
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
        other => return Err(corrupt("state", &format!("has unknown value {other}"))),
    };
    Ok(Record {
        fingerprint,
        created_at,
        expires_at,
        state,
    })
}
