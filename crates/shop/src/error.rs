//! The shop's typed errors.

/// Why the shop could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    /// A setting that cannot work (a bad database URL, timings that contradict each other).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The configured database kind is not supported yet.
    #[error("{0}")]
    Unsupported(String),
    /// The database could not be opened or migrated.
    #[error("database: {0}")]
    Database(String),
    /// A listener could not be bound or failed.
    #[error("listener {addr}: {message}")]
    Listen {
        /// The address asked for.
        addr: String,
        /// What failed.
        message: String,
    },
    /// One of the shop's components (saga runner, relay, idempotency store, audit trail)
    /// could not be set up.
    #[error("{component}: {message}")]
    Component {
        /// Which component.
        component: &'static str,
        /// What failed.
        message: String,
    },
}

impl ShopError {
    pub(crate) fn component(component: &'static str, message: impl std::fmt::Display) -> Self {
        ShopError::Component {
            component,
            message: message.to_string(),
        }
    }
}

/// A failure of the shop's own tables.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbError {
    /// The database failed or is busy; nothing is known to be written. Retry later.
    #[error("the shop's database is unavailable: {0}")]
    Unavailable(String),
    /// A stored row could not be read.
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::Unavailable(oncely_db::describe(&e))
    }
}

impl From<oncely_outbox::OutboxError> for DbError {
    fn from(e: oncely_outbox::OutboxError) -> Self {
        DbError::Unavailable(e.to_string())
    }
}

impl From<oncely_outbox::inbox::InboxError> for DbError {
    fn from(e: oncely_outbox::inbox::InboxError) -> Self {
        DbError::Unavailable(e.to_string())
    }
}
