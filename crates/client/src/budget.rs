//! The retry budget: a token bucket shared by every request of one client.
//!
//! Per-request limits (max attempts, deadline) do not stop a fleet from multiplying its load
//! when the upstream is sick: with 5 attempts each, a 100% failure rate means 5x the traffic
//! exactly when the server can least take it. The budget bounds retries *across* requests:
//! each new logical request deposits `ratio` tokens, each retry withdraws one, and time adds a
//! small floor (`min_per_sec`) so a client that sends rarely can still retry. The balance never
//! exceeds `burst`, so saved-up tokens cannot fund a storm either. When the bucket is empty the
//! client stops retrying and returns the last outcome with the reason.
//!
//! Pure over values: time is passed in as a `Duration` since any fixed origin.

use std::time::Duration;

/// Milli-tokens: integers keep the bucket exact under millions of deposits.
const MILLI: u64 = 1000;

/// The shape of a [`RetryBudget`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Tokens deposited by each new logical request: 0.1 lets retries add at most ~10% load.
    pub ratio: f64,
    /// Tokens added per second whatever the traffic, so a quiet client can still retry.
    pub min_per_sec: f64,
    /// The most tokens the bucket holds, and what it starts with.
    pub burst: f64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        Self {
            ratio: 0.1,
            min_per_sec: 1.0,
            burst: 10.0,
        }
    }
}

impl BudgetConfig {
    /// A budget that never refuses a retry (for tests and for callers with their own limiter).
    pub fn unlimited() -> Self {
        Self {
            ratio: 0.0,
            min_per_sec: 0.0,
            burst: f64::INFINITY,
        }
    }
}

/// Converts a configured amount of tokens to milli-tokens; negative and NaN mean zero, infinity
/// saturates, so no configuration can panic or wrap.
fn to_milli(tokens: f64) -> u64 {
    if tokens.is_nan() || tokens <= 0.0 {
        0
    } else {
        // `as` saturates for floats, which is the intent for infinity.
        (tokens * MILLI as f64).round() as u64
    }
}

/// A token bucket of retries.
#[derive(Debug, Clone)]
pub struct RetryBudget {
    balance: u64,
    cap: u64,
    deposit: u64,
    refill_per_sec: u64,
    last_refill: Duration,
}

impl RetryBudget {
    /// A full bucket at time `now`: a fresh client may retry its first few failures.
    pub fn new(config: BudgetConfig, now: Duration) -> Self {
        let cap = to_milli(config.burst);
        Self {
            balance: cap,
            cap,
            deposit: to_milli(config.ratio),
            refill_per_sec: to_milli(config.min_per_sec),
            last_refill: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let elapsed = now.saturating_sub(self.last_refill);
        let added =
            u128::from(self.refill_per_sec).saturating_mul(elapsed.as_nanos()) / 1_000_000_000;
        // Only move the clock when something was added, so frequent calls do not round the
        // floor down to nothing.
        if added > 0 {
            let added = u64::try_from(added).unwrap_or(u64::MAX);
            self.balance = self.balance.saturating_add(added).min(self.cap);
            self.last_refill = now;
        } else if self.refill_per_sec == 0 {
            self.last_refill = now;
        }
    }

    /// Records a new logical request (not a retry).
    pub fn deposit(&mut self, now: Duration) {
        self.refill(now);
        self.balance = self.balance.saturating_add(self.deposit).min(self.cap);
    }

    /// Takes one token for a retry; `false` means the budget is spent and the caller must not
    /// retry.
    pub fn try_withdraw(&mut self, now: Duration) -> bool {
        self.refill(now);
        if self.balance >= MILLI {
            self.balance -= MILLI;
            true
        } else {
            false
        }
    }

    /// The tokens available at `now` (whole retries, with fractions).
    pub fn available(&mut self, now: Duration) -> f64 {
        self.refill(now);
        self.balance as f64 / MILLI as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T0: Duration = Duration::ZERO;

    #[test]
    fn starts_full_and_empties() {
        let mut b = RetryBudget::new(
            BudgetConfig {
                ratio: 0.0,
                min_per_sec: 0.0,
                burst: 3.0,
            },
            T0,
        );
        assert!(b.try_withdraw(T0));
        assert!(b.try_withdraw(T0));
        assert!(b.try_withdraw(T0));
        assert!(!b.try_withdraw(T0));
        assert!(!b.try_withdraw(Duration::from_secs(3600)));
    }

    #[test]
    fn requests_fund_a_tenth_of_retries() {
        let mut b = RetryBudget::new(
            BudgetConfig {
                ratio: 0.1,
                min_per_sec: 0.0,
                burst: 5.0,
            },
            T0,
        );
        while b.try_withdraw(T0) {}
        // 1000 requests that all fail: only 100 retries are allowed.
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit(T0);
            if b.try_withdraw(T0) {
                retries += 1;
            }
        }
        assert_eq!(retries, 100);
    }

    #[test]
    fn the_floor_refills_over_time_up_to_burst() {
        let mut b = RetryBudget::new(
            BudgetConfig {
                ratio: 0.0,
                min_per_sec: 2.0,
                burst: 4.0,
            },
            T0,
        );
        while b.try_withdraw(T0) {}
        assert!(!b.try_withdraw(Duration::from_millis(400)));
        assert!(b.try_withdraw(Duration::from_millis(500)));
        assert!(!b.try_withdraw(Duration::from_millis(500)));
        // Much later the bucket is full, never more.
        assert_eq!(b.available(Duration::from_secs(100)), 4.0);
    }

    #[test]
    fn frequent_calls_do_not_lose_the_floor() {
        let mut b = RetryBudget::new(
            BudgetConfig {
                ratio: 0.0,
                min_per_sec: 1.0,
                burst: 1.0,
            },
            T0,
        );
        assert!(b.try_withdraw(T0));
        // Polled every 100 µs for one second, the floor still adds a whole token.
        let mut ok = false;
        for i in 1..=10_000u64 {
            ok |= b.try_withdraw(Duration::from_micros(i * 100));
        }
        assert!(ok);
    }

    #[test]
    fn unlimited_never_refuses() {
        let mut b = RetryBudget::new(BudgetConfig::unlimited(), T0);
        for _ in 0..100_000 {
            assert!(b.try_withdraw(T0));
        }
    }

    proptest! {
        /// Over any sequence of requests and retries, granted retries never exceed the initial
        /// burst plus `ratio` per request plus the floor over the elapsed time.
        #[test]
        fn retries_are_bounded(ops in proptest::collection::vec((any::<bool>(), 0u64..50), 1..500),
                               ratio in 0.0f64..1.0, floor in 0.0f64..5.0, burst in 0.0f64..20.0) {
            let cfg = BudgetConfig { ratio, min_per_sec: floor, burst };
            let mut b = RetryBudget::new(cfg, T0);
            let (mut now, mut requests, mut granted) = (0u64, 0u64, 0u64);
            for (is_request, step_ms) in ops {
                now += step_ms;
                let t = Duration::from_millis(now);
                if is_request { b.deposit(t); requests += 1 } else if b.try_withdraw(t) { granted += 1 }
            }
            // The bucket works in rounded milli-tokens; bound it with the same rounding.
            let m = |x: f64| to_milli(x) as f64 / MILLI as f64;
            let bound = m(burst) + m(ratio) * requests as f64 + m(floor) * now as f64 / 1000.0 + 1e-6;
            prop_assert!(granted as f64 <= bound, "granted {} > bound {}", granted, bound);
            prop_assert!(b.available(Duration::from_millis(now)) <= m(burst) + 1e-9);
        }

        #[test]
        fn any_config_is_safe(ratio: f64, floor: f64, burst: f64, t1: u64, t2: u64) {
            let mut b = RetryBudget::new(BudgetConfig { ratio, min_per_sec: floor, burst }, Duration::from_nanos(t1));
            b.deposit(Duration::from_nanos(t2));
            let _ = b.try_withdraw(Duration::from_nanos(t1 / 2));
            let _ = b.available(Duration::MAX);
        }
    }
}
