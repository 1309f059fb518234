/**
 * Full-jitter backoff: the wait before retry `n` (0 for the first retry) is drawn uniformly from
 * `[0, min(cap, base * 2^n)]`. Drawing from zero spreads clients that failed together over the
 * whole window, so their retries do not land on a recovering server at the same instant.
 */
export function backoffCeiling(retry: number, baseMs: number, capMs: number): number {
  const ceiling = baseMs * 2 ** Math.max(0, retry);
  // 2^n overflows to Infinity for large n; the cap is the answer then.
  return Number.isFinite(ceiling) ? Math.min(capMs, ceiling) : capMs;
}

/** `random` returns values in [0, 1), like `Math.random`; anything else is clamped. */
export function fullJitterDelay(
  retry: number,
  baseMs: number,
  capMs: number,
  random: () => number,
): number {
  const r = random();
  const unit = Number.isNaN(r) ? 0 : Math.min(1, Math.max(0, r));
  return Math.floor(unit * backoffCeiling(retry, baseMs, capMs));
}
