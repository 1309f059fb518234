//! A store on a file in its own temporary directory, removed when the store is dropped.

use std::sync::Arc;

use oncely_core::Clock;
use oncely_store::conformance::Guarded;
use oncely_store_sqlite::{SqliteOptions, SqliteStore};
use tempfile::TempDir;

/// The store goes before the directory (field order): its writer thread ends first.
pub(crate) type TempStore = Guarded<SqliteStore, TempDir>;

pub(crate) fn temp_store(clock: impl Clock) -> TempStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(
        SqliteOptions::new(dir.path().join("records.db")),
        Arc::new(clock),
    )
    .expect("open store");
    Guarded { store, guard: dir }
}
