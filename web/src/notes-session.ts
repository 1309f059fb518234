// The notes autosave of the current user. It lives beside the page, not inside the profile
// screen, so that a save still in flight when the user moves on keeps the global indicator
// honest ("Syncing..." until the server answered).

import { createAutosaver, type AutosaveStatus, type Autosaver } from "./oncely/index.ts";
import { ApiError, ShopProblem, saveNotes, type NotesSaved } from "./api.ts";
import { issueSeq, raiseSeqFloor } from "./notes-seq.ts";
import { setSyncSource } from "./sync.ts";

export interface NotesSnapshot {
  status: AutosaveStatus;
  /** The text as this tab last edited it; undefined until the first edit. */
  local: string | undefined;
  /** The last save the server confirmed. */
  saved: NotesSaved | undefined;
  /** Why the newest save failed, for the status line. */
  problem: string | undefined;
}

export interface NotesSession {
  user: string;
  edit(text: string): void;
  flush(): Promise<void>;
  snapshot(): NotesSnapshot;
  subscribe(listener: () => void): () => void;
  dispose(): void;
}

const RETRY_MS = 4000;

function createNotesSession(user: string): NotesSession {
  const listeners = new Set<() => void>();
  let state: NotesSnapshot = { status: "saved", local: undefined, saved: undefined, problem: undefined };
  let retry: ReturnType<typeof setTimeout> | undefined;
  const set = (patch: Partial<NotesSnapshot>) => {
    state = { ...state, ...patch };
    for (const listener of listeners) listener();
  };

  const saver: Autosaver<string> = createAutosaver<string, NotesSaved>(
    // The autosaver's own seq orders answers in this tab; the server gets one that keeps
    // rising across reloads and tabs.
    (notes) => saveNotes(user, notes, issueSeq(user)),
    {
      delayMs: 700,
      onSaved: (saved) => set({ saved, problem: undefined }),
      onError: (error) => {
        if (error instanceof ApiError && error.type === ShopProblem.staleSave) {
          // A save numbered higher reached the shop first (another tab): ours is refused.
          const seq = error.problem?.seq;
          raiseSeqFloor(user, typeof seq === "number" ? seq : undefined);
          set({ problem: "A newer save from another tab won. Reload to see it." });
          return;
        }
        if (error instanceof TypeError) {
          set({ problem: undefined });
        } else {
          set({ problem: error instanceof ApiError ? (error.problem?.detail ?? `The shop answered ${error.status}.`) : String(error) });
        }
        // Tried again a little later (the autosaver also sends it on the next edit and when the
        // browser comes back online); while the browser says offline, the flush just waits.
        if (retry !== undefined) clearTimeout(retry);
        retry = setTimeout(() => void saver.flush(), RETRY_MS);
      },
    },
  );
  const unsubscribe = saver.subscribe((status) => {
    setSyncSource("notes", status);
    set({ status });
  });

  return {
    user,
    edit(text) {
      set({ local: text });
      saver.update(text);
    },
    flush: () => saver.flush(),
    snapshot: () => state,
    subscribe(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    dispose() {
      if (retry !== undefined) clearTimeout(retry);
      unsubscribe();
      saver.dispose();
      setSyncSource("notes", undefined);
      listeners.clear();
    },
  };
}

let session: NotesSession | undefined;

/** The session of `user`, made on first use; switching user flushes and ends the previous one. */
export function notesSession(user: string): NotesSession {
  if (session?.user === user) return session;
  if (session) {
    const old = session;
    void old.flush().finally(() => old.dispose());
  }
  session = createNotesSession(user);
  return session;
}

/** Ends the session without saving (used by "Reset demo data"). */
export function resetNotesSession(): void {
  session?.dispose();
  session = undefined;
}

if (typeof window !== "undefined") {
  window.addEventListener("pagehide", () => void session?.flush());
}
