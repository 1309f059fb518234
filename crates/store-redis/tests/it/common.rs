//! A store under a key prefix of its own, whose keys are deleted when the test ends, on the
//! Redis named by `ONCELY_TEST_REDIS` (tests run in parallel against one server).

use std::sync::Arc;
use std::time::Duration;

use oncely_core::{Clock, ManualClock};
use oncely_store::conformance::Guarded;
use oncely_store::TimeSource;
use oncely_store_redis::{RedisOptions, RedisStore};
use oncely_testkit::services::{unique_name, Service};

pub(crate) fn available(test: &str) -> bool {
    Service::Redis.available(test).is_some()
}

/// A raw connection for tests that look behind the store's back.
pub(crate) async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(Service::Redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Deletes its prefix's keys on drop.
pub(crate) struct Prefix {
    pub name: String,
}

impl Prefix {
    pub(crate) fn new() -> Prefix {
        Prefix {
            name: unique_name("oncely_test"),
        }
    }
    pub(crate) fn options(&self) -> RedisOptions {
        let mut o = RedisOptions::from_url(&Service::Redis.url()).expect("test URL parses");
        o.prefix = self.name.clone();
        o.timeout = Duration::from_secs(10);
        o
    }
    pub(crate) async fn store(&self, time: TimeSource) -> RedisStore {
        RedisStore::connect(self.options(), time)
            .await
            .expect("connect to the test Redis")
    }
}

impl Drop for Prefix {
    fn drop(&mut self) {
        let pattern = format!("{}:*", self.name);
        let _ = std::thread::spawn(move || {
            let Ok(client) = redis::Client::open(Service::Redis.url()) else {
                return;
            };
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return;
                };
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(&mut conn)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<i64, _> =
                        redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
                }
            })
        })
        .join();
    }
}

/// A store on a manual clock under a prefix of its own.
pub(crate) async fn temp_store(clock: ManualClock) -> Guarded<RedisStore, Prefix> {
    let prefix = Prefix::new();
    let clock: Arc<dyn Clock> = Arc::new(clock);
    Guarded {
        store: prefix.store(TimeSource::Local(clock)).await,
        guard: prefix,
    }
}

/// The server's clock, in milliseconds since the epoch.
pub(crate) async fn server_now_ms() -> i64 {
    let (secs, micros): (i64, i64) = redis::cmd("TIME")
        .query_async(&mut raw().await)
        .await
        .unwrap();
    secs * 1000 + micros / 1000
}
