import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import { createAutosaver, type AutosaveStatus } from "../autosaver.ts";
import { deferred, settle, type Deferred } from "./support/helpers.ts";
import { deadOrigin, startServer } from "./support/scripted-server.ts";

type Saved = { value: string; version: number };

/** A save whose answers the test releases one by one, in any order. */
function controlledSave() {
  const calls: { value: string; seq: number; answer: Deferred<Saved> }[] = [];
  const save = (value: string, seq: number) => {
    const answer = deferred<Saved>();
    calls.push({ value, seq, answer });
    return answer.promise;
  };
  return { save, calls };
}

function watch(saver: { subscribe(l: (s: AutosaveStatus) => void): () => void }): AutosaveStatus[] {
  const seen: AutosaveStatus[] = [];
  saver.subscribe((s) => seen.push(s));
  return seen;
}

describe("autosaver", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("debounces: a burst of edits is one save of the last value", async () => {
    const { save, calls } = controlledSave();
    const saver = createAutosaver(save, { delayMs: 500, isOnline: () => true });

    saver.update("a");
    await vi.advanceTimersByTimeAsync(300);
    saver.update("ab");
    await vi.advanceTimersByTimeAsync(300);
    saver.update("abc");
    expect(calls).toHaveLength(0);
    expect(saver.status()).toBe("syncing");

    await vi.advanceTimersByTimeAsync(500);
    expect(calls.map((c) => c.value)).toEqual(["abc"]);
    calls[0]!.answer.resolve({ value: "abc", version: 2 });
    await settle();
    expect(saver.status()).toBe("saved");
  });

  it("never lets a slow older save's answer overwrite a newer one", async () => {
    const { save, calls } = controlledSave();
    const applied: Saved[] = [];
    const saver = createAutosaver(save, { delayMs: 100, isOnline: () => true, onSaved: (r) => applied.push(r) });
    const seen = watch(saver);

    saver.update("old");
    await vi.advanceTimersByTimeAsync(100);
    saver.update("new");
    await vi.advanceTimersByTimeAsync(100);
    expect(calls.map((c) => [c.value, c.seq])).toEqual([
      ["old", 1],
      ["new", 2],
    ]);

    calls[1]!.answer.resolve({ value: "new", version: 3 });
    await settle();
    expect(saver.status()).toBe("saved");
    calls[0]!.answer.resolve({ value: "old", version: 2 });
    await settle();

    expect(applied).toEqual([{ value: "new", version: 3 }]);
    expect(saver.status()).toBe("saved");
    expect(seen).toEqual(["syncing", "saved"]);
  });

  it("applies an older answer that arrives first, then the newer one", async () => {
    const { save, calls } = controlledSave();
    const applied: string[] = [];
    const saver = createAutosaver(save, { delayMs: 100, isOnline: () => true, onSaved: (r) => applied.push(r.value) });

    saver.update("one");
    await vi.advanceTimersByTimeAsync(100);
    saver.update("two");
    await vi.advanceTimersByTimeAsync(100);
    calls[0]!.answer.resolve({ value: "one", version: 2 });
    await settle();
    expect(saver.status()).toBe("syncing"); // the newest save is still out
    calls[1]!.answer.resolve({ value: "two", version: 3 });
    await settle();

    expect(applied).toEqual(["one", "two"]);
  });

  it("ignores an older save's failure once a newer one has been sent", async () => {
    const { save, calls } = controlledSave();
    const saver = createAutosaver(save, { delayMs: 100, isOnline: () => true });

    saver.update("old");
    await vi.advanceTimersByTimeAsync(100);
    saver.update("new");
    await vi.advanceTimersByTimeAsync(100);
    calls[1]!.answer.resolve({ value: "new", version: 3 });
    calls[0]!.answer.reject(new Error("500"));
    await settle();

    expect(saver.status()).toBe("saved");
    expect(saver.lastError()).toBeUndefined();
  });

  it("says error when the newest save is refused, and sends the value again on flush", async () => {
    const { save, calls } = controlledSave();
    const saver = createAutosaver(save, { delayMs: 100, isOnline: () => true });

    saver.update("x");
    await vi.advanceTimersByTimeAsync(100);
    calls[0]!.answer.reject(new Error("422 invalid"));
    await settle();
    expect(saver.status()).toBe("error");
    expect(saver.lastError()).toEqual(new Error("422 invalid"));

    const flushed = saver.flush();
    calls[1]!.answer.resolve({ value: "x", version: 2 });
    await flushed;
    expect(calls.map((c) => c.value)).toEqual(["x", "x"]);
    expect(saver.status()).toBe("saved");
  });

  it("holds edits while the browser is offline and saves when it comes back", async () => {
    const { save, calls } = controlledSave();
    let online = false;
    const events = new EventTarget();
    const saver = createAutosaver(save, { delayMs: 100, isOnline: () => online, events });

    saver.update("typed offline");
    await vi.advanceTimersByTimeAsync(100);
    expect(calls).toHaveLength(0);
    expect(saver.status()).toBe("offline");

    online = true;
    events.dispatchEvent(new Event("online"));
    await settle();
    expect(calls.map((c) => c.value)).toEqual(["typed offline"]);
    calls[0]!.answer.resolve({ value: "typed offline", version: 2 });
    await settle();
    expect(saver.status()).toBe("saved");
    saver.dispose();
  });

  it("ignores answers after dispose", async () => {
    const { save, calls } = controlledSave();
    const applied: string[] = [];
    const saver = createAutosaver(save, { delayMs: 100, isOnline: () => true, onSaved: (r) => applied.push(r.value) });
    saver.update("x");
    await vi.advanceTimersByTimeAsync(100);
    saver.dispose();
    calls[0]!.answer.resolve({ value: "x", version: 2 });
    await settle();
    saver.update("y");
    await vi.advanceTimersByTimeAsync(200);

    expect(applied).toEqual([]);
    expect(calls).toHaveLength(1);
  });
});

describe("autosaver over a real network failure", () => {
  it("says offline when fetch fails, keeps the value, and retries it", async () => {
    const dead = await deadOrigin();
    let target = `${dead}/drafts/1`;
    const sent: string[] = [];
    const saver = createAutosaver(
      async (value: string) => {
        sent.push(value);
        const response = await fetch(target, { method: "PUT", body: value });
        return response.status;
      },
      { delayMs: 0, isOnline: () => true },
    );

    saver.update("draft");
    await saver.flush();
    expect(saver.status()).toBe("offline");
    expect(saver.lastError()).toBeInstanceOf(TypeError);

    const server = await startServer([{ status: 204 }]);
    target = `${server.origin}/drafts/1`;
    await saver.flush();
    await server.close();

    expect(sent).toEqual(["draft", "draft"]);
    expect(server.requests.map((r) => r.body)).toEqual(["draft"]);
    expect(saver.status()).toBe("saved");
  });
});
