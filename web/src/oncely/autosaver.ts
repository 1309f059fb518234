export type AutosaveStatus = "saved" | "syncing" | "offline" | "error";

export interface AutosaverOptions<T, R> {
  /** Quiet time after the last edit before saving. */
  delayMs: number;
  /** Called with the answer of the newest save that finished; never with an older one's. */
  onSaved?: (result: R, value: T, seq: number) => void;
  /** Called when the newest save failed. */
  onError?: (error: unknown, value: T, seq: number) => void;
  /** Default: `navigator.onLine`, where there is a navigator. */
  isOnline?: () => boolean;
  /** Which failures mean "offline". Default: `TypeError`, what `fetch` throws when the network fails. */
  isNetworkError?: (error: unknown) => boolean;
  /** Where `online` / `offline` events come from. Default: `window`, where there is one. */
  events?: Pick<EventTarget, "addEventListener" | "removeEventListener">;
}

export interface Autosaver<T> {
  /** The user changed something: save `value` once they pause. */
  update(value: T): void;
  /** Save the waiting value now (e.g. on blur or before leaving); resolves when that save settles. */
  flush(): Promise<void>;
  status(): AutosaveStatus;
  /** The newest save's error, while the status is `error` or `offline`. */
  lastError(): unknown;
  subscribe(listener: (status: AutosaveStatus) => void): () => void;
  /** Stops timers and listeners; answers arriving later are ignored. */
  dispose(): void;
}

/**
 * Debounced autosave where the latest edit wins. Each save gets a sequence number; an answer is
 * applied only if no newer save's answer was applied before it, so a slow older save finishing
 * last cannot put an old version back on screen. The server may still receive overlapping saves
 * out of order: `save` gets the sequence number (or send `If-Match`) so it can refuse the older.
 * A save that fails keeps its value waiting; it is sent again on the next edit, on `flush()`, or
 * when the browser comes back online.
 */
export function createAutosaver<T, R = unknown>(
  save: (value: T, seq: number) => Promise<R>,
  options: AutosaverOptions<T, R>,
): Autosaver<T> {
  const isOnline =
    options.isOnline ?? (() => typeof navigator === "undefined" || navigator.onLine !== false);
  const isNetworkError = options.isNetworkError ?? ((error: unknown) => error instanceof TypeError);
  const events = options.events ?? (typeof window !== "undefined" ? window : undefined);
  const listeners = new Set<(status: AutosaveStatus) => void>();

  let waiting: { value: T } | undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let lastStarted = 0;
  let lastApplied = 0;
  const inFlight = new Set<number>();
  let failure: { kind: "offline" | "error"; error: unknown } | undefined;
  let shown: AutosaveStatus = "saved";
  let disposed = false;

  const compute = (): AutosaveStatus => {
    if (!isOnline()) return "offline";
    if (timer !== undefined || inFlight.has(lastStarted)) return "syncing";
    if (failure) return failure.kind;
    return waiting ? "syncing" : "saved";
  };
  const refresh = () => {
    const next = compute();
    if (next === shown) return;
    shown = next;
    for (const listener of listeners) listener(next);
  };

  const flush = async (): Promise<void> => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    if (disposed || !waiting) return refresh();
    if (!isOnline()) {
      failure = { kind: "offline", error: undefined };
      return refresh();
    }
    const { value } = waiting;
    waiting = undefined;
    const seq = ++lastStarted;
    inFlight.add(seq);
    failure = undefined;
    refresh();
    try {
      const result = await save(value, seq);
      if (!disposed && seq > lastApplied) {
        lastApplied = seq;
        options.onSaved?.(result, value, seq);
      }
    } catch (error) {
      // Only the newest save speaks for the document; an older one's failure is superseded.
      if (!disposed && seq === lastStarted) {
        failure = { kind: isNetworkError(error) ? "offline" : "error", error };
        waiting ??= { value };
        options.onError?.(error, value, seq);
      }
    } finally {
      inFlight.delete(seq);
      refresh();
    }
  };

  const onOnline = () => {
    if (waiting) void flush();
    else refresh();
  };
  const onOffline = () => refresh();
  events?.addEventListener("online", onOnline);
  events?.addEventListener("offline", onOffline);

  return {
    update(value) {
      if (disposed) return;
      waiting = { value };
      if (timer !== undefined) clearTimeout(timer);
      timer = setTimeout(() => void flush(), options.delayMs);
      refresh();
    },
    flush,
    status() {
      refresh(); // navigator.onLine may have changed without an event reaching us
      return shown;
    },
    lastError: () => failure?.error,
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    dispose() {
      disposed = true;
      if (timer !== undefined) clearTimeout(timer);
      timer = undefined;
      events?.removeEventListener("online", onOnline);
      events?.removeEventListener("offline", onOffline);
      listeners.clear();
    },
  };
}
