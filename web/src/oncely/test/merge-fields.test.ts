import { describe, expect, it } from "vitest";
import { mergeFields } from "../merge-fields.ts";

describe("mergeFields", () => {
  const base = { title: "Draft", count: 1, tags: ["a"], note: "n" };

  it("takes changes from either side when they touch different fields", () => {
    const mine = { ...base, count: 5 };
    const theirs = { ...base, title: "Ada's title" };

    expect(mergeFields(base, mine, theirs)).toEqual({
      merged: { title: "Ada's title", count: 5, tags: ["a"], note: "n" },
      conflicts: [],
    });
  });

  it("reports a field both sides changed to different values, keeping theirs until the user chooses", () => {
    const mine = { ...base, title: "Bob's title", count: 5 };
    const theirs = { ...base, title: "Ada's title" };

    const { merged, conflicts } = mergeFields(base, mine, theirs);

    expect(conflicts).toEqual([{ field: "title", base: "Draft", mine: "Bob's title", theirs: "Ada's title" }]);
    expect(merged).toEqual({ ...base, title: "Ada's title", count: 5 });
  });

  it("is no conflict when both made the same change", () => {
    const same = { ...base, title: "Same", tags: ["a", "b"] };
    expect(mergeFields(base, { ...same }, { ...same, tags: ["a", "b"] })).toEqual({ merged: same, conflicts: [] });
  });

  it("compares nested values as whole JSON values", () => {
    const b = { address: { city: "Oslo", zip: "0150" } };
    const { conflicts } = mergeFields(b, { address: { zip: "0150", city: "Bergen" } }, { address: { city: "Oslo", zip: "0151" } });
    expect(conflicts.map((c) => c.field)).toEqual(["address"]);

    expect(mergeFields(b, { address: { zip: "0150", city: "Oslo" } }, b).conflicts).toEqual([]);
  });

  it("handles fields added and removed", () => {
    const mine: Record<string, unknown> = { ...base, added: 1 };
    delete mine.note;
    const theirs = { ...base, other: 2 };

    const { merged, conflicts } = mergeFields<Record<string, unknown>>(base, mine, theirs);

    expect(conflicts).toEqual([]);
    expect(merged).toEqual({ title: "Draft", count: 1, tags: ["a"], added: 1, other: 2 });
  });

  it("reports a removal against an edit", () => {
    const mine: Record<string, unknown> = { ...base };
    delete mine.note;
    const { conflicts } = mergeFields<Record<string, unknown>>(base, mine, { ...base, note: "edited" });
    expect(conflicts).toEqual([{ field: "note", base: "n", mine: undefined, theirs: "edited" }]);
  });

  it("leaves its inputs alone", () => {
    const b = structuredClone(base);
    const mine = { ...base, title: "x" };
    const theirs = { ...base, title: "y" };
    const copies = structuredClone([b, mine, theirs]);
    mergeFields(b, mine, theirs);
    expect([b, mine, theirs]).toEqual(copies);
  });
});
