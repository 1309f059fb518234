//! Optimistic concurrency for Rust services: rows carry a version, reads answer with its
//! `ETag`, writes say which version they were based on (`If-Match`), and a write based on a
//! version that has since moved is refused, with the current row in the answer, instead of
//! silently overwriting someone else's change (a lost update).
//!
//! Three parts, each usable alone:
//! - [`Conditional`], an axum extractor of the request's preconditions (RFC 9110 §13), with
//!   [`Conditional::require`] for routes that refuse blind writes (428) and
//!   [`Conditional::guard`] for the versioned write;
//! - [`sqlite`] and [`postgres`]: a versioned update, create-if-absent and a read, each one
//!   statement whose `WHERE` carries the guard, so that no writer slips in between the check
//!   and the write; and a pessimistic lock for the hot rows where conflicts are the rule;
//! - [`Versioned`] answers (`ETag`, `Last-Modified`, JSON) and [`Refusal`], the
//!   problem+json answers: 412 (or 409 by [`ConflictStatus`]) whose body carries the current
//!   representation, its ETag, version, and when and by whom it last changed; 428; 404;
//!   400 for malformed precondition headers.
//!
//! The pure decisions (tag parsing, RFC evaluation order, the write guard) live in
//! [`oncely_core::conditional`], where they are property-tested.
//!
//! ```no_run
//! use axum::{extract::Path, Json};
//! use oncely_conditional::{sqlite, Conditional, Refusal, Table, Versioned};
//! # fn db() -> rusqlite::Connection { unimplemented!() }
//! # fn now() -> oncely_core::Timestamp { unimplemented!() }
//!
//! const DOCS: Table = Table::new("documents", "id", "title, body");
//!
//! async fn put_document(
//!     cond: Conditional,
//!     Path(id): Path<String>,
//!     Json(doc): Json<serde_json::Value>,
//! ) -> Result<Versioned<serde_json::Value>, Refusal> {
//!     let guard = cond.require()?;
//!     let conn = db();
//!     let row = sqlite::update(
//!         &conn,
//!         &DOCS,
//!         &id,
//!         &guard,
//!         "title = ?1, body = ?2",
//!         &[&doc["title"].as_str(), &doc["body"].to_string()],
//!         sqlite::Change { by: Some("ada"), at: now() },
//!         |row| Ok(serde_json::json!({ "title": row.get::<_, String>(0)?, "body": row.get::<_, String>(1)? })),
//!     );
//!     cond.written(row)
//! }
//! ```

#![warn(missing_docs)]

mod answer;
pub mod postgres;
pub mod sqlite;

pub use answer::{Conditional, ConflictStatus, Refusal, Versioned};
pub use oncely_core::conditional::{
    EntityTag, InvalidPrecondition, Preconditions, Validators, WriteGuard,
};
pub use oncely_core::Timestamp;

/// When a row last changed, and by whom: the columns `version`, `changed_at` (milliseconds
/// since the epoch) and `changed_by` every versioned table carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revision {
    /// Starts at 1 and grows by one with every write; the `ETag` is `"v{version}"`.
    pub version: u64,
    /// When the row was last written.
    pub changed_at: Timestamp,
    /// Who wrote it last, if the service knows.
    pub changed_by: Option<String>,
}

impl Revision {
    /// The strong entity tag of this version.
    pub fn etag(&self) -> EntityTag {
        EntityTag::from_version(self.version)
    }

    /// The validators a response about this row carries.
    pub fn validators(&self) -> Validators {
        Validators {
            etag: Some(self.etag()),
            last_modified: Some(self.changed_at),
        }
    }
}

/// A row as read or written: its representation and its revision.
#[derive(Debug, Clone, PartialEq)]
pub struct Current<T> {
    /// What the service answers for the row (the representation).
    pub value: T,
    /// Its version, and when and by whom it last changed.
    pub revision: Revision,
}

/// Why a guarded write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<T, E> {
    /// The row exists but the request's preconditions do not admit it (another writer moved
    /// its version, or `If-None-Match: *` found it): 412 with the current row.
    #[error("the row has changed since the version the request was based on (now version {})", .0.revision.version)]
    Stale(Box<Current<T>>),
    /// The row does not exist (any more): 404, or 412 when the request named a version.
    #[error("the row does not exist")]
    Gone,
    /// The database failed; nothing is known to be written.
    #[error("database error: {0}")]
    Database(#[source] E),
}

/// A versioned table: its name, its key column, and the columns of its representation (in
/// the order the row mapper reads them). The table must also have the columns `version`
/// (integer, not null), `changed_at` (integer milliseconds, not null) and `changed_by`
/// (text, nullable). Names are written into SQL as given: they come from code, never from
/// a request.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// The table's name.
    pub name: &'static str,
    /// The primary key column.
    pub key: &'static str,
    /// The representation's columns, comma-separated (`title, body`).
    pub columns: &'static str,
}

impl Table {
    /// A table description, usable in a `const`.
    pub const fn new(name: &'static str, key: &'static str, columns: &'static str) -> Self {
        Table { name, key, columns }
    }

    /// `{columns}, version, changed_at, changed_by`: what every helper reads back.
    fn returning(&self) -> String {
        format!("{}, version, changed_at, changed_by", self.columns)
    }
}

/// The guard's conditions as SQL over a row, with `placeholder(n)` for the n-th parameter
/// (numbered from `first`), and the parameters. `None` when the guard admits no existing
/// row at all (`If-None-Match: *`, or `If-Match` naming no version of ours).
fn guard_sql(
    guard: &WriteGuard,
    first: usize,
    placeholder: fn(usize) -> String,
) -> Option<(String, Vec<i64>)> {
    if guard.must_be_absent {
        return None;
    }
    let mut clauses = Vec::new();
    let mut params: Vec<i64> = Vec::new();
    let next = |value: i64, params: &mut Vec<i64>| {
        params.push(value);
        placeholder(first + params.len() - 1)
    };
    if let Some(versions) = &guard.version_in {
        if versions.is_empty() {
            return None;
        }
        let list: Vec<String> = versions
            .iter()
            .map(|v| next(i64::try_from(*v).unwrap_or(i64::MAX), &mut params))
            .collect();
        clauses.push(format!("version IN ({})", list.join(", ")));
    }
    if !guard.version_not_in.is_empty() {
        let list: Vec<String> = guard
            .version_not_in
            .iter()
            .map(|v| next(i64::try_from(*v).unwrap_or(i64::MAX), &mut params))
            .collect();
        clauses.push(format!("version NOT IN ({})", list.join(", ")));
    }
    if let Some(t) = guard.changed_before {
        let p = next(t.0, &mut params);
        clauses.push(format!("changed_at < {p}"));
    }
    if clauses.is_empty() {
        clauses.push("TRUE".to_owned());
    }
    Some((clauses.join(" AND "), params))
}
