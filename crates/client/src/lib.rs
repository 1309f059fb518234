//! A retry client that is safe by construction.
//!
//! Retrying a write is only safe when every attempt carries the same `Idempotency-Key`, when
//! only failures that may be transient are retried, and when the retries of many clients do not
//! arrive together and knock a recovering server down again. This crate does all three:
//!
//! - [`backoff`]: exponential backoff with *full jitter* (`uniform(0, min(cap, base * 2^n))`),
//!   a pure function over an injected random source so its distribution can be tested.
//! - [`policy`]: which outcomes are retried (connect errors, timeouts, connections lost before an
//!   answer, 502/503/504, 429, 409 `request-in-progress`), `Retry-After`, the overall deadline;
//!   a pure decision over values.
//! - [`budget`]: a token bucket shared by all requests of one client that bounds retries to a
//!   fraction of requests plus a small floor, so a sick upstream is not stormed.
//! - [`key`]: UUIDv7 keys, one per logical request, and the operation names used to persist them.
//! - [`store`]: an optional SQLite file of pending keys, so a restarted process resumes a logical
//!   request with the key it used before the crash.
//! - [`client`]: the I/O edge, on `reqwest`, that drives the pieces above.
//! - [`send`]: the `oncely send` command.
//! - [`sim`]: a deterministic simulation of 1000 clients retrying through an outage.
//!
//! ```no_run
//! use std::time::Duration;
//! use oncely_client::{Client, Request};
//!
//! # async fn demo() -> Result<(), oncely_client::Error> {
//! let client = Client::builder()
//!     .max_attempts(5)
//!     .deadline(Some(Duration::from_secs(30)))
//!     .state_file("pending-keys.db") // optional: resume keys after a restart
//!     .build()?;
//! let resp = client
//!     .send(
//!         Request::post("http://localhost:8080/orders")
//!             .operation("order-42") // names the logical request in the state file
//!             .body(r#"{"sku":"tea","qty":2}"#),
//!     )
//!     .await?;
//! println!("{} after {} attempt(s), key {}", resp.status, resp.attempts, resp.key);
//! # Ok(())
//! # }
//! ```
//!
//! See `docs/retry-client.md` for the policies and the reasons behind them.

#![warn(missing_docs)]

pub mod backoff;
pub mod budget;
pub mod client;
pub mod key;
pub mod policy;
#[cfg(feature = "cli")]
pub mod send;
pub mod sim;
#[cfg(feature = "state")]
pub mod store;

pub use backoff::Backoff;
pub use budget::{BudgetConfig, RetryBudget};
pub use client::{
    AttemptEvent, AttemptHook, Client, ClientBuilder, Error, KeySource, LastOutcome, Request,
    Response, Stats,
};
pub use policy::{Decision, Outcome, Policy, RetryReason, StopReason, TransportKind};
#[cfg(feature = "state")]
pub use store::KeyStore;
