import { describe, expect, it } from "vitest";
import { firstName, formatDuration, formatMoney, humanize, relativeTime, shortId } from "../format.ts";

const NOW = Date.parse("2026-03-10T12:00:00Z");
const ago = (ms: number) => new Date(NOW - ms);

describe("relativeTime", () => {
  it("says just now for the last 45 seconds, and for small clock differences ahead", () => {
    expect(relativeTime(ago(0), NOW)).toBe("just now");
    expect(relativeTime(ago(44_000), NOW)).toBe("just now");
    expect(relativeTime(ago(-20_000), NOW)).toBe("just now");
  });

  it("counts minutes, hours and days with the right plural", () => {
    expect(relativeTime(ago(60_000), NOW)).toBe("1 minute ago");
    expect(relativeTime(ago(2 * 60_000), NOW)).toBe("2 minutes ago");
    expect(relativeTime(ago(59 * 60_000), NOW)).toBe("59 minutes ago");
    expect(relativeTime(ago(60 * 60_000), NOW)).toBe("1 hour ago");
    expect(relativeTime(ago(5 * 3600_000), NOW)).toBe("5 hours ago");
    expect(relativeTime(ago(30 * 3600_000), NOW)).toBe("yesterday");
    expect(relativeTime(ago(3 * 86_400_000), NOW)).toBe("3 days ago");
  });

  it("takes ISO strings and epoch milliseconds, and speaks of the future", () => {
    expect(relativeTime("2026-03-10T11:58:00Z", NOW)).toBe("2 minutes ago");
    expect(relativeTime(NOW - 120_000, NOW)).toBe("2 minutes ago");
    expect(relativeTime(ago(-10 * 60_000), NOW)).toBe("in 10 minutes");
  });

  it("shows a date beyond a month, and copes with nonsense", () => {
    expect(relativeTime(ago(90 * 86_400_000), NOW)).toMatch(/^on \d+ \w+ \d{4}$/);
    expect(relativeTime("not a date", NOW)).toBe("at an unknown time");
  });
});

describe("formatting", () => {
  it("formats cents as euros", () => {
    expect(formatMoney(450)).toBe("€4.50");
    expect(formatMoney(123456)).toBe("€1,234.56");
    expect(formatMoney(Number.NaN)).toBe("€0.00");
  });

  it("formats durations", () => {
    expect(formatDuration(850)).toBe("850 ms");
    expect(formatDuration(4200)).toBe("4.2 s");
    expect(formatDuration(185_000)).toBe("3 min 5 s");
    expect(formatDuration(-1)).toBe("—");
  });

  it("shortens ids, names and step names", () => {
    expect(shortId("3f2a9c1e-aaaa-bbbb")).toBe("3f2a9c1e…");
    expect(shortId("short")).toBe("short");
    expect(firstName("Ada Lovelace")).toBe("Ada");
    expect(humanize("reserve_stock")).toBe("Reserve stock");
    expect(humanize("order.cancelled")).toBe("Order cancelled");
  });
});
