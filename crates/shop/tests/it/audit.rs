//! The application audit trail: who changed what, from where, and its redaction.

use serde_json::json;

use crate::common::{assert_problem, key, tea, TestShop};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_trail_answers_only_about_the_callers_own_entities() {
    let shop = TestShop::start().await;
    let cart = json!({ "items": [{ "product": "cake", "qty": 1 }] }).to_string();
    let graces = [("if-match", "\"v1\""), ("user-agent", "graces-browser/1")];
    assert_eq!(
        shop.put("grace", "/api/cart", &graces, &cart).await.status,
        200
    );
    let doc = json!({ "name": "Grace", "email": "grace@navy.example", "addresses": [] });
    assert_eq!(
        shop.put("grace", "/api/profile", &graces, &doc.to_string())
            .await
            .status,
        200
    );
    let placed = shop
        .send(
            "POST",
            "/api/checkout",
            "grace",
            &[
                ("idempotency-key", &key("graces")),
                ("user-agent", "graces-browser/1"),
            ],
            &tea(1, "tok_ok"),
        )
        .await;
    assert_eq!(placed.status, 201, "{:?}", placed.json());
    let order = placed.json()["order"].as_str().unwrap().to_owned();

    // Grace sees her own.
    for entity in [
        "cart:grace".to_owned(),
        "profile:grace".to_owned(),
        format!("order:{order}"),
    ] {
        let own = shop
            .eventually(
                "grace",
                &format!("/api/audit?entity={entity}"),
                "her own events",
                |a| a.status == 200 && a.json().as_array().is_some_and(|e| !e.is_empty()),
            )
            .await;
        assert!(
            String::from_utf8_lossy(&own.body).contains("graces-browser/1"),
            "{entity}"
        );
    }
    // Ada sees none of them, nor anything that is nobody's own.
    for entity in [
        "cart:grace".to_owned(),
        "profile:grace".to_owned(),
        "favourites:grace".to_owned(),
        format!("order:{order}"),
        "order:ord_nothing".to_owned(),
        "user:grace".to_owned(),
        "chaos:switches".to_owned(),
        "nonsense".to_owned(),
    ] {
        let other = shop
            .get("ada", &format!("/api/audit?entity={entity}"))
            .await;
        assert_problem(&other, 404, "urn:oncely:shop:not-found");
        assert!(
            !String::from_utf8_lossy(&other.body).contains("graces-browser"),
            "{entity}"
        );
    }
    // Her own entities still answer Ada, even when nothing happened to them yet.
    let mine = shop.get("ada", "/api/audit?entity=cart:ada").await;
    assert_eq!((mine.status, mine.json()), (200, json!([])));
}
