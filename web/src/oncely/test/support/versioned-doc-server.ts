import { startServer, type Reply, type TestServer } from "./scripted-server.ts";

export interface DocServerOptions {
  /** Answer a stale write with 409 instead of 412 (the Kubernetes convention). */
  conflictStatus?: 409 | 412;
  /** Leave out `changed_by` / `changed_at` from the 412 body. */
  bareProblem?: boolean;
  /** Answer a stale write with an empty 412, as a server without oncely-conditional might. */
  emptyRefusal?: boolean;
  /** Answer 428 to a write without If-Match. */
  requirePrecondition?: boolean;
}

export interface DocServer extends TestServer {
  url: string;
  doc: () => Record<string, unknown>;
  version: () => number;
  /** Someone else writes, as another editor would. */
  writeAs: (who: string, fields: Record<string, unknown>) => void;
}

/** One document behind oncely-conditional's HTTP contract (docs/concurrency.md). */
export async function startDocServer(initial: Record<string, unknown>, options: DocServerOptions = {}): Promise<DocServer> {
  let doc = { ...initial };
  let version = 1;
  let changedBy = "seed";
  let changedAt = Date.parse("2026-12-03T06:00:00Z");
  const tag = () => `"v${version}"`;
  const validators = () => ({ etag: tag(), "last-modified": new Date(changedAt).toUTCString() });
  const writeAs = (who: string, fields: Record<string, unknown>) => {
    doc = { ...doc, ...fields };
    version += 1;
    changedBy = who;
    changedAt += 20_000;
  };

  const server = await startServer((request): Reply => {
    if (request.method === "GET") return { status: 200, headers: validators(), body: doc };
    const ifMatch = request.headers["if-match"];
    if (ifMatch === undefined && options.requirePrecondition) {
      return {
        status: 428,
        contentType: "application/problem+json",
        body: { type: "urn:oncely:problem:precondition-required", status: 428 },
      };
    }
    if (ifMatch !== undefined && ifMatch !== tag()) {
      if (options.emptyRefusal) return { status: 412 };
      const status = options.conflictStatus ?? 412;
      return {
        status,
        headers: validators(),
        contentType: "application/problem+json",
        body: {
          type: "urn:oncely:problem:precondition-failed",
          title: "The resource has changed since the version this request was based on",
          status,
          current: doc,
          etag: tag(),
          version,
          ...(options.bareProblem ? {} : { changed_at: new Date(changedAt).toISOString(), changed_by: changedBy }),
        },
      };
    }
    const who = typeof request.headers["x-user"] === "string" ? request.headers["x-user"] : "anonymous";
    writeAs(who, JSON.parse(request.body) as Record<string, unknown>);
    return { status: 200, headers: validators(), body: doc };
  });

  return {
    ...server,
    url: `${server.origin}/docs/7`,
    doc: () => doc,
    version: () => version,
    writeAs,
  };
}
