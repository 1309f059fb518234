import { newIdempotencyKey } from "./idempotency-key.ts";
import type { JsonValue } from "./json.ts";
import { SafeStorage } from "./safe-storage.ts";

/**
 * What to send for an intent. It is stored in `sessionStorage` so that a reloaded page can send
 * the very same request again: keep credentials out of `headers` (pass them to
 * `sendIdempotent` instead, which does not store them).
 */
export interface RequestSpec {
  method: string;
  url: string;
  /** Sent as `application/json` unless `headers` names another content type. */
  body?: JsonValue;
  headers?: Record<string, string>;
}

/** One thing the user asked for, with the key every attempt at it carries. */
export interface Intent {
  /** Names the intent, e.g. `place-order:cart-42`: one pending intent per name. */
  name: string;
  key: string;
  request: RequestSpec;
  /** Milliseconds since the epoch, when the user first asked. */
  startedAt: number;
}

export interface IntentStore {
  /** The pending intent of that name if there is one (its key, its request), else a new one. */
  start(name: string, request: RequestSpec): Intent;
  pending(name: string): Intent | undefined;
  /**
   * Forgets the intent after a definite outcome. With `key`, only if the pending intent still
   * has that key, so a late answer to an old intent never retires a newer one.
   */
  retire(name: string, key?: string): void;
  list(): Intent[];
}

export interface IntentStoreOptions {
  /** Defaults to `globalThis.sessionStorage`, looked up on every use. */
  storage?: Storage | (() => Storage | undefined);
  /** Prefix of the storage keys; default `oncely:intent:`. */
  prefix?: string;
  newKey?: () => string;
  now?: () => number;
}

export const DEFAULT_INTENT_PREFIX = "oncely:intent:";

export function createIntentStore(options: IntentStoreOptions = {}): IntentStore {
  const prefix = options.prefix ?? DEFAULT_INTENT_PREFIX;
  const newKey = options.newKey ?? newIdempotencyKey;
  const now = options.now ?? Date.now;
  const configured = options.storage;
  const storage = new SafeStorage(
    typeof configured === "function"
      ? configured
      : configured
        ? () => configured
        : () => globalThis.sessionStorage,
  );

  const read = (storageKey: string): Intent | undefined => {
    const raw = storage.get(storageKey);
    if (raw === null) return undefined;
    try {
      const parsed: unknown = JSON.parse(raw);
      return isIntent(parsed) ? parsed : undefined;
    } catch {
      return undefined;
    }
  };

  return {
    start(name, request) {
      const existing = read(prefix + name);
      if (existing) return existing;
      const intent: Intent = { name, key: newKey(), request, startedAt: now() };
      storage.set(prefix + name, JSON.stringify(intent));
      return intent;
    },
    pending(name) {
      return read(prefix + name);
    },
    retire(name, key) {
      if (key !== undefined && read(prefix + name)?.key !== key) return;
      storage.remove(prefix + name);
    },
    list() {
      return storage
        .keys()
        .filter((k) => k.startsWith(prefix))
        .map(read)
        .filter((intent): intent is Intent => intent !== undefined)
        .sort((a, b) => a.startedAt - b.startedAt);
    },
  };
}

function isIntent(value: unknown): value is Intent {
  if (typeof value !== "object" || value === null) return false;
  const v = value as Record<string, unknown>;
  const request = v.request as Record<string, unknown> | null | undefined;
  return (
    typeof v.name === "string" &&
    typeof v.key === "string" &&
    v.key.length > 0 &&
    typeof v.startedAt === "number" &&
    typeof request === "object" &&
    request !== null &&
    typeof request.method === "string" &&
    typeof request.url === "string"
  );
}

/** The store behind the plain functions below: `sessionStorage`, prefix `oncely:intent:`. */
export const defaultIntentStore: IntentStore = createIntentStore();

/** Starts an intent, or returns the pending one of that name (a double click, a reload). */
export function startIntent(name: string, request: RequestSpec): Intent {
  return defaultIntentStore.start(name, request);
}

export function pendingIntent(name: string): Intent | undefined {
  return defaultIntentStore.pending(name);
}

export function retireIntent(name: string, key?: string): void {
  defaultIntentStore.retire(name, key);
}

/** Every pending intent, oldest first: what a page should resume or show after a reload. */
export function pendingIntents(): Intent[] {
  return defaultIntentStore.list();
}
