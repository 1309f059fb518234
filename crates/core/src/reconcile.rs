//! Reconciliation's decisions, sans I/O: which time windows a run covers, which records of
//! the two sides (ours and theirs) belong together, how a group of them differs, and what
//! the job's rules make of a difference (heal it, alert a person, or accept it).
//!
//! A run covers `[checkpoint - overlap, now - settle)` in windows of a fixed length. Each
//! window reads both sides over `[start - overlap, end + overlap)` and classifies only the
//! match keys it *owns*: those whose earliest record falls inside `[start, end)`. So a key
//! whose records spread over a window's edge (an order at 11:59, its charge at 12:01) is
//! compared once, whole, as long as its records lie within `overlap` of each other; and the
//! region before the checkpoint is covered again on the next run, for records that arrived
//! late.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Timestamp;

/// One record of either side, as the comparison sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The record's own id (an order id, a charge id): what a finding names.
    pub id: String,
    /// What the two sides are matched on (for charges and orders: the order id).
    pub key: String,
    /// Its amount in minor units (cents); a refund is negative.
    pub amount: i64,
    /// Its status in the job's shared vocabulary (`pending`, `paid`...): the sources map
    /// their own spellings to it.
    pub status: String,
    /// When it happened, on its own side's clock: what windows are cut by.
    pub at: Timestamp,
}

/// A window of time a run compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Its first instant.
    pub start: Timestamp,
    /// The instant after its last.
    pub end: Timestamp,
}

impl Window {
    /// The span both sides are read over: the window widened by `overlap` each way.
    pub fn reads(&self, overlap: Duration) -> (Timestamp, Timestamp) {
        let m = millis(overlap);
        (
            Timestamp(self.start.0.saturating_sub(m)),
            Timestamp(self.end.0.saturating_add(m)),
        )
    }

    /// Whether a key whose earliest record is at `anchor` is this window's to classify.
    pub fn owns(&self, anchor: Timestamp) -> bool {
        self.start <= anchor && anchor < self.end
    }
}

/// How a job cuts time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowPlan {
    /// Each window's length.
    pub length: Duration,
    /// How far records of one key may lie apart, and how far back before the checkpoint a
    /// run looks again for records that arrived late.
    pub overlap: Duration,
    /// Records younger than this are not compared yet (a webhook may still be on its way).
    pub settle: Duration,
    /// Where the first run starts, how long before now (no checkpoint yet).
    pub lookback: Duration,
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The windows a run at `now` covers, oldest first, and the checkpoint it reaches when all
/// of them are done. No windows (and the checkpoint unchanged) when there is nothing settled
/// past the checkpoint, for instance after the clock stepped back.
pub fn plan_windows(
    plan: &WindowPlan,
    checkpoint: Option<Timestamp>,
    now: Timestamp,
) -> (Vec<Window>, Option<Timestamp>) {
    let end = Timestamp(now.0.saturating_sub(millis(plan.settle)));
    let start = match checkpoint {
        Some(c) => Timestamp(c.0.saturating_sub(millis(plan.overlap))),
        None => Timestamp(now.0.saturating_sub(millis(plan.lookback))),
    };
    // A checkpoint never moves back, whatever the clock says now.
    if end <= start || checkpoint.is_some_and(|c| end <= c) {
        return (Vec::new(), checkpoint);
    }
    let length = millis(plan.length).max(1);
    let mut windows = Vec::new();
    let mut at = start.0;
    while at < end.0 {
        let next = at.saturating_add(length).min(end.0);
        windows.push(Window {
            start: Timestamp(at),
            end: Timestamp(next),
        });
        at = next;
    }
    (windows, Some(end))
}

/// The records of one match key, from both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The match key.
    pub key: String,
    /// Our records of it (usually one: the order).
    pub ours: Vec<Entry>,
    /// Theirs (one charge, or several: a split payment, a partial refund).
    pub theirs: Vec<Entry>,
}

impl Group {
    /// The earliest record's time: the window that holds it classifies the group.
    pub fn anchor(&self) -> Option<Timestamp> {
        self.ours.iter().chain(&self.theirs).map(|e| e.at).min()
    }

    /// How the two sides differ, if they do: a side missing, then the summed amounts, then
    /// the statuses (see [`side_status`]).
    pub fn compare(&self) -> Option<Drift> {
        let kind = match (self.ours.is_empty(), self.theirs.is_empty()) {
            (true, true) => return None,
            (true, false) => DriftKind::OnlyTheirs,
            (false, true) => DriftKind::OnlyOurs,
            (false, false) => {
                if sum(&self.ours) != sum(&self.theirs) {
                    DriftKind::AmountDiffers
                } else if side_status(&self.ours) != side_status(&self.theirs) {
                    DriftKind::StatusDiffers
                } else {
                    return None;
                }
            }
        };
        Some(Drift {
            kind,
            ours_amount: sum(&self.ours),
            theirs_amount: sum(&self.theirs),
            ours_status: side_status(&self.ours),
            theirs_status: side_status(&self.theirs),
        })
    }

    /// The ids of both sides' records, ours first, each sorted: what a finding names.
    pub fn ids(&self) -> (Vec<String>, Vec<String>) {
        let ids = |side: &[Entry]| {
            let mut v: Vec<String> = side.iter().map(|e| e.id.clone()).collect();
            v.sort();
            v
        };
        (ids(&self.ours), ids(&self.theirs))
    }
}

fn sum(side: &[Entry]) -> i64 {
    side.iter()
        .fold(0i64, |acc, e| acc.saturating_add(e.amount))
}

/// A side's status: its records' distinct statuses, sorted and joined by `+` (`paid`, or
/// `paid+refunded` for a charge with a partial refund); empty when the side has none.
pub fn side_status(side: &[Entry]) -> String {
    let mut s: Vec<&str> = side.iter().map(|e| e.status.as_str()).collect();
    s.sort_unstable();
    s.dedup();
    s.join("+")
}

/// Groups the records read for `window` by key, keeping the groups it owns, sorted by key.
/// Records whose key belongs to a neighbouring window only help to complete the groups.
pub fn group(ours: Vec<Entry>, theirs: Vec<Entry>, window: &Window) -> Vec<Group> {
    let mut groups: BTreeMap<String, Group> = BTreeMap::new();
    let sides = ours
        .into_iter()
        .map(|e| (true, e))
        .chain(theirs.into_iter().map(|e| (false, e)));
    for (is_ours, e) in sides {
        let g = groups.entry(e.key.clone()).or_insert_with(|| Group {
            key: e.key.clone(),
            ours: Vec::new(),
            theirs: Vec::new(),
        });
        if is_ours {
            g.ours.push(e);
        } else {
            g.theirs.push(e);
        }
    }
    groups
        .into_values()
        .filter(|g| g.anchor().is_some_and(|a| window.owns(a)))
        .map(|mut g| {
            // Comparison and findings never depend on the order the pages came in.
            g.ours.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
            g.theirs.sort_by(|a, b| (a.at, &a.id).cmp(&(b.at, &b.id)));
            g
        })
        .collect()
}

/// What kind of difference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DriftKind {
    /// They have it, we do not (an orphan charge).
    OnlyTheirs,
    /// We have it, they do not (a paid order without a charge, or an order not paid yet).
    OnlyOurs,
    /// Both have it; the summed amounts differ.
    AmountDiffers,
    /// Both have it with the same amount; the statuses differ (a missed webhook).
    StatusDiffers,
}

impl DriftKind {
    /// Its name in findings and rules.
    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::OnlyTheirs => "only_theirs",
            DriftKind::OnlyOurs => "only_ours",
            DriftKind::AmountDiffers => "amount_differs",
            DriftKind::StatusDiffers => "status_differs",
        }
    }
}

/// A difference between the two sides of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drift {
    /// Its kind.
    pub kind: DriftKind,
    /// Our records' summed amount (0 when we have none).
    pub ours_amount: i64,
    /// Theirs.
    pub theirs_amount: i64,
    /// Our side's status ([`side_status`]).
    pub ours_status: String,
    /// Theirs.
    pub theirs_status: String,
}

/// What a job does about a difference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A safe, idempotent fix the job applies itself: the name of the job's heal action.
    Heal(String),
    /// Unsafe to fix by machine: a finding for a person, of this class.
    Alert(String),
    /// Not a problem (an order not paid yet has no charge).
    Accept,
}

/// One line of a job's rules: a kind of difference, optionally with the statuses of each
/// side, and what to do about it. The first rule that matches decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The kind it is about.
    pub kind: DriftKind,
    /// Our side's status it needs, if any ([`side_status`]).
    pub ours: Option<String>,
    /// Their side's status it needs, if any.
    pub theirs: Option<String>,
    /// What to do.
    pub verdict: Verdict,
}

impl Rule {
    /// A rule for `kind`, with the statuses each side must have (`None`: any).
    pub fn new(
        kind: DriftKind,
        ours: Option<&str>,
        theirs: Option<&str>,
        verdict: Verdict,
    ) -> Rule {
        Rule {
            kind,
            ours: ours.map(str::to_owned),
            theirs: theirs.map(str::to_owned),
            verdict,
        }
    }

    fn matches(&self, d: &Drift) -> bool {
        self.kind == d.kind
            && self.ours.as_ref().is_none_or(|s| *s == d.ours_status)
            && self.theirs.as_ref().is_none_or(|s| *s == d.theirs_status)
    }
}

/// The verdict of the first rule matching `drift`; a drift no rule names is an alert
/// (`unclassified_{kind}`): never healed or accepted by omission.
pub fn classify(rules: &[Rule], drift: &Drift) -> Verdict {
    rules
        .iter()
        .find(|r| r.matches(drift))
        .map(|r| r.verdict.clone())
        .unwrap_or_else(|| Verdict::Alert(format!("unclassified_{}", drift.kind.as_str())))
}

/// The identity of a finding: the job, the key and the class. A drift seen again (by the
/// next run, or by an overlapping one) is the same finding.
pub fn finding_key(job: &str, key: &str, class: &str) -> String {
    format!("{job}/{key}/{class}")
}

/// The idempotency key a heal carries: the same for every run that applies it.
pub fn heal_key(job: &str, key: &str, action: &str) -> String {
    format!("{job}/{key}/heal/{action}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(id: &str, key: &str, amount: i64, status: &str, at: i64) -> Entry {
        Entry {
            id: id.into(),
            key: key.into(),
            amount,
            status: status.into(),
            at: Timestamp(at),
        }
    }

    fn payment_rules() -> Vec<Rule> {
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

    #[test]
    fn the_seed_job_classifies_each_drift() {
        let w = Window {
            start: Timestamp(0),
            end: Timestamp(1000),
        };
        let ours = vec![
            entry("o1", "o1", 500, "paid", 10),
            entry("o2", "o2", 500, "pending", 20),
            entry("o3", "o3", 700, "paid", 30),
            entry("o4", "o4", 900, "paid", 40),
            entry("o5", "o5", 100, "pending", 50),
            entry("o6", "o6", 1000, "paid", 60),
        ];
        let theirs = vec![
            entry("ch1", "o1", 500, "paid", 11),
            entry("ch2", "o2", 500, "paid", 21),
            entry("ch3", "o3", 650, "paid", 31),
            entry("ch9", "o9", 300, "paid", 70),
            // o6 paid by two charges.
            entry("ch6a", "o6", 600, "paid", 61),
            entry("ch6b", "o6", 400, "paid", 62),
        ];
        let rules = payment_rules();
        let verdicts: Vec<(String, Verdict)> = group(ours, theirs, &w)
            .into_iter()
            .filter_map(|g| g.compare().map(|d| (g.key.clone(), classify(&rules, &d))))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("o2".into(), Verdict::Heal("mark_paid".into())),
                ("o3".into(), Verdict::Alert("amount_mismatch".into())),
                ("o4".into(), Verdict::Alert("paid_without_charge".into())),
                ("o5".into(), Verdict::Accept),
                ("o9".into(), Verdict::Alert("orphan_charge".into())),
            ]
        );
    }

    #[test]
    fn a_drift_no_rule_names_is_an_alert() {
        let d = Drift {
            kind: DriftKind::StatusDiffers,
            ours_amount: 1,
            theirs_amount: 1,
            ours_status: "paid".into(),
            theirs_status: "refunded".into(),
        };
        assert_eq!(
            classify(&payment_rules(), &d),
            Verdict::Alert("unclassified_status_differs".into())
        );
        assert_eq!(side_status(&[]), "");
        assert_eq!(
            side_status(&[
                entry("a", "k", 1, "refunded", 0),
                entry("b", "k", 1, "paid", 0),
                entry("c", "k", 1, "paid", 0)
            ]),
            "paid+refunded"
        );
    }

    #[test]
    fn a_clock_stepped_back_plans_nothing_and_keeps_the_checkpoint() {
        let plan = WindowPlan {
            length: Duration::from_secs(60),
            overlap: Duration::from_secs(10),
            settle: Duration::from_secs(5),
            lookback: Duration::from_secs(3600),
        };
        let (w, c) = plan_windows(&plan, Some(Timestamp(100_000)), Timestamp(50_000));
        assert!(w.is_empty());
        assert_eq!(c, Some(Timestamp(100_000)));
        // Just past the checkpoint: one short window that starts an overlap before it.
        let (w, c) = plan_windows(&plan, Some(Timestamp(100_000)), Timestamp(106_000));
        assert_eq!(
            w,
            [Window {
                start: Timestamp(90_000),
                end: Timestamp(101_000)
            }]
        );
        assert_eq!(c, Some(Timestamp(101_000)));
        let (w, c) = plan_windows(&plan, None, Timestamp(3_600_000 + 5_000));
        assert_eq!(w.len(), 60);
        assert_eq!(w[0].start, Timestamp(5_000));
        assert_eq!(c, Some(Timestamp(3_600_000)));
    }

    fn arb_entries(side: &'static str) -> impl Strategy<Value = Vec<Entry>> {
        prop::collection::vec(
            (
                0u8..12,
                -500i64..2000,
                prop::sample::select(vec!["pending", "paid", "refunded"]),
                0i64..10_000,
            ),
            0..40,
        )
        .prop_map(move |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (k, amount, status, at))| {
                    entry(&format!("{side}{i}"), &format!("k{k}"), amount, status, at)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// Every key of the covered span is classified by exactly one window, whole (with all
        /// of its records), when its records lie within the overlap of each other.
        #[test]
        fn windows_partition_the_keys(
            ours in arb_entries("o"),
            theirs in arb_entries("t"),
            length in 1u64..4000,
        ) {
            // Keep each key's records within the overlap of each other.
            let overlap = Duration::from_millis(10_000);
            let plan = WindowPlan { length: Duration::from_millis(length), overlap, settle: Duration::ZERO, lookback: Duration::from_millis(20_000) };
            let (windows, _) = plan_windows(&plan, None, Timestamp(10_000));
            let all: Vec<Entry> = ours.iter().chain(&theirs).cloned().collect();
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for w in &windows {
                let (from, to) = w.reads(overlap);
                let read = |side: &[Entry]| side.iter().filter(|e| from <= e.at && e.at < to).cloned().collect::<Vec<_>>();
                for g in group(read(&ours), read(&theirs), w) {
                    *seen.entry(g.key.clone()).or_default() += 1;
                    let whole = all.iter().filter(|e| e.key == g.key).count();
                    prop_assert_eq!(g.ours.len() + g.theirs.len(), whole, "{} incomplete", g.key);
                }
            }
            for e in &all {
                prop_assert_eq!(seen.get(&e.key).copied(), Some(1), "{} classified once", &e.key);
            }
        }

        /// The comparison sums 1:N, and neither it nor the ids depend on the order of the
        /// records; two sides with the same records agree.
        #[test]
        fn comparison_is_order_free_and_sums(
            ours in arb_entries("o"),
            theirs in arb_entries("t"),
            seed in any::<u64>(),
        ) {
            let w = Window { start: Timestamp(0), end: Timestamp(10_000) };
            let mut shuffled_ours = ours.clone();
            let mut shuffled_theirs = theirs.clone();
            let n = shuffled_ours.len();
            if n > 1 { shuffled_ours.rotate_left((seed as usize) % n); }
            shuffled_theirs.reverse();
            let a = group(ours.clone(), theirs.clone(), &w);
            let b = group(shuffled_ours, shuffled_theirs, &w);
            prop_assert_eq!(&a, &b);
            for g in &a {
                if let Some(d) = g.compare() {
                    prop_assert_eq!(d.ours_amount, g.ours.iter().map(|e| e.amount).sum::<i64>());
                    prop_assert_eq!(d.theirs_amount, g.theirs.iter().map(|e| e.amount).sum::<i64>());
                    // Never a heal or an accept without a rule saying so.
                    prop_assert!(matches!(classify(&[], &d), Verdict::Alert(_)));
                }
                let mirror = Group { key: g.key.clone(), ours: g.ours.clone(), theirs: g.ours.clone() };
                prop_assert!(g.ours.is_empty() || mirror.compare().is_none());
            }
        }

        /// Windows are contiguous, start an overlap before the checkpoint, end at
        /// now - settle, and the checkpoint never moves back.
        #[test]
        fn windows_cover_the_span_and_checkpoints_only_advance(
            checkpoint in prop::option::of(0i64..100_000),
            now in 0i64..200_000,
            length in 1u64..50_000,
        ) {
            let plan = WindowPlan { length: Duration::from_millis(length), overlap: Duration::from_millis(3_000), settle: Duration::from_millis(1_000), lookback: Duration::from_millis(60_000) };
            let (windows, next) = plan_windows(&plan, checkpoint.map(Timestamp), Timestamp(now));
            if let (Some(c), Some(n)) = (checkpoint, next) {
                prop_assert!(n.0 >= c);
            }
            if let Some(first) = windows.first() {
                let expected = match checkpoint { Some(c) => c - 3_000, None => now - 60_000 };
                prop_assert_eq!(first.start.0, expected);
                prop_assert_eq!(windows.last().unwrap().end.0, now - 1_000);
                prop_assert_eq!(next, Some(Timestamp(now - 1_000)));
                for pair in windows.windows(2) {
                    prop_assert_eq!(pair[0].end, pair[1].start);
                    prop_assert!(pair[0].start < pair[0].end);
                }
            } else {
                prop_assert_eq!(next, checkpoint.map(Timestamp));
            }
        }
    }
}
