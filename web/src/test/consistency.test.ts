import { describe, expect, it } from "vitest";
import { isBehind, laterToken, parsePosition, readConsistency, resyncDelay } from "../consistency.ts";

const headers = (entries: Record<string, string>) => new Headers(entries);

describe("consistency headers", () => {
  it("reads X-Consistency and X-Read-Model-Position", () => {
    expect(readConsistency(headers({ "x-consistency": "fresh", "x-read-model-position": "42" }))).toEqual({
      consistency: "fresh",
      position: 42,
    });
    expect(readConsistency(headers({ "X-Consistency": " Stale " }))).toEqual({ consistency: "stale" });
    expect(readConsistency(headers({ "x-consistency": "eventual" }))).toEqual({ consistency: "eventual" });
    expect(readConsistency(headers({}))).toEqual({ consistency: "unknown" });
    expect(readConsistency(headers({ "x-consistency": "sometimes" })).consistency).toBe("unknown");
  });

  it("accepts only non-negative integers as positions", () => {
    expect(parsePosition("7")).toBe(7);
    expect(parsePosition(" 7 ")).toBe(7);
    expect(parsePosition("-1")).toBeUndefined();
    expect(parsePosition("1.5")).toBeUndefined();
    expect(parsePosition("abc")).toBeUndefined();
    expect(parsePosition("99999999999999999999")).toBeUndefined();
    expect(parsePosition(null)).toBeUndefined();
  });

  it("keeps the later token", () => {
    expect(laterToken(undefined, 3)).toBe(3);
    expect(laterToken(5, undefined)).toBe(5);
    expect(laterToken(5, 3)).toBe(5);
    expect(laterToken(undefined, undefined)).toBeUndefined();
  });

  it("is behind while the server says stale or its position is below the token", () => {
    expect(isBehind({ consistency: "stale", position: 3 }, 5)).toBe(true);
    expect(isBehind({ consistency: "fresh", position: 5 }, 5)).toBe(false);
    expect(isBehind({ consistency: "eventual", position: 4 }, 5)).toBe(true);
    expect(isBehind({ consistency: "eventual", position: 9 }, 5)).toBe(false);
    // Without a token of our own there is nothing to wait for.
    expect(isBehind({ consistency: "stale" }, undefined)).toBe(false);
    expect(isBehind({ consistency: "unknown" }, 5)).toBe(false);
  });

  it("re-reads quickly at first, then calmly", () => {
    expect([0, 1, 2, 3, 10].map(resyncDelay)).toEqual([500, 1000, 2000, 4000, 4000]);
  });
});
