//! What only PostgreSQL can show: two gateways on one database judged by the database's clock,
//! migrations racing, corrupt rows, and a database that is not there.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use oncely_core::{ClaimOutcome, Clock, ManualClock, Refusal, Timestamp};
use oncely_store::conformance::{fp, key, response};
use oncely_store::{IdempotencyStore, StoreError, TimeSource};
use oncely_store_postgres::{PgOptions, PgStore};

async fn db_now_ms() -> i64 {
    let url = oncely_testkit::services::Service::Postgres.url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_one("SELECT floor(extract(epoch FROM now()) * 1000)::int8", &[])
        .await
        .unwrap()
        .get(0)
}

async fn raw(sql: &str) {
    let url = oncely_testkit::services::Service::Postgres.url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
}

/// Two gateways on one database, both on the database clock: one winner among claims spread
/// over both, a live lease is never taken over early, an expired one is, and the first holder
/// is fenced off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_share_leases_on_the_database_clock() {
    if !common::available("two_gateways_share_leases_on_the_database_clock") {
        return;
    }
    let schema = common::Schema::new();
    let a = Arc::new(schema.store(TimeSource::Server).await);
    let b = Arc::new(schema.store(TimeSource::Server).await);

    let k = key("t1", "race");
    let mut tasks = Vec::new();
    for i in 0..64 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        let k = k.clone();
        tasks.push(tokio::spawn(async move {
            store
                .claim(
                    &k,
                    fp(b"{}"),
                    Duration::from_secs(30),
                    Duration::from_secs(60),
                )
                .await
        }));
    }
    let mut winners = 0;
    for t in tasks {
        if let ClaimOutcome::Claimed { .. } = t.await.unwrap().unwrap() {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);

    let lease = Duration::from_millis(400);
    let k = key("t1", "lease");
    let before = db_now_ms().await;
    let old = match a.claim(&k, fp(b"x"), lease, Duration::from_secs(60)).await {
        Ok(ClaimOutcome::Claimed {
            token,
            lease_expires_at,
            ..
        }) => {
            let after = db_now_ms().await;
            // The lease is measured on the database's clock.
            assert!(
                (before + 400..=after + 400).contains(&lease_expires_at.as_millis()),
                "{before} {lease_expires_at:?} {after}"
            );
            token
        }
        other => panic!("expected a claim, got {other:?}"),
    };
    match b.claim(&k, fp(b"x"), lease, Duration::from_secs(60)).await {
        Ok(ClaimOutcome::Exists(_)) => {}
        other => panic!("a live lease must not be taken over, got {other:?}"),
    }
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let new = match b.claim(&k, fp(b"x"), lease, Duration::from_secs(60)).await {
        Ok(ClaimOutcome::Claimed {
            token, takeover, ..
        }) => {
            assert!(takeover);
            token
        }
        other => panic!("an expired lease must be taken over, got {other:?}"),
    };
    let stale = Err(StoreError::Refused(Refusal::StaleToken));
    assert_eq!(
        a.complete(&k, old, response("stale"), Duration::from_secs(60))
            .await,
        stale
    );
    assert_eq!(a.release(&k, old).await, stale);
    assert_eq!(a.renew(&k, old, lease).await.map(|_| ()), stale);
    a.complete(&k, new, response("new"), Duration::from_secs(60))
        .await
        .expect("the successor's token works from any gateway");
    assert!(b.get(&k).await.unwrap().unwrap().is_completed());
}

/// Whose clock rules: a gateway whose own clock runs an hour ahead (or behind) of the
/// database's, run on a local clock, would judge leases wrongly; on the database clock the
/// same two gateways agree. This is why shared stores default to `TimeSource::Server`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_gateway_clocks_agree_on_the_database_clock() {
    if !common::available("skewed_gateway_clocks_agree_on_the_database_clock") {
        return;
    }
    let schema = common::Schema::new();
    let hour = Duration::from_secs(3600);
    let lease = Duration::from_secs(30);
    let ttl = Duration::from_secs(24 * 3600);
    let real = oncely_core::SystemClock.now();
    let ahead = ManualClock::new(real.plus(hour));
    let behind = ManualClock::new(Timestamp(real.as_millis() - 3_600_000));

    // Local clocks: the gateway an hour ahead takes over a lease that is seconds old.
    let slow_gw = schema.store(TimeSource::Local(Arc::new(behind))).await;
    let fast_gw = schema.store(TimeSource::Local(Arc::new(ahead))).await;
    let k = key("t1", "skew-local");
    slow_gw.claim(&k, fp(b"x"), lease, ttl).await.unwrap();
    match fast_gw.claim(&k, fp(b"x"), lease, ttl).await.unwrap() {
        ClaimOutcome::Claimed { .. } => {}
        other => panic!("a local clock an hour ahead should misjudge the lease: {other:?}"),
    }

    // The database's clock: whatever the gateways' clocks say, the lease holds.
    let g1 = schema.store(TimeSource::Server).await;
    let g2 = schema.store(TimeSource::Server).await;
    let k = key("t1", "skew-server");
    let token = match g1.claim(&k, fp(b"x"), lease, ttl).await.unwrap() {
        ClaimOutcome::Claimed { token, .. } => token,
        other => panic!("{other:?}"),
    };
    assert!(matches!(
        g2.claim(&k, fp(b"x"), lease, ttl).await.unwrap(),
        ClaimOutcome::Exists(_)
    ));
    g1.complete(&k, token, response("done"), ttl).await.unwrap();
    assert!(g2.get(&k).await.unwrap().unwrap().is_completed());
}

/// TTL on the database clock: a completed record disappears when its retention ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_runs_on_the_database_clock_and_purge_removes_the_rows() {
    if !common::available("ttl_runs_on_the_database_clock_and_purge_removes_the_rows") {
        return;
    }
    let schema = common::Schema::new();
    let store = schema.store(TimeSource::Server).await;
    let ttl = Duration::from_millis(300);
    for i in 0..30 {
        let k = key("t1", &format!("k{i}"));
        let ClaimOutcome::Claimed { token, .. } =
            store.claim(&k, fp(b"x"), ttl, ttl).await.unwrap()
        else {
            panic!("fresh key")
        };
        store.complete(&k, token, response("r"), ttl).await.unwrap();
    }
    assert_eq!(store.stats().await.unwrap().completed, 30);
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert_eq!(store.get(&key("t1", "k0")).await.unwrap(), None);
    assert_eq!(store.stats().await.unwrap().completed, 0);
    let mut purged = 0;
    loop {
        let n = store.purge_expired(7).await.unwrap();
        assert!(n <= 7);
        purged += n;
        if n == 0 {
            break;
        }
    }
    assert_eq!(purged, 30);
}

/// Many gateways starting at once on a new schema migrate it once; a schema from a newer
/// oncely is refused with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_apply_once_and_newer_schemas_are_refused() {
    if !common::available("concurrent_migrations_apply_once_and_newer_schemas_are_refused") {
        return;
    }
    let schema = common::Schema::new();
    let opts = common::options(&schema.name);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let opts = opts.clone();
        tasks.push(tokio::spawn(async move {
            oncely_store_postgres::migrate(&opts).await
        }));
    }
    let mut applied = 0;
    for t in tasks {
        let report = t.await.unwrap().expect("migrate");
        assert_eq!(report.to, oncely_store_postgres::schema::LATEST);
        applied += report.applied.len();
    }
    assert_eq!(
        applied,
        oncely_store_postgres::schema::LATEST as usize,
        "each migration is applied exactly once"
    );

    raw(&format!(
        "INSERT INTO \"{}\".oncely_schema_version (version, description) VALUES (99, 'future')",
        schema.name
    ))
    .await;
    match PgStore::connect(opts, TimeSource::Server).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("newer"), "{msg}"),
        Err(e) => panic!("expected a refusal naming the version, got {e}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

/// A row edited into nonsense is reported as corrupt, never a panic, and other keys still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_reported_not_panicked_on() {
    if !common::available("corrupt_rows_are_reported_not_panicked_on") {
        return;
    }
    let schema = common::Schema::new();
    let store = schema.store(TimeSource::Server).await;
    let (ttl, lease) = (Duration::from_secs(60), Duration::from_secs(10));
    for (name, edit) in [
        ("fp", "fingerprint = '\\x00'"),
        ("headers", "headers = '\\x0000ffff'"),
        ("status", "status = -5"),
    ] {
        let k = key("t1", name);
        let ClaimOutcome::Claimed { token, .. } =
            store.claim(&k, fp(b"x"), lease, ttl).await.unwrap()
        else {
            panic!("fresh key")
        };
        store.complete(&k, token, response("r"), ttl).await.unwrap();
        raw(&format!(
            "UPDATE \"{}\".idempotency_records SET {edit} WHERE idem_key = '{name}'",
            schema.name
        ))
        .await;
        for got in [
            store.get(&k).await.map(|_| ()),
            store.claim(&k, fp(b"x"), lease, ttl).await.map(|_| ()),
        ] {
            match got {
                Err(StoreError::Corrupt(msg)) => {
                    assert!(msg.contains(name) || msg.contains("column"), "{msg}")
                }
                other => panic!("{name}: expected Corrupt, got {other:?}"),
            }
        }
    }
    let k = key("t1", "healthy");
    assert!(matches!(
        store.claim(&k, fp(b"x"), lease, ttl).await.unwrap(),
        ClaimOutcome::Claimed { .. }
    ));
}

/// No database there: connecting fails as unavailable, within the timeout, never a hang.
#[tokio::test]
async fn an_absent_database_is_unavailable_within_the_timeout() {
    let mut opts = PgOptions::from_url("postgres://postgres@127.0.0.1:1/test").unwrap();
    opts.timeout = Duration::from_millis(500);
    let started = Instant::now();
    match PgStore::connect(opts, TimeSource::Server).await {
        Err(StoreError::Unavailable(_)) => {}
        Err(e) => panic!("expected unavailable, got {e}"),
        Ok(_) => panic!("nothing listens on port 1"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
}
