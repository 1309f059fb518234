import { MutationObserver, QueryClient } from "@tanstack/react-query";
import { afterEach, describe, expect, it } from "vitest";
import { createIntentRunner, idempotentState, type IntentCommand } from "../intent-runner.ts";
import { createIntentStore } from "../intents.ts";
import { MemoryStorage } from "../memory-storage.ts";
import type { Outcome } from "../outcome.ts";
import { ProblemType } from "../problem.ts";
import { deferred } from "./support/helpers.ts";
import { problem, startServer, type Handler, type Reply, type TestServer } from "./support/scripted-server.ts";

type Vars = { cart: string };

const servers: TestServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(script: Reply[] | Handler) {
  const server = await startServer(script);
  servers.push(server);
  return server;
}

/** A TanStack Query mutation over the runner, observed the way the hook observes it. */
function observe(server: TestServer, storage: MemoryStorage) {
  const store = createIntentStore({ storage });
  const runner = createIntentRunner<Vars>({
    intent: "place-order:c-42",
    request: (vars) => ({ method: "POST", url: `${server.origin}/orders`, body: vars }),
    store,
    send: { random: () => 0, baseDelayMs: 1, maxAttempts: 2 },
  });
  const client = new QueryClient();
  const observer = new MutationObserver<Outcome | null, Error, IntentCommand<Vars>>(client, { mutationFn: runner });
  const states: string[] = [];
  observer.subscribe((result) => states.push(idempotentState(result.status, result.data)));
  return { store, observer, states, state: () => idempotentState(observer.getCurrentResult().status, observer.getCurrentResult().data) };
}

describe("the idempotent mutation", () => {
  it("goes idle, processing, succeeded, and retires the intent", async () => {
    const server = await serve([{ status: 201, body: { order: "o-1" } }]);
    const m = observe(server, new MemoryStorage());

    expect(m.state()).toBe("idle");
    const outcome = await m.observer.mutate({ kind: "submit", vars: { cart: "c-42" } });

    expect(outcome).toMatchObject({ kind: "succeeded", body: { order: "o-1" } });
    expect(m.states).toEqual(["processing", "succeeded"]);
    expect(m.store.pending("place-order:c-42")).toBeUndefined();
  });

  it("sends once for a double click: the second submit joins the first", async () => {
    const release = deferred<void>();
    const server = await serve(async () => {
      await release.promise;
      return { status: 201, body: { order: "o-1" } };
    });
    const m = observe(server, new MemoryStorage());

    const first = m.observer.mutate({ kind: "submit", vars: { cart: "c-42" } });
    const second = m.observer.mutate({ kind: "submit", vars: { cart: "c-42" } });
    await new Promise((resolve) => setTimeout(resolve, 50));
    release.resolve();
    const [a, b] = await Promise.all([first, second]);

    expect(server.requests).toHaveLength(1);
    expect(a).toBe(b);
  });

  it("shows failed for a definite refusal", async () => {
    const server = await serve([problem(422, ProblemType.idempotencyKeyReused)]);
    const m = observe(server, new MemoryStorage());

    await m.observer.mutate({ kind: "submit", vars: { cart: "c-42" } });
    expect(m.state()).toBe("failed");
  });

  it("shows unknown when the answer is lost, and a reloaded page resumes with the same key", async () => {
    const storage = new MemoryStorage();
    const server = await serve([{ destroy: true }, { destroy: true }, { status: 201, headers: { "idempotent-replayed": "true" }, body: {} }]);
    const before = observe(server, storage);

    await before.observer.mutate({ kind: "submit", vars: { cart: "c-42" } });
    expect(before.state()).toBe("unknown");
    const key = before.store.pending("place-order:c-42")?.key;
    expect(key).toBeDefined();

    const after = observe(server, storage); // a new page over the same sessionStorage
    const outcome = await after.observer.mutate({ kind: "resume" });

    expect(outcome).toMatchObject({ kind: "succeeded", replayed: true });
    expect(after.state()).toBe("succeeded");
    expect(server.requests.map((r) => r.headers["idempotency-key"])).toEqual([key, key, key]);
    expect(after.store.pending("place-order:c-42")).toBeUndefined();
  });

  it("re-sends the pending request, not new variables, while an intent is unresolved", async () => {
    const storage = new MemoryStorage();
    const server = await serve([{ destroy: true }, { destroy: true }, { status: 201, body: {} }]);
    const m = observe(server, storage);

    await m.observer.mutate({ kind: "submit", vars: { cart: "c-42" } });
    await m.observer.mutate({ kind: "submit", vars: { cart: "c-43" } });

    expect(server.requests.map((r) => r.body)).toEqual(Array(3).fill('{"cart":"c-42"}'));
  });

  it("does nothing on resume when nothing is pending", async () => {
    const server = await serve([]);
    const m = observe(server, new MemoryStorage());

    expect(await m.observer.mutate({ kind: "resume" })).toBeNull();
    expect(m.state()).toBe("idle");
    expect(server.requests).toHaveLength(0);
  });
});
