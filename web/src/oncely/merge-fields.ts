import { sameJson } from "./json.ts";

/** A field both sides changed, to different values: only a person can choose. */
export interface FieldConflict {
  field: string;
  /** `undefined` where the field is absent (never there, or removed). */
  base: unknown;
  mine: unknown;
  theirs: unknown;
}

export interface MergeResult<T> {
  /** Every change from both sides; for a conflicting field, `theirs` until the user chooses. */
  merged: T;
  conflicts: FieldConflict[];
}

/**
 * Three-way merge of flat objects: `base` is what this user started editing, `mine` their edit,
 * `theirs` the version on the server now (a conflict's `current`). A field changed on one side
 * only takes that change; changed on both to the same value, it is no conflict; changed on both
 * to different values, it is reported. Values are compared as JSON, so a nested object or array
 * counts as one value. No input is modified.
 */
export function mergeFields<T extends Record<string, unknown>>(base: T, mine: T, theirs: T): MergeResult<T> {
  const merged: Record<string, unknown> = {};
  const conflicts: FieldConflict[] = [];
  const fields = new Set([...Object.keys(theirs), ...Object.keys(mine), ...Object.keys(base)]);
  for (const field of fields) {
    const b = base[field];
    const m = mine[field];
    const t = theirs[field];
    const mineChanged = !sameJson(b, m);
    const theirsChanged = !sameJson(b, t);
    let value: unknown;
    if (mineChanged && theirsChanged && !sameJson(m, t)) {
      conflicts.push({ field, base: b, mine: m, theirs: t });
      value = t; // nothing the other person wrote disappears before the user decides
    } else {
      value = mineChanged ? m : t;
    }
    if (value !== undefined) merged[field] = value;
  }
  return { merged: merged as T, conflicts };
}
