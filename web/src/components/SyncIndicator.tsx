// The page-wide sync state: saved, syncing, offline or not saved, from every source that may
// hold something the server does not have yet.

import { useIsMutating } from "@tanstack/react-query";
import { pendingIntents } from "../oncely/index.ts";
import { combine, useSync, type SyncState } from "../sync.ts";
import { CheckIcon, CloudOffIcon, AlertIcon, Spinner } from "./icons.tsx";

const LABELS: Record<SyncState, string> = {
  saved: "All changes saved",
  syncing: "Syncing...",
  offline: "Offline",
  error: "Not saved",
};

const HINTS: Record<SyncState, string> = {
  saved: "Everything you changed is on the server.",
  syncing: "Some changes are on their way or not confirmed yet (a pending order shows on the Cart), or the order history is catching up.",
  offline: "You're offline. Changes are kept here and sent when you're back.",
  error: "The server refused a change. Open the screen it belongs to for details.",
};

export function SyncIndicator() {
  const sync = useSync();
  const writes = useIsMutating();
  // An intent whose outcome is not known yet (a checkout or cancel that ended "unknown") is not
  // saved, even while no request is in flight. Read on every render: a send ending re-renders.
  const unconfirmed = pendingIntents().length > 0;
  const state = combine([sync.state, ...(writes > 0 || unconfirmed ? (["syncing"] as const) : [])], sync.online);
  return (
    <span className={`sync sync-${state}`} data-testid="sync-indicator" data-state={state} title={HINTS[state]} role="status">
      {state === "syncing" ? <Spinner size={12} /> : state === "saved" ? <CheckIcon size={14} /> : state === "offline" ? <CloudOffIcon size={14} /> : <AlertIcon size={14} />}
      <span>{LABELS[state]}</span>
    </span>
  );
}
