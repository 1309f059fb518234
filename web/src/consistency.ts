// Read-your-writes over the order read model. A write answers `X-Consistency-Token: <n>` (the
// outbox position of its event); a read that sends the token waits for the read model to reach
// it and says `X-Consistency: fresh | stale`, `X-Read-Model-Position: <m>`. Without a token the
// answer is `eventual`.

export type Consistency = "fresh" | "stale" | "eventual" | "unknown";

export interface ConsistencyInfo {
  consistency: Consistency;
  /** `X-Read-Model-Position`, when the answer had one. */
  position?: number;
}

/** A token or position: a non-negative integer, else undefined. */
export function parsePosition(value: string | null | undefined): number | undefined {
  if (value === null || value === undefined) return undefined;
  const text = value.trim();
  if (!/^\d+$/.test(text)) return undefined;
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : undefined;
}

export function readConsistency(headers: Pick<Headers, "get">): ConsistencyInfo {
  const raw = (headers.get("x-consistency") ?? "").trim().toLowerCase();
  const consistency: Consistency = raw === "fresh" || raw === "stale" || raw === "eventual" ? raw : "unknown";
  const position = parsePosition(headers.get("x-read-model-position"));
  return position === undefined ? { consistency } : { consistency, position };
}

/** The later of two tokens: read-your-writes needs the newest write this tab made. */
export function laterToken(a: number | undefined, b: number | undefined): number | undefined {
  if (a === undefined) return b;
  if (b === undefined) return a;
  return Math.max(a, b);
}

/**
 * Whether an answer is still behind this tab's own writes, so the page shows "Syncing..." and
 * reads again: the server said stale, or its position is below the token.
 */
export function isBehind(info: ConsistencyInfo, token: number | undefined): boolean {
  if (token === undefined) return false;
  if (info.consistency === "stale") return true;
  if (info.position !== undefined) return info.position < token;
  return false;
}

/** The polling delay while behind: quick at first, then calmer. The server itself waits up to 2 s. */
export function resyncDelay(attempt: number): number {
  return Math.min(500 * 2 ** Math.max(0, attempt), 4000);
}

// The newest token per user, for this tab (sessionStorage: a reload keeps it).
const PREFIX = "oncely-shop:consistency-token:";

function storage(): Storage | undefined {
  try {
    return globalThis.sessionStorage;
  } catch {
    return undefined;
  }
}

const listeners = new Set<() => void>();

export function consistencyToken(user: string): number | undefined {
  return parsePosition(storage()?.getItem(PREFIX + user));
}

/** Remembers the token a write answered with, if any; returns the newest one. */
export function recordConsistencyToken(user: string, headers: Pick<Headers, "get"> | undefined): number | undefined {
  const old = consistencyToken(user);
  const got = headers ? parsePosition(headers.get("x-consistency-token")) : undefined;
  const next = laterToken(old, got);
  if (next !== undefined && next !== old) {
    try {
      storage()?.setItem(PREFIX + user, String(next));
    } catch {
      // storage refused: read-your-writes degrades to eventual reads
    }
    for (const listener of listeners) listener();
  }
  return next;
}

export function clearConsistencyTokens(): void {
  const s = storage();
  if (!s) return;
  for (let i = s.length - 1; i >= 0; i--) {
    const key = s.key(i);
    if (key?.startsWith(PREFIX)) s.removeItem(key);
  }
  for (const listener of listeners) listener();
}

export function subscribeConsistencyTokens(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}
