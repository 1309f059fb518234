//! What only Redis can show: two gateways judged by the server's clock, the physical expiry,
//! corrupt fields, and a server that is not there.

use std::time::Duration;

use oncely_core::ClaimOutcome;
use oncely_store::conformance::{fp, key, response};
use oncely_store::{IdempotencyStore, StoreError, TimeSource};
use oncely_store_redis::{RedisOptions, RedisStore};

/// On the server clock a completed record's key carries PEXPIREAT at its expiry, and Redis
/// deletes it by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_expire_physically_at_their_ttl() {
    oncely_testkit::require_service!(
        oncely_testkit::services::Service::Redis,
        "records_expire_physically_at_their_ttl"
    );
    let prefix = crate::common::Prefix::new();
    let store = prefix.store(TimeSource::Server).await;
    let ttl = Duration::from_millis(800);
    let k = key("t1", "ttl");
    let ClaimOutcome::Claimed { token, .. } = store.claim(&k, fp(b"x"), ttl, ttl).await.unwrap()
    else {
        panic!("fresh key")
    };
    store.complete(&k, token, response("r"), ttl).await.unwrap();
    let mut raw = crate::common::raw().await;
    let name = store.redis_key(&k);
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&name)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!((500..=800).contains(&pttl), "PTTL {pttl}");
    tokio::time::sleep(ttl + Duration::from_millis(300)).await;
    let exists: i64 = redis::cmd("EXISTS")
        .arg(&name)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0, "Redis evicted the record by itself");
    assert_eq!(store.get(&k).await.unwrap(), None);
}

/// A field edited into nonsense is reported as corrupt, never a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_fields_are_reported_not_panicked_on() {
    oncely_testkit::require_service!(
        oncely_testkit::services::Service::Redis,
        "corrupt_fields_are_reported_not_panicked_on"
    );
    let prefix = crate::common::Prefix::new();
    let store = prefix.store(TimeSource::Server).await;
    let (ttl, lease) = (Duration::from_secs(60), Duration::from_secs(10));
    let mut raw = crate::common::raw().await;
    for (name, field, value) in [
        ("fp", "fp", b"short".as_slice()),
        ("headers", "headers", b"\x00\x00\xff\xff".as_slice()),
        ("status", "status", b"-5".as_slice()),
        ("state", "state", b"zz".as_slice()),
    ] {
        let k = key("t1", name);
        let ClaimOutcome::Claimed { token, .. } =
            store.claim(&k, fp(b"x"), lease, ttl).await.unwrap()
        else {
            panic!("fresh key")
        };
        store.complete(&k, token, response("r"), ttl).await.unwrap();
        let _: i64 = redis::cmd("HSET")
            .arg(store.redis_key(&k))
            .arg(field)
            .arg(value)
            .query_async(&mut raw)
            .await
            .unwrap();
        for got in [
            store.get(&k).await.map(|_| ()),
            store.claim(&k, fp(b"x"), lease, ttl).await.map(|_| ()),
        ] {
            assert!(
                matches!(got, Err(StoreError::Corrupt(_))),
                "{name}: expected Corrupt, got {got:?}"
            );
        }
    }
}

/// No Redis there: connecting fails as unavailable within the timeout, never a hang.
#[tokio::test]
async fn an_absent_redis_is_unavailable_within_the_timeout() {
    oncely_store::conformance::an_absent_server_is_unavailable_within_the_timeout(|timeout| {
        let mut opts = RedisOptions::from_url("redis://127.0.0.1:1/").unwrap();
        opts.timeout = timeout;
        RedisStore::connect(opts, TimeSource::Server)
    })
    .await;
}
