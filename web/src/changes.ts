// What an audit event changed, for the order history: "status: confirmed → cancelled".

export interface Change {
  /** The field, when both sides are objects; absent for a whole value. */
  field?: string;
  from: string;
  to: string;
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

/** A short, readable form of a JSON value. */
export function showValue(value: unknown): string {
  if (value === null || value === undefined) return "—";
  if (typeof value === "string") return value === "" ? "(empty)" : value;
  if (typeof value === "number" || typeof value === "boolean") return String(value);
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

function same(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  try {
    return JSON.stringify(a) === JSON.stringify(b);
  } catch {
    return false;
  }
}

/**
 * The changes from `old` to `new`: per field when both are objects (only the fields that
 * differ, in a stable order), else one change of the whole value. A creation (`old` empty)
 * lists the new object's fields from "—".
 */
export function describeChange(old: unknown, next: unknown): Change[] {
  const oldRecord = isRecord(old) ? old : old === null || old === undefined ? {} : undefined;
  const nextRecord = isRecord(next) ? next : next === null || next === undefined ? {} : undefined;
  if (oldRecord && nextRecord) {
    const fields = [...new Set([...Object.keys(oldRecord), ...Object.keys(nextRecord)])];
    return fields
      .filter((field) => !same(oldRecord[field], nextRecord[field]))
      .map((field) => ({ field, from: showValue(oldRecord[field]), to: showValue(nextRecord[field]) }));
  }
  if (same(old, next)) return [];
  return [{ from: showValue(old), to: showValue(next) }];
}
