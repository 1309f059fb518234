//! Stored responses sealed at rest, through `oncely serve` on SQLite: the database holds
//! ciphertext, a replay is byte-identical, keys rotate without losing a replay, and a
//! record whose key was dropped fails closed with the key named.

use oncely_testkit::{CountingUpstream, TestClient};

use crate::common::{serve, KillOnDrop};

/// Every byte SQLite keeps for `db` (the file and its write-ahead log).
fn raw(db: &std::path::Path) -> Vec<u8> {
    let mut all = std::fs::read(db).unwrap_or_default();
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    all.extend(std::fs::read(wal).unwrap_or_default());
    all
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_sealed_at_rest_and_keys_rotate() {
    let upstream = CountingUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("oncely.db");
    let (old, new) = (dir.path().join("old.key"), dir.path().join("new.key"));
    std::fs::write(&old, "11".repeat(32)).unwrap();
    std::fs::write(&new, format!("{}\n", "22".repeat(32))).unwrap();
    // Fail-open routes too: a record that does not open is there, so even they must not
    // forward the request unprotected.
    let config = |keys: &[(&str, &std::path::Path)]| {
        let path = dir
            .path()
            .join(format!("oncely-{}.toml", keys.len() * 10 + keys[0].0.len()));
        let entries: Vec<String> = keys
            .iter()
            .map(|(id, f)| format!("{{ id = \"{id}\", file = \"{}\" }}", f.display()))
            .collect();
        std::fs::write(
            &path,
            format!(
                "[defaults]\nstore_unavailable = \"fail-open\"\n\n[encryption]\nkeys = [{}]\n",
                entries.join(", ")
            ),
        )
        .unwrap();
        path
    };
    let client = TestClient::new();

    // Sealed with the old key: the database never holds the answer in clear.
    let (gw, url) = serve(&upstream.url(), &db, Some(&config(&[("2026-06", &old)])));
    let gw = KillOnDrop(gw);
    let orders = format!("{url}/orders");
    let first = client
        .post_keyed(&orders, "a", r#"{"n":1}"#, &[])
        .await
        .unwrap();
    assert_eq!(first.status, 201);
    let replay = client
        .post_keyed(&orders, "a", r#"{"n":1}"#, &[])
        .await
        .unwrap();
    assert!(replay.replayed());
    assert_eq!(
        (replay.body.clone(), replay.header("location")),
        (first.body.clone(), first.header("location"))
    );
    gw.stop();
    let bytes = raw(&db);
    assert!(contains(&bytes, b"2026-06"), "the record names its key");
    assert!(
        !contains(&bytes, b"\"execution\""),
        "no response body in clear"
    );
    assert!(
        !contains(&bytes, b"/things/"),
        "no response header in clear"
    );

    // Rotated: the new key first, the old one kept; the old record still replays, byte
    // for byte, from the store (a fresh process has an empty replay cache).
    let (gw, url) = serve(
        &upstream.url(),
        &db,
        Some(&config(&[("2026-12", &new), ("2026-06", &old)])),
    );
    let gw = KillOnDrop(gw);
    let orders = format!("{url}/orders");
    let again = client
        .post_keyed(&orders, "a", r#"{"n":1}"#, &[])
        .await
        .unwrap();
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    let second = client
        .post_keyed(&orders, "b", r#"{"n":2}"#, &[])
        .await
        .unwrap();
    assert_eq!(second.status, 201);
    gw.stop();
    assert!(
        contains(&raw(&db), b"2026-12"),
        "new records are sealed with the new key"
    );

    // The old key dropped too early: its record fails closed (no second execution), the
    // new key's record still replays.
    let mut child = crate::common::oncely()
        .args(["--log-level", "warn", "serve", "--listen", "127.0.0.1:0"])
        .args([
            "--admin-listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream.url(),
        ])
        .arg("--store")
        .arg(format!("sqlite://{}", db.display()))
        .arg("--config")
        .arg(config(&[("2026-12", &new)]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = crate::common::listening_url(&mut child);
    let mut stderr = child.stderr.take().unwrap();
    let gw = KillOnDrop(child);
    let orders = format!("{url}/orders");
    let refused = client
        .post_keyed(&orders, "a", r#"{"n":1}"#, &[])
        .await
        .unwrap();
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert_eq!(upstream.executions("a"), 1, "never executed again");
    let fine = client
        .post_keyed(&orders, "b", r#"{"n":2}"#, &[])
        .await
        .unwrap();
    assert!(fine.replayed());
    assert_eq!(fine.body, second.body);
    gw.stop();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut log).unwrap();
    assert!(
        log.contains("sealed with key \\\"2026-06\\\", which is not in the keyring")
            || log.contains("sealed with key \"2026-06\", which is not in the keyring"),
        "the log names the missing key: {log}"
    );

    // A bad key file: one line, the setting and the reason.
    let bad = dir.path().join("bad.key");
    std::fs::write(&bad, "not hex").unwrap();
    let out = crate::common::oncely()
        .args([
            "serve",
            "--upstream",
            &upstream.url(),
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--config")
        .arg(config(&[("k", &bad)]))
        .arg("--store")
        .arg(format!("sqlite://{}", db.display()))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("encryption.keys") && err.contains("64 hex digits"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}
