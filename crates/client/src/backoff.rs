//! Exponential backoff with full jitter.
//!
//! Full jitter draws every delay uniformly from `[0, min(cap, base * 2^n)]`. Plain doubling keeps
//! clients that failed together in lock step, so each retry wave hits the server at the same
//! instant; "equal" or "decorrelated" jitter keep a deterministic floor that still lines clients
//! up. Drawing from zero spreads a herd over the whole window, which is what lets a recovering
//! server serve it (see `docs/retry-client.md` and the simulation in [`crate::sim`]).

use std::time::Duration;

use rand::Rng;

/// The backoff schedule: `base * 2^n`, capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub base: Duration,
    /// No wait is ever longer than this.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// A schedule with the given base and cap.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self { base, cap }
    }

    /// `min(cap, base * 2^retry)`, where `retry` counts from 0 for the wait after the first
    /// failed attempt.
    pub fn ceiling(&self, retry: u32) -> Duration {
        // Saturate instead of overflowing: a long retry loop must stay at the cap, not wrap to a
        // tiny delay.
        let doubled = 1u32
            .checked_shl(retry)
            .and_then(|factor| self.base.checked_mul(factor))
            .unwrap_or(Duration::MAX);
        doubled.min(self.cap)
    }

    /// Fixed doubling, no randomness: the schedule that makes thundering herds. Kept for the
    /// simulation that shows why it is not used.
    pub fn fixed(&self, retry: u32) -> Duration {
        self.ceiling(retry)
    }

    /// A full-jitter delay: uniform in `[0, ceiling(retry)]` at microsecond resolution.
    pub fn full_jitter<R: Rng + ?Sized>(&self, retry: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(retry);
        // Microseconds are fine enough for millisecond bases, and a u64 of them spans 584k years,
        // so the conversion only saturates for absurd caps.
        let max = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(rng.random_range(0..=max))
    }

    /// Full jitter that must end before `limit` (the time left before a deadline): uniform in
    /// `[0, ceiling(retry)]` when the whole window fits, otherwise uniform in `[0, limit)`. A wait
    /// that fits is always drawn, rather than a longer one that would have to be refused.
    pub fn full_jitter_below<R: Rng + ?Sized>(
        &self,
        retry: u32,
        limit: Duration,
        rng: &mut R,
    ) -> Duration {
        if self.ceiling(retry) < limit {
            return self.full_jitter(retry, rng);
        }
        let max = u64::try_from(limit.as_micros()).unwrap_or(u64::MAX);
        if max == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(rng.random_range(0..max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn ceiling_doubles_then_caps() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        let got: Vec<u128> = (0..6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_millis(1000));
        assert_eq!(b.fixed(2), Duration::from_millis(400));
    }

    /// The delays must be uniform on `[0, ceiling]`. The RNG is seeded, so this test is
    /// deterministic; the tolerances are also wide enough (more than 6 standard errors for the
    /// mean and quantiles, about 3 times the 99.9% Kolmogorov-Smirnov critical value) that any
    /// seed passes, so a change of seed or of the rand crate cannot make it flake.
    #[test]
    fn full_jitter_is_uniform_on_zero_to_ceiling() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(2000));
        for seed in [1u64, 7, 42] {
            let mut rng = StdRng::seed_from_u64(seed);
            for retry in [0u32, 3, 10] {
                let ceiling = b.ceiling(retry).as_secs_f64();
                let n = 20_000usize;
                let mut xs: Vec<f64> = (0..n)
                    .map(|_| b.full_jitter(retry, &mut rng).as_secs_f64() / ceiling)
                    .collect();
                assert!(xs.iter().all(|x| (0.0..=1.0).contains(x)));
                xs.sort_by(f64::total_cmp);
                let mean = xs.iter().sum::<f64>() / n as f64;
                // Uniform(0,1): mean 1/2, sd 1/sqrt(12); standard error 0.00204 at n = 20000.
                assert!((mean - 0.5).abs() < 0.015, "mean {mean}");
                for q in [0.1, 0.25, 0.5, 0.75, 0.9] {
                    let got = xs[(q * n as f64) as usize];
                    assert!((got - q).abs() < 0.025, "quantile {q}: {got}");
                }
                // Kolmogorov-Smirnov distance to the uniform CDF.
                let ks = xs
                    .iter()
                    .enumerate()
                    .map(|(i, x)| {
                        let lo = i as f64 / n as f64;
                        let hi = (i + 1) as f64 / n as f64;
                        (x - lo).abs().max((hi - x).abs())
                    })
                    .fold(0.0, f64::max);
                assert!(ks < 0.04, "ks {ks}");
                // Full jitter reaches both ends: delays near zero and near the ceiling occur.
                assert!(xs[0] < 0.01 && xs[n - 1] > 0.99);
            }
        }
    }

    #[test]
    fn same_seed_same_delays() {
        let b = Backoff::default();
        let mut r1 = StdRng::seed_from_u64(9);
        let mut r2 = StdRng::seed_from_u64(9);
        for n in 0..20 {
            assert_eq!(b.full_jitter(n, &mut r1), b.full_jitter(n, &mut r2));
        }
    }

    /// When the time left is shorter than the ceiling, the wait is uniform over what is left.
    #[test]
    fn jitter_below_a_limit_is_uniform_below_it() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        let limit = Duration::from_millis(300);
        let mut rng = StdRng::seed_from_u64(5);
        let n = 20_000usize;
        let mut xs: Vec<f64> = (0..n)
            .map(|_| b.full_jitter_below(5, limit, &mut rng).as_secs_f64() / 0.3)
            .collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        xs.sort_by(f64::total_cmp);
        let mean = xs.iter().sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.015, "mean {mean}");
        for q in [0.1, 0.5, 0.9] {
            let got = xs[(q * n as f64) as usize];
            assert!((got - q).abs() < 0.025, "quantile {q}: {got}");
        }
        // A limit above the ceiling changes nothing: the same draws as plain full jitter.
        let (mut r1, mut r2) = (StdRng::seed_from_u64(3), StdRng::seed_from_u64(3));
        for retry in 0..5 {
            assert_eq!(
                b.full_jitter_below(retry, Duration::from_secs(60), &mut r1),
                b.full_jitter(retry, &mut r2)
            );
        }
        assert_eq!(
            b.full_jitter_below(0, Duration::from_nanos(1), &mut rng),
            Duration::ZERO
        );
    }

    proptest! {
        #[test]
        fn jitter_never_exceeds_ceiling(base_ms in 0u64..10_000, cap_ms in 0u64..100_000, retry in 0u32..200, seed: u64) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            let mut rng = StdRng::seed_from_u64(seed);
            let d = b.full_jitter(retry, &mut rng);
            prop_assert!(d <= b.ceiling(retry));
            prop_assert!(b.ceiling(retry) <= b.cap);
            prop_assert!(b.ceiling(retry) <= b.ceiling(retry.saturating_add(1)));
        }

        #[test]
        fn jitter_below_stays_below(base_ms in 0u64..10_000, retry in 0u32..20, limit_us in 1u64..20_000_000, seed: u64) {
            let b = Backoff::new(Duration::from_millis(base_ms), Duration::from_secs(30));
            let limit = Duration::from_micros(limit_us);
            let mut rng = StdRng::seed_from_u64(seed);
            let d = b.full_jitter_below(retry, limit, &mut rng);
            prop_assert!(d < limit);
            prop_assert!(d <= b.ceiling(retry));
        }
    }
}
