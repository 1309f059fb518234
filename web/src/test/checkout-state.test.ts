import { describe, expect, it } from "vitest";
import type { Outcome } from "../oncely/index.ts";
import type { CheckoutAnswer, CheckoutProgress } from "../api.ts";
import { cartFingerprint, checkoutIntentName, describeCheckout, reaskDelay } from "../checkout-state.ts";

const headers = new Headers();

function succeeded(body: CheckoutAnswer, status = 201, replayed = false): Outcome<CheckoutAnswer> {
  return { kind: "succeeded", status, body, headers, replayed, attempts: 1, key: "k" };
}

function progress(status: CheckoutProgress["status"]): CheckoutProgress {
  return { checkout: "ck_1", order: "ord_1", status, steps: [], updated_at: "2026-01-01T00:00:00Z" };
}

describe("describeCheckout", () => {
  it("says success only for a confirmed order", () => {
    const view = describeCheckout({
      state: "succeeded",
      outcome: succeeded({ checkout: "ck_1", order: "ord_1", status: "confirmed", total_cents: 900 }),
      hasPending: false,
    });
    expect(view).toMatchObject({ state: "success", order: "ord_1", totalCents: 900, replayed: false });
  });

  it("marks a replayed confirmation as the stored answer, still one order", () => {
    const view = describeCheckout({
      state: "succeeded",
      outcome: succeeded({ checkout: "ck_1", order: "ord_1", status: "confirmed", total_cents: 900 }, 201, true),
      hasPending: false,
    });
    expect(view.state).toBe("success");
    expect(view.replayed).toBe(true);
  });

  it("treats a 202 as processing, never as success", () => {
    const view = describeCheckout({
      state: "succeeded",
      outcome: succeeded({ checkout: "ck_1", status: "pending" }, 202),
      hasPending: false,
    });
    expect(view.state).toBe("processing");
  });

  it("follows the saga after a 202 until it ends", () => {
    const outcome = succeeded({ checkout: "ck_1", status: "pending" }, 202);
    const base = { state: "succeeded" as const, outcome, hasPending: false, following: "ck_1" };
    expect(describeCheckout(base).state).toBe("processing");
    expect(describeCheckout({ ...base, progress: progress("running") }).state).toBe("processing");
    expect(describeCheckout({ ...base, progress: progress("confirmed") }).state).toBe("success");
    expect(describeCheckout({ ...base, progress: progress("declined") })).toMatchObject({ state: "failure", compensated: true });
    // Progress of another checkout says nothing about this one.
    expect(describeCheckout({ ...base, progress: { ...progress("confirmed"), checkout: "ck_2" } }).state).toBe("processing");
  });

  it("turns a declined card into a failure that names the compensation", () => {
    const view = describeCheckout({
      state: "failed",
      outcome: {
        kind: "failed",
        status: 402,
        problem: { type: "urn:oncely:shop:card-declined", checkout: "ck_9", order: "ord_9" },
        body: null,
        headers,
        attempts: 1,
        key: "k",
      },
      hasPending: false,
    });
    expect(view).toMatchObject({ state: "failure", checkout: "ck_9", order: "ord_9", compensated: true });
    expect(view.detail).toContain("stock released, order cancelled");
  });

  it("is unknown while an answer is missing, or a pending intent waits before the resume", () => {
    const unknown = describeCheckout({
      state: "unknown",
      outcome: { kind: "unknown", reason: "server-error", message: "the server failed (503)", attempts: 5, key: "k" },
      hasPending: true,
    });
    expect(unknown.state).toBe("unknown");
    expect(unknown.title).toBe("We're checking what happened");
    expect(describeCheckout({ state: "idle", outcome: undefined, hasPending: true }).state).toBe("unknown");
    expect(describeCheckout({ state: "idle", outcome: undefined, hasPending: false }).state).toBe("idle");
  });

  it("is processing while a send is in flight, but stays unknown while re-asking an unknown one", () => {
    expect(describeCheckout({ state: "processing", outcome: undefined, hasPending: true }).state).toBe("processing");
    const view = describeCheckout({ state: "processing", outcome: undefined, hasPending: true, rechecking: true });
    expect(view.state).toBe("unknown");
    expect(view.title).toBe("We're checking what happened");
  });
});

describe("checkout intents", () => {
  it("names one intent per cart contents, whatever the order of the lines", () => {
    const a = [
      { product: "tea", qty: 2 },
      { product: "coffee", qty: 1 },
    ];
    const b = [
      { product: "coffee", qty: 1 },
      { product: "tea", qty: 2 },
    ];
    expect(cartFingerprint(a)).toBe(cartFingerprint(b));
    expect(cartFingerprint(a)).not.toBe(cartFingerprint([{ product: "tea", qty: 3 }, { product: "coffee", qty: 1 }]));
    expect(checkoutIntentName("ada", a)).toBe("checkout:ada:coffeex1+teax2");
    expect(cartFingerprint([])).toBe("empty");
  });

  it("re-asks an unknown checkout with growing, bounded pauses", () => {
    expect([0, 1, 2, 3, 9].map(reaskDelay)).toEqual([2000, 4000, 8000, 15000, 15000]);
  });
});
