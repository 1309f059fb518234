// The profile form's fields and how a 412 is resolved. Pure: the screen holds the state.

import { mergeFields, type FieldConflict } from "./oncely/index.ts";
import type { Profile, ProfileDocument } from "./api.ts";

/** The fields the form edits. The notes have their own autosave; addresses their own delete. */
export type Editable = { name: string; email: string };
export const EDITABLE_FIELDS = ["name", "email"] as const satisfies readonly (keyof Editable)[];
export const FIELD_LABELS: Record<keyof Editable, string> = { name: "Name", email: "Email" };

export function editableOf(doc: { name?: unknown; email?: unknown } | null | undefined): Editable {
  return {
    name: typeof doc?.name === "string" ? doc.name : "",
    email: typeof doc?.email === "string" ? doc.email : "",
  };
}

export function sameEditable(a: Editable, b: Editable): boolean {
  return EDITABLE_FIELDS.every((field) => a[field] === b[field]);
}

/** The whole document for `PUT /api/profile`: the form's fields over the current rest. */
export function documentOf(current: Partial<Profile>, fields: Editable, notes: string | undefined): ProfileDocument {
  return {
    name: fields.name,
    email: fields.email,
    notes: notes ?? current.notes ?? "",
    addresses: Array.isArray(current.addresses) ? current.addresses.map((a) => ({ id: a.id, line: a.line })) : [],
  };
}

/**
 * A 412 the page may resolve on its own: the other write changed none of the fields this user
 * edited (it was the notes autosave, or an address removed), so writing the user's fields on
 * top of it loses nothing of anyone's.
 */
export function touchesNoEditedField(base: Editable, current: Editable): boolean {
  return sameEditable(base, current);
}

export type Pick_ = "mine" | "theirs";

/** The three-way merge of the form's fields: base (where the user started), mine, theirs (current). */
export function mergeProfile(base: Editable, mine: Editable, theirs: Editable): { merged: Editable; conflicts: FieldConflict[] } {
  return mergeFields<Editable>(base, mine, theirs);
}

/** The merge with the user's choice for every field both sides changed. */
export function applyPicks(merged: Editable, conflicts: readonly FieldConflict[], picks: Partial<Record<string, Pick_>>): Editable {
  const out: Editable = { ...merged };
  for (const conflict of conflicts) {
    const field = conflict.field as keyof Editable;
    if (!EDITABLE_FIELDS.includes(field)) continue;
    const pick = picks[conflict.field];
    const value = pick === "mine" ? conflict.mine : conflict.theirs;
    if (typeof value === "string") out[field] = value;
  }
  return out;
}

export function allPicked(conflicts: readonly FieldConflict[], picks: Partial<Record<string, Pick_>>): boolean {
  return conflicts.every((c) => picks[c.field] !== undefined);
}
