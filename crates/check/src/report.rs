//! The terminal report: one line per property, PASS or FAIL with counts, and the first
//! violations of each with their keys and operations; then what the nemesis did and how
//! long the API took to work again after each crash.

use oncely_core::check::{recovery_times, FaultKind, Property};

use crate::run::Found;

/// How many violations of one property the report spells out.
const SHOWN: usize = 3;

/// The report of a run.
pub fn text(found: &Found) -> String {
    let verdict = &found.verdict;
    let mut out = format!("oncely check: {} operations\n", found.operations.len());
    for p in Property::ALL {
        let checked = verdict.checked.get(&p).copied().unwrap_or(0);
        let broken: Vec<_> = verdict.of(p).collect();
        let mark = if broken.is_empty() { "PASS" } else { "FAIL" };
        out.push_str(&format!(
            "{mark}  {:<22} {checked} checked, {} violated\n",
            p.as_str(),
            broken.len()
        ));
        for v in broken.iter().take(SHOWN) {
            out.push_str(&format!(
                "      key {}{}: {} (operations {:?})\n",
                v.key,
                if v.tenant.is_empty() {
                    String::new()
                } else {
                    format!(" tenant {}", v.tenant)
                },
                v.detail,
                v.operations
            ));
        }
        if broken.len() > SHOWN {
            out.push_str(&format!("      and {} more\n", broken.len() - SHOWN));
        }
    }
    out.push_str(&nemesis(found));
    out.push_str(if verdict.passed() {
        "verdict: every property held\n"
    } else {
        "verdict: FAILED\n"
    });
    out
}

/// What the nemesis did, and the time from each crash (and its restart) to the first
/// success after it.
fn nemesis(found: &Found) -> String {
    if found.faults.is_empty() {
        return String::new();
    }
    let mut out = String::from("nemesis:");
    for kind in FaultKind::ALL {
        let n = found.faults.iter().filter(|f| f.kind == kind).count();
        if n > 0 {
            out.push_str(&format!(" {n} {}", kind.as_str()));
        }
    }
    out.push('\n');
    let crashes: Vec<i64> = found
        .faults
        .iter()
        .filter(|f| f.kind.is_crash())
        .map(|f| f.at)
        .collect();
    let start = found
        .operations
        .iter()
        .map(|o| o.invoked_at)
        .min()
        .unwrap_or(0);
    for (at, back) in recovery_times(&found.operations, &crashes) {
        let restart = found
            .faults
            .iter()
            .find(|f| f.at >= at && matches!(f.kind, FaultKind::Start | FaultKind::StoreStart))
            .map(|f| f.at);
        let line = match (back, restart) {
            (Some(ms), Some(r)) => format!(
                "working again {ms} ms after it ({} ms after the restart)",
                (at + ms - r).max(0)
            ),
            (Some(ms), None) => format!("working again {ms} ms after it"),
            (None, _) => "NOT working again before the attack ended".to_owned(),
        };
        out.push_str(&format!("      crash at +{} ms: {line}\n", at - start));
    }
    out
}
