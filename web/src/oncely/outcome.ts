import type { Problem } from "./problem.ts";

/** The server confirmed the intent (2xx). Only this outcome may be shown as success. */
export interface Succeeded<T = unknown> {
  kind: "succeeded";
  status: number;
  body: T;
  headers: Headers;
  /** The gateway answered from its store (`Idempotent-Replayed: true`): an earlier attempt did it. */
  replayed: boolean;
  attempts: number;
  key: string;
}

/** The server refused the intent for good (a 4xx that retrying cannot change). Nothing happened. */
export interface Failed {
  kind: "failed";
  status: number;
  /** The RFC 9457 body, when the answer was `application/problem+json`. */
  problem?: Problem;
  body: unknown;
  headers: Headers;
  attempts: number;
  key: string;
}

/**
 * Why the result is not known. Each of these may hide an intent that was carried out, so the
 * intent stays pending and its key is kept for the next try.
 */
export type UnknownReason =
  /** `fetch` threw: the request, or its answer, was lost on the way. */
  | "network-error"
  /** No answer within the attempt's time limit. */
  | "attempt-timeout"
  /** A 5xx: the server or a proxy failed, perhaps after the work was done. */
  | "server-error"
  /** 408: the server gave up reading the request. */
  | "request-timeout"
  /** 429: asked to slow down. */
  | "rate-limited"
  /** 409 `request-in-progress`: an earlier attempt with this key is still running. */
  | "in-progress"
  /** The server asked to wait longer than `maxRetryAfterMs`. */
  | "retry-after-too-long"
  /** The caller's signal stopped the retries. */
  | "aborted"
  /** A status that is not a final answer (1xx, 3xx), so not one the gateway would keep. */
  | "unexpected-status";

/** Retrying stopped while the result is unknown. The intent is still pending. */
export interface Unknown {
  kind: "unknown";
  reason: UnknownReason;
  /** The status of the last answer, if the last attempt got one. */
  lastStatus?: number;
  /** The last problem body, if any (e.g. the gateway's `upstream-timeout`). */
  problem?: Problem;
  message: string;
  attempts: number;
  key: string;
}

export type Outcome<T = unknown> = Succeeded<T> | Failed | Unknown;

/** Definite outcomes end an intent; an unknown one never does. */
export function isDefinite<T>(outcome: Outcome<T>): outcome is Succeeded<T> | Failed {
  return outcome.kind !== "unknown";
}
