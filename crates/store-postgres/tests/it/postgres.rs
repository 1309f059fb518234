//! What only PostgreSQL can show: two gateways on one database judged by the database's clock,
//! migrations racing, corrupt rows, and a database that is not there.

use std::time::Duration;

use oncely_core::ClaimOutcome;
use oncely_store::conformance::{fp, key, response};
use oncely_store::{IdempotencyStore, StoreAdmin, StoreError, TimeSource};
use oncely_store_postgres::{PgOptions, PgStore};

async fn raw(sql: &str) {
    let url = oncely_testkit::services::Service::Postgres.url();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client.batch_execute(sql).await.unwrap();
}

/// TTL on the database clock: a completed record disappears when its retention ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_runs_on_the_database_clock_and_purge_removes_the_rows() {
    oncely_testkit::require_service!(
        oncely_testkit::services::Service::Postgres,
        "ttl_runs_on_the_database_clock_and_purge_removes_the_rows"
    );
    let schema = crate::common::Schema::new();
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
    oncely_testkit::require_service!(
        oncely_testkit::services::Service::Postgres,
        "concurrent_migrations_apply_once_and_newer_schemas_are_refused"
    );
    let schema = crate::common::Schema::new();
    let opts = crate::common::options(&schema.name);
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
        "INSERT INTO \"{}\".oncely_migrations (concern, version, description) \
         VALUES ('idempotency records', 99, 'future')",
        schema.name
    ))
    .await;
    match PgStore::connect(opts, TimeSource::Server).await {
        Err(StoreError::Unavailable(msg)) => assert!(msg.contains("newer"), "{msg}"),
        Err(e) => panic!("expected a refusal naming the version, got {e}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

/// A schema migrated by builds that kept their version in `oncely_schema_version` (before
/// the shared migration table) is adopted as it is: its records are kept, it reaches version
/// 1 with nothing applied twice, and the older table stays for those builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_from_before_the_migration_table_is_adopted() {
    oncely_testkit::require_service!(
        oncely_testkit::services::Service::Postgres,
        "a_schema_from_before_the_migration_table_is_adopted"
    );
    let schema = crate::common::Schema::new();
    let s = &schema.name;
    let k = key("t1", "old");
    // The schema as those builds left it, with one request in flight.
    raw(&format!(
        "CREATE SCHEMA \"{s}\";
         CREATE TABLE \"{s}\".oncely_schema_version (version integer PRIMARY KEY,
             description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO \"{s}\".oncely_schema_version VALUES (1, 'idempotency records');
         CREATE TABLE \"{s}\".idempotency_records (
             tenant text NOT NULL, method text NOT NULL, route text NOT NULL,
             idem_key text NOT NULL, fingerprint bytea NOT NULL, created_at bigint NOT NULL,
             expires_at bigint NOT NULL, state smallint NOT NULL, lease_token bytea,
             lease_expires_at bigint, taken_over_at bigint, status smallint, headers bytea,
             body bytea, PRIMARY KEY (tenant, method, route, idem_key));
         CREATE INDEX idempotency_records_expiry ON \"{s}\".idempotency_records (expires_at);
         INSERT INTO \"{s}\".idempotency_records (tenant, method, route, idem_key,
             fingerprint, created_at, expires_at, state, lease_token, lease_expires_at)
         SELECT '{tenant}', 'POST', '/orders', 'old', '\\x{fp}', now_ms, now_ms + 600000, 0,
             '\\x{token}', now_ms + 600000
         FROM (SELECT (extract(epoch FROM now()) * 1000)::bigint AS now_ms) t;",
        tenant = k.scope.tenant.as_str(),
        fp = hex(&fp(b"a").0),
        token = "07".repeat(16),
    ))
    .await;
    let report = oncely_store_postgres::migrate(&crate::common::options(s))
        .await
        .unwrap();
    assert_eq!((report.from, report.to), (0, 1), "{report}");
    let store = schema.store(TimeSource::Server).await;
    oncely_store::conformance::assert_adopted_in_flight(&store, &k, fp(b"a")).await;
    let again = oncely_store_postgres::migrate(&crate::common::options(s))
        .await
        .unwrap();
    assert!(again.was_up_to_date(), "{again}");
    raw(&format!(
        "DO $$ BEGIN IF (SELECT count(*) FROM \"{s}\".oncely_schema_version) <> 1 THEN \
         RAISE 'the older table must be left for older builds'; END IF; END $$;"
    ))
    .await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A row edited into nonsense is reported as corrupt, never a panic, and other keys still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_reported_not_panicked_on() {
    oncely_testkit::require_service!(
        oncely_testkit::services::Service::Postgres,
        "corrupt_rows_are_reported_not_panicked_on"
    );
    let schema = crate::common::Schema::new();
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
    oncely_store::conformance::an_absent_server_is_unavailable_within_the_timeout(|timeout| {
        let mut opts = PgOptions::from_url("postgres://postgres@127.0.0.1:1/test").unwrap();
        opts.timeout = timeout;
        PgStore::connect(opts, TimeSource::Server)
    })
    .await;
}
