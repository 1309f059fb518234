import { afterEach, describe, expect, it, vi } from "vitest";
import { createIntentStore, type RequestSpec } from "../intents.ts";
import { MemoryStorage } from "../memory-storage.ts";
import { newIdempotencyKey } from "../idempotency-key.ts";

const order: RequestSpec = { method: "POST", url: "/orders", body: { cart: "c-42" } };

afterEach(() => {
  vi.unstubAllGlobals();
  vi.resetModules();
});

describe("intents", () => {
  it("stores a new intent with its key, request and start time", () => {
    const storage = new MemoryStorage();
    const store = createIntentStore({ storage, now: () => 1_700_000_000_000 });
    const intent = store.start("place-order:c-42", order);

    expect(intent.key).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(intent).toEqual({ name: "place-order:c-42", key: intent.key, request: order, startedAt: 1_700_000_000_000 });
    expect(JSON.parse(storage.getItem("oncely:intent:place-order:c-42")!)).toEqual(intent);
  });

  it("gives a second start of the same intent (a double click) the same key and the first request", () => {
    const store = createIntentStore({ storage: new MemoryStorage() });
    const first = store.start("place-order:c-42", order);
    const second = store.start("place-order:c-42", { ...order, body: { cart: "c-42", note: "changed" } });

    expect(second.key).toBe(first.key);
    expect(second.request).toEqual(order);
  });

  it("gives different intents different keys", () => {
    const store = createIntentStore({ storage: new MemoryStorage() });
    const keys = new Set(Array.from({ length: 50 }, (_, i) => store.start(`order:${i}`, order).key));
    expect(keys.size).toBe(50);
  });

  it("finds the pending intent after a reload: new module state, same sessionStorage", async () => {
    const storage = new MemoryStorage();
    vi.stubGlobal("sessionStorage", storage);
    const before = await import("../index.ts");
    const started = before.startIntent("place-order:c-42", order);

    vi.resetModules();
    const after = await import("../index.ts");

    expect(after.defaultIntentStore).not.toBe(before.defaultIntentStore);
    expect(after.pendingIntent("place-order:c-42")).toEqual(started);
    expect(after.startIntent("place-order:c-42", order).key).toBe(started.key);
    expect(after.pendingIntents().map((i) => i.key)).toEqual([started.key]);
  });

  it("gives a new key only after the intent is retired", () => {
    const store = createIntentStore({ storage: new MemoryStorage() });
    const first = store.start("place-order:c-42", order);
    store.retire("place-order:c-42");

    expect(store.pending("place-order:c-42")).toBeUndefined();
    expect(store.start("place-order:c-42", order).key).not.toBe(first.key);
  });

  it("does not retire a newer intent when an older key is named", () => {
    const store = createIntentStore({ storage: new MemoryStorage() });
    const old = store.start("save", order);
    store.retire("save", old.key);
    const newer = store.start("save", order);

    store.retire("save", old.key);
    expect(store.pending("save")?.key).toBe(newer.key);
  });

  it("lists pending intents oldest first and skips foreign and corrupt entries", () => {
    const storage = new MemoryStorage();
    let clock = 100;
    const store = createIntentStore({ storage, now: () => clock-- });
    const a = store.start("a", order);
    const b = store.start("b", order);
    storage.setItem("someone-else", "{}");
    storage.setItem("oncely:intent:broken", "{not json");
    storage.setItem("oncely:intent:wrong-shape", JSON.stringify({ name: "x" }));

    expect(store.list().map((i) => i.name)).toEqual([b.name, a.name]);
    expect(store.pending("broken")).toBeUndefined();
  });

  it("keeps working in memory when the browser refuses storage", () => {
    const refusing = new MemoryStorage();
    refusing.setItem = () => {
      throw new DOMException("quota", "QuotaExceededError");
    };
    const store = createIntentStore({ storage: refusing });
    const first = store.start("place-order", order);

    expect(store.start("place-order", order).key).toBe(first.key);
    expect(store.list()).toHaveLength(1);
    store.retire("place-order");
    expect(store.pending("place-order")).toBeUndefined();

    const blocked = createIntentStore({
      storage: () => {
        throw new DOMException("blocked", "SecurityError");
      },
    });
    expect(blocked.start("x", order).key).toBe(blocked.start("x", order).key);
  });

  it("builds a version 4 UUID where crypto.randomUUID is missing (plain http)", () => {
    const { getRandomValues } = globalThis.crypto;
    vi.stubGlobal("crypto", { getRandomValues: getRandomValues.bind(globalThis.crypto) });
    const keys = Array.from({ length: 200 }, () => newIdempotencyKey());

    for (const key of keys) {
      expect(key).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    }
    expect(new Set(keys).size).toBe(keys.length);
  });
});
