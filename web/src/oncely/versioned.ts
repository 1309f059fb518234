import { ProblemType, readBody, type Problem } from "./problem.ts";

/** A resource as read, with the validators a later write names. */
export interface Versioned<T> {
  data: T;
  /** The `ETag`, e.g. `"v3"`; `If-Match` of the next write. */
  etag: string | undefined;
  lastModified: string | undefined;
}

export type WriteResult<T> =
  | { kind: "written"; status: number; data: T | undefined; etag: string | undefined; lastModified: string | undefined }
  | Conflict<T>
  | { kind: "failed"; status: number; problem?: Problem; body: unknown }
  | { kind: "unknown"; reason: "network-error" | "aborted"; message: string };

/**
 * Someone else wrote the resource since it was read: nothing of `mine` was written. Show both,
 * then merge, overwrite or discard; the next write names `currentEtag`.
 */
export interface Conflict<T> {
  kind: "conflict";
  /** What this user tried to write. */
  mine: T;
  /** The resource as it is now. */
  current: T;
  currentEtag: string;
  changedBy?: string;
  changedAt?: Date;
  problem?: Problem;
}

export interface VersionedClientOptions {
  fetch?: typeof fetch;
  /** Added to every request (e.g. `Authorization`). */
  headers?: Record<string, string>;
  /**
   * Fields of the current row naming who changed it and when, used when the 412 body does not
   * carry oncely-conditional's top-level `changed_by` / `changed_at`. Defaults `updated_by` and
   * `updated_at`.
   */
  changedByField?: string;
  changedAtField?: string;
}

export interface WriteOptions {
  /** Lets a retry of this very write replay its first answer instead of meeting a 412. */
  idempotencyKey?: string;
  signal?: AbortSignal;
}

export class VersionedReadError extends Error {
  constructor(
    readonly status: number,
    readonly problem: Problem | undefined,
  ) {
    super(problem?.title ?? `read failed with ${status}`);
    this.name = "VersionedReadError";
  }
}

export interface VersionedClient {
  readVersioned<T>(url: string, init?: { signal?: AbortSignal }): Promise<Versioned<T>>;
  /** `etag` defaults to the one remembered from the last read or write of `url`. */
  writeVersioned<T>(url: string, method: string, body: T, etag?: string, options?: WriteOptions): Promise<WriteResult<T>>;
  /** The remembered `ETag` of `url`. */
  etagOf(url: string): string | undefined;
}

export function createVersionedClient(options: VersionedClientOptions = {}): VersionedClient {
  // Looked up per request, so a page that installs its own fetch later is still used.
  const doFetch: typeof fetch = (input, init) => (options.fetch ?? globalThis.fetch)(input, init);
  const baseHeaders = options.headers ?? {};
  const byField = options.changedByField ?? "updated_by";
  const atField = options.changedAtField ?? "updated_at";
  const remembered = new Map<string, string>();

  async function readVersioned<T>(url: string, init: { signal?: AbortSignal } = {}): Promise<Versioned<T>> {
    const response = await doFetch(url, {
      method: "GET",
      headers: { accept: "application/json, application/problem+json", ...baseHeaders },
      ...(init.signal ? { signal: init.signal } : {}),
    });
    const { body, problem } = await readBody(response);
    if (!response.ok) throw new VersionedReadError(response.status, problem);
    const etag = response.headers.get("etag") ?? undefined;
    if (etag) remembered.set(url, etag);
    return { data: body as T, etag, lastModified: response.headers.get("last-modified") ?? undefined };
  }

  async function writeVersioned<T>(
    url: string,
    method: string,
    body: T,
    etag: string | undefined = remembered.get(url),
    writeOptions: WriteOptions = {},
  ): Promise<WriteResult<T>> {
    const headers: Record<string, string> = {
      accept: "application/json, application/problem+json",
      "content-type": "application/json",
      ...baseHeaders,
    };
    // Without a tag this is a blind write; a route that requires preconditions answers 428.
    if (etag !== undefined) headers["if-match"] = etag;
    if (writeOptions.idempotencyKey !== undefined) headers["idempotency-key"] = writeOptions.idempotencyKey;

    let response: Response;
    let answer: Awaited<ReturnType<typeof readBody>>;
    try {
      response = await doFetch(url, {
        method,
        headers,
        body: JSON.stringify(body),
        ...(writeOptions.signal ? { signal: writeOptions.signal } : {}),
      });
      answer = await readBody(response);
    } catch (error) {
      // Sent, perhaps written: the next read tells. Not retried here, because a plain retry of a
      // write that landed would meet its own 412.
      return {
        kind: "unknown",
        reason: writeOptions.signal?.aborted ? "aborted" : "network-error",
        message: error instanceof Error ? error.message : String(error),
      };
    }

    if (response.ok) {
      const newEtag = response.headers.get("etag") ?? undefined;
      if (newEtag) remembered.set(url, newEtag);
      else remembered.delete(url);
      return {
        kind: "written",
        status: response.status,
        data: (answer.body ?? undefined) as T | undefined,
        etag: newEtag,
        lastModified: response.headers.get("last-modified") ?? undefined,
      };
    }
    if (isPreconditionFailure(response.status, answer.problem)) {
      // The remembered tag is left as it was: only a deliberate choice (merge, overwrite) may
      // write on top of the other person's version.
      const conflict = await conflictFrom<T>(url, body, response, answer.problem);
      if (conflict) return conflict;
    }
    return {
      kind: "failed",
      status: response.status,
      ...(answer.problem ? { problem: answer.problem } : {}),
      body: answer.body,
    };
  }

  async function conflictFrom<T>(
    url: string,
    mine: T,
    response: Response,
    problem: Problem | undefined,
  ): Promise<Conflict<T> | undefined> {
    let current = problem?.current as T | undefined;
    let currentEtag = response.headers.get("etag") ?? (typeof problem?.etag === "string" ? problem.etag : undefined);
    if (current === undefined || currentEtag === undefined) {
      // A server that refuses without saying what is there now: read it, to show both versions.
      try {
        const fresh = await readVersioned<T>(url);
        current = fresh.data;
        currentEtag = fresh.etag;
      } catch {
        return undefined;
      }
      if (currentEtag === undefined) return undefined;
    }
    const row = typeof current === "object" && current !== null ? (current as Record<string, unknown>) : {};
    const changedBy = firstString(problem?.changed_by, row[byField]);
    const changedAt = firstDate(problem?.changed_at, row[atField]);
    return {
      kind: "conflict",
      mine,
      current: current as T,
      currentEtag,
      ...(changedBy !== undefined ? { changedBy } : {}),
      ...(changedAt !== undefined ? { changedAt } : {}),
      ...(problem ? { problem } : {}),
    };
  }

  return { readVersioned, writeVersioned, etagOf: (url) => remembered.get(url) };
}

/** 412, or the 409 some services answer instead (oncely's `ConflictStatus::Conflict` policy). */
function isPreconditionFailure(status: number, problem: Problem | undefined): boolean {
  return status === 412 || (status === 409 && problem?.type === ProblemType.preconditionFailed);
}

function firstString(...values: unknown[]): string | undefined {
  return values.find((v): v is string => typeof v === "string" && v !== "");
}

/** ISO strings, HTTP dates and milliseconds since the epoch (oncely's `changed_at` column). */
function firstDate(...values: unknown[]): Date | undefined {
  for (const value of values) {
    if (typeof value !== "string" && typeof value !== "number") continue;
    const date = new Date(value);
    if (!Number.isNaN(date.getTime())) return date;
  }
  return undefined;
}

const defaultClient = createVersionedClient();

/** Reads `url` and remembers its `ETag` for the next write. */
export function readVersioned<T>(url: string, init?: { signal?: AbortSignal }): Promise<Versioned<T>> {
  return defaultClient.readVersioned<T>(url, init);
}

/** Writes with `If-Match`; a 412 comes back as `{ kind: "conflict" }` with both versions. */
export function writeVersioned<T>(
  url: string,
  method: string,
  body: T,
  etag?: string,
  options?: WriteOptions,
): Promise<WriteResult<T>> {
  return defaultClient.writeVersioned(url, method, body, etag, options);
}
