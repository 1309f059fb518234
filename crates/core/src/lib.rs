//! The sans-I/O heart of oncely.
//!
//! Every decision the gateway and the libraries make about an idempotent request is a pure
//! function in this crate: parsing the `Idempotency-Key` header, computing the scope and the
//! request fingerprint, the life cycle of a record (claim, complete, release, takeover) under
//! an injected clock, which statuses are stored, and the problem types answered to clients.
//! Nothing here opens a socket or a file, so all of it is tested with plain values and
//! property tests.

#![warn(missing_docs)]

pub mod backoff;
pub mod check;
pub mod clock;
pub mod conditional;
pub mod correlation;
pub mod fingerprint;
pub mod jcs;
pub mod key;
pub mod policy;
pub mod problem;
pub mod reconcile;
pub mod record;
pub mod saga;
pub mod scope;
pub mod sync;
pub mod units;

pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use fingerprint::Fingerprint;
pub use key::{parse_idempotency_key, IdempotencyKey, KeyError};
pub use policy::StatusPolicy;
pub use problem::ProblemKind;
pub use record::{
    ClaimOutcome, ClaimRequest, ExistingDecision, LeaseToken, Record, RecordState, Refusal,
    StoredResponse,
};
pub use scope::{RecordKey, Scope, Tenant};
pub use units::{parse_duration, parse_size, UnitError};
