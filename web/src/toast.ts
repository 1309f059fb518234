// One toast at a time, bottom of the page: what just happened, and at most one action.

import { useSyncExternalStore } from "react";

export interface ToastAction {
  label: string;
  run: () => void;
}

export interface Toast {
  id: number;
  message: string;
  tone: "info" | "error" | "success";
  action?: ToastAction;
}

let current: Toast | null = null;
let nextId = 1;
let timer: ReturnType<typeof setTimeout> | undefined;
const listeners = new Set<() => void>();

function publish(): void {
  for (const listener of listeners) listener();
}

export function showToast(message: string, options: { tone?: Toast["tone"]; action?: ToastAction; ms?: number } = {}): void {
  if (timer !== undefined) clearTimeout(timer);
  current = {
    id: nextId++,
    message,
    tone: options.tone ?? "info",
    ...(options.action ? { action: options.action } : {}),
  };
  const id = current.id;
  // A toast with an action stays long enough to use it; an error's Retry longest.
  const ms = options.ms ?? (options.action ? (current.tone === "error" ? 10_000 : 6_000) : 4_500);
  timer = setTimeout(() => dismissToast(id), ms);
  publish();
}

export function dismissToast(id?: number): void {
  if (current === null || (id !== undefined && current.id !== id)) return;
  current = null;
  publish();
}

export function useToast(): Toast | null {
  return useSyncExternalStore(
    (listener) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    () => current,
    () => null,
  );
}
