//! Who is asking, the catalog, favourites, the UI, and bad input.

use crate::common::{assert_problem, TestShop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_need_no_header_everything_else_names_a_known_user() {
    let shop = TestShop::start().await;
    let users = shop.get("", "/api/users").await;
    assert_eq!(users.status, 200);
    let ids: Vec<String> = users
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, ["ada", "grace", "linus"]);
    assert_eq!(users.json()[0]["name"], "Ada Lovelace");

    assert_problem(
        &shop.get("", "/api/products").await,
        401,
        "urn:oncely:shop:unknown-user",
    );
    assert_problem(
        &shop.get("mallory", "/api/cart").await,
        401,
        "urn:oncely:shop:unknown-user",
    );
    let two = shop
        .send("GET", "/api/cart", "ada", &[("x-shop-user", "grace")], "")
        .await;
    assert_problem(&two, 401, "urn:oncely:shop:unknown-user");

    // A correlation id is echoed, or made.
    let echoed = shop
        .send(
            "GET",
            "/api/products",
            "ada",
            &[("x-correlation-id", "corr-42")],
            "",
        )
        .await;
    assert_eq!(echoed.header("x-correlation-id"), Some("corr-42"));
    let made = shop.get("ada", "/api/products").await;
    assert_eq!(made.header("x-correlation-id").map(str::len), Some(32));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_carry_the_inventorys_live_stock() {
    let shop = TestShop::start().await;
    let products = shop.get("ada", "/api/products").await;
    assert_eq!(products.status, 200);
    let tea = products.json()[0].clone();
    assert_eq!(tea["id"], "tea");
    assert_eq!(tea["name"], "Tea");
    assert_eq!(tea["price_cents"], 450);
    assert_eq!(tea["stock"], 12);
    assert!(tea["description"].as_str().is_some_and(|d| !d.is_empty()));
    assert_eq!(shop.running.inventory().stock("tea"), 12);
    shop.running
        .inventory()
        .reset([("tea".to_owned(), 3)].into());
    assert_eq!(shop.get("ada", "/api/products").await.json()[0]["stock"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn favourites_are_added_listed_and_removed() {
    let shop = TestShop::start().await;
    assert_eq!(
        shop.get("ada", "/api/favourites").await.json()["products"],
        serde_json::json!([])
    );
    assert_eq!(
        shop.put("ada", "/api/favourites/tea", &[], "").await.status,
        204
    );
    assert_eq!(
        shop.put("ada", "/api/favourites/cake", &[], "")
            .await
            .status,
        204
    );
    assert_eq!(
        shop.put("ada", "/api/favourites/tea", &[], "").await.status,
        204
    );
    assert_eq!(
        shop.get("ada", "/api/favourites").await.json()["products"],
        serde_json::json!(["tea", "cake"])
    );
    assert_eq!(
        shop.get("grace", "/api/favourites").await.json()["products"],
        serde_json::json!([])
    );
    assert_problem(
        &shop.put("ada", "/api/favourites/caviar", &[], "").await,
        404,
        "urn:oncely:shop:not-found",
    );
    assert_eq!(
        shop.send("DELETE", "/api/favourites/tea", "ada", &[], "")
            .await
            .status,
        204
    );
    assert_eq!(
        shop.get("ada", "/api/favourites").await.json()["products"],
        serde_json::json!(["cake"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_file_is_404_and_the_ui_says_nosniff() {
    let shop = TestShop::start().await;
    for path in [
        "/assets/index-0000aaaa.js",
        "/assets/gone",
        "/favicon.ico",
        "/orders/report.csv",
    ] {
        let a = shop.get("", path).await;
        assert_problem(&a, 404, "urn:oncely:shop:not-found");
        assert_eq!(
            a.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
    for path in ["/", "/index.html", "/orders/ord_1"] {
        let a = shop.get("", path).await;
        assert_eq!(a.status, 200, "{path}");
        assert_eq!(
            a.header("content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        assert_eq!(
            a.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
    }
    if oncely_shop::web::is_built() {
        let html = String::from_utf8_lossy(&shop.get("", "/").await.body).into_owned();
        let asset = html
            .split('"')
            .find(|s| s.starts_with("/assets/"))
            .expect("the built index.html names its assets");
        let a = shop.get("", asset).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_is_served_outside_api_with_its_cache_headers() {
    let shop = TestShop::start().await;
    let root = shop.get("", "/").await;
    assert_eq!(root.status, 200);
    assert_eq!(
        root.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(root.header("cache-control"), Some("no-cache"));
    // A client-side route answers the same page.
    let route = shop.get("", "/orders/ord_1").await;
    assert_eq!((route.status, &route.body), (200, &root.body));
    if oncely_shop::web::is_built() {
        let html = String::from_utf8_lossy(&root.body).into_owned();
        let asset = html
            .split('"')
            .find(|s| s.starts_with("/assets/"))
            .expect("the built index.html names its assets");
        let a = shop.get("", asset).await;
        assert_eq!(a.status, 200);
        assert_eq!(
            a.header("cache-control"),
            Some("public, max-age=31536000, immutable")
        );
        assert_ne!(a.body, root.body);
    } else {
        assert!(String::from_utf8_lossy(&root.body).contains("npm run build"));
    }
    assert_problem(
        &shop.get("ada", "/api/nothing-here").await,
        404,
        "urn:oncely:shop:no-such-route",
    );
    assert_problem(
        &shop.send("POST", "/", "", &[], "").await,
        405,
        "urn:oncely:shop:method-not-allowed",
    );
}

/// A request and the problem it must get: method, path, headers, body, status, type.
type Case<'a> = (
    &'a str,
    &'a str,
    &'a [(&'a str, &'a str)],
    &'a str,
    u16,
    &'a str,
);

/// Every kind of bad input gets a problem document, and the shop keeps answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_problem_answers_never_a_panic() {
    let shop = TestShop::start().await;
    let v1 = [("if-match", "\"v1\"")];
    let one_tea = crate::common::tea(1, "tok_ok");
    let cases: Vec<Case<'_>> = vec![
        (
            "PUT",
            "/api/cart",
            &v1,
            "{",
            400,
            "urn:oncely:shop:invalid-request",
        ),
        (
            "PUT",
            "/api/cart",
            &v1,
            "[]",
            400,
            "urn:oncely:shop:invalid-request",
        ),
        (
            "PUT",
            "/api/cart",
            &v1,
            r#"{"items":[],"extra":1}"#,
            400,
            "urn:oncely:shop:invalid-request",
        ),
        (
            "PUT",
            "/api/cart",
            &v1,
            r#"{"items":[{"product":"tea","qty":-1}]}"#,
            400,
            "urn:oncely:shop:invalid-request",
        ),
        (
            "PUT",
            "/api/cart",
            &v1,
            r#"{"items":[{"product":"tea","qty":0}]}"#,
            422,
            "urn:oncely:shop:invalid-cart",
        ),
        (
            "PUT",
            "/api/cart",
            &v1,
            r#"{"items":[{"product":"tea","qty":100}]}"#,
            422,
            "urn:oncely:shop:invalid-cart",
        ),
        (
            "PUT",
            "/api/cart",
            &v1,
            r#"{"items":[{"product":"caviar","qty":1}]}"#,
            422,
            "urn:oncely:shop:invalid-cart",
        ),
        (
            "PUT",
            "/api/cart",
            &v1,
            r#"{"items":[{"product":"tea","qty":1},{"product":"tea","qty":1}]}"#,
            422,
            "urn:oncely:shop:invalid-cart",
        ),
        (
            "PUT",
            "/api/cart",
            &[("if-match", "v1 no quotes")],
            r#"{"items":[]}"#,
            400,
            "urn:oncely:problem:invalid-precondition",
        ),
        (
            "PUT",
            "/api/profile",
            &v1,
            r#"{"name":"","email":"a@b.c","addresses":[]}"#,
            422,
            "urn:oncely:shop:invalid-profile",
        ),
        (
            "PUT",
            "/api/profile",
            &v1,
            r#"{"name":"Ada","email":"not an address","addresses":[]}"#,
            422,
            "urn:oncely:shop:invalid-profile",
        ),
        (
            "PUT",
            "/api/profile/notes",
            &[],
            r#"{"notes":"x"}"#,
            400,
            "urn:oncely:shop:invalid-request",
        ),
        (
            "PUT",
            "/api/profile/notes",
            &[],
            r#"{"notes":"x","seq":"one"}"#,
            400,
            "urn:oncely:shop:invalid-request",
        ),
        (
            "POST",
            "/api/checkout",
            &[],
            &one_tea,
            400,
            "urn:oncely:problem:missing-idempotency-key",
        ),
        (
            "POST",
            "/api/checkout",
            &[("idempotency-key", "bad-1")],
            r#"{"card":"tok_ok"}"#,
            400,
            "urn:oncely:shop:invalid-request",
        ),
        (
            "POST",
            "/api/checkout",
            &[("idempotency-key", "bad-2")],
            r#"{"card":"tok_ok","items":[]}"#,
            422,
            "urn:oncely:shop:invalid-checkout",
        ),
        (
            "POST",
            "/api/checkout",
            &[("idempotency-key", "bad-3")],
            r#"{"card":"","items":[{"product":"tea","qty":1}]}"#,
            422,
            "urn:oncely:shop:invalid-checkout",
        ),
        (
            "GET",
            "/api/orders",
            &[("x-consistency-token", "soon")],
            "",
            400,
            "urn:oncely:shop:invalid-consistency-token",
        ),
        (
            "GET",
            "/api/checkouts/co_nope",
            &[],
            "",
            404,
            "urn:oncely:shop:not-found",
        ),
        (
            "POST",
            "/api/orders/ord_nope/cancel",
            &[("idempotency-key", "bad-4")],
            "",
            404,
            "urn:oncely:shop:not-found",
        ),
        (
            "DELETE",
            "/api/cart",
            &[],
            "",
            405,
            "urn:oncely:shop:method-not-allowed",
        ),
        (
            "PUT",
            "/api/chaos",
            &[],
            r#"{"provider_slow_ms":"fast"}"#,
            400,
            "urn:oncely:shop:invalid-request",
        ),
        (
            "PUT",
            "/api/chaos",
            &[],
            r#"{"no_such_switch":true}"#,
            400,
            "urn:oncely:shop:invalid-request",
        ),
        (
            "POST",
            "/api/audit/redact",
            &[],
            r#"{"user":"mallory"}"#,
            422,
            "urn:oncely:shop:unknown-user",
        ),
        (
            "GET",
            "/api/audit?entity=",
            &[],
            "",
            400,
            "urn:oncely:shop:invalid-request",
        ),
    ];
    for (method, path, headers, body, status, ty) in cases {
        let a = shop.send(method, path, "ada", headers, body).await;
        assert_eq!(a.status, status, "{method} {path} {body}: {:?}", a.json());
        assert_eq!(
            a.header("content-type"),
            Some("application/problem+json"),
            "{method} {path} {body}"
        );
        assert_eq!(
            a.problem_type().as_deref(),
            Some(ty),
            "{method} {path} {body}: {:?}",
            a.json()
        );
    }
    // Nothing of that was written, and the shop still answers.
    let cart = shop.get("ada", "/api/cart").await;
    assert_eq!((cart.status, cart.header("etag")), (200, Some("\"v1\"")));
    assert_eq!(
        shop.get("ada", "/api/orders").await.json(),
        serde_json::json!([])
    );
}
