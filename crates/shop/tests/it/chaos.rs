//! Lost, repeated and reordered webhooks, redelivered events, reconciliation, and the other
//! switches.

use serde_json::json;

use crate::common::{assert_problem, count_where, key, tea, TestShop};

async fn paid_order(shop: &TestShop, name: &str) -> (String, String) {
    let placed = shop.checkout("ada", &key(name), &tea(1, "tok_ok")).await;
    assert_eq!(placed.status, 201, "{:?}", placed.json());
    (
        placed.json()["order"].as_str().unwrap().to_owned(),
        placed.header("x-consistency-token").unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_webhook_leaves_the_payment_pending_until_reconciliation_heals_it() {
    let shop = TestShop::start().await;
    shop.chaos(json!({ "webhook_drop_next": 1 })).await;
    let (order, token) = paid_order(&shop, "dropped").await;
    let path = format!("/api/orders/{order}");
    let seen = shop
        .send("GET", &path, "ada", &[("x-consistency-token", &token)], "")
        .await;
    assert_eq!(
        (
            seen.json()["status"].as_str(),
            seen.json()["payment"].as_str()
        ),
        (Some("confirmed"), Some("pending")),
        "{:?}",
        seen.json()
    );
    // Nothing else is coming: the webhook is gone.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(shop.get("ada", &path).await.json()["payment"], "pending");
    assert_eq!(
        shop.get("ada", "/api/chaos").await.json()["webhook_drop_next"],
        0
    );

    let run = shop
        .send("POST", "/api/admin/reconciliation/run", "ada", &[], "")
        .await;
    assert_eq!(run.status, 200, "{:?}", run.json());
    assert_eq!(
        run.json()["mismatches_by_class"],
        json!({ "missing_webhook": 1 }),
        "{:?}",
        run.json()
    );
    assert_eq!(
        run.json()["status"],
        "clean",
        "a healed drift leaves nothing for a person"
    );
    assert!(run.json()["checked"].as_u64() >= Some(1));
    shop.eventually("ada", &path, "the heal reaches the history", |a| {
        a.json()["payment"] == "paid"
    })
    .await;

    let board = shop.get("ada", "/api/admin/reconciliation").await.json();
    assert_eq!(board["last_run"]["id"], run.json()["id"]);
    assert_eq!(
        board["last_run"]["mismatches_by_class"]["missing_webhook"],
        1
    );
    let healed: Vec<_> = board["recent_findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["class"] == "missing_webhook" && f["key"] == order.as_str())
        .collect();
    assert_eq!(healed.len(), 1, "{board}");
    assert_eq!(healed[0]["state"], "healed");
    assert_eq!(board["open_findings"], json!([]));

    // A second run finds nothing more to heal.
    let again = shop
        .send("POST", "/api/admin/reconciliation/run", "ada", &[], "")
        .await;
    assert_eq!(
        again.json()["mismatches_by_class"],
        json!({}),
        "{:?}",
        again.json()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_charge_is_a_finding_for_a_person() {
    let shop = TestShop::start().await;
    shop.running.provider().insert(999, "ord_ghost");
    let run = shop
        .send("POST", "/api/admin/reconciliation/run", "ada", &[], "")
        .await;
    assert_eq!(run.json()["status"], "drift", "{:?}", run.json());
    assert_eq!(run.json()["mismatches_by_class"]["orphan_charge"], 1);
    let board = shop.get("ada", "/api/admin/reconciliation").await.json();
    let open = board["open_findings"].as_array().unwrap();
    assert_eq!(open.len(), 1, "{board}");
    assert_eq!(
        (open[0]["class"].as_str(), open[0]["key"].as_str()),
        (Some("orphan_charge"), Some("ord_ghost"))
    );
    assert!(open[0]["first_seen"].is_string() && open[0]["id"].is_number());
}

fn count(a: &oncely_testkit::Answer, text: &str) -> usize {
    a.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["text"].as_str().is_some_and(|t| t.starts_with(text)))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_webhook_and_redelivered_events_change_nothing_twice() {
    let shop = TestShop::start().await;
    shop.chaos(json!({ "webhook_duplicate_next": 1 })).await;
    let (order, _) = paid_order(&shop, "twice").await;
    shop.eventually(
        "ada",
        &format!("/api/orders/{order}"),
        "the payment in the history",
        |a| a.json()["payment"] == "paid",
    )
    .await;
    // Whatever the second copy could have enqueued is delivered before anything is counted.
    shop.drained().await;
    let notes = shop.get("ada", "/api/notifications").await;
    assert_eq!(
        shop.get("ada", "/api/chaos").await.json()["webhook_duplicate_next"],
        0,
        "the webhook arrived twice"
    );
    assert_eq!(count(&notes, "Payment received"), 1, "{:?}", notes.json());
    assert_eq!(count(&notes, &format!("Order {order} confirmed")), 1);
    assert_eq!(count(&notes, &format!("Order {order} placed")), 1);
    let n = notes.json().as_array().unwrap().len();
    assert_eq!(notes.json()[0]["order"], order.as_str());

    // Every event the relay delivered, handed to the consumers again.
    let redelivered = shop.running.redeliver().await.unwrap();
    assert!(redelivered >= 3, "{redelivered}");
    let after = shop.get("ada", "/api/notifications").await;
    assert_eq!(
        after.json().as_array().unwrap().len(),
        n,
        "{:?}",
        after.json()
    );
    let history = shop.get("ada", "/api/orders").await.json();
    assert_eq!(history.as_array().unwrap().len(), 1);
    assert_eq!(history[0]["payment"], "paid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_webhooks_each_arrive_once() {
    let shop = TestShop::start().await;
    shop.chaos(json!({ "webhook_reorder": true })).await;
    let (first, _) = paid_order(&shop, "first").await;
    let (second, _) = paid_order(&shop, "second").await;
    for order in [&first, &second] {
        shop.eventually(
            "ada",
            &format!("/api/orders/{order}"),
            "paid despite the reorder",
            |a| a.json()["payment"] == "paid",
        )
        .await;
    }
    assert!(
        shop.running.webhooks_held() >= 1,
        "the switch held no webhook back"
    );
    shop.drained().await;
    let notes = shop.get("ada", "/api/notifications").await;
    for order in [&first, &second] {
        assert_eq!(
            count(&notes, &format!("Payment received for order {order}")),
            1,
            "{:?}",
            notes.json()
        );
        let paid = shop
            .eventually(
                "ada",
                &format!("/api/audit?entity=order:{order}"),
                "the payment audited",
                |a| count_where(&a.json(), "action", "order.paid") >= 1,
            )
            .await
            .json();
        assert_eq!(count_where(&paid, "action", "order.paid"), 1, "{paid}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn favourites_fail_on_purpose_and_nothing_is_stored() {
    let shop = TestShop::start().await;
    assert_eq!(
        shop.put("ada", "/api/favourites/cake", &[], "")
            .await
            .status,
        204
    );
    shop.chaos(json!({ "favourites_fail": true })).await;
    assert_problem(
        &shop.put("ada", "/api/favourites/tea", &[], "").await,
        503,
        "urn:oncely:shop:injected-failure",
    );
    assert_problem(
        &shop
            .send("DELETE", "/api/favourites/cake", "ada", &[], "")
            .await,
        503,
        "urn:oncely:shop:injected-failure",
    );
    assert_eq!(
        shop.get("ada", "/api/favourites").await.json()["products"],
        json!(["cake"])
    );
    shop.chaos(json!({ "favourites_fail": false })).await;
    assert_eq!(
        shop.put("ada", "/api/favourites/tea", &[], "").await.status,
        204
    );
    assert_eq!(
        shop.get("ada", "/api/favourites").await.json()["products"],
        json!(["cake", "tea"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_switches_read_back_and_a_reset_restores_the_seed() {
    let shop = TestShop::start().await;
    let off = shop.get("ada", "/api/chaos").await.json();
    assert_eq!(
        off,
        json!({
            "provider_slow_ms": 0, "provider_fail_next": 0, "provider_timeout_next": 0,
            "webhook_drop_next": 0, "webhook_duplicate_next": 0, "webhook_reorder": false,
            "favourites_fail": false,
        })
    );
    let set = shop
        .put(
            "ada",
            "/api/chaos",
            &[],
            r#"{"webhook_drop_next":3,"favourites_fail":true}"#,
        )
        .await
        .json();
    assert_eq!(
        (
            set["webhook_drop_next"].as_u64(),
            set["favourites_fail"].as_bool(),
            set["provider_slow_ms"].as_u64()
        ),
        (Some(3), Some(true), Some(0))
    );

    let cart = json!({ "items": [{ "product": "cake", "qty": 1 }] }).to_string();
    assert_eq!(
        shop.put("ada", "/api/cart", &[("if-match", "\"v1\"")], &cart)
            .await
            .status,
        200
    );
    let (order, _) = paid_order(&shop, "before-reset").await;
    assert_eq!(shop.running.inventory().stock("tea"), 11);

    let reset = shop.send("POST", "/api/reset", "ada", &[], "").await;
    assert_eq!(reset.status, 200, "{:?}", reset.json());
    assert_eq!(shop.get("ada", "/api/chaos").await.json(), off);
    assert_eq!(
        shop.get("ada", "/api/products").await.json()[0]["stock"],
        12
    );
    assert_eq!(
        shop.get("ada", "/api/cart").await.json(),
        json!({ "items": [], "version": 1 })
    );
    assert_eq!(shop.get("ada", "/api/orders").await.json(), json!([]));
    assert_eq!(
        shop.get("ada", "/api/notifications").await.json(),
        json!([])
    );
    assert_problem(
        &shop.get("ada", &format!("/api/orders/{order}")).await,
        404,
        "urn:oncely:shop:not-found",
    );
    assert!(shop.running.provider().charges().is_empty());
    // And it works from there.
    paid_order(&shop, "after-reset").await;
}
