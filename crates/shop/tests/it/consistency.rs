//! Read-your-writes on the order history, and the outbox's standing.

use std::time::{Duration, Instant};

use crate::common::{key, tea, TestShop};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_makes_the_read_wait_for_the_write_and_answer_fresh() {
    // The history 1.5 s behind the writes: without the wait, the read would miss it.
    let shop = TestShop::start_with(|c| {
        c.history_lag = Duration::from_millis(1500);
        c.consistency_wait = Duration::from_secs(5);
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
    let second = shop.checkout("ada", &key("ryw-2"), &tea(1, "tok_ok")).await;
    assert_eq!(second.status, 201, "{:?}", second.json());
    let plain = shop.get("ada", "/api/orders").await;
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
