//! The conformance suite on SQLite, each test on a file of its own.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oncely_audit::audit_conformance_tests;
use oncely_audit::conformance::Harness;
use oncely_audit::sqlite::SqliteAuditLog;
use oncely_audit::AuditLog;

struct Sqlite {
    log: Arc<SqliteAuditLog>,
    _dir: tempfile::TempDir,
}

async fn harness(_test: &str) -> Option<Sqlite> {
    let dir = tempfile::tempdir().unwrap();
    let log = SqliteAuditLog::open(dir.path().join("audit.db"), Duration::from_secs(5)).unwrap();
    log.migrate().await.unwrap();
    Some(Sqlite {
        log: Arc::new(log),
        _dir: dir,
    })
}

/// A connection of its own, as a SQL shell would open.
fn shell(log: &SqliteAuditLog) -> rusqlite::Connection {
    rusqlite::Connection::open(log.path()).unwrap()
}

#[async_trait]
impl Harness for Sqlite {
    type L = SqliteAuditLog;
    fn log(&self) -> Arc<SqliteAuditLog> {
        self.log.clone()
    }
    async fn sql(&self, sql: &str) -> Result<u64, String> {
        let c = shell(&self.log);
        c.execute(sql, [])
            .map(|n| n as u64)
            .map_err(|e| e.to_string())
    }
    fn overwriting_insert(&self) -> &'static str {
        "INSERT OR REPLACE INTO audit_events SELECT event_id, timestamp, actor, actor_type, \
         'forged', resource_type, resource_id, old_value, new_value, correlation_id, ip_address, \
         user_agent, chain, seq, actor_commitment, ip_address_commitment, user_agent_commitment, \
         prev_hash, hash, mac FROM audit_events WHERE chain = 'gw' AND seq = 1"
    }
    async fn forge(&self, sql: &str) {
        let c = shell(&self.log);
        c.execute_batch(&format!(
            "DROP TRIGGER audit_events_no_delete; DROP TRIGGER audit_events_only_redaction; \
             DROP TRIGGER audit_events_no_replace; {sql};"
        ))
        .unwrap();
        self.log.migrate().await.unwrap();
    }
}

audit_conformance_tests!(harness);

/// Two logs on one file (two gateways on one host) keep one valid trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_on_one_file() {
    use oncely_audit::{log::verify_log, AuditWriter, Draft};
    use oncely_core::SystemClock;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let mut writers = Vec::new();
    for chain in ["one", "two", "one"] {
        let log = SqliteAuditLog::open(&path, Duration::from_secs(5)).unwrap();
        log.migrate().await.unwrap();
        writers.push(
            AuditWriter::open(
                Arc::new(log),
                chain,
                b"k".to_vec(),
                Arc::new(SystemClock),
                100,
            )
            .await
            .unwrap(),
        );
    }
    for i in 0..30 {
        for (w, writer) in writers.iter().enumerate() {
            assert!(writer.record(Draft {
                event_id: format!("{w}-{i}"),
                action: "executed".into(),
                ..Draft::default()
            }));
        }
    }
    for w in &writers {
        assert!(w.close(Duration::from_secs(10)).await);
    }
    let log = SqliteAuditLog::open(&path, Duration::from_secs(5)).unwrap();
    let summary = verify_log(&log, Some(b"k"), |_| {}).await.unwrap().unwrap();
    assert_eq!(summary.events, 3 * 31);
}
