import type { Intent } from "./intents.ts";
import { readBody } from "./problem.ts";
import type { AttemptResult } from "./verdict.ts";

export interface AttemptSettings {
  fetch: typeof fetch;
  /** Headers added to this send only, never stored with the intent (credentials go here). */
  headers: Record<string, string>;
  timeoutMs: number | undefined;
  signal: AbortSignal | undefined;
}

/** One request with the intent's key. Never throws: every failure is a result. */
export async function attemptOnce(intent: Intent, settings: AttemptSettings): Promise<AttemptResult> {
  const controller = new AbortController();
  let timedOut = false;
  const timer =
    settings.timeoutMs === undefined
      ? undefined
      : setTimeout(() => {
          timedOut = true;
          controller.abort();
        }, settings.timeoutMs);
  const onCallerAbort = () => controller.abort(settings.signal?.reason);
  settings.signal?.addEventListener("abort", onCallerAbort, { once: true });
  try {
    const response = await settings.fetch(intent.request.url, {
      method: intent.request.method,
      headers: requestHeaders(intent, settings.headers),
      body: intent.request.body === undefined ? undefined : JSON.stringify(intent.request.body),
      signal: controller.signal,
    });
    // The body is part of the answer: if it dies half way, the answer was lost.
    const { body, problem } = await readBody(response);
    return problem === undefined
      ? { kind: "answer", status: response.status, headers: response.headers, body }
      : { kind: "answer", status: response.status, headers: response.headers, body, problem };
  } catch (error) {
    if (settings.signal?.aborted) return { kind: "lost", reason: "aborted", error };
    return { kind: "lost", reason: timedOut ? "attempt-timeout" : "network-error", error };
  } finally {
    clearTimeout(timer);
    settings.signal?.removeEventListener("abort", onCallerAbort);
  }
}

function requestHeaders(intent: Intent, extra: Record<string, string>): Headers {
  const headers = new Headers(intent.request.headers);
  for (const [name, value] of Object.entries(extra)) headers.set(name, value);
  if (intent.request.body !== undefined && !headers.has("content-type")) {
    headers.set("content-type", "application/json");
  }
  if (!headers.has("accept")) headers.set("accept", "application/json, application/problem+json");
  // Last, so that nothing above can replace the one key all attempts share.
  headers.set("idempotency-key", intent.key);
  return headers;
}
