import { afterEach, describe, expect, it } from "vitest";
import { createIntentStore } from "../intents.ts";
import { MemoryStorage } from "../memory-storage.ts";
import { ProblemType } from "../problem.ts";
import { sendIdempotent, type SendOptions } from "../send-idempotent.ts";
import { recordingSleep } from "./support/helpers.ts";
import { problem, startServer, type Reply, type TestServer } from "./support/scripted-server.ts";

const created: Reply = { status: 201, body: { order: "o-1", state: "placed" } };
const servers: TestServer[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function serve(script: Reply[]): Promise<TestServer> {
  const server = await startServer(script);
  servers.push(server);
  return server;
}

function setup(server: TestServer, storage = new MemoryStorage()) {
  const store = createIntentStore({ storage });
  const intent = store.start("place-order:c-42", {
    method: "POST",
    url: `${server.origin}/orders`,
    body: { cart: "c-42" },
  });
  const waits = recordingSleep();
  const options: SendOptions = { store, sleep: waits.sleep, random: () => 0, baseDelayMs: 100 };
  return { store, intent, waits, options, storage };
}

function keysSent(server: TestServer): (string | string[] | undefined)[] {
  return server.requests.map((r) => r.headers["idempotency-key"]);
}

describe("sendIdempotent", () => {
  it("sends the key, the JSON body and returns the confirmed answer; the intent is retired", async () => {
    const server = await serve([created]);
    const { store, intent, options } = setup(server);

    const outcome = await sendIdempotent(intent, options);

    expect(outcome).toMatchObject({ kind: "succeeded", status: 201, body: { order: "o-1" }, attempts: 1, replayed: false });
    expect(server.requests).toHaveLength(1);
    expect(server.requests[0]).toMatchObject({ method: "POST", path: "/orders", body: '{"cart":"c-42"}' });
    expect(server.requests[0]!.headers["content-type"]).toBe("application/json");
    expect(keysSent(server)).toEqual([intent.key]);
    expect(store.pending(intent.name)).toBeUndefined();
  });

  it("retries a 500 with the same key and returns the 201 that followed", async () => {
    const server = await serve([{ status: 500, body: "boom" }, created]);
    const { store, intent, options } = setup(server);

    const outcome = await sendIdempotent(intent, options);

    expect(outcome).toMatchObject({ kind: "succeeded", status: 201, attempts: 2 });
    expect(keysSent(server)).toEqual([intent.key, intent.key]);
    expect(store.pending(intent.name)).toBeUndefined();
  });

  it("waits at least Retry-After (seconds) after a 503", async () => {
    const server = await serve([
      problem(503, ProblemType.storeUnavailable, {}, { "retry-after": "2" }),
      problem(503, ProblemType.storeUnavailable, {}, { "retry-after": "0" }),
      created,
    ]);
    const { intent, waits, options } = setup(server);

    const outcome = await sendIdempotent(intent, { ...options, random: () => 0.5 });

    expect(outcome.kind).toBe("succeeded");
    // 2 s from the header beats 50 ms of jitter; 0 s leaves the jitter (0.5 * 200 ms).
    expect(waits.delays).toEqual([2000, 100]);
  });

  it("waits until a Retry-After HTTP date", async () => {
    const now = Date.parse("2026-12-03T06:42:28Z");
    const server = await serve([{ status: 429, headers: { "retry-after": "Thu, 03 Dec 2026 06:42:31 GMT" } }, created]);
    const { intent, waits, options } = setup(server);

    const outcome = await sendIdempotent(intent, { ...options, now: () => now });

    expect(outcome.kind).toBe("succeeded");
    expect(waits.delays).toEqual([3000]);
  });

  it("retries the gateway's 409 request-in-progress and returns the replay", async () => {
    const server = await serve([
      problem(409, ProblemType.requestInProgress, { detail: "the first request is still running" }, { "retry-after": "1" }),
      { ...created, headers: { "idempotent-replayed": "true" } },
    ]);
    const { intent, waits, options } = setup(server);

    const outcome = await sendIdempotent(intent, options);

    expect(outcome).toMatchObject({ kind: "succeeded", status: 201, replayed: true, attempts: 2 });
    expect(waits.delays).toEqual([1000]);
    expect(keysSent(server)).toEqual([intent.key, intent.key]);
  });

  it("does not retry a 409 of any other type, and retires the intent", async () => {
    const server = await serve([problem(409, "urn:shop:problem:cart-request-in-progress"), created]);
    const { store, intent, options } = setup(server);

    const outcome = await sendIdempotent(intent, options);

    expect(outcome).toMatchObject({ kind: "failed", status: 409 });
    expect(server.requests).toHaveLength(1);
    expect(store.pending(intent.name)).toBeUndefined();
  });

  it("never retries a 422: the failure is definite, with its problem body, and the intent retired", async () => {
    const server = await serve([
      problem(422, ProblemType.idempotencyKeyReused, { detail: "another body", request_id: "r-1" }),
      created,
    ]);
    const { store, intent, waits, options } = setup(server);

    const outcome = await sendIdempotent(intent, options);

    expect(outcome.kind).toBe("failed");
    if (outcome.kind !== "failed") return;
    expect(outcome.status).toBe(422);
    expect(outcome.problem).toMatchObject({ type: ProblemType.idempotencyKeyReused, request_id: "r-1" });
    expect(server.requests).toHaveLength(1);
    expect(waits.delays).toEqual([]);
    expect(store.pending(intent.name)).toBeUndefined();
  });

  it("retries 408 and 429", async () => {
    const server = await serve([{ status: 408 }, { status: 429 }, created]);
    const { intent, options } = setup(server);

    expect(await sendIdempotent(intent, options)).toMatchObject({ kind: "succeeded", attempts: 3 });
    expect(keysSent(server)).toEqual([intent.key, intent.key, intent.key]);
  });

  it("retries after the connection died mid-request, with the same key", async () => {
    const server = await serve([{ destroy: true }, created]);
    const { intent, options } = setup(server);

    const outcome = await sendIdempotent(intent, options);

    expect(outcome).toMatchObject({ kind: "succeeded", attempts: 2 });
    expect(keysSent(server)).toEqual([intent.key, intent.key]);
  });

  it("gives up as unknown and keeps the intent; after a reload the same key learns the outcome", async () => {
    const storage = new MemoryStorage();
    const server = await serve([{ destroy: true }, { destroy: true }, { destroy: true }, { ...created, headers: { "idempotent-replayed": "true" } }]);
    const { store, intent, options } = setup(server, storage);

    const lost = await sendIdempotent(intent, { ...options, maxAttempts: 3 });

    expect(lost).toMatchObject({ kind: "unknown", reason: "network-error", attempts: 3 });
    expect(store.pending(intent.name)).toEqual(intent);

    // The reload: a new store over the same sessionStorage, as a fresh page would build.
    const reloaded = createIntentStore({ storage });
    const resumed = reloaded.pending("place-order:c-42");
    expect(resumed?.key).toBe(intent.key);
    const outcome = await sendIdempotent(resumed!, { ...options, store: reloaded });

    expect(outcome).toMatchObject({ kind: "succeeded", replayed: true });
    expect(new Set(keysSent(server))).toEqual(new Set([intent.key]));
    expect(reloaded.pending("place-order:c-42")).toBeUndefined();
  });

  it("ends unknown after bounded 5xx attempts, with the last status, intent still pending", async () => {
    const server = await serve(Array.from({ length: 10 }, () => problem(502, ProblemType.upstreamUnavailable)));
    const { store, intent, waits, options } = setup(server);

    const outcome = await sendIdempotent(intent, { ...options, maxAttempts: 4 });

    expect(outcome).toMatchObject({ kind: "unknown", reason: "server-error", lastStatus: 502, attempts: 4 });
    expect(outcome.kind === "unknown" && outcome.problem?.type).toBe(ProblemType.upstreamUnavailable);
    expect(server.requests).toHaveLength(4);
    expect(waits.delays).toHaveLength(3);
    expect(store.pending(intent.name)?.key).toBe(intent.key);
  });

  it("gives up at once when Retry-After is longer than allowed", async () => {
    const server = await serve([{ status: 503, headers: { "retry-after": "3600" } }, created]);
    const { store, intent, waits, options } = setup(server);

    const outcome = await sendIdempotent(intent, { ...options, maxRetryAfterMs: 60_000 });

    expect(outcome).toMatchObject({ kind: "unknown", reason: "retry-after-too-long", lastStatus: 503 });
    expect(waits.delays).toEqual([]);
    expect(server.requests).toHaveLength(1);
    expect(store.pending(intent.name)).toBeDefined();
  });

  it("counts a silent server as a lost answer and retries it", async () => {
    const server = await serve([{ ...created, delayMs: 2000 }, created]);
    const { intent, options } = setup(server);

    const outcome = await sendIdempotent(intent, { ...options, attemptTimeoutMs: 100 });

    expect(outcome).toMatchObject({ kind: "succeeded", attempts: 2 });
  });

  it("stops when the caller aborts, leaving the intent pending", async () => {
    const server = await serve([{ status: 503 }, created]);
    const { store, intent, options } = setup(server);
    const controller = new AbortController();

    const outcome = await sendIdempotent(intent, {
      ...options,
      signal: controller.signal,
      onAttempt: () => controller.abort(),
    });

    expect(outcome).toMatchObject({ kind: "unknown", reason: "aborted" });
    expect(server.requests).toHaveLength(1);
    expect(store.pending(intent.name)).toBeDefined();
  });

  it("keeps credentials out of storage: per-send headers are sent, not stored", async () => {
    const storage = new MemoryStorage();
    const server = await serve([created]);
    const { intent, options } = setup(server, storage);

    await sendIdempotent(intent, { ...options, headers: { authorization: "Bearer t0ken", "idempotency-key": "forged" } });

    expect(server.requests[0]!.headers.authorization).toBe("Bearer t0ken");
    expect(keysSent(server)).toEqual([intent.key]);
    expect(JSON.stringify([...Array(storage.length).keys()].map((i) => storage.getItem(storage.key(i)!)))).not.toContain("t0ken");
  });

  it("draws each wait with full jitter under the growing ceiling", async () => {
    const server = await serve([{ status: 503 }, { status: 503 }, { status: 503 }, { status: 503 }, created]);
    const { intent, waits, options } = setup(server);

    await sendIdempotent(intent, { ...options, random: () => 0.75, baseDelayMs: 100, maxDelayMs: 500 });

    // ceilings 100, 200, 400, then capped at 500
    expect(waits.delays).toEqual([75, 150, 300, 375]);
  });
});
