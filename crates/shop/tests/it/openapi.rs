//! The OpenAPI document against the router.

use std::collections::BTreeSet;

use crate::common::TestShop;

#[test]
fn the_document_names_every_route_of_the_router_and_no_other() {
    let router: BTreeSet<(String, String)> = oncely_shop::api_routes()
        .into_iter()
        .map(|(m, p)| (m.as_str().to_owned(), p.to_owned()))
        .collect();
    let documented: BTreeSet<(String, String)> =
        oncely_shop::openapi_routes().into_iter().collect();
    let missing: Vec<_> = router.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&router).collect();
    assert!(
        missing.is_empty(),
        "routes without documentation: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "documented routes the router does not have: {extra:?}"
    );
    assert!(router.len() >= 25, "{router:?}");
    let doc = oncely_shop::openapi_document();
    assert_eq!(doc["openapi"], "3.1.0");
    // Every reference points at something the document defines.
    let text = doc.to_string();
    for reference in text.split("\"$ref\":\"#/components/").skip(1) {
        let path: Vec<&str> = reference.split('"').next().unwrap().split('/').collect();
        assert!(
            !doc["components"][path[0]][path[1]].is_null(),
            "dangling $ref {path:?}"
        );
    }
}

/// The router really has each route the list names: none falls through to "no such route".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_listed_route_is_routed_and_the_document_is_served() {
    let shop = TestShop::start().await;
    for (method, path) in oncely_shop::api_routes() {
        let concrete = path.replace("{product}", "tea").replace("{id}", "x1");
        let a = shop
            .send(
                method.as_str(),
                &concrete,
                "ada",
                &[("idempotency-key", "routed")],
                "{}",
            )
            .await;
        assert_ne!(
            a.problem_type().as_deref(),
            Some("urn:oncely:shop:no-such-route"),
            "{method} {path}"
        );
        assert_ne!(a.status, 405, "{method} {path}");
    }
    let served = shop.get("", "/api/openapi.json").await;
    assert_eq!(served.status, 200);
    assert_eq!(served.json(), oncely_shop::openapi_document());
}
