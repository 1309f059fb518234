//! Every answer of the conditional contract, on both databases: two editors, weak tags,
//! create-only, missing and malformed preconditions, 304, delete, and the 409 policy. After
//! each refusal the stored row is checked to be untouched.

use oncely_conditional::ConflictStatus;
use oncely_testkit::{Answer, TestClient};

use crate::app::{start, Doc, Kind, Running};

const JSON: (&str, &str) = ("content-type", "application/json");

fn doc(title: &str, count: i64) -> Vec<u8> {
    serde_json::to_vec(&Doc {
        title: title.into(),
        count,
    })
    .unwrap()
}

async fn put(
    s: &Running,
    c: &TestClient,
    id: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Answer {
    let mut h = vec![JSON];
    h.extend_from_slice(headers);
    c.send("PUT", &s.doc_url(id), &h, body).await.unwrap()
}

async fn two_editors_and_every_refusal(kind: Kind, test: &str) {
    let Some(s) = start(kind, test, ConflictStatus::PreconditionFailed).await else {
        return;
    };
    let c = TestClient::new();
    let created = put(
        &s,
        &c,
        "d",
        &[("if-none-match", "*"), ("x-user", "grace")],
        doc("draft", 0),
    )
    .await;
    assert_eq!(created.status, 201);
    assert_eq!(created.header("etag"), Some("\"v1\""));
    assert!(created.header("last-modified").is_some());

    // Two editors read version 1; Ada saves first.
    let ada = put(
        &s,
        &c,
        "d",
        &[("if-match", "\"v1\""), ("x-user", "ada")],
        doc("Ada's title", 1),
    )
    .await;
    assert_eq!(ada.status, 200);
    assert_eq!(ada.header("etag"), Some("\"v2\""));
    let bob = put(
        &s,
        &c,
        "d",
        &[("if-match", "\"v1\""), ("x-user", "bob")],
        doc("Bob's title", 5),
    )
    .await;
    assert_eq!(bob.status, 412, "Bob's write was based on version 1");
    assert_eq!(bob.header("content-type"), Some("application/problem+json"));
    assert_eq!(
        bob.header("etag"),
        Some("\"v2\""),
        "the current ETag, to retry with"
    );
    let body = bob.json();
    assert_eq!(body["type"], "urn:oncely:problem:precondition-failed");
    assert_eq!(body["status"], 412);
    assert_eq!(
        body["current"]["title"], "Ada's title",
        "the winner's document"
    );
    assert_eq!(body["current"]["count"], 1);
    assert_eq!(body["etag"], "\"v2\"");
    assert_eq!(body["version"], 2);
    assert_eq!(body["changed_by"], "ada");
    let changed_at = body["changed_at"].as_str().unwrap();
    assert!(
        changed_at.ends_with('Z') && changed_at.len() == 24,
        "{changed_at}"
    );

    let untouched = |why: &'static str| {
        let s = &s;
        async move {
            let row = s.stored("d").await.unwrap();
            assert_eq!(row.revision.version, 2, "{why}: nothing written");
            assert_eq!(row.value.title, "Ada's title", "{why}");
        }
    };
    untouched("after the stale write").await;

    // A weak tag never authorises a write, even when its opaque value is current.
    let weak = put(&s, &c, "d", &[("if-match", "W/\"v2\"")], doc("weak", 9)).await;
    assert_eq!(weak.status, 412);
    untouched("weak If-Match").await;

    // A tag that is not one of ours matches nothing.
    let foreign = put(&s, &c, "d", &[("if-match", "\"abc\"")], doc("foreign", 9)).await;
    assert_eq!(foreign.status, 412);
    untouched("foreign If-Match").await;

    // Create-only on an existing document.
    let again = put(&s, &c, "d", &[("if-none-match", "*")], doc("again", 9)).await;
    assert_eq!(again.status, 412);
    assert_eq!(again.json()["current"]["title"], "Ada's title");
    untouched("If-None-Match: * on an existing row").await;

    // No precondition at all: 428, nothing written.
    let blind = put(&s, &c, "d", &[], doc("blind", 9)).await;
    assert_eq!(blind.status, 428);
    assert_eq!(
        blind.problem_type().as_deref(),
        Some("urn:oncely:problem:precondition-required")
    );
    untouched("no precondition").await;

    // Garbage: 400, nothing written, no panic.
    for garbage in ["v2", "\"v2", "*, \"v2\"", "W/v2", "\"v2\" junk"] {
        let bad = put(&s, &c, "d", &[("if-match", garbage)], doc("bad", 9)).await;
        assert_eq!(bad.status, 400, "If-Match {garbage:?}");
        assert_eq!(
            bad.problem_type().as_deref(),
            Some("urn:oncely:problem:invalid-precondition")
        );
    }
    untouched("malformed If-Match").await;

    // A list naming the current version among others is fine (strong comparison per tag).
    let listed = put(
        &s,
        &c,
        "d",
        &[("if-match", "\"v1\", \"v2\"")],
        doc("listed", 2),
    )
    .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.header("etag"), Some("\"v3\""));

    // Reads: 200 with validators, 304 for a current copy, 412 for a failed If-Match.
    let read = c.send("GET", &s.doc_url("d"), &[], "").await.unwrap();
    assert_eq!(read.status, 200);
    assert_eq!(read.header("etag"), Some("\"v3\""));
    let cached = c
        .send("GET", &s.doc_url("d"), &[("if-none-match", "W/\"v3\"")], "")
        .await
        .unwrap();
    assert_eq!(cached.status, 304, "weak comparison for If-None-Match");
    assert!(cached.body.is_empty());
    assert_eq!(cached.header("etag"), Some("\"v3\""));
    let old = c
        .send("GET", &s.doc_url("d"), &[("if-none-match", "\"v2\"")], "")
        .await
        .unwrap();
    assert_eq!(old.status, 200);
    assert_eq!(
        c.send("GET", &s.doc_url("nothing"), &[], "")
            .await
            .unwrap()
            .status,
        404
    );

    // Delete: stale refused with the current row, current accepted, then gone.
    let del = c
        .send("DELETE", &s.doc_url("d"), &[("if-match", "\"v2\"")], "")
        .await
        .unwrap();
    assert_eq!(del.status, 412);
    assert_eq!(del.json()["version"], 3);
    let del = c
        .send("DELETE", &s.doc_url("d"), &[("if-match", "\"v3\"")], "")
        .await
        .unwrap();
    assert_eq!(del.status, 204);
    assert!(s.stored("d").await.is_none());
    let gone = put(&s, &c, "d", &[("if-match", "\"v3\"")], doc("late", 1)).await;
    assert_eq!(
        gone.status, 412,
        "a write naming a version of a deleted row"
    );
    let gone = put(
        &s,
        &c,
        "d",
        &[("if-unmodified-since", "Thu, 01 Jan 2099 00:00:00 GMT")],
        doc("late", 1),
    )
    .await;
    assert_eq!(
        gone.status, 404,
        "a date precondition on nothing: there is nothing"
    );
}

#[tokio::test]
async fn two_editors_and_every_refusal_on_sqlite() {
    two_editors_and_every_refusal(Kind::Sqlite, "two_editors_and_every_refusal_on_sqlite").await;
}

#[tokio::test]
async fn two_editors_and_every_refusal_on_postgres() {
    two_editors_and_every_refusal(Kind::Postgres, "two_editors_and_every_refusal_on_postgres")
        .await;
}

#[tokio::test]
async fn the_conflict_status_can_be_409() {
    let s = start(
        Kind::Sqlite,
        "the_conflict_status_can_be_409",
        ConflictStatus::Conflict,
    )
    .await
    .unwrap();
    let c = TestClient::new();
    assert_eq!(
        put(&s, &c, "k", &[("if-none-match", "*")], doc("a", 0))
            .await
            .status,
        201
    );
    assert_eq!(
        put(&s, &c, "k", &[("if-match", "\"v1\"")], doc("b", 1))
            .await
            .status,
        200
    );
    let stale = put(&s, &c, "k", &[("if-match", "\"v1\"")], doc("c", 2)).await;
    assert_eq!(stale.status, 409, "Kubernetes / AIP-154 convention");
    assert_eq!(
        stale.json()["type"],
        "urn:oncely:problem:precondition-failed"
    );
    assert_eq!(stale.json()["current"]["title"], "b");
}

#[tokio::test]
async fn if_unmodified_since_guards_a_write_by_date() {
    let s = start(
        Kind::Sqlite,
        "if_unmodified_since_guards_a_write_by_date",
        ConflictStatus::PreconditionFailed,
    )
    .await
    .unwrap();
    let c = TestClient::new();
    let created = put(&s, &c, "t", &[("if-none-match", "*")], doc("a", 0)).await;
    let modified = created.header("last-modified").unwrap().to_owned();
    let before = "Sat, 29 Oct 1994 19:43:31 GMT";
    let refused = put(&s, &c, "t", &[("if-unmodified-since", before)], doc("b", 1)).await;
    assert_eq!(refused.status, 412);
    let ok = put(
        &s,
        &c,
        "t",
        &[("if-unmodified-since", &modified)],
        doc("b", 1),
    )
    .await;
    assert_eq!(
        ok.status, 200,
        "unmodified since its own Last-Modified second"
    );
}
