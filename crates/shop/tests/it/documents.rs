//! The versioned documents (cart, profile) and the autosaved notes.

use serde_json::json;

use crate::common::{assert_problem, TestShop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_is_versioned_and_a_blind_write_is_refused() {
    let shop = TestShop::start().await;
    let cart = shop.get("ada", "/api/cart").await;
    assert_eq!(cart.status, 200);
    assert_eq!(cart.json(), json!({ "items": [], "version": 1 }));
    assert_eq!(cart.header("etag"), Some("\"v1\""));
    assert!(cart.header("last-modified").is_some());
    let unchanged = shop
        .send(
            "GET",
            "/api/cart",
            "ada",
            &[("if-none-match", "\"v1\"")],
            "",
        )
        .await;
    assert_eq!(unchanged.status, 304);

    let body = json!({ "items": [{ "product": "tea", "qty": 2 }] }).to_string();
    let blind = shop.put("ada", "/api/cart", &[], &body).await;
    assert_problem(&blind, 428, "urn:oncely:problem:precondition-required");
    assert_eq!(
        shop.get("ada", "/api/cart").await.json()["version"],
        1,
        "nothing written"
    );

    let put = shop
        .put("ada", "/api/cart", &[("if-match", "\"v1\"")], &body)
        .await;
    assert_eq!(put.status, 200, "{:?}", put.json());
    assert_eq!(put.header("etag"), Some("\"v2\""));
    assert_eq!(
        put.json(),
        json!({ "items": [{ "product": "tea", "qty": 2 }], "version": 2 })
    );
    // Grace's cart is her own.
    assert_eq!(shop.get("grace", "/api/cart").await.json()["version"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_with_one_if_match_one_wins_the_other_gets_the_winner() {
    let shop = TestShop::start().await;
    let first = json!({ "items": [{ "product": "tea", "qty": 1 }] }).to_string();
    let second = json!({ "items": [{ "product": "cake", "qty": 3 }] }).to_string();
    let (a, b) = tokio::join!(
        shop.put("ada", "/api/cart", &[("if-match", "\"v1\"")], &first),
        shop.put("ada", "/api/cart", &[("if-match", "\"v1\"")], &second),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 412], "{:?} {:?}", a.json(), b.json());
    let (winner, loser) = if a.status == 200 { (a, b) } else { (b, a) };
    assert_problem(&loser, 412, "urn:oncely:problem:precondition-failed");
    let refusal = loser.json();
    assert_eq!(
        refusal["current"],
        winner.json(),
        "the 412 carries the winner's cart"
    );
    assert_eq!(refusal["version"], 2);
    assert_eq!(refusal["etag"], "\"v2\"");
    assert_eq!(refusal["changed_by"], "ada");
    assert!(refusal["changed_at"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));
    assert_eq!(loser.header("etag"), Some("\"v2\""));
    // What is stored is the winner's, at version 2: the loser wrote nothing.
    assert_eq!(shop.get("ada", "/api/cart").await.json(), winner.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_profile_is_versioned_and_its_addresses_removed_with_if_match() {
    let shop = TestShop::start().await;
    let profile = shop.get("grace", "/api/profile").await;
    assert_eq!(profile.status, 200);
    let p = profile.json();
    assert_eq!(
        (
            p["name"].as_str(),
            p["email"].as_str(),
            p["version"].as_u64()
        ),
        (Some("Grace Hopper"), Some("grace@example.com"), Some(1))
    );
    assert_eq!(p["addresses"][0]["id"], "addr_1");
    assert_eq!(profile.header("etag"), Some("\"v1\""));

    let doc = json!({
        "name": "Grace Brewster Hopper",
        "email": "grace@navy.example",
        "addresses": [{ "id": "addr_1", "line": "1 Navy Yard" }, { "line": "Yale, New Haven" }],
    })
    .to_string();
    assert_problem(
        &shop.put("grace", "/api/profile", &[], &doc).await,
        428,
        "urn:oncely:problem:precondition-required",
    );
    let put = shop
        .put("grace", "/api/profile", &[("if-match", "\"v1\"")], &doc)
        .await;
    assert_eq!(put.status, 200, "{:?}", put.json());
    let new = put.json();
    assert_eq!(
        (new["version"].as_u64(), new["updated_by"].as_str()),
        (Some(2), Some("grace"))
    );
    let added = new["addresses"][1]["id"].as_str().unwrap().to_owned();
    assert!(added.starts_with("addr_"), "{new}");

    // A stale edit: 412 with the current profile, who and when.
    let stale = shop
        .put("grace", "/api/profile", &[("if-match", "\"v1\"")], &doc)
        .await;
    assert_problem(&stale, 412, "urn:oncely:problem:precondition-failed");
    assert_eq!(stale.json()["current"]["name"], "Grace Brewster Hopper");
    assert_eq!(stale.json()["changed_by"], "grace");

    let path = format!("/api/profile/addresses/{added}");
    assert_problem(
        &shop.send("DELETE", &path, "grace", &[], "").await,
        428,
        "urn:oncely:problem:precondition-required",
    );
    assert_problem(
        &shop
            .send("DELETE", &path, "grace", &[("if-match", "\"v1\"")], "")
            .await,
        412,
        "urn:oncely:problem:precondition-failed",
    );
    let removed = shop
        .send("DELETE", &path, "grace", &[("if-match", "\"v2\"")], "")
        .await;
    assert_eq!(removed.status, 200, "{:?}", removed.json());
    assert_eq!(removed.header("etag"), Some("\"v3\""));
    assert_eq!(
        removed.json()["addresses"].as_array().map(Vec::len),
        Some(1)
    );
    assert_problem(
        &shop
            .send("DELETE", &path, "grace", &[("if-match", "\"v3\"")], "")
            .await,
        404,
        "urn:oncely:shop:not-found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_autosave_never_overwrites_a_newer_one() {
    let shop = TestShop::start().await;
    let save = |notes: &str, seq: u64| json!({ "notes": notes, "seq": seq }).to_string();
    let saved = shop
        .put("linus", "/api/profile/notes", &[], &save("draft five", 5))
        .await;
    assert_eq!(saved.status, 200, "{:?}", saved.json());
    assert_eq!(
        (saved.json()["notes"].as_str(), saved.json()["seq"].as_u64()),
        (Some("draft five"), Some(5))
    );
    assert!(saved.json()["saved_at"].is_string());
    for (notes, seq) in [("draft three", 3), ("draft five again", 5)] {
        let late = shop
            .put("linus", "/api/profile/notes", &[], &save(notes, seq))
            .await;
        assert_problem(&late, 409, "urn:oncely:shop:stale-save");
        assert_eq!(late.json()["seq"], 5);
    }
    let profile = shop.get("linus", "/api/profile").await.json();
    assert_eq!(
        (profile["notes"].as_str(), profile["notes_seq"].as_u64()),
        (Some("draft five"), Some(5)),
        "nothing written"
    );
    // The notes are outside the profile's version: an autosave never makes an edit stale.
    assert_eq!(profile["version"], 1);
    assert_eq!(
        shop.put("linus", "/api/profile/notes", &[], &save("six", 6))
            .await
            .status,
        200
    );
    assert_eq!(
        shop.get("linus", "/api/profile").await.json()["notes"],
        "six"
    );
}
