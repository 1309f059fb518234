// The `seq` of notes autosaves. The shop keeps the highest seq per user and refuses a lower or
// equal one, so the numbers must keep rising across reloads and tabs, not restart at 1 with
// each page. Milliseconds since the epoch do that; a second save in the same millisecond, or a
// clock set back, takes the last one plus one.

export function nextSeq(last: number | undefined, now: number): number {
  const floor = last !== undefined && Number.isSafeInteger(last) ? last + 1 : 0;
  return Math.max(Math.floor(now), floor);
}

const PREFIX = "oncely-shop:notes-seq:";

/** Raises the floor to a seq the shop reports (the profile's `notes_seq`, a stale-save's `seq`). */
export function raiseSeqFloor(user: string, seen: number | undefined): void {
  if (seen === undefined || !Number.isSafeInteger(seen) || seen < 0) return;
  try {
    const raw = globalThis.localStorage?.getItem(PREFIX + user);
    const last = raw === null || raw === undefined ? undefined : Number(raw);
    if (last === undefined || !Number.isFinite(last) || last < seen) globalThis.localStorage?.setItem(PREFIX + user, String(seen));
  } catch {
    // storage refused: the clock alone still rises
  }
}

/** The next seq for `user`, remembered in localStorage so that other tabs and reloads go on from it. */
export function issueSeq(user: string, now: number = Date.now()): number {
  let last: number | undefined;
  try {
    const raw = globalThis.localStorage?.getItem(PREFIX + user);
    last = raw === null || raw === undefined ? undefined : Number(raw);
  } catch {
    last = undefined;
  }
  const seq = nextSeq(last !== undefined && Number.isFinite(last) ? last : undefined, now);
  try {
    globalThis.localStorage?.setItem(PREFIX + user, String(seq));
  } catch {
    // storage refused: the clock alone still rises
  }
  return seq;
}
