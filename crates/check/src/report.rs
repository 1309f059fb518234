//! The terminal report: one line per property, PASS or FAIL with counts, and the first
//! violations of each with their keys and operations.

use oncely_core::check::{Property, Verdict};

/// How many violations of one property the report spells out.
const SHOWN: usize = 3;

/// The report of `verdict` over `operations` operations.
pub fn text(verdict: &Verdict, operations: usize) -> String {
    let mut out = format!("oncely check: {operations} operations\n");
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
    out.push_str(if verdict.passed() {
        "verdict: every property held\n"
    } else {
        "verdict: FAILED\n"
    });
    out
}
