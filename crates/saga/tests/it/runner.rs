//! The runner in process, on SQLite and PostgreSQL, against services of the test's own whose
//! ledgers honour the step keys: a declined card releases the stock; a runner dropped right after a step acted
//! (before its outcome was recorded), at every such boundary in turn, is replaced after its
//! lease by another, and the saga still ends done or undone with each effect once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::saga::{Phase, SagaPlan, StepPlan};
use oncely_core::{Clock, ManualClock, Timestamp};
use oncely_saga::postgres::PgSagas;
use oncely_saga::sqlite::SqliteSagas;
use oncely_saga::{
    NewSaga, Runner, RunnerConfig, SagaDefinition, SagaStore, Step, StepContext, StepError,
};

/// A service's ledger, by idempotency key: a repeated key acts no more (the service
/// honours `Idempotency-Key`), and its calls are counted.
#[derive(Default)]
struct Ledger {
    calls: Mutex<HashMap<String, u32>>,
}

impl Ledger {
    fn apply(&self, key: &str) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(key.to_owned())
            .or_default() += 1;
    }
    fn has(&self, key: &str) -> bool {
        self.calls.lock().unwrap().contains_key(key)
    }
    /// The keys that acted: one effect each.
    fn keys(&self) -> Vec<String> {
        let mut k: Vec<String> = self.calls.lock().unwrap().keys().cloned().collect();
        k.sort();
        k
    }
    fn most_calls(&self) -> u32 {
        self.calls
            .lock()
            .unwrap()
            .values()
            .copied()
            .max()
            .unwrap_or(0)
    }
}

/// Counts step calls across runners; the one numbered `crash_at` acts and then never
/// returns (its runner is dropped by the test: a crash between acting and recording).
struct Crash {
    calls: AtomicUsize,
    crash_at: usize,
    /// Told when the call hangs, so the test drops its runner then, not after a guess.
    hung: tokio::sync::Notify,
}

impl Crash {
    async fn maybe(&self) {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.crash_at {
            self.hung.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

struct ServiceStep {
    ledger: Arc<Ledger>,
    crash: Arc<Crash>,
    /// The input field that makes the action fail for good.
    fails_when: Option<&'static str>,
    /// The input field that makes the action's first attempt time out without acting.
    flaky_when: Option<&'static str>,
}

#[async_trait]
impl Step for ServiceStep {
    async fn run(&self, cx: &StepContext) -> Result<serde_json::Value, StepError> {
        if let Some(field) = self.flaky_when {
            if cx.input[field] == true && cx.attempt == 1 {
                return Err(StepError::Retryable("timeout".into()));
            }
        }
        if let Some(field) = self.fails_when {
            if cx.input[field] == true {
                self.crash.maybe().await;
                return Err(StepError::Failed(field.to_string()));
            }
        }
        self.ledger.apply(&cx.key);
        self.crash.maybe().await;
        Ok(serde_json::json!({ "ref": cx.key }))
    }
    async fn undo(&self, cx: &StepContext) -> Result<(), StepError> {
        self.ledger.apply(&cx.key);
        self.crash.maybe().await;
        Ok(())
    }
}

struct Shop {
    stock: Arc<Ledger>,
    payments: Arc<Ledger>,
    orders: Arc<Ledger>,
    crash: Arc<Crash>,
}

fn plan() -> SagaPlan {
    let step = |name: &str, compensable| StepPlan {
        name: name.into(),
        compensable,
        deadline: Duration::from_secs(60),
    };
    SagaPlan {
        steps: vec![
            step("reserve", true),
            step("charge", false),
            step("confirm", false),
        ],
        pivot: Some(1),
        deadline: None,
        backoff_base: Duration::from_millis(10),
        backoff_cap: Duration::from_millis(100),
        compensation_attempts: 10,
    }
}

fn shop(crash_at: usize) -> Shop {
    Shop {
        stock: Arc::default(),
        payments: Arc::default(),
        orders: Arc::default(),
        crash: Arc::new(Crash {
            calls: AtomicUsize::new(0),
            crash_at,
            hung: tokio::sync::Notify::new(),
        }),
    }
}

fn definition(shop: &Shop) -> SagaDefinition {
    let step = |ledger: &Arc<Ledger>, fails_when, flaky_when| -> Arc<dyn Step> {
        Arc::new(ServiceStep {
            ledger: ledger.clone(),
            crash: shop.crash.clone(),
            fails_when,
            flaky_when,
        })
    };
    SagaDefinition {
        kind: "checkout".into(),
        plan: plan(),
        steps: vec![
            step(&shop.stock, None, Some("flaky_reserve")),
            step(&shop.payments, Some("decline"), None),
            step(&shop.orders, None, None),
        ],
    }
}

const LEASE: Duration = Duration::from_secs(30);

fn runner(store: &Arc<dyn SagaStore>, shop: &Shop, clock: &ManualClock) -> Runner {
    Runner::new(
        store.clone(),
        vec![definition(shop)],
        Arc::new(clock.clone()),
        RunnerConfig {
            lease: LEASE,
            ..RunnerConfig::default()
        },
    )
    .unwrap()
}

/// Runs passes (dropping a pass that hangs: the crash) until the saga ends.
async fn until_ended(
    store: &Arc<dyn SagaStore>,
    shop: &Shop,
    clock: &ManualClock,
    id: &str,
) -> Phase {
    for _ in 0..100 {
        let r = runner(store, shop, clock);
        tokio::select! {
            pass = r.pass() => {
                pass.unwrap();
            }
            // The runner died mid-step (it is dropped here): another takes over once the
            // lease has run out.
            () = shop.crash.hung.notified() => clock.advance(LEASE + Duration::from_secs(1)),
        }
        let (saga, _) = store.get(id).await.unwrap().unwrap();
        if saga.state.phase.is_final() {
            return saga.state.phase;
        }
        clock.advance(Duration::from_millis(200));
    }
    panic!("saga {id} did not end");
}

/// A saga store on one backend, removed when dropped.
struct Db {
    store: Arc<dyn SagaStore>,
    _dir: tempfile::TempDir,
    schema: Option<(String, String)>,
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some((url, schema)) = &self.schema {
            oncely_testkit::services::drop_postgres_schemas(url, std::slice::from_ref(schema));
        }
    }
}

/// SQLite, and PostgreSQL where the machine has it.
fn backends(test: &str) -> Vec<Option<String>> {
    let mut b = vec![None];
    if let Some(url) = oncely_testkit::services::Service::Postgres.available(test) {
        b.push(Some(url));
    }
    b
}

async fn open(backend: &Option<String>, clock: &ManualClock) -> Db {
    let dir = tempfile::tempdir().unwrap();
    match backend {
        None => Db {
            store: Arc::new(
                SqliteSagas::open(
                    dir.path().join("sagas.db"),
                    Duration::from_secs(5),
                    Arc::new(clock.clone()),
                )
                .unwrap(),
            ),
            _dir: dir,
            schema: None,
        },
        Some(url) => {
            let schema = oncely_testkit::services::unique_name("oncely_saga");
            let pool =
                oncely_db::postgres::pool(&oncely_db::postgres::PgOptions::new(url)).unwrap();
            let store = PgSagas::open(pool, &schema, Arc::new(clock.clone()))
                .await
                .unwrap();
            Db {
                store: Arc::new(store),
                _dir: dir,
                schema: Some((url.clone(), schema)),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_card_releases_the_stock_and_a_good_one_confirms() {
    for backend in backends("a_declined_card_releases_the_stock_and_a_good_one_confirms") {
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let db = open(&backend, &clock).await;
        let store = db.store.clone();
        let shop = shop(usize::MAX);
        let r = runner(&store, &shop, &clock);
        for (id, decline) in [("o-paid", false), ("o-declined", true)] {
            r.start(&NewSaga {
                id: id.into(),
                kind: "checkout".into(),
                input: serde_json::json!({ "decline": decline }),
            })
            .await
            .unwrap();
        }
        // One runner throughout, so that its counters see both ends.
        for _ in 0..50 {
            r.pass().await.unwrap();
            clock.advance(Duration::from_millis(200));
        }
        for (id, ended) in [
            ("o-paid", Phase::Completed),
            ("o-declined", Phase::Compensated),
        ] {
            assert_eq!(
                store.get(id).await.unwrap().unwrap().0.state.phase,
                ended,
                "{id}"
            );
        }
        assert_eq!(
            shop.stock.keys(),
            [
                "o-declined/reserve/do",
                "o-declined/reserve/undo",
                "o-paid/reserve/do"
            ]
        );
        assert_eq!(shop.payments.keys(), ["o-paid/charge/do"]);
        assert_eq!(shop.orders.keys(), ["o-paid/confirm/do"]);
        let mut text = oncely_metrics::Text::new();
        r.metrics()
            .render(Some(&store.stats().await.unwrap()), clock.now(), &mut text);
        let page = text.finish();
        for line in [
            "oncely_sagas{phase=\"completed\"} 1",
            "oncely_sagas{phase=\"compensated\"} 1",
            "oncely_sagas_started_total 2",
            "oncely_sagas_ended_total{phase=\"completed\"} 1",
            "oncely_sagas_ended_total{phase=\"compensated\"} 1",
            "oncely_saga_steps_total{direction=\"do\",outcome=\"failed\"} 1",
            "oncely_saga_steps_total{direction=\"undo\",outcome=\"done\"} 1",
            "oncely_saga_oldest_active_seconds 0",
        ] {
            assert!(page.contains(line), "{line} in\n{page}");
        }
        let (saga, log) = store.get("o-declined").await.unwrap().unwrap();
        assert_eq!(saga.state.failure.as_deref(), Some("decline"));
        assert!(saga.outputs.contains_key("reserve"));
        let outcomes: Vec<String> = log
            .iter()
            .filter(|l| l.step.is_some())
            .map(|l| {
                format!(
                    "{} {} {}",
                    l.step.as_deref().unwrap(),
                    l.direction.as_str(),
                    l.outcome
                )
            })
            .collect();
        assert_eq!(
            outcomes,
            [
                "reserve do done",
                "charge do failed: decline",
                "reserve undo done"
            ]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_dropped_after_any_step_acted_leaves_each_effect_once() {
    // Paid: reserve, charge, confirm are calls 1-3; declined: reserve, charge, undo.
    for backend in backends("a_runner_dropped_after_any_step_acted_leaves_each_effect_once") {
        for decline in [false, true] {
            for crash_at in 1..=3 {
                let clock = ManualClock::new(Timestamp(1_800_000_000_000));
                let db = open(&backend, &clock).await;
                let store = db.store.clone();
                let shop = shop(crash_at);
                runner(&store, &shop, &clock)
                    .start(&NewSaga {
                        id: "o-1".into(),
                        kind: "checkout".into(),
                        input: serde_json::json!({ "decline": decline }),
                    })
                    .await
                    .unwrap();
                let phase = until_ended(&store, &shop, &clock, "o-1").await;
                let case = format!(
                    "{}: decline {decline}, crash at call {crash_at}",
                    if backend.is_some() {
                        "PostgreSQL"
                    } else {
                        "SQLite"
                    }
                );
                assert!(
                    shop.crash.calls.load(Ordering::SeqCst) > crash_at,
                    "{case}: it crashed and went on"
                );
                let repeated = [&shop.stock, &shop.payments, &shop.orders]
                    .iter()
                    .map(|l| l.most_calls())
                    .max();
                // A declined charge acts on nothing: its repeat shows in no ledger.
                if !(decline && crash_at == 2) {
                    assert_eq!(
                        repeated,
                        Some(2),
                        "{case}: the crashed call was repeated with its key"
                    );
                }
                if decline {
                    assert_eq!(phase, Phase::Compensated, "{case}");
                    assert!(
                        shop.stock.has("o-1/reserve/do") && shop.stock.has("o-1/reserve/undo"),
                        "{case}"
                    );
                    assert!(
                        shop.payments.keys().is_empty() && shop.orders.keys().is_empty(),
                        "{case}"
                    );
                } else {
                    assert_eq!(phase, Phase::Completed, "{case}");
                    assert_eq!(shop.stock.keys(), ["o-1/reserve/do"], "{case}");
                    assert_eq!(shop.payments.keys(), ["o-1/charge/do"], "{case}");
                    assert_eq!(shop.orders.keys(), ["o-1/confirm/do"], "{case}");
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_between_attempts_undoes_the_step_that_may_have_acted() {
    for backend in backends("a_cancel_between_attempts_undoes_the_step_that_may_have_acted") {
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let db = open(&backend, &clock).await;
        let store = db.store.clone();
        let shop = shop(usize::MAX);
        let r = runner(&store, &shop, &clock);
        r.start(&NewSaga {
            id: "o-1".into(),
            kind: "checkout".into(),
            input: serde_json::json!({ "flaky_reserve": true }),
        })
        .await
        .unwrap();
        // The reservation times out: the saga waits for its retry.
        r.pass().await.unwrap();
        let (saga, _) = store.get("o-1").await.unwrap().unwrap();
        assert_eq!(
            (saga.state.phase.clone(), saga.state.attempt),
            (Phase::Forward { step: 0 }, 2)
        );
        assert!(store.request_cancel("o-1").await.unwrap());
        clock.advance(Duration::from_secs(1));
        r.pass().await.unwrap();
        let (saga, log) = store.get("o-1").await.unwrap().unwrap();
        assert_eq!(saga.state.phase, Phase::Compensated, "{log:?}");
        assert_eq!(saga.state.failure.as_deref(), Some("cancelled"));
        // The timed-out reservation might have acted: it is released (a release of nothing
        // is a success); nothing was charged.
        assert_eq!(shop.stock.keys(), ["o-1/reserve/undo"]);
        assert!(shop.payments.keys().is_empty());
    }
}

struct GateStep(Arc<Gate>);

impl std::ops::Deref for GateStep {
    type Target = Gate;
    fn deref(&self) -> &Gate {
        &self.0
    }
}

/// A step whose first call blocks until the test opens the gate (a runner stalled mid-step:
/// a GC pause, a hung connection); later calls go through. Every call is counted.
struct Gate {
    calls: AtomicUsize,
    entered: tokio::sync::Notify,
    open: tokio::sync::Notify,
}

#[async_trait]
impl Step for GateStep {
    async fn run(&self, cx: &StepContext) -> Result<serde_json::Value, StepError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.entered.notify_one();
            self.open.notified().await;
            return Ok(serde_json::json!({ "by": "the stalled runner", "key": cx.key }));
        }
        Ok(serde_json::json!({ "by": "the runner that took over", "key": cx.key }))
    }
    async fn undo(&self, _cx: &StepContext) -> Result<(), StepError> {
        Ok(())
    }
}

impl Gate {
    fn new() -> Arc<Gate> {
        Arc::new(Gate {
            calls: AtomicUsize::new(0),
            entered: tokio::sync::Notify::new(),
            open: tokio::sync::Notify::new(),
        })
    }
}

/// A runner of the test's checkout whose first step (the reservation) is `first`.
fn runner_with(
    store: &Arc<dyn SagaStore>,
    shop: &Shop,
    clock: &ManualClock,
    first: Arc<dyn Step>,
) -> Runner {
    let mut def = definition(shop);
    def.steps[0] = first;
    Runner::new(
        store.clone(),
        vec![def],
        Arc::new(clock.clone()),
        RunnerConfig {
            lease: LEASE,
            ..RunnerConfig::default()
        },
    )
    .unwrap()
}

/// Starts the saga `o-1`.
async fn start_one(r: &Runner) {
    r.start(&NewSaga {
        id: "o-1".into(),
        kind: "checkout".into(),
        input: serde_json::json!({}),
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runners_racing_one_saga_one_proceeds_the_stale_one_is_refused() {
    for backend in backends("two_runners_racing_one_saga_one_proceeds_the_stale_one_is_refused") {
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let db = open(&backend, &clock).await;
        let store = db.store.clone();
        let shop = shop(usize::MAX);
        let gate = Gate::new();
        let racer = || runner_with(&store, &shop, &clock, Arc::new(GateStep(gate.clone())));
        let (stalled, other) = (Arc::new(racer()), racer());
        start_one(&stalled).await;
        let first = tokio::spawn({
            let r = stalled.clone();
            async move { r.pass().await }
        });
        gate.entered.notified().await;
        // The stalled runner's lease runs out; the other claims the saga and finishes it.
        clock.advance(LEASE + Duration::from_secs(1));
        let pass = other.pass().await.unwrap();
        assert_eq!(pass.claimed, 1);
        let (saga, _) = store.get("o-1").await.unwrap().unwrap();
        assert_eq!(saga.state.phase, Phase::Completed);
        // The stalled runner wakes up with its answer: refused, nothing recorded.
        gate.open.notify_one();
        let late = first.await.unwrap().unwrap();
        assert_eq!(late.lease_lost, 1, "the stale completion is refused");
        let (after, log) = store.get("o-1").await.unwrap().unwrap();
        assert_eq!(after.state.phase, Phase::Completed);
        assert_eq!(
            after.outputs["reserve"]["by"], "the runner that took over",
            "the stale runner's output was not recorded"
        );
        let reserved: Vec<&str> = log
            .iter()
            .filter(|l| l.step.as_deref() == Some("reserve") && l.outcome == "done")
            .map(|l| l.outcome.as_str())
            .collect();
        assert_eq!(
            reserved.len(),
            1,
            "one completion of the step in the log: {log:?}"
        );
        assert_eq!(
            gate.calls.load(Ordering::SeqCst),
            2,
            "both ran it, with one key"
        );
        assert_eq!(shop.payments.keys(), ["o-1/charge/do"]);
        assert_eq!(shop.orders.keys(), ["o-1/confirm/do"]);
    }
}

/// A step that panics on its first attempt.
struct Panics {
    calls: AtomicUsize,
}

#[async_trait]
impl Step for Panics {
    async fn run(&self, _cx: &StepContext) -> Result<serde_json::Value, StepError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            panic!("a bug in the step");
        }
        Ok(serde_json::json!({}))
    }
    async fn undo(&self, _cx: &StepContext) -> Result<(), StepError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_panics_is_retried_without_waiting_for_the_lease() {
    let clock = ManualClock::new(Timestamp(1_800_000_000_000));
    let db = open(&None, &clock).await;
    let store = db.store.clone();
    let shop = shop(usize::MAX);
    let first = Arc::new(Panics {
        calls: AtomicUsize::new(0),
    });
    let r = runner_with(&store, &shop, &clock, first);
    start_one(&r).await;
    r.pass().await.unwrap();
    let (saga, log) = store.get("o-1").await.unwrap().unwrap();
    assert_eq!(
        (saga.state.phase.clone(), saga.state.attempt),
        (Phase::Forward { step: 0 }, 2),
        "{log:?}"
    );
    assert_eq!(log.last().unwrap().outcome, "retryable: the step panicked");
    // Well within the lease: the retry's backoff, not the lease, decides when it runs again.
    clock.advance(Duration::from_secs(1));
    r.pass().await.unwrap();
    let (saga, _) = store.get("o-1").await.unwrap().unwrap();
    assert_eq!(saga.state.phase, Phase::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_the_step_before_the_pivot_runs_turns_the_saga_back() {
    for backend in backends("a_cancel_while_the_step_before_the_pivot_runs_turns_the_saga_back") {
        let clock = ManualClock::new(Timestamp(1_800_000_000_000));
        let db = open(&backend, &clock).await;
        let store = db.store.clone();
        let shop = shop(usize::MAX);
        let gate = Gate::new();
        // The reservation (the step before the pivot, the charge) blocks until the test
        // has asked to cancel; then it succeeds.
        let r = Arc::new(runner_with(
            &store,
            &shop,
            &clock,
            Arc::new(GateStep(gate.clone())),
        ));
        start_one(&r).await;
        let pass = tokio::spawn({
            let r = r.clone();
            async move { r.pass().await }
        });
        gate.entered.notified().await;
        assert!(store.request_cancel("o-1").await.unwrap());
        gate.open.notify_one();
        pass.await.unwrap().unwrap();
        let (saga, log) = store.get("o-1").await.unwrap().unwrap();
        assert_eq!(saga.state.phase, Phase::Compensated, "{log:?}");
        assert_eq!(saga.state.failure.as_deref(), Some("cancelled"));
        assert!(
            shop.payments.keys().is_empty(),
            "the pivot never ran: {log:?}"
        );
        assert!(shop.orders.keys().is_empty());
        let lines: Vec<String> = log
            .iter()
            .map(|l| {
                format!(
                    "{} {} {}",
                    l.step.as_deref().unwrap_or("-"),
                    l.direction.as_str(),
                    l.outcome
                )
            })
            .collect();
        assert!(
            lines.contains(&"reserve do done; cancel taken".to_owned()),
            "{lines:?}"
        );
        assert_eq!(lines.last().unwrap(), "reserve undo done", "{lines:?}");
    }
}
