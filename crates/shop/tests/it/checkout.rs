//! The checkout saga through the API: once per key, compensated when the card is declined,
//! 202 when the provider is slow, and a buyer's cancel.

use std::time::Duration;

use serde_json::json;

use oncely_shop::chaos::Fault;

use crate::common::{assert_problem, count_where, key, tea, TestShop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkout_confirms_once_replays_and_empties_the_cart() {
    let shop = TestShop::start().await;
    let cart = json!({ "items": [{ "product": "tea", "qty": 2 }] }).to_string();
    assert_eq!(
        shop.put("ada", "/api/cart", &[("if-match", "\"v1\"")], &cart)
            .await
            .status,
        200
    );

    let k = key("happy");
    let first = shop.checkout("ada", &k, &tea(2, "tok_ok")).await;
    assert_eq!(first.status, 201, "{:?}", first.json());
    let body = first.json();
    assert_eq!(body["status"], "confirmed");
    assert_eq!(body["total_cents"], 900);
    let (checkout, order) = (
        body["checkout"].as_str().unwrap().to_owned(),
        body["order"].as_str().unwrap().to_owned(),
    );
    assert!(
        checkout.starts_with("co_") && order.starts_with("ord_"),
        "{body}"
    );
    assert_eq!(
        first.header("location"),
        Some(format!("/api/checkouts/{checkout}").as_str())
    );
    assert!(first
        .header("x-consistency-token")
        .and_then(|t| t.parse::<u64>().ok())
        .is_some());

    // A retry replays the first answer, byte for byte; another body under the key is refused.
    let again = shop.checkout("ada", &k, &tea(2, "tok_ok")).await;
    assert_eq!(
        (again.status, again.replayed(), &again.body),
        (201, true, &first.body)
    );
    let other = shop.checkout("ada", &k, &tea(3, "tok_ok")).await;
    assert_problem(&other, 422, "urn:oncely:problem:idempotency-key-reused");
    // The same key is another user's own.
    let graces = shop.checkout("grace", &k, &tea(1, "tok_ok")).await;
    assert_eq!(graces.status, 201, "{:?}", graces.json());
    assert_ne!(graces.json()["order"], body["order"]);

    assert_eq!(shop.running.provider().charges().len(), 2);
    assert_eq!(shop.running.inventory().stock("tea"), 12 - 2 - 1);
    let emptied = shop.get("ada", "/api/cart").await.json();
    assert_eq!(
        (emptied["items"].clone(), emptied["version"].as_u64()),
        (json!([]), Some(3))
    );

    let progress = shop.get("ada", &format!("/api/checkouts/{checkout}")).await;
    assert_eq!(progress.status, 200);
    let p = progress.json();
    assert_eq!(
        (p["status"].as_str(), p["order"].as_str()),
        (Some("confirmed"), Some(order.as_str()))
    );
    let steps: Vec<(String, String)> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("place_order".to_owned(), "done".to_owned()),
            ("reserve_stock".to_owned(), "done".to_owned()),
            ("capture_payment".to_owned(), "done".to_owned()),
            ("confirm_order".to_owned(), "done".to_owned()),
        ]
    );
    assert!(
        p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["attempts"] == 1),
        "{p}"
    );
    // Another user does not see it.
    assert_problem(
        &shop
            .get("grace", &format!("/api/checkouts/{checkout}"))
            .await,
        404,
        "urn:oncely:shop:not-found",
    );
}

async fn concurrent(n: usize) {
    let shop = TestShop::start().await;
    let k = key("racers");
    let body = tea(1, "tok_ok");
    let answers = all_at_once((0..n).map(|_| shop.checkout("ada", &k, &body)).collect()).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert!(statuses.contains(&201), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 201 || *s == 409),
        "{statuses:?}"
    );
    for a in answers.iter().filter(|a| a.status == 409) {
        assert_problem(a, 409, "urn:oncely:problem:request-in-progress");
        assert!(a.header("retry-after").is_some());
    }
    // Whatever each was told, there is one order and one charge.
    let settled = shop.checkout("ada", &k, &body).await;
    assert_eq!(settled.status, 201, "{:?}", settled.json());
    assert_eq!(
        shop.running.provider().charges().len(),
        1,
        "one charge for {n} requests"
    );
    assert_eq!(shop.running.provider().executions(), 1);
    assert_eq!(shop.running.inventory().reservations().len(), 1);
    let orders = shop
        .eventually("ada", "/api/orders", "the order in the history", |a| {
            a.json().as_array().is_some_and(|o| !o.is_empty())
        })
        .await;
    assert_eq!(
        orders.json().as_array().map(Vec::len),
        Some(1),
        "{:?}",
        orders.json()
    );
}

/// Polls `futures` together, so that every request is in flight before any answer is read.
async fn all_at_once<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = pinned.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, slot) in pinned.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_double_click_makes_one_order_and_one_charge() {
    concurrent(2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_triple_click_makes_one_order_and_one_charge() {
    concurrent(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_compensates_the_stock_and_the_order() {
    let shop = TestShop::start().await;
    let declined = shop
        .checkout("ada", &key("declined"), &tea(3, "tok_declined"))
        .await;
    assert_problem(&declined, 402, "urn:oncely:shop:card-declined");
    let (checkout, order) = (
        declined.json()["checkout"].as_str().unwrap().to_owned(),
        declined.json()["order"].as_str().unwrap().to_owned(),
    );
    assert!(declined.header("x-consistency-token").is_some());
    assert_eq!(
        shop.running.inventory().stock("tea"),
        12,
        "the stock is back"
    );
    assert_eq!(shop.running.inventory().releases(), 1);
    assert!(shop.running.provider().charges().is_empty());

    let p = shop
        .get("ada", &format!("/api/checkouts/{checkout}"))
        .await
        .json();
    assert_eq!(p["status"], "declined", "{p}");
    let states: Vec<&str> = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["compensated", "compensated", "failed", "pending"],
        "{p}"
    );

    let token = declined.header("x-consistency-token").unwrap().to_owned();
    let history = shop
        .send(
            "GET",
            &format!("/api/orders/{order}"),
            "ada",
            &[("x-consistency-token", &token)],
            "",
        )
        .await;
    assert_eq!(history.header("x-consistency"), Some("fresh"));
    assert_eq!(
        (
            history.json()["status"].as_str(),
            history.json()["payment"].as_str()
        ),
        (Some("cancelled"), Some("failed"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_the_stock_is_refused_and_nothing_is_charged() {
    let shop = TestShop::start().await;
    let a = shop
        .checkout("ada", &key("greedy"), &tea(13, "tok_ok"))
        .await;
    assert_problem(&a, 409, "urn:oncely:shop:out-of-stock");
    assert!(shop.running.provider().charges().is_empty());
    assert_eq!(shop.running.inventory().stock("tea"), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_provider_gets_202_and_the_checkout_confirms_later() {
    let shop = TestShop::start_with(|c| c.checkout_wait = Duration::from_millis(500)).await;
    shop.chaos(json!({ "provider_slow_ms": 1500 })).await;
    let a = shop.checkout("ada", &key("slow"), &tea(1, "tok_ok")).await;
    assert_eq!(a.status, 202, "{:?}", a.json());
    assert_eq!(a.json()["status"], "pending");
    let location = a.header("location").unwrap().to_owned();
    assert_eq!(
        location,
        format!("/api/checkouts/{}", a.json()["checkout"].as_str().unwrap())
    );
    let running = shop.get("ada", &location).await.json();
    assert_eq!(running["status"], "running", "{running}");
    shop.eventually("ada", &location, "the slow checkout confirms", |p| {
        p.json()["status"] == "confirmed"
    })
    .await;
    assert_eq!(shop.running.provider().charges().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_provider_and_a_lost_answer_still_charge_once() {
    let shop = TestShop::start().await;
    shop.chaos(json!({ "provider_fail_next": 2, "provider_timeout_next": 1 }))
        .await;
    let a = shop.checkout("ada", &key("flaky"), &tea(1, "tok_ok")).await;
    let checkout = a.json()["checkout"].as_str().unwrap().to_owned();
    shop.eventually(
        "ada",
        &format!("/api/checkouts/{checkout}"),
        "the flaky checkout confirms",
        |p| p.json()["status"] == "confirmed",
    )
    .await;
    assert_eq!(
        shop.running.provider().charges().len(),
        1,
        "one charge, whatever failed on the way"
    );
    let chaos = shop.get("ada", "/api/chaos").await.json();
    assert_eq!(
        (
            chaos["provider_fail_next"].as_u64(),
            chaos["provider_timeout_next"].as_u64()
        ),
        (Some(0), Some(0))
    );
    let p = shop
        .get("ada", &format!("/api/checkouts/{checkout}"))
        .await
        .json();
    let capture = &p["steps"][2];
    assert_eq!(capture["state"], "done", "{p}");
    // The step's HTTP client retries within one attempt of the step, under its key: the
    // two 503s never reach the provider (they are answered in front of it), the late answer
    // does, and its retry is replayed by the provider's own layer. So the provider saw the
    // charge at least twice and made it once.
    let provider = shop.running.provider();
    assert!(
        provider.received() >= 2,
        "the provider received {} charge requests",
        provider.received()
    );
    assert_eq!(provider.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_cancels_a_confirmed_order_once() {
    let shop = TestShop::start().await;
    let placed = shop
        .checkout("ada", &key("regret"), &tea(4, "tok_ok"))
        .await;
    assert_eq!(placed.status, 201, "{:?}", placed.json());
    let order = placed.json()["order"].as_str().unwrap().to_owned();
    assert_eq!(shop.running.inventory().stock("tea"), 8);
    let path = format!("/api/orders/{order}/cancel");

    let by_grace = shop
        .send("POST", &path, "grace", &[("idempotency-key", "g-1")], "")
        .await;
    assert_problem(&by_grace, 409, "urn:oncely:shop:not-cancellable");
    let k = key("cancel");
    let cancel = shop
        .send("POST", &path, "ada", &[("idempotency-key", &k)], "")
        .await;
    assert_eq!(cancel.status, 200, "{:?}", cancel.json());
    assert_eq!(
        (
            cancel.json()["status"].as_str(),
            cancel.json()["payment"].as_str()
        ),
        (Some("cancelled"), Some("refunded"))
    );
    let token = cancel.header("x-consistency-token").unwrap().to_owned();
    let replay = shop
        .send("POST", &path, "ada", &[("idempotency-key", &k)], "")
        .await;
    assert_eq!((replay.status, replay.replayed()), (200, true));
    let twice = shop
        .send(
            "POST",
            &path,
            "ada",
            &[("idempotency-key", &key("cancel-again"))],
            "",
        )
        .await;
    assert_problem(&twice, 409, "urn:oncely:shop:not-cancellable");

    assert_eq!(shop.running.provider().refunds().len(), 1);
    assert_eq!(
        shop.running.inventory().stock("tea"),
        12,
        "the stock is back"
    );
    let history = shop
        .send(
            "GET",
            &format!("/api/orders/{order}"),
            "ada",
            &[("x-consistency-token", &token)],
            "",
        )
        .await;
    assert_eq!(history.header("x-consistency"), Some("fresh"));
    assert_eq!(
        (
            history.json()["status"].as_str(),
            history.json()["payment"].as_str()
        ),
        (Some("cancelled"), Some("refunded"))
    );
}

/// A confirmed order of Ada's for `qty` tea: its id.
async fn confirmed(shop: &TestShop, name: &str, qty: u32) -> String {
    let placed = shop.checkout("ada", &key(name), &tea(qty, "tok_ok")).await;
    assert_eq!(placed.status, 201, "{:?}", placed.json());
    placed.json()["order"].as_str().unwrap().to_owned()
}

/// After a cancel that went through: one refund, the stock back once, and the history
/// (read with the answer's token) cancelled and refunded, announced once.
async fn cancelled_once(shop: &TestShop, order: &str, answer: &oncely_testkit::Answer) {
    assert_eq!(answer.status, 200, "{:?}", answer.json());
    assert_eq!(
        (
            answer.json()["status"].as_str(),
            answer.json()["payment"].as_str()
        ),
        (Some("cancelled"), Some("refunded"))
    );
    assert_eq!(shop.running.provider().refunds().len(), 1);
    assert_eq!(
        shop.running.inventory().stock("tea"),
        12,
        "the stock is back"
    );
    assert_eq!(shop.running.inventory().releases(), 1, "released once");
    let token = answer.header("x-consistency-token").unwrap().to_owned();
    let history = shop
        .send(
            "GET",
            &format!("/api/orders/{order}"),
            "ada",
            &[("x-consistency-token", &token)],
            "",
        )
        .await;
    assert_eq!(history.header("x-consistency"), Some("fresh"));
    assert_eq!(
        (
            history.json()["status"].as_str(),
            history.json()["payment"].as_str()
        ),
        (Some("cancelled"), Some("refunded"))
    );
    shop.drained().await;
    let notes = shop.get("ada", "/api/notifications").await.json();
    let refunded = format!("Refund issued for order {order}");
    assert_eq!(count_where(&notes, "text", &refunded), 1, "{notes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_whose_answer_was_lost_completes_when_retried() {
    let shop = TestShop::start().await;
    let order = confirmed(&shop, "lost-cancel", 3).await;
    assert_eq!(shop.running.inventory().stock("tea"), 9);

    // The cancel does its work and dies before it answers: the layer stores nothing, and
    // the buyer's retry under the same key finds the order cancelled by that very cancel.
    shop.running.inject(Fault::AnswerLost, 1);
    let k = key("cancel-lost");
    let lost = shop.cancel("ada", &order, &k).await;
    assert_problem(&lost, 503, "urn:oncely:shop:unavailable");
    let retry = shop.cancel("ada", &order, &k).await;
    assert!(!retry.replayed());
    cancelled_once(&shop, &order, &retry).await;

    // Stored now: the next retry replays it; a cancel of its own is refused as before.
    let replay = shop.cancel("ada", &order, &k).await;
    assert_eq!((replay.status, replay.replayed()), (200, true));
    let another = shop.cancel("ada", &order, &key("cancel-other")).await;
    assert_problem(&another, 409, "urn:oncely:shop:not-cancellable");
    assert_eq!(shop.running.provider().refunds().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_left_cancelled_but_unrefunded_is_finished_by_its_retry() {
    let shop = TestShop::start().await;
    let order = confirmed(&shop, "half-cancel", 2).await;
    shop.running.inject(Fault::AnswerLost, 1);
    let k = key("cancel-half");
    assert_problem(
        &shop.cancel("ada", &order, &k).await,
        503,
        "urn:oncely:shop:unavailable",
    );
    // What an earlier build left when it died between cancelling the order and recording
    // the refund: the order cancelled, its payment still paid.
    let db = rusqlite::Connection::open(shop.running.db_path()).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    db.execute(
        "UPDATE shop_orders SET payment = 'paid', refund_id = NULL WHERE id = ?1",
        [&order],
    )
    .unwrap();

    let retry = shop.cancel("ada", &order, &k).await;
    assert_eq!(retry.status, 200, "{:?}", retry.json());
    let (payment, refund): (String, Option<String>) = db
        .query_row(
            "SELECT payment, refund_id FROM shop_orders WHERE id = ?1",
            [&order],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let refunds = shop.running.provider().refunds();
    assert_eq!(refunds.len(), 1, "the refund was replayed, not made again");
    assert_eq!(
        (payment.as_str(), refund.as_deref()),
        ("refunded", Some(refunds[0].id.as_str()))
    );
    assert_eq!(shop.running.inventory().stock("tea"), 12);
    assert_eq!(shop.running.inventory().releases(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_the_email_changed_answers_the_checkout_it_started() {
    let shop = TestShop::start_with(|c| c.checkout_wait = Duration::from_millis(300)).await;
    shop.chaos(json!({ "provider_slow_ms": 1000 })).await;
    // The first attempt starts the saga (with the e-mail of then) and its answer is lost.
    shop.running.inject(Fault::AnswerLost, 1);
    let k = key("moved");
    let body = tea(1, "tok_ok");
    assert_problem(
        &shop.checkout("ada", &k, &body).await,
        503,
        "urn:oncely:shop:unavailable",
    );
    let profile = shop.get("ada", "/api/profile").await;
    let etag = profile.header("etag").unwrap().to_owned();
    let mut doc = profile.json();
    doc["email"] = json!("ada@elsewhere.example");
    let moved = shop
        .put(
            "ada",
            "/api/profile",
            &[("if-match", &etag)],
            &doc.to_string(),
        )
        .await;
    assert_eq!(moved.status, 200, "{:?}", moved.json());

    let retry = shop.checkout("ada", &k, &body).await;
    assert!(
        retry.status == 201 || retry.status == 202,
        "{} {:?}",
        retry.status,
        retry.json()
    );
    let checkout = retry.json()["checkout"].as_str().unwrap().to_owned();
    let order = retry.json()["order"].as_str().unwrap().to_owned();
    shop.eventually(
        "ada",
        &format!("/api/checkouts/{checkout}"),
        "the checkout confirms",
        |p| p.json()["status"] == "confirmed" && p.json()["order"] == order.as_str(),
    )
    .await;
    // The retry is stored: the next one replays it.
    let again = shop.checkout("ada", &k, &body).await;
    assert_eq!((again.status, again.replayed()), (retry.status, true));
    shop.drained().await;
    let orders = shop.get("ada", "/api/orders").await.json();
    assert_eq!(orders.as_array().map(Vec::len), Some(1), "{orders}");
    assert_eq!(orders[0]["id"], order.as_str());
    assert_eq!(shop.running.provider().charges().len(), 1, "one charge");
}

/// How many `order.confirmed` events the trail holds about `order`, and `cart.emptied` about
/// Ada's cart.
async fn follow_ups_audited(shop: &TestShop, order: &str) -> (usize, usize) {
    // The trail appends in the background: give it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let about_order = shop
        .get("ada", &format!("/api/audit?entity=order:{order}"))
        .await
        .json();
    let about_cart = shop.get("ada", "/api/audit?entity=cart:ada").await.json();
    (
        count_where(&about_order, "action", "order.confirmed"),
        count_where(&about_cart, "action", "cart.emptied"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_follow_up_of_a_confirmation_is_done_on_the_next_delivery() {
    let shop = TestShop::start_with(|c| c.checkout_wait = Duration::from_millis(200)).await;
    let cart = json!({ "items": [{ "product": "tea", "qty": 1 }] }).to_string();
    assert_eq!(
        shop.put("ada", "/api/cart", &[("if-match", "\"v1\"")], &cart)
            .await
            .status,
        200
    );
    // A slow provider: the checkout answers 202, so only the consumer of its confirmation
    // empties the cart, and that follow-up fails the first time.
    shop.chaos(json!({ "provider_slow_ms": 600 })).await;
    shop.running.inject(Fault::FollowUpFails, 1);
    let a = shop
        .checkout("ada", &key("follow-up"), &tea(1, "tok_ok"))
        .await;
    assert_eq!(a.status, 202, "{:?}", a.json());
    let order = a.json()["order"].as_str().unwrap().to_owned();
    let location = a.header("location").unwrap().to_owned();
    shop.eventually("ada", &location, "the checkout confirms", |p| {
        p.json()["status"] == "confirmed"
    })
    .await;
    shop.eventually("ada", "/api/cart", "the cart emptied", |c| {
        c.json()["items"] == json!([])
    })
    .await;
    shop.drained().await;

    assert_eq!(follow_ups_audited(&shop, &order).await, (1, 1));
    let version = shop.get("ada", "/api/cart").await.json()["version"].clone();
    // Every event again: nothing is done twice.
    assert!(shop.running.redeliver().await.unwrap() >= 2);
    assert_eq!(follow_ups_audited(&shop, &order).await, (1, 1));
    assert_eq!(
        shop.get("ada", "/api/cart").await.json()["version"],
        version
    );
}
