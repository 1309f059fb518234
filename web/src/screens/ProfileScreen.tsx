import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import type { Conflict, FieldConflict, Versioned } from "../oncely/index.ts";
import { problemText, readProfile, removeAddress, writeProfile, type Address, type Profile, type ProfileDocument } from "../api.ts";
import { fullTime, relativeTime } from "../format.ts";
import { notesSession } from "../notes-session.ts";
import {
  applyPicks,
  documentOf,
  editableOf,
  mergeProfile,
  sameEditable,
  touchesNoEditedField,
  type Editable,
  type Pick_,
} from "../profile-edit.ts";
import { keys, useNow, useUserName } from "../queries.ts";
import { showToast } from "../toast.ts";
import { ConfirmDialog } from "../components/ConfirmDialog.tsx";
import { Spinner } from "../components/icons.tsx";
import { ErrorState, Notice, PageHeader, Panel, Skeleton, TryIt } from "../components/ui.tsx";
import { ConflictView, type ConflictState } from "./ConflictView.tsx";
import { NotesEditor } from "./NotesEditor.tsx";

interface Base {
  fields: Editable;
  etag: string;
}

interface OpenConflict extends ConflictState {
  current: Editable;
  currentProfile: Profile;
  currentEtag: string;
}

function useProfile(user: string) {
  return useQuery({ queryKey: keys.profile(user), queryFn: ({ signal }) => readProfile(signal) });
}

function Details({ user, profile }: { user: string; profile: Versioned<Profile> }) {
  const client = useQueryClient();
  const nameOf = useUserName();
  const now = useNow();
  const [base, setBase] = useState<Base>(() => ({ fields: editableOf(profile.data), etag: profile.etag ?? "" }));
  const [draft, setDraft] = useState<Editable>(() => editableOf(profile.data));
  const [conflict, setConflict] = useState<OpenConflict | null>(null);
  const [merging, setMerging] = useState<{ merged: Editable; conflicts: FieldConflict[] } | null>(null);
  const [picks, setPicks] = useState<Partial<Record<string, Pick_>>>({});
  const [saving, setSaving] = useState(false);
  const [problem, setProblem] = useState<string | null>(null);

  const dirty = !sameEditable(draft, base.fields);

  // A newer version read from the server (focus, another screen's write) is taken as the new
  // starting point only while the user has no edit of their own.
  useEffect(() => {
    if (dirty || conflict || saving || !profile.etag || profile.etag === base.etag) return;
    const fields = editableOf(profile.data);
    setBase({ fields, etag: profile.etag });
    setDraft(fields);
  }, [profile, dirty, conflict, saving, base.etag]);

  const adopt = (data: Profile, etag: string | undefined) => {
    client.setQueryData<Versioned<Profile>>(keys.profile(user), { data, etag, lastModified: undefined });
    const fields = editableOf(data);
    setBase({ fields, etag: etag ?? "" });
    setDraft(fields);
    setConflict(null);
    setMerging(null);
    setPicks({});
  };

  /** Writes `fields` with `etag`; `from` is the version those fields were based on. */
  const write = async (fields: Editable, etag: string, against: Profile, from: Editable, rebases = 2): Promise<void> => {
    setSaving(true);
    setProblem(null);
    try {
      const notesState = notesSession(user).snapshot();
      const notes = notesState.local ?? notesState.saved?.notes;
      const result = await writeProfile(documentOf(against, fields, notes), etag);
      switch (result.kind) {
        case "written": {
          const written = (result.data as Partial<Profile> | undefined) ?? {};
          const data: Profile = { ...against, ...documentOf(against, fields, notes), ...written };
          adopt(data, result.etag);
          showToast("Profile saved.", { tone: "success" });
          return;
        }
        case "conflict": {
          const c = result as Conflict<ProfileDocument>;
          const currentProfile = c.current as unknown as Profile;
          const current = editableOf(currentProfile);
          if (rebases > 0 && touchesNoEditedField(from, current)) {
            // The other write changed nothing on this form (the notes autosave, an address):
            // the user's fields go on top of it with its ETag, losing nothing of anyone's.
            return await write(fields, c.currentEtag, currentProfile, current, rebases - 1);
          }
          setConflict({
            base: from,
            mine: fields,
            current,
            currentProfile,
            currentEtag: c.currentEtag,
            changedBy: c.changedBy,
            changedAt: c.changedAt,
          });
          setMerging(null);
          setPicks({});
          return;
        }
        case "failed":
          setProblem(problemText(result.problem, `The shop refused the change (${result.status}).`));
          return;
        case "unknown":
          setProblem("We lost the answer. We read the profile again: check whether your change is there.");
          void client.invalidateQueries({ queryKey: keys.profile(user) });
          return;
      }
    } finally {
      setSaving(false);
    }
  };

  const save = () => void write(draft, base.etag, profile.data, base.fields);

  const merge = () => {
    if (!conflict) return;
    const result = mergeProfile(conflict.base, conflict.mine, conflict.current);
    if (result.conflicts.length === 0) {
      void write(result.merged, conflict.currentEtag, conflict.currentProfile, conflict.current);
    } else {
      setMerging(result);
      setPicks({});
    }
  };
  const saveMerge = () => {
    if (!conflict || !merging) return;
    void write(applyPicks(merging.merged, merging.conflicts, picks), conflict.currentEtag, conflict.currentProfile, conflict.current);
  };
  const overwrite = () => {
    if (!conflict) return;
    void write(conflict.mine, conflict.currentEtag, conflict.currentProfile, conflict.current);
  };
  const discard = () => {
    if (!conflict) return;
    adopt(conflict.currentProfile, conflict.currentEtag);
    showToast("Your edit was dropped; this is the current version.");
  };

  const updatedBy = profile.data.updated_by;
  const updatedAt = profile.data.updated_at;

  return (
    <Panel title="Details" aside={dirty && !conflict ? <span className="muted small">Unsaved changes</span> : null}>
      {conflict ? (
        <ConflictView
          conflict={conflict}
          who={nameOf(conflict.changedBy)}
          sameUser={conflict.changedBy === user}
          now={now}
          merging={merging?.conflicts ?? null}
          picks={picks}
          busy={saving}
          onMerge={merge}
          onPick={(field, pick) => setPicks((p) => ({ ...p, [field]: pick }))}
          onSaveMerge={saveMerge}
          onCancelMerge={() => setMerging(null)}
          onOverwrite={overwrite}
          onDiscard={discard}
        />
      ) : (
        <form
          className="form"
          onSubmit={(event) => {
            event.preventDefault();
            if (dirty && !saving) save();
          }}
        >
          <label className="field">
            <span>Name</span>
            <input
              className="input"
              value={draft.name}
              onChange={(e) => setDraft({ ...draft, name: e.target.value })}
              autoComplete="name"
              data-testid="profile-name"
            />
          </label>
          <label className="field">
            <span>Email</span>
            <input
              className="input"
              type="email"
              value={draft.email}
              onChange={(e) => setDraft({ ...draft, email: e.target.value })}
              autoComplete="email"
              data-testid="profile-email"
            />
          </label>
          {problem ? (
            <Notice tone="bad" testId="profile-problem" onDismiss={() => setProblem(null)}>
              {problem}
            </Notice>
          ) : null}
          <div className="button-row">
            <button type="submit" className="button button-primary" disabled={!dirty || saving} data-testid="profile-save">
              {saving ? <Spinner size={12} /> : null}
              {saving ? "Saving..." : "Save"}
            </button>
            <button type="button" className="button" disabled={!dirty || saving} onClick={() => setDraft(base.fields)} data-testid="profile-undo">
              Undo changes
            </button>
          </div>
        </form>
      )}
      {updatedAt && !conflict ? (
        <p className="muted small" data-testid="profile-updated">
          Last updated by {nameOf(updatedBy)} <span title={fullTime(updatedAt)}>{relativeTime(updatedAt, now)}</span> · version{" "}
          {profile.data.version} · <code>{profile.etag}</code>
        </p>
      ) : null}
    </Panel>
  );
}

function Addresses({ user, profile }: { user: string; profile: Versioned<Profile> }) {
  const client = useQueryClient();
  const [removing, setRemoving] = useState<Address | null>(null);
  const [busy, setBusy] = useState(false);
  const [notice, setNotice] = useState<string | null>(null);
  const addresses = profile.data.addresses ?? [];

  const confirmRemove = async () => {
    if (!removing) return;
    setBusy(true);
    try {
      const result = await removeAddress(removing.id, profile.etag ?? "");
      switch (result.kind) {
        case "written":
          if (result.data) {
            client.setQueryData<Versioned<Profile>>(keys.profile(user), { data: result.data, etag: result.etag, lastModified: result.lastModified });
          } else {
            void client.invalidateQueries({ queryKey: keys.profile(user) });
          }
          showToast("Address removed.", { tone: "success" });
          break;
        case "conflict":
          setNotice("The profile changed elsewhere, so we loaded the current one. Remove the address again if it's still there.");
          void client.invalidateQueries({ queryKey: keys.profile(user) });
          break;
        case "failed":
          setNotice(problemText(result.problem, `The shop refused (${result.status}).`));
          break;
        case "unknown":
          setNotice("We lost the answer; we read the profile again to show what's saved.");
          void client.invalidateQueries({ queryKey: keys.profile(user) });
          break;
      }
    } finally {
      setBusy(false);
      setRemoving(null);
    }
  };

  return (
    <Panel title="Addresses">
      {notice ? (
        <Notice tone="warn" onDismiss={() => setNotice(null)} testId="address-notice">
          {notice}
        </Notice>
      ) : null}
      {addresses.length === 0 ? (
        <p className="muted" data-testid="addresses-empty">
          No addresses saved.
        </p>
      ) : (
        <ul className="address-list">
          {addresses.map((address) => (
            <li key={address.id} className="address-row" data-testid="address-row" data-address-id={address.id}>
              <span>{address.line}</span>
              <button
                type="button"
                className="link-button danger"
                onClick={() => setRemoving(address)}
                data-testid={`address-remove-${address.id}`}
              >
                Remove
              </button>
            </li>
          ))}
        </ul>
      )}
      <ConfirmDialog
        open={removing !== null}
        title="Remove this address?"
        confirmLabel="Remove address"
        cancelLabel="Keep it"
        busy={busy}
        onCancel={() => setRemoving(null)}
        onConfirm={() => void confirmRemove()}
      >
        <p>
          <strong>{removing?.line}</strong> will no longer be offered at checkout.
        </p>
      </ConfirmDialog>
    </Panel>
  );
}

export function ProfileScreen({ user }: { user: string }) {
  const profile = useProfile(user);

  return (
    <div className="screen">
      <PageHeader
        title="Profile"
        caption="conflicts shown, never silently overwritten (If-Match, 412, three-way merge); autosave where the latest edit wins."
      />
      <TryIt>
        Open this page in two windows as the same user. Change the name in one and save, then change it (or the email) in the
        other and save: the conflict view shows both versions. Type in the notes and go offline (browser dev tools): the status
        says <em>Offline</em> and saves when you're back.
      </TryIt>

      {profile.isPending ? (
        <div className="profile-layout">
          <Panel title="Details">
            <Skeleton width="60%" height={32} />
            <Skeleton width="60%" height={32} />
          </Panel>
          <Panel title="Notes">
            <Skeleton height={120} />
          </Panel>
        </div>
      ) : profile.isError && !profile.data ? (
        <ErrorState error={profile.error} onRetry={() => void profile.refetch()} what="your profile" testId="profile-error" />
      ) : (
        <div className="profile-layout">
          <div className="stack">
            <Details user={user} profile={profile.data} />
            <Addresses user={user} profile={profile.data} />
          </div>
          <Panel>
            <NotesEditor user={user} serverNotes={profile.data.data.notes ?? ""} serverSeq={profile.data.data.notes_seq} />
          </Panel>
        </div>
      )}
    </div>
  );
}
