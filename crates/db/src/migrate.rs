//! The one migration mechanism every storage concern uses.
//!
//! A concern (idempotency records, the recovery journal, the audit trail, ...) declares its
//! schema as [`Migrations`]: numbered steps, only ever appended, never edited. The database
//! records which steps each concern has applied in one table, `oncely_migrations` (in the
//! concern's PostgreSQL schema, or in the SQLite file), so several concerns can share a
//! database and each reports its own version. Applying is idempotent and safe under
//! concurrency: replicas starting together serialize on a lock and only the first applies
//! anything. A database already migrated by a newer build is refused rather than written with
//! assumptions it no longer meets.
//!
//! The backends are [`crate::postgres::migrate`] and [`crate::sqlite::migrate`].

use std::fmt;

/// One step of a concern's schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Its number: steps are numbered 1, 2, 3, ... in the order they apply.
    pub version: u32,
    /// A few words on what it creates or changes, recorded with it.
    pub description: &'static str,
    /// The statements. In PostgreSQL, `{schema}` stands for the quoted schema name.
    pub sql: &'static str,
}

/// A storage concern's schema history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrations {
    /// The concern's name as recorded and reported, e.g. `"idempotency records"`.
    pub concern: &'static str,
    /// Its steps, numbered from 1 without gaps.
    pub steps: &'static [Migration],
}

impl Migrations {
    /// The version a database reaches once every step is applied.
    pub const fn latest(&self) -> u32 {
        match self.steps.last() {
            Some(m) => m.version,
            None => 0,
        }
    }

    /// The steps still to apply on a database at version `from`, or why there is none to
    /// take: a newer database, or (a build's own mistake) steps out of order.
    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn pending(&self, from: u32) -> Result<&'static [Migration], MigrationError> {
        self.check_order()?;
        let latest = self.latest();
        if from > latest {
            return Err(MigrationError::Newer {
                concern: self.concern,
                found: from,
                latest,
            });
        }
        let done = usize::try_from(from).unwrap_or(usize::MAX);
        Ok(self.steps.get(done..).unwrap_or(&[]))
    }

    /// Steps numbered 1..=n in order: the invariant that makes "version n" mean "the first n
    /// steps applied".
    pub fn check_order(&self) -> Result<(), MigrationError> {
        for (i, step) in self.steps.iter().enumerate() {
            if usize::try_from(step.version).ok() != Some(i + 1) {
                return Err(MigrationError::OutOfOrder {
                    concern: self.concern,
                    position: i + 1,
                    version: step.version,
                });
            }
        }
        Ok(())
    }

    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    pub(crate) fn report(&self, from: u32, applied: &[Migration]) -> MigrationReport {
        MigrationReport {
            concern: self.concern,
            from,
            to: self.latest(),
            applied: applied
                .iter()
                .map(|m| format!("{}: {}", m.version, m.description))
                .collect(),
        }
    }
}

/// What a migration run did for one concern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The concern migrated.
    pub concern: &'static str,
    /// The version found before (0 for a new database).
    pub from: u32,
    /// The version now.
    pub to: u32,
    /// `version: description` of each step applied, in order.
    pub applied: Vec<String>,
}

impl MigrationReport {
    /// Whether nothing had to be applied.
    pub fn was_up_to_date(&self) -> bool {
        self.applied.is_empty()
    }
}

impl fmt::Display for MigrationReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.was_up_to_date() {
            write!(f, "{}: version {}, up to date", self.concern, self.to)
        } else {
            write!(
                f,
                "{}: migrated from version {} to {} (applied {})",
                self.concern,
                self.from,
                self.to,
                self.applied.join(", ")
            )
        }
    }
}

/// Why a concern's schema could not be brought up to date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrationError {
    /// The database was migrated by a newer build.
    #[error(
        "{concern}: the database is at schema version {found}, newer than the version \
         {latest} this oncely knows; upgrade oncely, or point it at another database"
    )]
    Newer {
        /// The concern.
        concern: &'static str,
        /// The version found.
        found: u32,
        /// The newest version this build knows.
        latest: u32,
    },
    /// A step's statements failed; nothing of the run was kept.
    #[error("{concern}: migration {version} ({description}) failed: {message}")]
    Failed {
        /// The concern.
        concern: &'static str,
        /// The step that failed.
        version: u32,
        /// What it does.
        description: &'static str,
        /// The database's error, on one line.
        message: String,
    },
    /// The database could not be reached, or refused the bookkeeping around the steps.
    #[error("{concern}: cannot migrate: {message}")]
    Database {
        /// The concern.
        concern: &'static str,
        /// The database's error, on one line.
        message: String,
    },
    /// The build's own steps are not numbered 1, 2, 3, ...
    #[error("{concern}: migration at position {position} is numbered {version}")]
    OutOfOrder {
        /// The concern.
        concern: &'static str,
        /// Where in the list (from 1).
        position: usize,
        /// The number it carries.
        version: u32,
    },
}

#[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
impl MigrationError {
    /// The database error of a step or of the bookkeeping, as one line.
    pub(crate) fn database(concern: &'static str, e: &dyn std::error::Error) -> MigrationError {
        MigrationError::Database {
            concern,
            message: crate::describe(e),
        }
    }

    /// A version read from `oncely_migrations`, refused when it cannot be one.
    pub(crate) fn checked_version(concern: &'static str, version: i64) -> Result<u32, Self> {
        u32::try_from(version).map_err(|_| MigrationError::Database {
            concern,
            message: format!("oncely_migrations holds an invalid version {version}"),
        })
    }

    pub(crate) fn failed(
        step: &Migration,
        concern: &'static str,
        e: &dyn std::error::Error,
    ) -> Self {
        MigrationError::Failed {
            concern,
            version: step.version,
            description: step.description,
            message: crate::describe(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEPS: &[Migration] = &[
        Migration {
            version: 1,
            description: "one",
            sql: "",
        },
        Migration {
            version: 2,
            description: "two",
            sql: "",
        },
    ];

    #[test]
    fn pending_steps_follow_the_version_found() {
        let m = Migrations {
            concern: "test",
            steps: STEPS,
        };
        assert_eq!(m.latest(), 2);
        assert_eq!(m.pending(0).unwrap().len(), 2);
        assert_eq!(m.pending(1).unwrap()[0].version, 2);
        assert!(m.pending(2).unwrap().is_empty());
        assert_eq!(
            m.pending(3),
            Err(MigrationError::Newer {
                concern: "test",
                found: 3,
                latest: 2
            })
        );
    }

    #[test]
    fn steps_out_of_order_are_refused() {
        const GAP: &[Migration] = &[Migration {
            version: 2,
            description: "two",
            sql: "",
        }];
        let m = Migrations {
            concern: "test",
            steps: GAP,
        };
        assert!(matches!(
            m.pending(0),
            Err(MigrationError::OutOfOrder {
                position: 1,
                version: 2,
                ..
            })
        ));
    }

    #[test]
    fn reports_read_as_one_line() {
        let m = Migrations {
            concern: "audit trail",
            steps: STEPS,
        };
        assert_eq!(
            m.report(0, STEPS).to_string(),
            "audit trail: migrated from version 0 to 2 (applied 1: one, 2: two)"
        );
        assert_eq!(
            m.report(2, &[]).to_string(),
            "audit trail: version 2, up to date"
        );
    }
}
