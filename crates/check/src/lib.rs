//! `oncely check`: sends an API the requests that break idempotency (the same key again and
//! again, many copies at once, the same key with another body, one key string for several
//! tenants), records every operation in a history, counts the effects the API really had,
//! and asks `oncely_core::check` for a verdict per property.
//!
//! Status: a first cut. The workloads above, effects counted by a recording upstream put
//! behind the target or by a ledger URL, the history file, and the terminal report. Not
//! built yet: the reordered-JSON, chunked-body and timeout workloads, the seeded mix, the
//! nemesis (fault proxy, kill and restart, store outages), the SQL effect counter and the
//! HTML timeline (docs/check.md).

#![warn(missing_docs)]

pub mod effects;
pub mod report;
pub mod run;

pub use effects::{Effects, Ledger, Recorder};
pub use run::{run, CheckError, Plan};
