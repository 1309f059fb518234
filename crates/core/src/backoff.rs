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
