// What the checkout panel shows, from the library's outcome and the saga's progress. The one
// rule: "success" only when the server said the order is confirmed.

import type { IdempotentState, Outcome, Problem } from "./oncely/index.ts";
import { ShopProblem, type CartItem, type CheckoutAnswer, type CheckoutProgress, type SagaStatus } from "./api.ts";

export type CheckoutViewState = "idle" | "processing" | "success" | "failure" | "unknown";

export interface CheckoutView {
  state: CheckoutViewState;
  title: string;
  detail?: string;
  order?: string;
  checkout?: string;
  totalCents?: number;
  /** The answer was the stored one of an earlier attempt (`Idempotent-Replayed: true`). */
  replayed?: boolean;
  /** The card was declined and the saga undid its steps. */
  compensated?: boolean;
}

export interface CheckoutInputs {
  state: IdempotentState;
  outcome: Outcome<CheckoutAnswer> | undefined;
  /** An intent of this checkout is pending in storage (not yet answered for sure). */
  hasPending: boolean;
  /** The send in flight is a re-ask of an unknown outcome (keeps "Unknown" on screen, no flicker). */
  rechecking?: boolean;
  /** The checkout the page follows after a 202, and its latest progress. */
  following?: string;
  progress?: CheckoutProgress;
}

export const TERMINAL: readonly SagaStatus[] = ["confirmed", "declined", "cancelled", "failed"];

export function isTerminal(status: SagaStatus | undefined): boolean {
  return status !== undefined && TERMINAL.includes(status);
}

function fromProgress(progress: CheckoutProgress): CheckoutView {
  const base = { checkout: progress.checkout, ...(progress.order ? { order: progress.order } : {}) };
  switch (progress.status) {
    case "confirmed":
      return { ...base, state: "success", title: "Order confirmed", detail: "Payment captured and stock reserved." };
    case "declined":
      return {
        ...base,
        state: "failure",
        title: "Your card was declined",
        detail: "Nothing was charged: stock released, order cancelled.",
        compensated: true,
      };
    case "cancelled":
      return { ...base, state: "failure", title: "The order was cancelled", detail: "Stock released, order cancelled.", compensated: true };
    case "failed":
      return { ...base, state: "failure", title: "The checkout failed", detail: "The saga stopped; see its steps for what was undone." };
    case "running":
      return {
        ...base,
        state: "processing",
        title: "Processing...",
        detail: "The payment provider is slow. Your order is accepted and we're following it.",
      };
  }
}

function fromFailure(status: number, problem: Problem | undefined): CheckoutView {
  const detail = problem?.detail;
  if (problem?.type === ShopProblem.cardDeclined || status === 402) {
    const checkout = typeof problem?.checkout === "string" ? problem.checkout : undefined;
    const order = typeof problem?.order === "string" ? problem.order : undefined;
    return {
      state: "failure",
      title: "Your card was declined",
      detail: "Nothing was charged: stock released, order cancelled. Choose another card to try again.",
      compensated: true,
      ...(checkout ? { checkout } : {}),
      ...(order ? { order } : {}),
    };
  }
  if (status === 409) {
    return { state: "failure", title: "Not enough stock", detail: detail ?? "Something in your cart sold out. Adjust the cart and try again." };
  }
  if (status === 422) {
    return { state: "failure", title: "The order was refused", detail: detail ?? "The shop could not accept this cart." };
  }
  return { state: "failure", title: "The order was refused", detail: detail ?? problem?.title ?? `The shop answered ${status}.` };
}

export function describeCheckout(inputs: CheckoutInputs): CheckoutView {
  const { state, outcome, hasPending, following, progress, rechecking } = inputs;
  if (state === "processing" && rechecking) {
    return {
      state: "unknown",
      title: "We're checking what happened",
      detail: "Asking the shop again with the same idempotency key...",
    };
  }
  if (state === "processing") {
    return { state: "processing", title: "Processing...", detail: "Placing your order. This button stays off until we know." };
  }
  // The saga's own word wins: after a 202 (or a reload while following one) only its progress
  // says how the checkout ended.
  if (following !== undefined && progress && progress.checkout === following) return fromProgress(progress);
  if (following !== undefined) {
    return { state: "processing", title: "Processing...", detail: "Your order is accepted; asking how it is going.", checkout: following };
  }
  if (state === "succeeded" && outcome?.kind === "succeeded") {
    const body = outcome.body;
    if (body && body.status === "confirmed") {
      return {
        state: "success",
        title: "Order confirmed",
        order: body.order,
        checkout: body.checkout,
        totalCents: body.total_cents,
        replayed: outcome.replayed,
        detail: outcome.replayed
          ? "An earlier attempt placed it; this is the shop's stored answer, so it was placed once."
          : "Payment captured and stock reserved.",
      };
    }
    // A 2xx that is not a confirmation (202 pending) is not a success yet.
    return {
      state: "processing",
      title: "Processing...",
      detail: "Your order is accepted; the payment provider is slow.",
      ...(body?.checkout ? { checkout: body.checkout } : {}),
    };
  }
  if (state === "failed") {
    if (outcome?.kind === "failed") return fromFailure(outcome.status, outcome.problem);
    return { state: "failure", title: "The order could not be sent", detail: "Nothing was sent to the shop." };
  }
  if (state === "unknown" || (state === "idle" && hasPending)) {
    return {
      state: "unknown",
      title: "We're checking what happened",
      detail:
        "We couldn't get a definite answer yet. We keep asking with the same idempotency key, so the order is placed at most once.",
    };
  }
  return { state: "idle", title: "Ready to place your order" };
}

/** One intent per cart contents: the same cart clicked twice is one order, another cart another. */
export function cartFingerprint(items: readonly CartItem[]): string {
  if (items.length === 0) return "empty";
  return [...items]
    .sort((a, b) => (a.product < b.product ? -1 : a.product > b.product ? 1 : 0))
    .map((item) => `${item.product}x${item.qty}`)
    .join("+");
}

export const CHECKOUT_INTENT_PREFIX = "checkout:";

export function checkoutIntentName(user: string, items: readonly CartItem[]): string {
  return `${CHECKOUT_INTENT_PREFIX}${user}:${cartFingerprint(items)}`;
}

/** Re-ask an unknown checkout after 2, 4, 8 ... up to 15 seconds. */
export function reaskDelay(round: number): number {
  return Math.min(2000 * 2 ** Math.max(0, round), 15_000);
}
