//! Read-your-writes on the order history, and the outbox's standing.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::{key, tea, TestShop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_makes_the_read_wait_for_the_write_and_answer_fresh() {
    // The history well behind the writes: without the wait, the read would miss them; and
    // a second checkout and the read after it fit in the lag even on a loaded machine.
    let lag = Duration::from_secs(4);
    let shop = TestShop::start_with(|c| {
        c.history_lag = lag;
        c.consistency_wait = Duration::from_secs(10);
    })
    .await;
    let placed = shop.checkout("ada", &key("ryw"), &tea(1, "tok_ok")).await;
    assert_eq!(placed.status, 201, "{:?}", placed.json());
    let order = placed.json()["order"].as_str().unwrap().to_owned();
    let token: u64 = placed
        .header("x-consistency-token")
        .unwrap()
        .parse()
        .unwrap();
    let read = shop
        .send(
            "GET",
            "/api/orders",
            "ada",
            &[("x-consistency-token", &token.to_string())],
            "",
        )
        .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.header("x-consistency"), Some("fresh"));
    let at: u64 = read
        .header("x-read-model-position")
        .unwrap()
        .parse()
        .unwrap();
    assert!(at >= token, "position {at} below the token {token}");
    let orders = read.json();
    assert_eq!(orders[0]["id"], order.as_str());
    assert_eq!(orders[0]["status"], "confirmed");
    assert_eq!(orders[0]["total_cents"], 450);
    assert_eq!(
        orders[0]["items"],
        serde_json::json!([{ "product": "tea", "qty": 1 }])
    );

    // Without a token: at once, eventual, and (the history lagging) without the new
    // order's next change.
    let before_second = Instant::now();
    let second = shop.checkout("ada", &key("ryw-2"), &tea(1, "tok_ok")).await;
    assert_eq!(second.status, 201, "{:?}", second.json());
    let plain = shop.get("ada", "/api/orders").await;
    // Its events were committed after `before_second`: within the lag, none is applied yet.
    let took = before_second.elapsed();
    assert!(
        took < lag,
        "the checkout and the read took {took:?}, past the {lag:?} lag: nothing to check"
    );
    assert_eq!(plain.header("x-consistency"), Some("eventual"));
    assert!(plain.header("x-read-model-position").is_some());
    assert_eq!(
        plain.json().as_array().map(Vec::len),
        Some(1),
        "{:?}",
        plain.json()
    );

    // Grace's history is her own.
    assert_eq!(
        shop.get("grace", "/api/orders").await.json(),
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_far_ahead_answers_stale_after_the_bounded_wait() {
    let shop = TestShop::start().await;
    let started = Instant::now();
    let read = shop
        .send(
            "GET",
            "/api/orders",
            "ada",
            &[("x-consistency-token", "1000000")],
            "",
        )
        .await;
    let took = started.elapsed();
    assert_eq!(read.status, 200);
    assert_eq!(read.header("x-consistency"), Some("stale"));
    assert!(
        read.header("x-read-model-position")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            < 1_000_000
    );
    assert!(
        took >= Duration::from_millis(1900),
        "it waited {took:?}, not the 2 s bound"
    );
    assert!(
        took < Duration::from_secs(5),
        "it waited {took:?}, past the bound"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_page_shows_events_published_and_the_history_caught_up() {
    let shop = TestShop::start().await;
    let empty = shop.get("ada", "/api/admin/outbox").await.json();
    assert_eq!(
        (empty["pending"].as_u64(), empty["outbox_position"].as_u64()),
        (Some(0), Some(0))
    );
    let placed = shop
        .checkout("ada", &key("outbox"), &tea(1, "tok_ok"))
        .await;
    let token: u64 = placed
        .header("x-consistency-token")
        .unwrap()
        .parse()
        .unwrap();
    let page = shop
        .eventually("ada", "/api/admin/outbox", "the events published", |a| {
            a.json()["pending"] == 0 && a.json()["read_model_position"].as_u64() >= Some(token)
        })
        .await
        .json();
    // placed, confirmed and paid (the provider's webhook).
    assert!(page["published"].as_u64() >= Some(2), "{page}");
    assert!(page["outbox_position"].as_u64() >= Some(token), "{page}");
    assert_eq!(page["oldest_pending_age_ms"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkouts_progress_carries_the_token_of_its_order() {
    // A slow provider (202), and the history a second behind: a read of the history right
    // after the checkout confirmed needs the progress's token to see it confirmed.
    let shop = TestShop::start_with(|c| {
        c.checkout_wait = Duration::from_millis(200);
        c.history_lag = Duration::from_secs(1);
        c.consistency_wait = Duration::from_secs(5);
    })
    .await;
    shop.chaos(json!({ "provider_slow_ms": 600 })).await;
    let a = shop
        .checkout("ada", &key("progress-token"), &tea(1, "tok_ok"))
        .await;
    assert_eq!(a.status, 202, "{:?}", a.json());
    let order = a.json()["order"].as_str().unwrap().to_owned();
    let location = a.header("location").unwrap().to_owned();
    let running = shop.get("ada", &location).await;
    assert!(running.header("x-consistency-token").is_some());
    let done = shop
        .eventually("ada", &location, "the checkout confirms", |p| {
            p.json()["status"] == "confirmed"
        })
        .await;
    let token = done
        .header("x-consistency-token")
        .expect("the progress carries a consistency token")
        .to_owned();
    let read = shop
        .send(
            "GET",
            "/api/orders",
            "ada",
            &[("x-consistency-token", &token)],
            "",
        )
        .await;
    assert_eq!(read.header("x-consistency"), Some("fresh"));
    let orders = read.json();
    assert_eq!(orders[0]["id"], order.as_str(), "{orders}");
    assert_eq!(orders[0]["status"], "confirmed", "{orders}");
}
