import { describe, expect, it } from "vitest";
import { backoffCeiling, fullJitterDelay } from "../backoff.ts";
import { parseRetryAfter } from "../retry-after.ts";
import { seededRandom } from "./support/helpers.ts";

describe("full jitter", () => {
  it("stays within [0, min(cap, base * 2^n)] for many random values, bases, caps and retries", () => {
    const random = seededRandom(0x5eed);
    for (let i = 0; i < 20_000; i++) {
      const base = 1 + Math.floor(random() * 1000);
      const cap = base + Math.floor(random() * 60_000);
      const retry = Math.floor(random() * 1100); // past 2^1024, where doubles overflow
      const r = random();
      const ceiling = backoffCeiling(retry, base, cap);
      const delay = fullJitterDelay(retry, base, cap, () => r);

      expect(ceiling).toBe(Math.min(cap, base * 2 ** retry));
      expect(ceiling).toBeLessThanOrEqual(cap);
      expect(delay).toBeGreaterThanOrEqual(0);
      expect(delay).toBeLessThanOrEqual(ceiling);
      expect(delay).toBe(Math.floor(r * ceiling));
    }
  });

  it("reaches both ends of the window: zero and (almost) the ceiling", () => {
    expect(fullJitterDelay(3, 100, 10_000, () => 0)).toBe(0);
    expect(fullJitterDelay(3, 100, 10_000, () => 0.999_999)).toBe(799);
    // A random source that misbehaves is clamped, never stretches the window.
    expect(fullJitterDelay(3, 100, 10_000, () => 7)).toBe(800);
    expect(fullJitterDelay(3, 100, 10_000, () => -1)).toBe(0);
    expect(fullJitterDelay(3, 100, 10_000, () => Number.NaN)).toBe(0);
  });

  it("is uniform over the window, not bunched near a floor (mean and quartiles)", () => {
    const random = seededRandom(42);
    const ceiling = backoffCeiling(4, 100, 60_000); // 1600 ms
    const delays = Array.from({ length: 20_000 }, () => fullJitterDelay(4, 100, 60_000, random)).sort((a, b) => a - b);
    const mean = delays.reduce((sum, d) => sum + d, 0) / delays.length;

    expect(Math.abs(mean / ceiling - 0.5)).toBeLessThan(0.015);
    for (const q of [0.1, 0.25, 0.5, 0.75, 0.9]) {
      const observed = delays[Math.floor(q * delays.length)]! / ceiling;
      expect(Math.abs(observed - q)).toBeLessThan(0.025);
    }
  });

  it("saturates at the cap instead of overflowing", () => {
    expect(backoffCeiling(10_000, 100, 5_000)).toBe(5_000);
    expect(backoffCeiling(0, 100, 5_000)).toBe(100);
    expect(backoffCeiling(-3, 100, 5_000)).toBe(100);
  });
});

describe("Retry-After", () => {
  const now = Date.parse("2026-12-03T06:42:28Z");

  it("reads delay-seconds", () => {
    expect(parseRetryAfter("0", now)).toBe(0);
    expect(parseRetryAfter("120", now)).toBe(120_000);
    expect(parseRetryAfter(" 5 ", now)).toBe(5_000);
  });

  it("reads an HTTP-date; a past one means now", () => {
    expect(parseRetryAfter("Thu, 03 Dec 2026 06:43:28 GMT", now)).toBe(60_000);
    expect(parseRetryAfter("Thu, 03 Dec 2026 06:40:00 GMT", now)).toBe(0);
  });

  it("ignores what it cannot read", () => {
    for (const value of [null, undefined, "", "-1", "1.5", "soon", "+3"]) {
      expect(parseRetryAfter(value, now)).toBeUndefined();
    }
  });
});
