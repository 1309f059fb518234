//! Database plumbing below every storage concern (idempotency records, the recovery journal,
//! the audit trail, and those to come): how a PostgreSQL URL is read and pooled, how a
//! driver's error becomes one readable line, how a SQLite file is opened, and how every
//! concern's schema is migrated and versioned ([`migrate`]). Each concern's
//! crate keeps its own tables, statements and error type; what they all do the same way to
//! reach a database lives here, once.

#![warn(missing_docs)]

pub mod migrate;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// An error with its causes on one line: drivers often say only "db error" or "error
/// connecting to server" at the top and keep the reason (and a server's DETAIL and HINT
/// lines) in their sources.
pub fn describe(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.ends_with(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("db error")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_on_one_line() {
        let e = Outer(std::io::Error::other(
            "ERROR: relation\n  \"x\" does not exist",
        ));
        assert_eq!(
            describe(&e),
            "db error: ERROR: relation \"x\" does not exist"
        );
    }
}
