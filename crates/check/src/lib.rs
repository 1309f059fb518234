//! `oncely check`: sends an API the requests that break idempotency (the same key again and
//! again, many copies at once, the same key with another body, one key string for several
//! tenants), records every operation in a history, counts the effects the API really had,
//! and asks `oncely_core::check` for a verdict per property.
//!
//! Also the same JSON respelled, a body sent chunked, a first attempt given up after a
//! short timeout, in turn or as a seeded mix; every reference is retried until it settles.
//! Effects are counted by a recording upstream put behind the target, a ledger URL or a
//! SQL query. Meanwhile the nemesis kills and restarts the system or its store and a fault
//! proxy spoils connections. The report is text, and HTML with a timeline.

#![warn(missing_docs)]

pub mod effects;
pub mod proxy;
pub mod report;
pub mod run;
pub mod timeline;

pub use effects::{Effects, Ledger, Recorder};
pub use run::{run, CheckError, Plan};
