/**
 * A fresh idempotency key: a random UUID, 36 visible ASCII characters, well inside the
 * gateway's 1-255 rule. `crypto.randomUUID` exists only in secure contexts (https, localhost);
 * a shop served over plain http on a LAN still has `getRandomValues`, so a v4 UUID is built
 * from that instead of failing the purchase.
 */
export function newIdempotencyKey(): string {
  const c = globalThis.crypto;
  if (typeof c?.randomUUID === "function") return c.randomUUID();
  const bytes = new Uint8Array(16);
  c.getRandomValues(bytes);
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40; // version 4
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80; // RFC 9562 variant
  const hex = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}
