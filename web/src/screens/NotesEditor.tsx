// Notes with debounced autosave: the status says what the server has, and what the browser
// thinks of the network.

import { useEffect, useState, useSyncExternalStore } from "react";
import { relativeTime } from "../format.ts";
import { raiseSeqFloor } from "../notes-seq.ts";
import { notesSession } from "../notes-session.ts";
import { useNow } from "../queries.ts";
import { useOnline } from "../sync.ts";
import { CheckIcon, CloudOffIcon, AlertIcon, Spinner } from "../components/icons.tsx";

export function NotesEditor({ user, serverNotes, serverSeq }: { user: string; serverNotes: string; serverSeq: number | undefined }) {
  const session = notesSession(user);
  const snap = useSyncExternalStore(session.subscribe, session.snapshot, session.snapshot);
  const online = useOnline();
  const now = useNow(10_000);
  const [text, setText] = useState(() => snap.local ?? serverNotes);

  // The next save must be numbered above the last one the shop has, whichever tab made it.
  useEffect(() => raiseSeqFloor(user, serverSeq), [user, serverSeq]);

  // Follow the server's notes until this tab edits them.
  useEffect(() => {
    if (session.snapshot().local === undefined) setText(serverNotes);
  }, [serverNotes, session]);

  const status = !online ? "offline" : snap.status;
  let label: string;
  let icon;
  switch (status) {
    case "saved":
      label = snap.saved ? `Saved ${relativeTime(snap.saved.saved_at, now)}` : "Saved";
      icon = <CheckIcon size={13} />;
      break;
    case "syncing":
      label = "Syncing...";
      icon = <Spinner size={11} />;
      break;
    case "offline":
      label = online ? "Offline — can't reach the shop, trying again" : "Offline — kept here, saved when you're back";
      icon = <CloudOffIcon size={13} />;
      break;
    case "error":
      label = `Couldn't save${snap.problem ? `: ${snap.problem}` : ""}`;
      icon = <AlertIcon size={13} />;
      break;
  }

  return (
    <div className="notes">
      <div className="notes-head">
        <label htmlFor="notes-input">Notes</label>
        <span className={`notes-status notes-${status}`} data-testid="notes-status" data-state={status} role="status">
          {icon}
          {label}
        </span>
      </div>
      <textarea
        id="notes-input"
        className="textarea"
        rows={6}
        value={text}
        placeholder="Delivery instructions, gift messages, anything."
        onChange={(event) => {
          setText(event.target.value);
          session.edit(event.target.value);
        }}
        onBlur={() => void session.flush()}
        data-testid="notes-input"
      />
      <p className="muted small">
        Saved as you type. Each save carries a rising <code>seq</code>; the shop refuses an older one, so a slow save can never
        put old text back.
      </p>
    </div>
  );
}
