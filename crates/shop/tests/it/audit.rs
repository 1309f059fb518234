//! The application audit trail: who changed what, from where, and its redaction.

use serde_json::json;

use crate::common::{key, tea, TestShop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_audited_with_their_request_and_redacted_per_user() {
    let shop = TestShop::start().await;
    let cart = json!({ "items": [{ "product": "tea", "qty": 1 }] }).to_string();
    let headers = [
        ("if-match", "\"v1\""),
        ("x-correlation-id", "req-cart-1"),
        ("user-agent", "shop-test/1"),
    ];
    assert_eq!(
        shop.put("ada", "/api/cart", &headers, &cart).await.status,
        200
    );
    let placed = shop
        .checkout("ada", &key("audited"), &tea(1, "tok_ok"))
        .await;
    let order = placed.json()["order"].as_str().unwrap().to_owned();
    assert_eq!(
        shop.put("grace", "/api/favourites/tea", &[], "")
            .await
            .status,
        204
    );

    let events = shop
        .eventually(
            "ada",
            "/api/audit?entity=cart:ada",
            "the cart's events",
            |a| a.json().as_array().is_some_and(|e| e.len() >= 2),
        )
        .await
        .json();
    // Newest first: the checkout emptied the cart after Ada filled it.
    let filled = events
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "cart.updated")
        .unwrap();
    assert_eq!(filled["actor"], "ada");
    assert_eq!(filled["entity"], "cart:ada");
    assert_eq!(filled["old"], json!({ "items": [], "version": 1 }));
    assert_eq!(
        filled["new"],
        json!({ "items": [{ "product": "tea", "qty": 1 }], "version": 2 })
    );
    assert_eq!(filled["correlation_id"], "req-cart-1");
    assert_eq!(filled["client_addr"], "127.0.0.1");
    assert_eq!(filled["user_agent"], "shop-test/1");
    assert!(filled["at"].is_string() && filled["id"].is_string());

    // The order's own history, on its page.
    let page = shop
        .eventually(
            "ada",
            &format!("/api/orders/{order}"),
            "the order's history",
            |a| {
                let actions: Vec<String> = a.json()["history"]
                    .as_array()
                    .map(|h| {
                        h.iter()
                            .map(|e| e["action"].as_str().unwrap_or("").to_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                ["order.placed", "order.confirmed", "order.paid"]
                    .iter()
                    .all(|w| actions.iter().any(|a| a == w))
            },
        )
        .await;
    assert!(page.json()["history"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["entity"] == format!("order:{order}")));

    let redacted = shop
        .send(
            "POST",
            "/api/audit/redact",
            "grace",
            &[],
            r#"{"user":"ada"}"#,
        )
        .await;
    assert_eq!(redacted.status, 200, "{:?}", redacted.json());
    assert!(
        redacted.json()["redacted"].as_u64() >= Some(2),
        "{:?}",
        redacted.json()
    );
    let after = shop.get("ada", "/api/audit?entity=cart:ada").await.json();
    let filled = after
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "cart.updated")
        .unwrap();
    assert_eq!(
        (
            filled["actor"].clone(),
            filled["client_addr"].clone(),
            filled["user_agent"].clone()
        ),
        (json!(null), json!(null), json!(null))
    );
    assert_eq!(filled["redacted"], true);
    assert_eq!(filled["new"]["version"], 2, "what changed stays on record");
    assert_eq!(filled["correlation_id"], "req-cart-1");
    // Grace's events keep her name.
    let graces = shop
        .get("grace", "/api/audit?entity=favourites:grace")
        .await
        .json();
    assert_eq!(graces[0]["actor"], "grace");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_events_record_what_changed_never_the_personal_values() {
    let shop = TestShop::start().await;
    let doc =
        json!({ "name": "Ada King", "email": "ada@lovelace.example", "addresses": [] }).to_string();
    assert_eq!(
        shop.put("ada", "/api/profile", &[("if-match", "\"v1\"")], &doc)
            .await
            .status,
        200
    );
    let events = shop
        .eventually(
            "ada",
            "/api/audit?entity=profile:ada",
            "the profile's event",
            |a| a.json().as_array().is_some_and(|e| !e.is_empty()),
        )
        .await
        .json();
    let e = &events[0];
    assert_eq!(e["action"], "profile.updated");
    assert_eq!(
        e["new"],
        json!({ "version": 2, "changed": ["name", "email", "addresses"] })
    );
    assert!(!e.to_string().contains("lovelace.example"), "{e}");
}
