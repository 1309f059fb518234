import { createServer, type IncomingHttpHeaders } from "node:http";
import type { AddressInfo } from "node:net";

export interface RecordedRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
}

/** What the server does with one request. */
export type Reply =
  | {
      status: number;
      headers?: Record<string, string>;
      /** A string is sent as is; anything else as JSON. */
      body?: unknown;
      contentType?: string;
      /** Hold the answer this long (to outlast a client's timeout). */
      delayMs?: number;
    }
  /** Read the whole request, then drop the connection: the client never learns the outcome. */
  | { destroy: true };

export type Handler = (request: RecordedRequest, index: number) => Reply | Promise<Reply>;

export interface TestServer {
  /** `http://127.0.0.1:PORT` */
  origin: string;
  requests: RecordedRequest[];
  close(): Promise<void>;
}

/**
 * A real HTTP server on a free loopback port that answers a programmed sequence (or a handler)
 * and records every request. Past the end of a script it answers 418, a definite failure, so a
 * test that sends more than it planned ends quickly and fails on its own assertions.
 */
export async function startServer(script: Reply[] | Handler): Promise<TestServer> {
  const requests: RecordedRequest[] = [];
  const handler: Handler = Array.isArray(script)
    ? (_request, index) => script[index] ?? { status: 418, body: "script exhausted" }
    : script;

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      const recorded: RecordedRequest = {
        method: req.method ?? "",
        path: req.url ?? "",
        headers: req.headers,
        body: Buffer.concat(chunks).toString("utf8"),
      };
      const index = requests.push(recorded) - 1;
      void Promise.resolve(handler(recorded, index)).then(async (reply) => {
        if ("destroy" in reply) {
          req.socket.destroy();
          return;
        }
        if (reply.delayMs) await new Promise((resolve) => setTimeout(resolve, reply.delayMs));
        if (res.destroyed) return;
        const isText = typeof reply.body === "string";
        const payload = reply.body === undefined ? "" : isText ? (reply.body as string) : JSON.stringify(reply.body);
        const contentType = reply.contentType ?? (isText ? "text/plain" : "application/json");
        res.writeHead(reply.status, {
          ...(payload === "" ? {} : { "content-type": contentType }),
          ...reply.headers,
        });
        res.end(payload);
      });
    });
  });

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** An RFC 9457 answer. */
export function problem(status: number, type: string, extra: Record<string, unknown> = {}, headers: Record<string, string> = {}): Reply {
  return {
    status,
    headers,
    contentType: "application/problem+json",
    body: { type, title: type.split(":").pop(), status, ...extra },
  };
}

/** A port on which nothing listens (the server was started and closed again). */
export async function deadOrigin(): Promise<string> {
  const server = await startServer([]);
  await server.close();
  return server.origin;
}
