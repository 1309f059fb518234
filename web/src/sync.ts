// The global sync indicator: one state from every part of the page that may have something
// not yet on the server (the notes autosave, writes in flight, the read model catching up)
// and from the browser's own idea of being online.

import { useSyncExternalStore } from "react";

export type SyncState = "saved" | "syncing" | "offline" | "error";

const sources = new Map<string, SyncState>();
const listeners = new Set<() => void>();
let online = typeof navigator === "undefined" ? true : navigator.onLine !== false;
let snapshot: { state: SyncState; online: boolean; sources: ReadonlyMap<string, SyncState> } = compute();

function compute() {
  return { state: combine([...sources.values()], online), online, sources: new Map(sources) };
}

function publish(): void {
  snapshot = compute();
  for (const listener of listeners) listener();
}

if (typeof window !== "undefined") {
  window.addEventListener("online", () => {
    online = true;
    publish();
  });
  window.addEventListener("offline", () => {
    online = false;
    publish();
  });
}

/** Offline beats error beats syncing beats saved. */
export function combine(states: readonly SyncState[], isOnline: boolean): SyncState {
  if (!isOnline || states.includes("offline")) return "offline";
  if (states.includes("error")) return "error";
  if (states.includes("syncing")) return "syncing";
  return "saved";
}

/** Sets (or, with undefined, clears) one source of the indicator. */
export function setSyncSource(name: string, state: SyncState | undefined): void {
  if (state === undefined ? !sources.has(name) : sources.get(name) === state) return;
  if (state === undefined) sources.delete(name);
  else sources.set(name, state);
  publish();
}

function subscribe(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function useSync() {
  return useSyncExternalStore(subscribe, () => snapshot, () => snapshot);
}

export function useOnline(): boolean {
  return useSync().online;
}
