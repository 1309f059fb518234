import { ProblemType, type Problem } from "./problem.ts";
import { parseRetryAfter } from "./retry-after.ts";
import type { UnknownReason } from "./outcome.ts";

/** What one attempt produced, before any decision. */
export type AttemptResult = Answer | { kind: "lost"; reason: "network-error" | "attempt-timeout" | "aborted"; error: unknown };

export interface Answer {
  kind: "answer";
  status: number;
  headers: Headers;
  body: unknown;
  problem?: Problem;
}

export type Verdict =
  | { kind: "succeeded"; answer: Answer }
  | { kind: "failed"; answer: Answer }
  | { kind: "unknown"; reason: UnknownReason; retryable: boolean; retryAfterMs?: number };

/**
 * Which answers are worth another attempt with the same key. Retried: lost requests, 5xx, 408,
 * 429, and the gateway's 409 `request-in-progress` (the first attempt is still running; a retry
 * gets its replay). Never retried: any other 4xx, which would be refused the same way again,
 * including an application's own 409 conflict.
 */
export function judge(result: AttemptResult, nowMs: number): Verdict {
  if (result.kind === "lost") {
    return { kind: "unknown", reason: result.reason, retryable: result.reason !== "aborted" };
  }
  const { status } = result;
  if (status >= 200 && status < 300) return { kind: "succeeded", answer: result };
  const retryAfterMs = parseRetryAfter(result.headers.get("retry-after"), nowMs);
  const retry = (reason: UnknownReason): Verdict =>
    retryAfterMs === undefined
      ? { kind: "unknown", reason, retryable: true }
      : { kind: "unknown", reason, retryable: true, retryAfterMs };
  if (status === 408) return retry("request-timeout");
  if (status === 429) return retry("rate-limited");
  if (status === 409 && isInProgress(result.body)) return retry("in-progress");
  if (status >= 400 && status < 500) return { kind: "failed", answer: result };
  if (status >= 500 && status < 600) return retry("server-error");
  return { kind: "unknown", reason: "unexpected-status", retryable: false };
}

/** The gateway's in-progress answer, recognised by its exact problem type only. */
function isInProgress(body: unknown): boolean {
  return (
    typeof body === "object" &&
    body !== null &&
    (body as { type?: unknown }).type === ProblemType.requestInProgress
  );
}
