import { describe, expect, it } from "vitest";
import { addOne, itemCount, setQty } from "../cart-ops.ts";
import { describeChange, showValue } from "../changes.ts";
import { nextSeq } from "../notes-seq.ts";
import { applyPicks, documentOf, mergeProfile, touchesNoEditedField } from "../profile-edit.ts";
import { combine } from "../sync.ts";

describe("cart items", () => {
  const items = [
    { product: "tea", qty: 2 },
    { product: "coffee", qty: 1 },
  ];

  it("sets, adds and removes without touching the input", () => {
    expect(setQty(items, "tea", 5)).toEqual([
      { product: "tea", qty: 5 },
      { product: "coffee", qty: 1 },
    ]);
    expect(setQty(items, "tea", 0)).toEqual([{ product: "coffee", qty: 1 }]);
    expect(setQty(items, "cocoa", 1)).toHaveLength(3);
    expect(addOne(items, "coffee")[1]).toEqual({ product: "coffee", qty: 2 });
    expect(items[0]).toEqual({ product: "tea", qty: 2 });
    expect(itemCount(items)).toBe(3);
  });

  it("keeps quantities within the shop's 1-99", () => {
    expect(setQty(items, "tea", 500)[0]).toEqual({ product: "tea", qty: 99 });
    expect(addOne([{ product: "tea", qty: 99 }], "tea")).toEqual([{ product: "tea", qty: 99 }]);
  });
});

describe("audit changes", () => {
  it("lists the fields that changed, old → new", () => {
    expect(describeChange({ status: "confirmed", payment: "paid", total: 900 }, { status: "cancelled", payment: "refunded", total: 900 })).toEqual([
      { field: "status", from: "confirmed", to: "cancelled" },
      { field: "payment", from: "paid", to: "refunded" },
    ]);
  });

  it("shows a creation from nothing, and whole values that are not objects", () => {
    expect(describeChange(null, { status: "pending" })).toEqual([{ field: "status", from: "—", to: "pending" }]);
    expect(describeChange("pending", "paid")).toEqual([{ from: "pending", to: "paid" }]);
    expect(describeChange(3, 3)).toEqual([]);
    expect(showValue({ a: 1 })).toBe('{"a":1}');
    expect(showValue("")).toBe("(empty)");
  });
});

describe("notes seq", () => {
  it("rises across reloads and within a millisecond", () => {
    expect(nextSeq(undefined, 1000)).toBe(1000);
    expect(nextSeq(1000, 1000)).toBe(1001);
    expect(nextSeq(5000, 1000)).toBe(5001); // a clock set back still rises
    expect(nextSeq(1000, 2000.7)).toBe(2000);
    expect(nextSeq(Number.NaN, 10)).toBe(10);
  });
});

describe("profile conflicts", () => {
  const base = { name: "Ada Lovelace", email: "ada@example.org" };

  it("merges changes to different fields without asking", () => {
    const mine = { ...base, name: "Ada King" };
    const theirs = { ...base, email: "ada@analytical.engine" };
    expect(mergeProfile(base, mine, theirs)).toEqual({
      merged: { name: "Ada King", email: "ada@analytical.engine" },
      conflicts: [],
    });
  });

  it("asks about a field both changed, and applies the pick", () => {
    const mine = { ...base, name: "Ada King" };
    const theirs = { ...base, name: "Countess of Lovelace" };
    const result = mergeProfile(base, mine, theirs);
    expect(result.conflicts.map((c) => c.field)).toEqual(["name"]);
    expect(result.merged.name).toBe("Countess of Lovelace"); // theirs until chosen
    expect(applyPicks(result.merged, result.conflicts, { name: "mine" }).name).toBe("Ada King");
    expect(applyPicks(result.merged, result.conflicts, { name: "theirs" }).name).toBe("Countess of Lovelace");
  });

  it("sees a 412 that touched no form field (notes, addresses) as safe to write on top of", () => {
    expect(touchesNoEditedField(base, { ...base })).toBe(true);
    expect(touchesNoEditedField(base, { ...base, email: "x@y" })).toBe(false);
  });

  it("builds the whole document from the form's fields and the current rest", () => {
    const current = { name: "old", email: "old@x", notes: "n", addresses: [{ id: "a1", line: "1 Road" }], version: 4 };
    expect(documentOf(current, base, undefined)).toEqual({ ...base, notes: "n", addresses: [{ id: "a1", line: "1 Road" }] });
    expect(documentOf(current, base, "newer notes").notes).toBe("newer notes");
  });
});

describe("sync indicator", () => {
  it("puts offline before errors before syncing before saved", () => {
    expect(combine([], true)).toBe("saved");
    expect(combine(["saved", "syncing"], true)).toBe("syncing");
    expect(combine(["syncing", "error"], true)).toBe("error");
    expect(combine(["error", "offline"], true)).toBe("offline");
    expect(combine(["saved"], false)).toBe("offline");
  });
});

describe("notes seq floor", () => {
  it("goes on above the seq the shop reports", async () => {
    const store = new Map<string, string>();
    const fake = {
      getItem: (k: string) => store.get(k) ?? null,
      setItem: (k: string, v: string) => void store.set(k, v),
    };
    const original = Object.getOwnPropertyDescriptor(globalThis, "localStorage");
    Object.defineProperty(globalThis, "localStorage", { value: fake, configurable: true });
    try {
      const { issueSeq, raiseSeqFloor } = await import("../notes-seq.ts");
      expect(issueSeq("ada", 1000)).toBe(1000);
      raiseSeqFloor("ada", 5000);
      expect(issueSeq("ada", 1000)).toBe(5001);
      raiseSeqFloor("ada", 10); // never lowers it
      expect(issueSeq("ada", 1000)).toBe(5002);
      expect(issueSeq("grace", 1000)).toBe(1000);
    } finally {
      if (original) Object.defineProperty(globalThis, "localStorage", original);
      else delete (globalThis as { localStorage?: unknown }).localStorage;
    }
  });
});
