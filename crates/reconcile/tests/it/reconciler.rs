//! The reconciler over two in-memory sources (ours: orders; theirs: charges) and a store on
//! SQLite and PostgreSQL: every kind of drift classified, the missed webhook healed once,
//! a second run finding nothing new, overlapping runs refused, a source failing mid-run
//! (failed, checkpoint kept, covered again), late records inside the overlap, a clock
//! stepped back, malformed rows.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use oncely_core::reconcile::{DriftKind, Entry, Group, Rule, Verdict, WindowPlan};
use oncely_core::{ManualClock, Timestamp};
use oncely_reconcile::postgres::PgReconcile;
use oncely_reconcile::sqlite::SqliteReconcile;
use oncely_reconcile::{
    FindingFilter, FindingState, Healer, Invariant, Job, Malformed, Page, ReconcileStore,
    Reconciler, RunError, RunOutcome, Source, SourceError,
};
use oncely_testkit::services::{Service, TestSchema};

const MIN: i64 = 60_000;
const NOW: i64 = 1_800_000_000_000;

/// One side's rows, served in pages of the size asked, in time order; it can be told to
/// fail its n-th page.
#[derive(Default)]
struct Rows {
    rows: Mutex<Vec<(Timestamp, Result<Entry, Malformed>)>>,
    pages: AtomicUsize,
    fail_page: AtomicUsize,
}

impl Rows {
    fn add(&self, id: &str, key: &str, amount: i64, status: &str, at: i64) {
        let e = Entry {
            id: id.into(),
            key: key.into(),
            amount,
            status: status.into(),
            at: Timestamp(at),
        };
        self.rows.lock().unwrap().push((Timestamp(at), Ok(e)));
    }
    fn add_malformed(&self, id: &str, at: i64) {
        self.rows.lock().unwrap().push((
            Timestamp(at),
            Err(Malformed {
                id: id.into(),
                reason: "amount is not a number: \"12,50\"".into(),
            }),
        ));
    }
    fn status(&self, id: &str) -> String {
        self.rows
            .lock()
            .unwrap()
            .iter()
            .find_map(|(_, r)| {
                r.as_ref()
                    .ok()
                    .filter(|e| e.id == id)
                    .map(|e| e.status.clone())
            })
            .unwrap()
    }
}

#[async_trait]
impl Source for Rows {
    async fn page(
        &self,
        from: Timestamp,
        to: Timestamp,
        cursor: Option<String>,
        limit: usize,
    ) -> Result<Page, SourceError> {
        let n = self.pages.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_page.load(Ordering::SeqCst) == n {
            return Err(SourceError("the provider answered 502".into()));
        }
        let mut rows: Vec<(Timestamp, Result<Entry, Malformed>)> = self
            .rows
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, _)| from <= *at && *at < to)
            .cloned()
            .collect();
        rows.sort_by_key(|(at, _)| *at);
        let skip: usize = cursor.map_or(0, |c| c.parse().unwrap());
        let page: Vec<_> = rows
            .iter()
            .skip(skip)
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect();
        let next = (skip + page.len() < rows.len()).then(|| (skip + page.len()).to_string());
        Ok(Page {
            records: page,
            next,
        })
    }
}

/// Marks orders paid; counts each heal key's effects.
struct MarkPaid {
    orders: Arc<Rows>,
    effects: Mutex<HashMap<String, u32>>,
    /// Heals that fail before doing anything (the database was away).
    failures: AtomicUsize,
}

#[async_trait]
impl Healer for MarkPaid {
    async fn heal(&self, action: &str, group: &Group, key: &str) -> Result<(), SourceError> {
        assert_eq!(action, "mark_paid");
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(SourceError("the orders database is away".into()));
        }
        let mut rows = self.orders.rows.lock().unwrap();
        for (_, r) in rows.iter_mut() {
            if let Ok(e) = r {
                if e.key == group.key && e.status == "pending" {
                    e.status = "paid".into();
                    *self
                        .effects
                        .lock()
                        .unwrap()
                        .entry(key.to_owned())
                        .or_default() += 1;
                }
            }
        }
        Ok(())
    }
}

fn rules() -> Vec<Rule> {
    let rule = Rule::new;
    vec![
        rule(
            DriftKind::StatusDiffers,
            Some("pending"),
            Some("paid"),
            Verdict::Heal("mark_paid".into()),
        ),
        rule(DriftKind::OnlyOurs, Some("pending"), None, Verdict::Accept),
        rule(
            DriftKind::OnlyOurs,
            Some("paid"),
            None,
            Verdict::Alert("paid_without_charge".into()),
        ),
        rule(
            DriftKind::OnlyTheirs,
            None,
            None,
            Verdict::Alert("orphan_charge".into()),
        ),
        rule(
            DriftKind::AmountDiffers,
            None,
            None,
            Verdict::Alert("amount_mismatch".into()),
        ),
    ]
}

/// Every paid charge has exactly one paid order of its amount; a paid order has charges.
fn invariant() -> Invariant {
    Invariant {
        description: "every paid charge has exactly one paid order with the same amount".into(),
        holds: Arc::new(|g: &Group| {
            let charged: i64 = g
                .theirs
                .iter()
                .filter(|e| e.status == "paid")
                .map(|e| e.amount)
                .sum();
            let paid: Vec<&Entry> = g.ours.iter().filter(|e| e.status == "paid").collect();
            if g.theirs.is_empty() {
                return paid.is_empty();
            }
            paid.len() == 1 && paid[0].amount == charged
        }),
    }
}

struct World {
    orders: Arc<Rows>,
    charges: Arc<Rows>,
    healer: Arc<MarkPaid>,
    job: Job,
}

fn world() -> World {
    let (orders, charges) = (Arc::new(Rows::default()), Arc::new(Rows::default()));
    let healer = Arc::new(MarkPaid {
        orders: orders.clone(),
        effects: Mutex::default(),
        failures: AtomicUsize::new(0),
    });
    let job = Job {
        name: "payments".into(),
        ours: orders.clone(),
        theirs: charges.clone(),
        rules: rules(),
        healer: healer.clone(),
        invariant: invariant(),
        windows: WindowPlan {
            length: Duration::from_secs(600),
            overlap: Duration::from_secs(120),
            settle: Duration::from_secs(60),
            lookback: Duration::from_secs(3600),
        },
        page_size: 2,
    };
    World {
        orders,
        charges,
        healer,
        job,
    }
}

/// The seed's drifts, spread over the last hour.
fn seed(w: &World) {
    let (o, c) = (&w.orders, &w.charges);
    let t = |m: i64| NOW - m * MIN;
    o.add("o1", "o1", 500, "paid", t(55));
    c.add("ch1", "o1", 500, "paid", t(55) + 5_000);
    // A missed webhook: paid there, pending here.
    o.add("o2", "o2", 700, "pending", t(50));
    c.add("ch2", "o2", 700, "paid", t(50) + 3_000);
    o.add("o3", "o3", 900, "paid", t(45));
    c.add("ch3", "o3", 850, "paid", t(45) + 1_000);
    o.add("o4", "o4", 300, "paid", t(35));
    o.add("o5", "o5", 100, "pending", t(30));
    c.add("ch9", "o9", 400, "paid", t(25));
    // Paid by two charges.
    o.add("o6", "o6", 1000, "paid", t(20));
    c.add("ch6a", "o6", 600, "paid", t(20) + 1_000);
    c.add("ch6b", "o6", 400, "paid", t(20) + 2_000);
    // Across a window's edge (windows start at multiples of 10 minutes from NOW - 60 min).
    o.add("o7", "o7", 250, "paid", t(40) - 10_000);
    c.add("ch7", "o7", 250, "paid", t(40) + 30_000);
    c.add_malformed("ch_bad", t(15));
}

struct Backend {
    store: Arc<dyn ReconcileStore>,
    _dir: tempfile::TempDir,
    _schema: Option<TestSchema>,
}

async fn backends(test: &str, clock: &ManualClock) -> Vec<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteReconcile::open(
        dir.path().join("reconcile.db"),
        Duration::from_secs(5),
        Arc::new(clock.clone()),
    )
    .unwrap();
    let mut all = vec![Backend {
        store: Arc::new(sqlite),
        _dir: dir,
        _schema: None,
    }];
    if let Some(url) = Service::Postgres.available(test) {
        let schema = TestSchema::new(&url, "oncely_reconcile");
        let pool = oncely_db::postgres::pool(&oncely_db::postgres::PgOptions::new(&url)).unwrap();
        let store = PgReconcile::open(pool, &schema.name, Arc::new(clock.clone()))
            .await
            .unwrap();
        all.push(Backend {
            store: Arc::new(store),
            _dir: tempfile::tempdir().unwrap(),
            _schema: Some(schema),
        });
    }
    all
}

/// A seeded world and a reconciler over `b`'s store.
fn seeded(b: &Backend, clock: &ManualClock) -> (World, Reconciler) {
    let w = world();
    seed(&w);
    let r = Reconciler::new(
        b.store.clone(),
        Arc::new(clock.clone()),
        Duration::from_secs(60),
    );
    (w, r)
}

fn open_classes(findings: &[oncely_reconcile::Finding]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = findings
        .iter()
        .filter(|f| f.state == FindingState::Open)
        .map(|f| (f.key.clone(), f.class.clone()))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_drift_is_classified_and_the_missed_webhook_healed_once() {
    let clock = ManualClock::new(Timestamp(NOW));
    for b in backends(
        "every_drift_is_classified_and_the_missed_webhook_healed_once",
        &clock,
    )
    .await
    {
        let (w, r) = seeded(&b, &clock);
        let first = r.run(&w.job).await.unwrap();
        assert_eq!(first.outcome, RunOutcome::Drift, "{first:?}");
        let n = |name: &str| first.report.counts.get(name).copied().unwrap_or(0);
        assert_eq!(n("windows"), 6);
        assert_eq!(n("healed"), 1);
        assert_eq!(n("accepted"), 1, "the unpaid order");
        assert_eq!(
            n("agree"),
            3,
            "o1, o6 (two charges) and o7 (across an edge)"
        );
        assert_eq!(n("invariant_violations"), 3);
        assert_eq!(n("malformed"), 1);
        assert_eq!(first.report.samples["orphan_charge"], ["o9"]);
        assert_eq!(w.orders.status("o2"), "paid", "healed");
        let findings = b
            .store
            .findings(&FindingFilter::default(), 100)
            .await
            .unwrap();
        assert_eq!(
            open_classes(&findings),
            [
                ("o3".into(), "amount_mismatch".into()),
                ("o4".into(), "paid_without_charge".into()),
                ("o9".into(), "orphan_charge".into()),
                ("theirs:ch_bad".into(), "malformed".into()),
            ]
        );
        let heal = findings.iter().find(|f| f.class == "mark_paid").unwrap();
        assert_eq!(
            (heal.key.as_str(), heal.state),
            ("o2", FindingState::Healed)
        );
        let orphan = findings
            .iter()
            .find(|f| f.class == "orphan_charge")
            .unwrap();
        assert_eq!(orphan.theirs, ["ch9"]);
        assert_eq!(orphan.detail["theirs_amount"], 400);

        // Again, five minutes later: nothing new, nothing healed twice.
        clock.advance(Duration::from_secs(300));
        let second = r.run(&w.job).await.unwrap();
        assert_eq!(second.report.counts.get("new_findings"), None, "{second:?}");
        assert_eq!(second.report.counts.get("healed"), None);
        // The whole hour once more, from no checkpoint, on a fresh job name: the drifts are
        // the same findings, and the healed order agrees now.
        let mut again = w.job.clone();
        again.name = "payments-again".into();
        let third = r.run(&again).await.unwrap();
        assert_eq!(third.report.counts.get("healed"), None, "{third:?}");
        assert_eq!(third.report.counts.get("alerts"), Some(&4));
        assert_eq!(
            w.healer.effects.lock().unwrap().values().sum::<u32>(),
            1,
            "healed once"
        );
        assert_eq!(
            w.healer.effects.lock().unwrap().keys().collect::<Vec<_>>(),
            ["payments/o2/heal/mark_paid"]
        );
        clock.set(Timestamp(NOW));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_runs_heal_once() {
    let clock = ManualClock::new(Timestamp(NOW));
    for b in backends("overlapping_runs_heal_once", &clock).await {
        let (w, r) = seeded(&b, &clock);
        let r = Arc::new(r);
        let mut runs = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (r, job) = (r.clone(), w.job.clone());
            runs.spawn(async move { r.run(&job).await });
        }
        let (mut done, mut busy) = (0, 0);
        while let Some(j) = runs.join_next().await {
            match j.unwrap() {
                Ok(_) => done += 1,
                Err(RunError::Busy(_)) => busy += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!((done, busy), (1, 3));
        assert_eq!(w.healer.effects.lock().unwrap().values().sum::<u32>(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_failing_mid_run_keeps_the_checkpoint_and_the_next_run_covers_it() {
    let clock = ManualClock::new(Timestamp(NOW));
    for b in backends(
        "a_source_failing_mid_run_keeps_the_checkpoint_and_the_next_run_covers_it",
        &clock,
    )
    .await
    {
        let (w, r) = seeded(&b, &clock);
        w.charges.fail_page.store(4, Ordering::SeqCst);
        let failed = r.run(&w.job).await.unwrap();
        assert_eq!(failed.outcome, RunOutcome::Failed);
        assert_eq!(failed.error.as_deref(), Some("the provider answered 502"));
        let runs = b.store.runs(Some("payments"), 1).await.unwrap();
        assert_eq!(runs[0].checkpoint_after, None);
        assert_eq!(
            b.store.stats().await.unwrap().jobs["payments"].checkpoint,
            None
        );
        // The provider is back: the next run covers the whole hour and finds everything.
        let next = r.run(&w.job).await.unwrap();
        assert_eq!(next.outcome, RunOutcome::Drift);
        assert_eq!(next.report.counts.get("windows"), Some(&6));
        let open = b
            .store
            .findings(
                &FindingFilter {
                    state: Some(FindingState::Open),
                    ..FindingFilter::default()
                },
                100,
            )
            .await
            .unwrap();
        assert_eq!(open.len(), 4, "{open:?}");
        assert_eq!(w.orders.status("o2"), "paid");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_records_inside_the_overlap_are_found_and_a_clock_stepped_back_moves_nothing() {
    let clock = ManualClock::new(Timestamp(NOW));
    for b in backends(
        "late_records_inside_the_overlap_are_found_and_a_clock_stepped_back_moves_nothing",
        &clock,
    )
    .await
    {
        let (w, r) = seeded(&b, &clock);
        r.run(&w.job).await.unwrap();
        let checkpoint = b.store.stats().await.unwrap().jobs["payments"]
            .checkpoint
            .unwrap();
        assert_eq!(checkpoint, Timestamp(NOW - MIN), "now - settle");
        // Two charges arrive late, dated before the checkpoint: one inside the overlap,
        // one before it (out of reach, as documented).
        w.charges
            .add("ch_late", "o_late", 800, "paid", checkpoint.0 - MIN);
        w.charges
            .add("ch_old", "o_old", 800, "paid", checkpoint.0 - 5 * MIN);
        clock.advance(Duration::from_secs(120));
        let next = r.run(&w.job).await.unwrap();
        assert_eq!(
            next.report.samples.get("orphan_charge").map(Vec::as_slice),
            Some(&["o_late".to_owned()][..])
        );
        assert_eq!(next.report.counts.get("new_findings"), Some(&1));

        // The clock steps back an hour: nothing to plan, the checkpoint stays.
        let before = b.store.stats().await.unwrap().jobs["payments"].checkpoint;
        clock.set(Timestamp(NOW - 60 * MIN));
        let back = r.run(&w.job).await.unwrap();
        assert_eq!(back.outcome, RunOutcome::Clean);
        assert_eq!(back.report.counts.get("windows"), Some(&0));
        assert_eq!(
            b.store.stats().await.unwrap().jobs["payments"].checkpoint,
            before
        );
        clock.set(Timestamp(NOW));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heal_that_failed_is_tried_again_by_the_next_run() {
    let clock = ManualClock::new(Timestamp(NOW));
    for b in backends("a_heal_that_failed_is_tried_again_by_the_next_run", &clock).await {
        let (w, r) = seeded(&b, &clock);
        w.healer.failures.store(1, Ordering::SeqCst);
        let first = r.run(&w.job).await.unwrap();
        assert_eq!(first.report.counts.get("healed"), None, "{first:?}");
        assert_eq!(w.orders.status("o2"), "pending");
        let failed = b
            .store
            .findings(
                &FindingFilter {
                    class: Some("heal_failed_mark_paid".into()),
                    ..FindingFilter::default()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(failed.len(), 1, "a person sees it");
        // The checkpoint stayed at the failed group, far behind now - settle.
        let checkpoint = b.store.stats().await.unwrap().jobs["payments"]
            .checkpoint
            .unwrap();
        assert!(checkpoint.0 <= NOW - 50 * MIN + 3_000, "{checkpoint:?}");
        clock.advance(Duration::from_secs(300));
        let second = r.run(&w.job).await.unwrap();
        assert_eq!(second.report.counts.get("healed"), Some(&1), "{second:?}");
        assert_eq!(w.orders.status("o2"), "paid");
        assert_eq!(w.healer.effects.lock().unwrap().values().sum::<u32>(), 1);
        let moved = b.store.stats().await.unwrap().jobs["payments"]
            .checkpoint
            .unwrap();
        assert_eq!(moved, Timestamp(NOW + 5 * MIN - MIN), "past it now");
        clock.set(Timestamp(NOW));
    }
}
