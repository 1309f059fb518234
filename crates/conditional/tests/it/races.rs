//! Clients that try to lose an update: 32 of them at once, each reading the document,
//! adding one to its count and writing it back. With `If-Match` (retrying on 412 by reading
//! again) every increment survives and every version is written once; the same workload
//! without preconditions, the control, loses increments.

use std::collections::BTreeSet;
use std::sync::Arc;

use oncely_conditional::ConflictStatus;
use oncely_testkit::TestClient;

use crate::app::{start, Doc, Kind, Running};

const CLIENTS: usize = 32;
const INCREMENTS: usize = 8;

async fn create(s: &Running, client: &TestClient, id: &str) {
    let body = serde_json::to_vec(&Doc {
        title: "counter".into(),
        count: 0,
    })
    .unwrap();
    let a = client
        .send(
            "PUT",
            &s.doc_url(id),
            &[("content-type", "application/json"), ("if-none-match", "*")],
            body,
        )
        .await
        .unwrap();
    assert_eq!(a.status, 201, "{:?}", a.body);
    assert_eq!(a.header("etag"), Some("\"v1\""));
}

/// Each client increments INCREMENTS times, re-reading on every 412. Returns the ETag of
/// each successful write.
async fn conditional_increments(s: Arc<Running>, id: &str) -> (Vec<String>, usize) {
    let client = Arc::new(TestClient::new());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (s, client, id) = (s.clone(), client.clone(), id.to_owned());
        tasks.spawn(async move {
            let mut written = Vec::new();
            let mut conflicts = 0;
            while written.len() < INCREMENTS {
                let read = client.send("GET", &s.doc_url(&id), &[], "").await.unwrap();
                assert_eq!(read.status, 200);
                let etag = read.header("etag").unwrap().to_owned();
                let mut doc: Doc = serde_json::from_slice(&read.body).unwrap();
                doc.count += 1;
                let w = client
                    .send(
                        "PUT",
                        &s.doc_url(&id),
                        &[("content-type", "application/json"), ("if-match", &etag)],
                        serde_json::to_vec(&doc).unwrap(),
                    )
                    .await
                    .unwrap();
                match w.status {
                    200 => written.push(w.header("etag").unwrap().to_owned()),
                    412 => {
                        conflicts += 1;
                        let body = w.json();
                        assert_ne!(
                            body["etag"].as_str(),
                            Some(etag.as_str()),
                            "a 412 names a newer version"
                        );
                    }
                    other => panic!("unexpected {other}: {:?}", w.body),
                }
            }
            (written, conflicts)
        });
    }
    let mut etags = Vec::new();
    let mut conflicts = 0;
    while let Some(r) = tasks.join_next().await {
        let (w, c) = r.unwrap();
        etags.extend(w);
        conflicts += c;
    }
    (etags, conflicts)
}

async fn blind_increments(s: Arc<Running>, id: &str) {
    let client = Arc::new(TestClient::new());
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (s, client, id) = (s.clone(), client.clone(), id.to_owned());
        tasks.spawn(async move {
            for _ in 0..INCREMENTS {
                let read = client.send("GET", &s.doc_url(&id), &[], "").await.unwrap();
                let mut doc: Doc = serde_json::from_slice(&read.body).unwrap();
                doc.count += 1;
                let w = client
                    .send(
                        "PUT",
                        &s.blind_url(&id),
                        &[("content-type", "application/json")],
                        serde_json::to_vec(&doc).unwrap(),
                    )
                    .await
                    .unwrap();
                assert_eq!(w.status, 200);
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
}

async fn no_update_is_lost(kind: Kind, test: &str) {
    let Some(s) = start(kind, test, ConflictStatus::PreconditionFailed).await else {
        return;
    };
    let s = Arc::new(s);
    let client = TestClient::new();
    create(&s, &client, "guarded").await;
    create(&s, &client, "blind").await;

    let (etags, conflicts) = conditional_increments(s.clone(), "guarded").await;
    let total = (CLIENTS * INCREMENTS) as i64;
    let stored = s.stored("guarded").await.unwrap();
    assert_eq!(stored.value.count, total, "every successful write counted");
    assert_eq!(stored.revision.version, total as u64 + 1);
    let distinct: BTreeSet<&String> = etags.iter().collect();
    assert_eq!(
        distinct.len(),
        etags.len(),
        "each version written exactly once"
    );
    let expected: BTreeSet<String> = (2..=total + 1).map(|v| format!("\"v{v}\"")).collect();
    assert_eq!(
        distinct.into_iter().cloned().collect::<BTreeSet<_>>(),
        expected
    );
    assert!(
        conflicts > 0,
        "the race was real: {conflicts} writes were refused with 412"
    );

    blind_increments(s.clone(), "blind").await;
    let blind = s.stored("blind").await.unwrap();
    assert!(
        blind.value.count < total,
        "the control should lose updates: {} of {total} increments survived",
        blind.value.count
    );
    eprintln!(
        "{test}: guarded {total}/{total} with {conflicts} conflicts; blind {}/{total}",
        blind.value.count
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_update_is_lost_on_sqlite() {
    no_update_is_lost(Kind::Sqlite, "no_update_is_lost_on_sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_update_is_lost_on_postgres() {
    no_update_is_lost(Kind::Postgres, "no_update_is_lost_on_postgres").await;
}
