// Who is using the shop: one of the named users, kept in localStorage and sent as
// `X-Shop-User` on every request. Another tab switching user is followed through the
// `storage` event, so a tab never shows one user while sending another.

import { useSyncExternalStore } from "react";

const KEY = "oncely-shop:user";
const listeners = new Set<() => void>();

function read(): string | null {
  try {
    return globalThis.localStorage?.getItem(KEY) ?? null;
  } catch {
    return null;
  }
}

let current: string | null = read();

function notify(): void {
  for (const listener of listeners) listener();
}

if (typeof window !== "undefined") {
  window.addEventListener("storage", (event) => {
    if (event.key !== KEY && event.key !== null) return;
    const next = read();
    if (next !== current) {
      current = next;
      notify();
    }
  });
}

export function currentUser(): string | null {
  return current;
}

export function setCurrentUser(id: string | null): void {
  current = id;
  try {
    if (id === null) globalThis.localStorage?.removeItem(KEY);
    else globalThis.localStorage?.setItem(KEY, id);
  } catch {
    // storage refused: the choice lasts for this page only
  }
  notify();
}

export function subscribeUser(listener: () => void): () => void {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

export function useCurrentUser(): string | null {
  return useSyncExternalStore(subscribeUser, currentUser, () => null);
}
