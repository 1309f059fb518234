import { defaultIntentStore, type IntentStore, type RequestSpec } from "./intents.ts";
import type { Outcome } from "./outcome.ts";
import type { SendOptions } from "./send-idempotent.ts";
import { sendShared } from "./shared-send.ts";

/** What the mutation is asked to do: start (or continue) the intent, or resume a pending one. */
export type IntentCommand<TVars> = { kind: "submit"; vars: TVars } | { kind: "resume" };

export interface IntentRunnerConfig<TVars> {
  /** The intent's name, e.g. `place-order:${cartId}`. One pending intent per name. */
  intent: string;
  /** Builds the request from the submitted variables. Not called on resume. */
  request: (vars: TVars) => RequestSpec;
  store?: IntentStore;
  send?: SendOptions;
}

/**
 * The mutation function behind `useIdempotentMutation`, free of React so it can be tested and
 * used with a bare `MutationObserver`. Resolves to the outcome, or to `null` when asked to
 * resume and nothing is pending. Definite failures are data, not errors: a 422 is an answer.
 */
export function createIntentRunner<TVars, TData = unknown>(
  config: IntentRunnerConfig<TVars>,
): (command: IntentCommand<TVars>) => Promise<Outcome<TData> | null> {
  const store = config.store ?? defaultIntentStore;
  return async (command) => {
    // A pending intent wins over the new variables: it may already have been carried out, and
    // only its own request with its own key can find out.
    const intent =
      command.kind === "submit"
        ? (store.pending(config.intent) ?? store.start(config.intent, config.request(command.vars)))
        : store.pending(config.intent);
    if (!intent) return null;
    return sendShared<TData>(intent, { ...config.send, store });
  };
}

export type IdempotentState = "idle" | "processing" | "succeeded" | "failed" | "unknown";

/**
 * The UI state from TanStack Query's mutation status and the outcome. An error (the request
 * builder threw, so nothing was sent) is a failure; success is only ever a server's 2xx.
 */
export function idempotentState(
  status: "idle" | "pending" | "success" | "error",
  outcome: Outcome | null | undefined,
): IdempotentState {
  switch (status) {
    case "idle":
      return "idle";
    case "pending":
      return "processing";
    case "error":
      return "failed";
    case "success":
      return outcome ? outcome.kind : "idle";
  }
}
