//! The conformance suite on SQLite, each test on a file of its own.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use oncely_recovery::conformance::{behave, Behaviour, Harness, TestState};
use oncely_recovery::recovery_conformance_tests;
use oncely_recovery::sqlite::{SqliteJournal, SqlitePhase};

struct Sqlite {
    journal: Arc<SqliteJournal>,
    _dir: tempfile::TempDir,
}

async fn harness(_test: &str) -> Option<Sqlite> {
    let dir = tempfile::tempdir().unwrap();
    let journal = SqliteJournal::open(dir.path().join("app.db"), Duration::from_secs(5)).unwrap();
    journal
        .with_connection(|c| {
            c.execute_batch(
                "CREATE TABLE effects (seq INTEGER PRIMARY KEY, op TEXT NOT NULL, phase TEXT NOT NULL)",
            )
        })
        .await
        .unwrap();
    Some(Sqlite {
        journal: Arc::new(journal),
        _dir: dir,
    })
}

#[async_trait]
impl Harness for Sqlite {
    type J = SqliteJournal;
    fn journal(&self) -> Arc<SqliteJournal> {
        self.journal.clone()
    }
    fn phase(&self, name: &str, behaviour: Behaviour) -> SqlitePhase<TestState> {
        let name = name.to_owned();
        Arc::new(move |tx, state| {
            tx.execute(
                "INSERT INTO effects (op, phase) VALUES (?1, ?2)",
                (&state.id, &name),
            )?;
            behave(&behaviour, &name, state)
        })
    }
    async fn effects(&self, id: &str) -> Vec<String> {
        let id = id.to_owned();
        self.journal
            .with_connection(move |c| {
                let mut s = c.prepare("SELECT phase FROM effects WHERE op = ?1 ORDER BY seq")?;
                let rows = s.query_map([id], |r| r.get(0))?;
                rows.collect()
            })
            .await
            .unwrap()
    }
    async fn sql(&self, statement: &str) {
        let statement = statement.replace("{ops}", "oncely_operations");
        self.journal
            .with_connection(move |c| c.execute_batch(&statement))
            .await
            .unwrap();
    }
}

recovery_conformance_tests!(harness);

/// Two journals on one file (two processes' worth of connections) racing one operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_connections_on_one_file_commit_each_phase_once() {
    use oncely_recovery::conformance::{checkout, Provider};
    use oncely_recovery::Recovery;
    let h = harness("two").await.unwrap();
    let second = Arc::new(SqliteJournal::open(h.journal.path(), Duration::from_secs(5)).unwrap());
    let h2 = Sqlite {
        journal: second,
        _dir: tempfile::tempdir().unwrap(),
    };
    let provider = Arc::new(Provider::default());
    let op1 = Arc::new(checkout(&h, &provider));
    let op2 = Arc::new(checkout(&h2, &provider));
    let clock = Arc::new(oncely_core::SystemClock);
    let r1 = Arc::new(Recovery::new(h.journal(), clock.clone()));
    let r2 = Arc::new(Recovery::new(h2.journal(), clock));
    let mut runs = Vec::new();
    for i in 0..8 {
        let (op1, op2, r1, r2) = (op1.clone(), op2.clone(), r1.clone(), r2.clone());
        runs.push(tokio::spawn(async move {
            let input = TestState::new("shared", 9);
            if i % 2 == 0 {
                r1.run(&op1, "shared", input).await
            } else {
                r2.run(&op2, "shared", input).await
            }
        }));
    }
    let mut answers = Vec::new();
    for r in runs {
        answers.push(r.await.unwrap().unwrap());
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(h.effects("shared").await, ["order", "receipt"]);
    assert_eq!(provider.charges(), 1);
}
