//! The audit trail as users run it: `oncely serve --audit` records each keyed answer,
//! `oncely audit verify` passes on the untouched trail and names the row after plain SQL
//! edits, deletes or swaps rows, `oncely audit redact` keeps it verifiable. On SQLite and
//! PostgreSQL.

use std::path::Path;
use std::process::{Output, Stdio};

use oncely_testkit::services::{drop_postgres_schemas, unique_name, Service};
use oncely_testkit::{CountingUpstream, TestClient};

use crate::common::{listening_url, oncely, KillOnDrop};

fn serve(upstream: &str, dir: &Path, audit: &str, chain: &str) -> (KillOnDrop, String) {
    let mut child = oncely()
        .args(["--log-level", "error", "serve", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "off", "--upstream", upstream])
        .arg("--store")
        .arg(format!("sqlite://{}", dir.join("keys.db").display()))
        .args(["--audit", audit, "--audit-chain", chain, "--audit-key-file"])
        .arg(dir.join("audit.key"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn oncely serve");
    let url = listening_url(&mut child);
    (KillOnDrop(child), url)
}

fn audit(db: &str, args: &[&str]) -> Output {
    oncely()
        .args(["audit", "--db", db])
        .args(args)
        .output()
        .expect("run oncely audit")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `oncely audit verify` (with the key): its exit and what it printed.
fn verify(db: &str, dir: &Path) -> (bool, String) {
    let key = dir.join("audit.key");
    let out = audit(db, &["verify", "--key-file", key.to_str().unwrap()]);
    (
        out.status.success(),
        format!("{}{}", text(&out.stdout), text(&out.stderr)),
    )
}

fn events(db: &str) -> Vec<serde_json::Value> {
    let out = audit(db, &["list", "--json", "--limit", "1000"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

/// SQL against the trail's table, as a database shell would run it.
trait Shell {
    /// With the table's triggers in place: the database's own error, if any.
    fn sql(&self, sql: &str) -> Result<(), String>;
    /// With the triggers off, as someone covering their tracks would.
    fn forge(&self, sql: &str);
}

async fn scenario(db: &str, shell: &dyn Shell) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("audit.key"),
        "a redaction key of this test\n",
    )
    .unwrap();
    let upstream = CountingUpstream::start().await;
    let client = TestClient::new();

    let (gw, url) = serve(&upstream.url(), dir.path(), db, "gw-1");
    let orders = format!("{url}/orders");
    let ua = [
        ("user-agent", "shop-app/2.1"),
        ("x-request-id", "req-first"),
    ];
    assert_eq!(
        client
            .post_keyed(&orders, "k-1", "{}", &ua)
            .await
            .unwrap()
            .status,
        201
    );
    let again = [
        ("user-agent", "shop-app/2.1"),
        ("x-request-id", "req-retry"),
    ];
    assert!(client
        .post_keyed(&orders, "k-1", "{}", &again)
        .await
        .unwrap()
        .replayed());
    let other = [("x-request-id", "req-other")];
    let mismatch = client
        .post_keyed(&orders, "k-1", r#"{"other":1}"#, &other)
        .await
        .unwrap();
    assert_eq!(mismatch.status, 422);
    // Unkeyed: not a keyed answer, no event.
    let unkeyed = client
        .send(
            "POST",
            &orders,
            &[("content-type", "application/json")],
            "{}",
        )
        .await
        .unwrap();
    assert_eq!(unkeyed.status, 201);
    gw.stop();

    let listed = events(db);
    let actions: Vec<&str> = listed
        .iter()
        .rev()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["audit.chain_opened", "executed", "replayed", "mismatch"]
    );
    let executed = &listed[2];
    assert_eq!(executed["chain"], "gw-1");
    assert_eq!(executed["seq"], 1);
    assert_eq!(executed["actor"], "anon");
    assert_eq!(executed["actor_type"], "anonymous");
    assert_eq!(executed["resource_type"], "idempotency_key");
    assert_eq!(executed["resource_id"], "POST /orders k-1");
    assert_eq!(executed["new_value"], "201");
    assert_eq!(executed["correlation_id"], "req-first");
    assert_eq!(executed["ip_address"], "127.0.0.1");
    assert_eq!(executed["user_agent"], "shop-app/2.1");
    assert_eq!(listed[1]["correlation_id"], "req-retry");
    assert_eq!(listed[0]["new_value"], "422");
    assert_eq!(listed[0]["user_agent"], serde_json::Value::Null);

    let (ok, out) = verify(db, dir.path());
    assert!(ok, "an untouched trail verifies: {out}");
    assert!(out.contains("ok: 4 events in 1 chain(s)"), "{out}");

    // A restart continues the chain after its newest event, and a second gateway writes its
    // own chain into the same table.
    let (gw, url) = serve(&upstream.url(), dir.path(), db, "gw-1");
    let (gw2, url2) = serve(&upstream.url(), dir.path(), db, "gw-2");
    for (i, u) in [&url, &url2].into_iter().enumerate() {
        let a = client
            .post_keyed(&format!("{u}/orders"), &format!("k-2-{i}"), "{}", &[])
            .await
            .unwrap();
        assert_eq!(a.status, 201);
    }
    gw.stop();
    gw2.stop();
    let (ok, out) = verify(db, dir.path());
    assert!(ok && out.contains("ok: 8 events in 2 chain(s)"), "{out}");
    assert!(out.contains("head gw-1 5 "), "{out}");
    // The heads, recorded somewhere else as an operator would.
    let heads = dir.path().join("heads.txt");
    std::fs::write(&heads, &out).unwrap();

    // The table refuses edits and deletes outright.
    for sql in [
        "UPDATE audit_events SET new_value = '500' WHERE chain = 'gw-1' AND seq = 1",
        "DELETE FROM audit_events WHERE chain = 'gw-1' AND seq = 2",
    ] {
        let err = shell.sql(sql).unwrap_err();
        assert!(err.contains("append-only"), "{sql}: {err}");
    }

    // Redaction: personal fields replaced by their keyed hash, the chain still valid.
    let out = audit(db, &["redact", "--correlation-id", "req-first"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("in 1 event(s)"),
        "{}",
        text(&out.stdout)
    );
    let redacted = events(db)
        .into_iter()
        .find(|e| e["correlation_id"] == "req-first")
        .unwrap();
    assert!(redacted["ip_address"]["redacted"].is_string(), "{redacted}");
    assert!(redacted["user_agent"]["redacted"].is_string(), "{redacted}");
    assert!(redacted["actor"]["redacted"].is_string(), "{redacted}");
    let (ok, out) = verify(db, dir.path());
    assert!(ok, "redaction keeps the chain valid: {out}");
    let refused = audit(db, &["redact", "--field", "ip_address"]);
    assert!(!refused.status.success(), "redacting everything is refused");
    assert!(text(&refused.stderr).contains("needs a filter"));

    // Forgeries with plain SQL, each undone after its check.
    let cases = [
        (
            "UPDATE audit_events SET new_value = '500' WHERE chain = 'gw-1' AND seq = 2",
            "UPDATE audit_events SET new_value = '201' WHERE chain = 'gw-1' AND seq = 2",
            "chain gw-1: event 2 was edited",
        ),
        (
            "UPDATE audit_events SET user_agent = 'other/1' WHERE chain = 'gw-1' AND seq = 2",
            "UPDATE audit_events SET user_agent = 'shop-app/2.1' WHERE chain = 'gw-1' AND seq = 2",
            "chain gw-1: event 2: user_agent does not match its commitment",
        ),
        (
            "UPDATE audit_events SET seq = 100 WHERE chain = 'gw-1' AND seq = 2",
            "UPDATE audit_events SET seq = 2 WHERE chain = 'gw-1' AND seq = 100",
            "chain gw-1: event 2 is missing",
        ),
        (
            "UPDATE audit_events SET seq = -1 WHERE chain = 'gw-1' AND seq = 2; \
             UPDATE audit_events SET seq = 2 WHERE chain = 'gw-1' AND seq = 3; \
             UPDATE audit_events SET seq = 3 WHERE chain = 'gw-1' AND seq = -1",
            "UPDATE audit_events SET seq = -1 WHERE chain = 'gw-1' AND seq = 2; \
             UPDATE audit_events SET seq = 2 WHERE chain = 'gw-1' AND seq = 3; \
             UPDATE audit_events SET seq = 3 WHERE chain = 'gw-1' AND seq = -1",
            "chain gw-1: event 2 does not point to its predecessor",
        ),
    ];
    for (forge, undo, expected) in cases {
        shell.forge(forge);
        let (ok, out) = verify(db, dir.path());
        assert!(!ok, "{forge}: verify must fail");
        assert!(out.contains(expected), "{forge}: {out}");
        shell.forge(undo);
        let (ok, out) = verify(db, dir.path());
        assert!(ok, "undone: {out}");
    }
    // Deleting for good. gw-2's newest event: no anchor saw it, so the chain alone cannot
    // tell; the recorded heads can.
    shell.forge("DELETE FROM audit_events WHERE chain = 'gw-2' AND seq = 1");
    let (ok, out) = verify(db, dir.path());
    assert!(
        ok,
        "the known limit of a chain without a later anchor: {out}"
    );
    let out = audit(db, &["verify", "--heads-file", heads.to_str().unwrap()]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("chain gw-2 ends before event 1, which the head given to verify saw"),
        "{err}"
    );
    // The newest rows of gw-1, which no link shows, but gw-2's anchor
    // saw gw-1's head (its second anchor, seq 4) when gw-2 opened its chain.
    shell.forge("DELETE FROM audit_events WHERE chain = 'gw-1' AND seq >= 3");
    let (ok, out) = verify(db, dir.path());
    assert!(
        !ok && out.contains("chain gw-1 ends before event 4, which chain gw-2 event 0 saw"),
        "{out}"
    );
    // A row from the middle.
    shell.forge("DELETE FROM audit_events WHERE chain = 'gw-1' AND seq = 1");
    let (ok, out) = verify(db, dir.path());
    assert!(
        !ok && out.contains("chain gw-1: event 1 is missing"),
        "{out}"
    );
    assert!(out.starts_with("oncely: audit trail broken: "), "{out}");
}

struct SqliteShell(std::path::PathBuf);

impl Shell for SqliteShell {
    fn sql(&self, sql: &str) -> Result<(), String> {
        let c = rusqlite::Connection::open(&self.0).unwrap();
        c.execute_batch(sql).map_err(|e| e.to_string())
    }
    fn forge(&self, sql: &str) {
        let c = rusqlite::Connection::open(&self.0).unwrap();
        // What a forger does: drop the triggers, edit, and put the triggers back.
        let triggers: Vec<(String, String)> = c
            .prepare("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(triggers.len(), 3, "the table is guarded");
        for (name, _) in &triggers {
            c.execute_batch(&format!("DROP TRIGGER {name}")).unwrap();
        }
        c.execute_batch(sql).unwrap();
        for (_, create) in &triggers {
            c.execute_batch(create).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("audit.db");
    let db = format!("sqlite://{}", path.display());
    scenario(&db, &SqliteShell(path)).await;
}

struct PgShell {
    url: String,
    schema: String,
}

impl PgShell {
    fn run(&self, sql: &str) -> Result<(), String> {
        let (url, sql) = (
            self.url.clone(),
            format!("SET search_path TO {}; {sql}", self.schema),
        );
        // On a thread of its own: the test's runtime is busy awaiting nothing here.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(conn);
                client.batch_execute(&sql).await.map_err(|e| {
                    e.as_db_error()
                        .map_or_else(|| e.to_string(), |d| d.message().to_owned())
                })
            })
        })
        .join()
        .unwrap()
    }
}

impl Shell for PgShell {
    fn sql(&self, sql: &str) -> Result<(), String> {
        self.run(sql)
    }
    fn forge(&self, sql: &str) {
        self.run(&format!(
            "BEGIN; ALTER TABLE audit_events DISABLE TRIGGER USER; {sql}; \
             ALTER TABLE audit_events ENABLE TRIGGER USER; COMMIT;"
        ))
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_trail_on_postgres() {
    let url = oncely_testkit::require_service!(Service::Postgres, "audit_trail_on_postgres");
    let schema = unique_name("oncely_audit_cli");
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            drop_postgres_schemas(&self.0, std::slice::from_ref(&self.1));
        }
    }
    let _cleanup = Cleanup(url.clone(), schema.clone());
    let db = format!("{url}?schema={schema}");
    scenario(
        &db,
        &PgShell {
            url: url.clone(),
            schema,
        },
    )
    .await;
}

/// Bad input: one line, non-zero.
#[test]
fn audit_command_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite://{}", dir.path().join("none.db").display());
    for (args, expected) in [
        (
            vec!["--db", "redis://127.0.0.1", "verify"],
            "SQLite or PostgreSQL",
        ),
        (vec!["--db", "nonsense", "verify"], "not an audit log URL"),
        (vec!["--db", &missing, "verify"], "does not exist"),
    ] {
        let out = oncely().arg("audit").args(&args).output().unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(expected), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
    }
    assert!(!dir.path().join("none.db").exists(), "no stray file made");
}

/// `oncely audit migrate` prepares an empty trail, which verifies, and is guarded.
#[test]
fn migrate_prepares_an_empty_guarded_trail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trail.db");
    let db = format!("sqlite://{}", path.display());
    for expected in [
        "audit trail: migrated from version 0 to 1",
        "audit trail: version 1, up to date",
    ] {
        let out = audit(&db, &["migrate"]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(
            text(&out.stdout).contains(expected),
            "{}",
            text(&out.stdout)
        );
    }
    let (ok, out) = verify(&db, dir.path());
    assert!(!ok && out.contains("audit.key"), "no key file yet: {out}");
    std::fs::write(dir.path().join("audit.key"), "0123456789abcdef0123").unwrap();
    let (ok, out) = verify(&db, dir.path());
    assert!(ok && out.contains("ok: 0 events in 0 chain(s)"), "{out}");
    let c = rusqlite::Connection::open(&path).unwrap();
    let guards: i64 = c
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(guards, 3, "delete, update and replace guards");
}
