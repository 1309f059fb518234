//! Opens any oncely storage concern from the URL a person wrote: the idempotency store
//! (`sqlite://`, `postgres://`, `redis://`, `memory://`) and the audit trail (`sqlite://`,
//! `postgres://`). The one place URLs are read, above every backend, so the gateway, the CLI
//! and the examples never parse them again.

#![warn(missing_docs)]

mod audit;
mod store;

pub use audit::AuditUrl;
/// What migrating one concern did; see [`StoreUrl::migrate`] and [`AuditUrl::migrate`].
pub use oncely_db::migrate::MigrationReport;
pub use store::StoreUrl;
