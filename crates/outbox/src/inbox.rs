//! The inbox: a consumer's record of the messages it has applied, so that a redelivered
//! message (the broker's at-least-once, the relay's repeats) has its effect once.
//!
//! The message id is inserted in the **same transaction** as the consumer's effect, and the
//! effect runs **only if that insert did**. Inserting with `ON CONFLICT DO NOTHING` and then
//! running the effect anyway is the classic bug this module exists to prevent: the insert
//! then guards nothing. [`Receipt`] makes the branch explicit, and
//! `sqlite::apply_once` does the whole dance on SQLite.
//!
//! Two deliveries of one message racing: on PostgreSQL the second insert waits for the
//! first transaction; if it commits, the second finds the row and is a duplicate; if it
//! rolls back (the effect failed), the second inserts and applies. On SQLite the write lock
//! serializes them the same way.

/// What inserting a message id found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "the effect must run only for a First receipt"]
pub enum Receipt {
    /// The first time: apply the effect in this transaction, then commit.
    First,
    /// Already applied (committed by an earlier delivery): apply nothing, acknowledge the
    /// message.
    Duplicate,
}

/// What `sqlite::apply_once` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied<T> {
    /// The effect ran and committed with the message id; its result.
    Now(T),
    /// The message had been applied before; nothing ran.
    Before,
}

/// Errors of the inbox's own storage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboxError {
    /// The database failed; nothing is known to be recorded.
    #[error("the inbox database is unavailable: {0}")]
    Unavailable(String),
    /// A consumer name or message id that is empty or longer than 255 bytes.
    #[error("{0}")]
    Invalid(String),
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
fn validate(consumer: &str, message_id: &str) -> Result<(), InboxError> {
    for (what, v) in [("consumer", consumer), ("message id", message_id)] {
        if v.is_empty() || v.len() > 255 {
            return Err(InboxError::Invalid(format!(
                "the {what} must be 1 to 255 bytes, not {}",
                v.len()
            )));
        }
    }
    Ok(())
}

/// The inbox on SQLite, in the consumer's own database file.
#[cfg(feature = "sqlite")]
pub mod sqlite {
    use oncely_db::migrate::{Migration, Migrations};
    use rusqlite::{params, Connection, Transaction, TransactionBehavior};

    use super::{validate, Applied, InboxError, Receipt};
    use oncely_core::Timestamp;

    const MIGRATIONS: Migrations = Migrations {
        concern: "inbox",
        steps: &[Migration {
            version: 1,
            description: "the inbox of applied messages",
            sql: "
CREATE TABLE IF NOT EXISTS oncely_inbox (
    consumer    TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (consumer, message_id)
) STRICT;
CREATE INDEX IF NOT EXISTS oncely_inbox_age ON oncely_inbox (received_at);
",
        }],
    };

    fn unavailable(e: rusqlite::Error) -> InboxError {
        InboxError::Unavailable(oncely_db::describe(&e))
    }

    /// Creates the inbox table in the consumer's database if it is absent.
    pub fn migrate(conn: &mut Connection) -> Result<(), InboxError> {
        oncely_db::sqlite::migrate(conn, &MIGRATIONS)
            .map(|_| ())
            .map_err(|e| InboxError::Unavailable(e.to_string()))
    }

    /// Records `message_id` for `consumer` in `tx`. Apply the effect in `tx` only for
    /// [`Receipt::First`].
    pub fn receive(
        tx: &Transaction<'_>,
        consumer: &str,
        message_id: &str,
        now: Timestamp,
    ) -> Result<Receipt, InboxError> {
        validate(consumer, message_id)?;
        let n = tx
            .prepare_cached(
                "INSERT INTO oncely_inbox (consumer, message_id, received_at) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (consumer, message_id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![consumer, message_id, now.0]))
            .map_err(unavailable)?;
        Ok(if n == 1 {
            Receipt::First
        } else {
            Receipt::Duplicate
        })
    }

    /// Applies `effect` once per (`consumer`, `message_id`): in one `BEGIN IMMEDIATE`
    /// transaction, the id is inserted and, only if it was new, `effect` runs; both commit
    /// together. An effect that fails rolls the insert back with it, so a redelivery tries
    /// again.
    pub fn apply_once<T, E: From<InboxError>>(
        conn: &mut Connection,
        consumer: &str,
        message_id: &str,
        now: Timestamp,
        effect: impl FnOnce(&Transaction<'_>) -> Result<T, E>,
    ) -> Result<Applied<T>, E> {
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        match receive(&tx, consumer, message_id, now)? {
            Receipt::Duplicate => Ok(Applied::Before),
            Receipt::First => {
                let out = effect(&tx)?;
                tx.commit().map_err(unavailable)?;
                Ok(Applied::Now(out))
            }
        }
    }

    /// Forgets up to `limit` ids received before `cutoff` (the retention window, which must
    /// be longer than any redelivery can come late); the number forgotten.
    pub fn purge(conn: &Connection, cutoff: Timestamp, limit: usize) -> Result<usize, InboxError> {
        conn.prepare_cached(
            "DELETE FROM oncely_inbox WHERE rowid IN (SELECT rowid FROM oncely_inbox \
             WHERE received_at < ?1 ORDER BY received_at LIMIT ?2)",
        )
        .and_then(|mut s| s.execute(params![cutoff.0, i64::try_from(limit).unwrap_or(i64::MAX)]))
        .map_err(unavailable)
    }
}

/// The inbox on PostgreSQL, in a schema of the consumer's own database.
#[cfg(feature = "postgres")]
pub mod postgres {
    use std::time::Duration;

    use oncely_db::migrate::{Migration, Migrations};
    use oncely_db::postgres::{NoAnswer, DEFAULT_TIMEOUT};

    use super::{validate, InboxError, Receipt};
    use oncely_core::Timestamp;

    const MIGRATIONS: Migrations = Migrations {
        concern: "inbox",
        steps: &[Migration {
            version: 1,
            description: "the inbox of applied messages",
            sql: "
CREATE TABLE IF NOT EXISTS {schema}.inbox (
    consumer    text NOT NULL,
    message_id  text NOT NULL,
    received_at int8 NOT NULL,
    PRIMARY KEY (consumer, message_id)
);
CREATE INDEX IF NOT EXISTS inbox_age ON {schema}.inbox (received_at);
",
        }],
    };

    /// The inbox table of one schema.
    pub struct PgInbox {
        receive: String,
        purge: String,
        timeout: Duration,
    }

    fn unavailable(e: impl std::error::Error) -> InboxError {
        InboxError::Unavailable(oncely_db::describe(&e))
    }

    /// A database that does not answer in time is unavailable: the consumer tries again.
    fn no_answer(e: NoAnswer) -> InboxError {
        InboxError::Unavailable(e.to_string())
    }

    impl PgInbox {
        /// The inbox in `schema`, created or brought up to date through `client`, within the
        /// default bound of 5 s.
        pub async fn open(
            client: &mut tokio_postgres::Client,
            schema: &str,
        ) -> Result<PgInbox, InboxError> {
            oncely_db::postgres::validate_schema(schema)
                .map_err(|e| InboxError::Invalid(format!("schema: {e}")))?;
            let migrated = async {
                oncely_db::postgres::migrate(client, schema, &MIGRATIONS)
                    .await
                    .map_err(|e| InboxError::Unavailable(e.to_string()))
            };
            oncely_db::postgres::bounded(DEFAULT_TIMEOUT, migrated, no_answer).await?;
            let t = format!("\"{schema}\".inbox");
            Ok(PgInbox {
                receive: format!(
                    "INSERT INTO {t} (consumer, message_id, received_at) VALUES ($1, $2, \
                     (extract(epoch FROM clock_timestamp()) * 1000)::int8) \
                     ON CONFLICT (consumer, message_id) DO NOTHING"
                ),
                purge: format!(
                    "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} WHERE received_at < $1 \
                     ORDER BY received_at LIMIT $2 FOR UPDATE SKIP LOCKED)"
                ),
                timeout: DEFAULT_TIMEOUT,
            })
        }

        /// Bounds [`PgInbox::purge`] by `timeout` (longer than zero) instead of 5 s: past it,
        /// it answers [`InboxError::Unavailable`], and the abandoned statement may still be
        /// running on the client it was given.
        #[must_use]
        pub fn with_timeout(mut self, timeout: Duration) -> Self {
            self.timeout = timeout;
            self
        }

        /// Records `message_id` for `consumer` in the consumer's transaction `tx`. Apply the
        /// effect in `tx` only for [`Receipt::First`]. A concurrent delivery of the same
        /// message waits here until the first transaction ends.
        ///
        /// Not bounded by [`PgInbox::with_timeout`]: the transaction is the consumer's, and
        /// so is how long it may wait (a `statement_timeout`, or a timeout around the whole
        /// transaction).
        pub async fn receive(
            &self,
            tx: &tokio_postgres::Transaction<'_>,
            consumer: &str,
            message_id: &str,
        ) -> Result<Receipt, InboxError> {
            validate(consumer, message_id)?;
            let n = tx
                .execute(&self.receive, &[&consumer, &message_id])
                .await
                .map_err(unavailable)?;
            Ok(if n == 1 {
                Receipt::First
            } else {
                Receipt::Duplicate
            })
        }

        /// Forgets up to `limit` ids received before `cutoff` (server clock, ms since the
        /// epoch), without waiting for rows other transactions hold, within the bound.
        pub async fn purge(
            &self,
            client: &tokio_postgres::Client,
            cutoff: Timestamp,
            limit: usize,
        ) -> Result<u64, InboxError> {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let purged = async {
                client
                    .execute(&self.purge, &[&cutoff.0, &limit])
                    .await
                    .map_err(unavailable)
            };
            oncely_db::postgres::bounded(self.timeout, purged, no_answer).await
        }
    }
}
