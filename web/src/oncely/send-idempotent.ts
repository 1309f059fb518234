import { attemptOnce } from "./attempt.ts";
import { fullJitterDelay } from "./backoff.ts";
import { defaultIntentStore, type Intent, type IntentStore } from "./intents.ts";
import type { Outcome, Unknown, UnknownReason } from "./outcome.ts";
import { sleep as realSleep } from "./sleep.ts";
import { judge, type AttemptResult } from "./verdict.ts";

export interface SendOptions {
  /** Attempts in all, the first included. Default 5. */
  maxAttempts?: number;
  /** Ceiling of the first retry's wait. Default 250 ms. */
  baseDelayMs?: number;
  /** No jittered wait is longer. Default 10 s. */
  maxDelayMs?: number;
  /** A longer `Retry-After` ends the retries at once (unknown) rather than freeze the page. Default 60 s. */
  maxRetryAfterMs?: number;
  /** Per attempt; a silent server counts as a lost answer. Default 30 s; `null` for none. */
  attemptTimeoutMs?: number | null;
  signal?: AbortSignal;
  /** Headers for this send that must not be stored with the intent, e.g. `Authorization`. */
  headers?: Record<string, string>;
  /** Where the intent is retired after a definite outcome. Default: the `sessionStorage` store. */
  store?: IntentStore;
  fetch?: typeof fetch;
  /** In [0, 1). Injected by tests; `Math.random` otherwise. */
  random?: () => number;
  /** Injected by tests to record the waits; must reject when `signal` aborts. */
  sleep?: (ms: number, signal?: AbortSignal) => Promise<void>;
  /** For `Retry-After` dates. */
  now?: () => number;
  /** Called after every attempt, before any wait. */
  onAttempt?: (event: AttemptEvent) => void;
}

export interface AttemptEvent {
  attempt: number;
  key: string;
  /** The answer's status, or undefined when the answer was lost. */
  status?: number;
  /** `retry` with the wait, or how the send ends. */
  decision: { kind: "retry"; reason: UnknownReason; delayMs: number } | { kind: "finish"; outcome: Outcome["kind"] };
}

export const sendDefaults = {
  maxAttempts: 5,
  baseDelayMs: 250,
  maxDelayMs: 10_000,
  maxRetryAfterMs: 60_000,
  attemptTimeoutMs: 30_000,
} as const;

/**
 * Sends an intent until its outcome is known or the retries run out. Every attempt carries the
 * intent's `Idempotency-Key`, so the server does the work at most once however many arrive.
 * A definite outcome retires the intent; an unknown one leaves it pending, so a later call (or
 * the page after a reload) asks again with the same key and learns what really happened.
 * Never throws.
 */
export async function sendIdempotent<T = unknown>(intent: Intent, options: SendOptions = {}): Promise<Outcome<T>> {
  const maxAttempts = Math.max(1, options.maxAttempts ?? sendDefaults.maxAttempts);
  const baseDelayMs = options.baseDelayMs ?? sendDefaults.baseDelayMs;
  const maxDelayMs = options.maxDelayMs ?? sendDefaults.maxDelayMs;
  const maxRetryAfterMs = options.maxRetryAfterMs ?? sendDefaults.maxRetryAfterMs;
  const timeout = options.attemptTimeoutMs === undefined ? sendDefaults.attemptTimeoutMs : options.attemptTimeoutMs;
  const store = options.store ?? defaultIntentStore;
  const random = options.random ?? Math.random;
  const wait = options.sleep ?? realSleep;
  const now = options.now ?? Date.now;
  const { signal } = options;
  const settings = {
    fetch: options.fetch ?? globalThis.fetch.bind(globalThis),
    headers: options.headers ?? {},
    timeoutMs: timeout ?? undefined,
    signal,
  };

  for (let attempt = 1; ; attempt++) {
    const result: AttemptResult = signal?.aborted
      ? { kind: "lost", reason: "aborted", error: signal.reason }
      : await attemptOnce(intent, settings);
    const verdict = judge(result, now());
    const status = result.kind === "answer" ? result.status : undefined;
    const finish = (outcome: Outcome<T>): Outcome<T> => {
      options.onAttempt?.({ attempt, key: intent.key, status, decision: { kind: "finish", outcome: outcome.kind } });
      return outcome;
    };

    if (verdict.kind === "succeeded" || verdict.kind === "failed") {
      store.retire(intent.name, intent.key);
      const { answer } = verdict;
      return finish(
        verdict.kind === "succeeded"
          ? {
              kind: "succeeded",
              status: answer.status,
              body: answer.body as T,
              headers: answer.headers,
              replayed: answer.headers.get("idempotent-replayed") === "true",
              attempts: attempt,
              key: intent.key,
            }
          : {
              kind: "failed",
              status: answer.status,
              ...(answer.problem ? { problem: answer.problem } : {}),
              body: answer.body,
              headers: answer.headers,
              attempts: attempt,
              key: intent.key,
            },
      );
    }

    const giveUp = (reason: UnknownReason, message: string) =>
      finish(unknownOutcome(intent, attempt, result, reason, message));
    if (!verdict.retryable) return giveUp(verdict.reason, explain(verdict.reason, result));
    if (attempt >= maxAttempts) {
      return giveUp(verdict.reason, `${explain(verdict.reason, result)}; gave up after ${attempt} attempts`);
    }
    const floor = verdict.retryAfterMs ?? 0;
    if (floor > maxRetryAfterMs) {
      return giveUp(
        "retry-after-too-long",
        `the server asked to wait ${Math.ceil(floor / 1000)} s (Retry-After), longer than ${Math.ceil(maxRetryAfterMs / 1000)} s`,
      );
    }
    // Retry-After is a floor: waiting less would only earn the same answer again.
    const delayMs = Math.max(fullJitterDelay(attempt - 1, baseDelayMs, maxDelayMs, random), floor);
    options.onAttempt?.({ attempt, key: intent.key, status, decision: { kind: "retry", reason: verdict.reason, delayMs } });
    try {
      await wait(delayMs, signal);
    } catch {
      return giveUp("aborted", "stopped by the caller while waiting to retry");
    }
  }
}

function unknownOutcome(
  intent: Intent,
  attempts: number,
  last: AttemptResult,
  reason: UnknownReason,
  message: string,
): Unknown {
  const outcome: Unknown = { kind: "unknown", reason, message, attempts, key: intent.key };
  if (last.kind === "answer") {
    outcome.lastStatus = last.status;
    if (last.problem) outcome.problem = last.problem;
  }
  return outcome;
}

function explain(reason: UnknownReason, last: AttemptResult): string {
  const status = last.kind === "answer" ? ` (${last.status})` : "";
  const error = last.kind === "lost" && last.error instanceof Error ? `: ${last.error.message}` : "";
  const words: Record<UnknownReason, string> = {
    "network-error": "the request or its answer was lost",
    "attempt-timeout": "no answer in time",
    "server-error": "the server failed",
    "request-timeout": "the server timed out reading the request",
    "rate-limited": "rate limited",
    "in-progress": "an earlier attempt with this key is still running",
    "retry-after-too-long": "the server asked to wait too long",
    aborted: "stopped by the caller",
    "unexpected-status": "an answer that is not final",
  };
  return words[reason] + status + error;
}
