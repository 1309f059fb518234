/** An RFC 9457 problem body. oncely's gateway adds `request_id` and `trace_id`. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  detail?: string;
  instance?: string;
  request_id?: string;
  trace_id?: string;
  [extension: string]: unknown;
}

/** oncely's problem types. Match on these, never on `title` or `detail`. */
export const ProblemType = {
  requestInProgress: "urn:oncely:problem:request-in-progress",
  idempotencyKeyReused: "urn:oncely:problem:idempotency-key-reused",
  preconditionFailed: "urn:oncely:problem:precondition-failed",
  preconditionRequired: "urn:oncely:problem:precondition-required",
  storeUnavailable: "urn:oncely:problem:idempotency-store-unavailable",
  upstreamUnavailable: "urn:oncely:problem:upstream-unavailable",
  upstreamTimeout: "urn:oncely:problem:upstream-timeout",
} as const;

/** The media type of a `Content-Type` value, lower case, without parameters. */
export function mediaType(contentType: string | null): string {
  return (contentType ?? "").split(";", 1)[0]!.trim().toLowerCase();
}

export function isJsonMediaType(type: string): boolean {
  return type === "application/json" || (type.startsWith("application/") && type.endsWith("+json"));
}

export interface ReadBody {
  /** Parsed JSON for JSON media types, the text otherwise, `null` when empty. */
  body: unknown;
  /** Set when the answer is `application/problem+json` with an object body. */
  problem?: Problem;
}

/**
 * Reads a response body once. Throws only if the body cannot be read (the connection died
 * while it arrived), which the caller treats like any other lost answer.
 */
export async function readBody(response: Response): Promise<ReadBody> {
  const text = await response.text();
  if (text === "") return { body: null };
  const type = mediaType(response.headers.get("content-type"));
  if (!isJsonMediaType(type)) return { body: text };
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    return { body: text };
  }
  const isProblem =
    type === "application/problem+json" && typeof body === "object" && body !== null && !Array.isArray(body);
  return isProblem ? { body, problem: body as Problem } : { body };
}
