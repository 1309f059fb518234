//! Full-jitter exponential backoff for the outbox relay and sagas: waits spread out, so that
//! many failures do not retry in step. (The retry client's `Backoff` follows the same rule
//! with its own random source.)

use std::time::Duration;

/// The wait before retry number `retry` (1 for the first retry): full jitter, uniform in
/// `[0, min(cap, base * 2^(retry - 1))]`, `unit` being a uniform sample in `[0, 1)`.
pub fn full_jitter(retry: u32, base: Duration, cap: Duration, unit: f64) -> Duration {
    let exp = retry.saturating_sub(1).min(31);
    let ceiling = base.checked_mul(1u32 << exp).unwrap_or(cap).min(cap);
    ceiling.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn backoff_stays_within_its_ceiling(attempt in 0u32..200, unit in 0.0f64..1.0) {
            let base = Duration::from_millis(500);
            let cap = Duration::from_secs(300);
            let d = full_jitter(attempt, base, cap, unit);
            prop_assert!(d <= cap);
            let ceiling = base.saturating_mul(1 << attempt.saturating_sub(1).min(20)).min(cap);
            prop_assert!(d <= ceiling);
        }
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(1);
        let top = |a| full_jitter(a, base, cap, 0.999_999);
        assert!(top(1) <= base && top(1) > base * 9 / 10);
        assert!(top(2) > base * 19 / 10 && top(2) <= base * 2);
        assert!(top(10) <= cap && top(10) > cap * 9 / 10);
        assert_eq!(full_jitter(3, base, cap, 0.0), Duration::ZERO);
    }
}
