import type { Intent } from "./intents.ts";
import type { Outcome } from "./outcome.ts";
import { sendIdempotent, type SendOptions } from "./send-idempotent.ts";

// Sends in flight in this page, by idempotency key.
const inFlight = new Map<string, Promise<Outcome>>();

/**
 * `sendIdempotent`, but a second send of the same intent while the first is still running joins
 * it instead of sending again: a double click, a resume racing a submit, or React running an
 * effect twice all end in one request sequence and one answer. (Two sends would be harmless to
 * the server, which deduplicates by key, but the second would only see `request-in-progress`.)
 */
export function sendShared<T = unknown>(intent: Intent, options: SendOptions = {}): Promise<Outcome<T>> {
  const running = inFlight.get(intent.key);
  if (running) return running as Promise<Outcome<T>>;
  const started = sendIdempotent<T>(intent, options).finally(() => {
    if (inFlight.get(intent.key) === started) inFlight.delete(intent.key);
  });
  inFlight.set(intent.key, started);
  return started;
}

export function isInFlight(key: string): boolean {
  return inFlight.has(key);
}
