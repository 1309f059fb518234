import { afterEach, describe, expect, it } from "vitest";
import { mergeFields } from "../merge-fields.ts";
import { createVersionedClient, VersionedReadError } from "../versioned.ts";
import { deadOrigin, startServer, type TestServer } from "./support/scripted-server.ts";
import { startDocServer, type DocServerOptions } from "./support/versioned-doc-server.ts";

type Doc = { title: string; count: number; updated_by?: string; updated_at?: string };

const servers: TestServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function docServer(options: DocServerOptions = {}) {
  const server = await startDocServer({ title: "Draft", count: 1 }, options);
  servers.push(server);
  return server;
}

describe("conditional writes", () => {
  it("reads the validators and writes with If-Match, remembering the new ETag", async () => {
    const server = await docServer();
    const client = createVersionedClient({ headers: { "x-user": "bob" } });

    const read = await client.readVersioned<Doc>(server.url);
    expect(read).toMatchObject({ data: { title: "Draft", count: 1 }, etag: '"v1"' });
    expect(read.lastModified).toBe("Thu, 03 Dec 2026 06:00:00 GMT");

    const first = await client.writeVersioned(server.url, "PUT", { ...read.data, count: 2 });
    expect(first).toMatchObject({ kind: "written", status: 200, etag: '"v2"' });
    expect(client.etagOf(server.url)).toBe('"v2"');

    const second = await client.writeVersioned(server.url, "PUT", { ...read.data, count: 3 });
    expect(second).toMatchObject({ kind: "written", etag: '"v3"' });
    expect(server.requests.filter((r) => r.method === "PUT").map((r) => r.headers["if-match"])).toEqual(['"v1"', '"v2"']);
  });

  it("turns a 412 into a conflict holding both versions, who changed it and when; nothing written", async () => {
    const server = await docServer();
    const client = createVersionedClient();
    const read = await client.readVersioned<Doc>(server.url);
    server.writeAs("ada", { title: "Ada's title" });

    const mine = { ...read.data, count: 5 };
    const result = await client.writeVersioned(server.url, "PUT", mine);

    expect(result.kind).toBe("conflict");
    if (result.kind !== "conflict") return;
    expect(result.mine).toEqual(mine);
    expect(result.current).toEqual({ title: "Ada's title", count: 1 });
    expect(result.currentEtag).toBe('"v2"');
    expect(result.changedBy).toBe("ada");
    expect(result.changedAt?.toISOString()).toBe("2026-12-03T06:00:20.000Z");
    expect(server.doc()).toEqual({ title: "Ada's title", count: 1 });
    // The stale tag stays remembered: only a deliberate choice writes on top of Ada's version.
    expect(client.etagOf(server.url)).toBe('"v1"');
  });

  it("resolves the conflict by merging and writing with the current ETag", async () => {
    const server = await docServer();
    const client = createVersionedClient();
    const base = (await client.readVersioned<Doc>(server.url)).data;
    server.writeAs("ada", { title: "Ada's title" });

    const conflict = await client.writeVersioned(server.url, "PUT", { ...base, count: 5 });
    if (conflict.kind !== "conflict") throw new Error(`expected a conflict, got ${conflict.kind}`);
    const { merged, conflicts } = mergeFields(base, conflict.mine, conflict.current);
    expect(conflicts).toEqual([]);

    const written = await client.writeVersioned(server.url, "PUT", merged, conflict.currentEtag);
    expect(written).toMatchObject({ kind: "written", etag: '"v3"' });
    expect(server.doc()).toEqual({ title: "Ada's title", count: 5 });
  });

  it("treats a 409 precondition-failed (the conflict-status policy) the same way", async () => {
    const server = await docServer({ conflictStatus: 409 });
    const client = createVersionedClient();
    const read = await client.readVersioned<Doc>(server.url);
    server.writeAs("ada", { count: 9 });

    const result = await client.writeVersioned(server.url, "PUT", read.data);
    expect(result).toMatchObject({ kind: "conflict", currentEtag: '"v2"', changedBy: "ada" });
  });

  it("takes who and when from the current row's fields, with configurable names", async () => {
    const server = await startDocServer(
      { title: "Draft", modified_by: "seed", modified_at: 1_796_283_748_120 },
      { bareProblem: true },
    );
    servers.push(server);
    const client = createVersionedClient({ changedByField: "modified_by", changedAtField: "modified_at" });
    const read = await client.readVersioned<Record<string, unknown>>(server.url);
    server.writeAs("ada", { title: "Ada's", modified_by: "ada" });

    const result = await client.writeVersioned(server.url, "PUT", { ...read.data, title: "Bob's" });

    expect(result).toMatchObject({ kind: "conflict", changedBy: "ada" });
    expect(result.kind === "conflict" && result.changedAt?.getTime()).toBe(1_796_283_748_120);
  });

  it("reads the current version itself when a 412 does not carry it", async () => {
    const server = await docServer({ emptyRefusal: true });
    const client = createVersionedClient();
    const read = await client.readVersioned<Doc>(server.url);
    server.writeAs("ada", { title: "Ada's title" });

    const result = await client.writeVersioned(server.url, "PUT", { ...read.data, count: 2 });

    expect(result).toMatchObject({ kind: "conflict", current: { title: "Ada's title" }, currentEtag: '"v2"' });
    expect(server.requests.map((r) => r.method)).toEqual(["GET", "PUT", "GET"]);
  });

  it("reports a 428 (no precondition) as a definite failure", async () => {
    const server = await docServer({ requirePrecondition: true });
    const client = createVersionedClient();

    const result = await client.writeVersioned(server.url, "PUT", { title: "blind" });
    expect(result).toMatchObject({ kind: "failed", status: 428, problem: { type: "urn:oncely:problem:precondition-required" } });
    expect(server.requests[0]!.headers["if-match"]).toBeUndefined();
  });

  it("sends an idempotency key when given one", async () => {
    const server = await docServer();
    const client = createVersionedClient();
    await client.readVersioned<Doc>(server.url);

    await client.writeVersioned(server.url, "PUT", { title: "t", count: 1 }, undefined, { idempotencyKey: "k-1" });
    expect(server.requests[1]!.headers["idempotency-key"]).toBe("k-1");
  });

  it("reports a lost write as unknown", async () => {
    const origin = await deadOrigin();
    const client = createVersionedClient();
    const result = await client.writeVersioned(`${origin}/docs/7`, "PUT", { title: "t" }, '"v1"');
    expect(result).toMatchObject({ kind: "unknown", reason: "network-error" });
  });

  it("throws a typed error when a read fails", async () => {
    const server = await startServer([{ status: 404, contentType: "application/problem+json", body: { title: "no such doc" } }]);
    servers.push(server);
    const client = createVersionedClient();

    const error = await client.readVersioned(`${server.origin}/docs/8`).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(VersionedReadError);
    expect(error).toMatchObject({ status: 404, message: "no such doc" });
  });
});
