// Cart writes: `PUT /api/cart` with `If-Match` naming the ETag of the last read. Two ways to meet
// a 412 (someone, perhaps this user in another tab, changed the cart since):
// - "recompute": adding one more of a product is a machine-style edit, so it is applied again
//   on top of the current cart (the 412 carries it) and sent with the current ETag;
// - "notice": a quantity the user set is not re-applied blindly; the cart is re-read and the
//   user told, so they see what changed before they decide again.

import type { QueryClient } from "@tanstack/react-query";
import type { Versioned } from "./oncely/index.ts";
import { problemText, readCart, writeCart, type Cart, type CartItem } from "./api.ts";
import { keys } from "./queries.ts";

export const MAX_QTY = 99;

/** The items with `product` at `qty` (clamped to 1-99); 0 or less removes it. Order is kept. */
export function setQty(items: readonly CartItem[], product: string, qty: number): CartItem[] {
  const wanted = Math.min(MAX_QTY, Math.floor(qty));
  const exists = items.some((item) => item.product === product);
  if (wanted <= 0) return items.filter((item) => item.product !== product);
  if (!exists) return [...items, { product, qty: wanted }];
  return items.map((item) => (item.product === product ? { product, qty: wanted } : { ...item }));
}

/** One more of `product` (at most 99). */
export function addOne(items: readonly CartItem[], product: string): CartItem[] {
  const current = items.find((item) => item.product === product)?.qty ?? 0;
  return setQty(items, product, current + 1);
}

export function itemCount(items: readonly CartItem[]): number {
  return items.reduce((sum, item) => sum + item.qty, 0);
}

export type CartWrite =
  | { kind: "written"; cart: Cart }
  | { kind: "conflict"; cart: Cart }
  | { kind: "failed"; message: string }
  | { kind: "unknown"; message: string };

// One write at a time per page: each names the ETag the previous one produced.
let queue: Promise<unknown> = Promise.resolve();
function serialize<T>(task: () => Promise<T>): Promise<T> {
  const run = queue.then(task, task);
  queue = run.catch(() => undefined);
  return run;
}

function cartOf(data: unknown, fallback: CartItem[]): Cart {
  if (typeof data === "object" && data !== null && Array.isArray((data as Cart).items)) return data as Cart;
  return { items: fallback, version: 0 };
}

export function writeCartItems(
  client: QueryClient,
  user: string,
  compute: (items: readonly CartItem[]) => CartItem[],
  onConflict: "recompute" | "notice",
): Promise<CartWrite> {
  const key = keys.cart(user);
  return serialize(async () => {
    let known: Versioned<Cart> =
      client.getQueryData<Versioned<Cart>>(key) ??
      (await client.fetchQuery<Versioned<Cart>>({ queryKey: key, queryFn: ({ signal }) => readCart(signal) }));
    for (let round = 0; round < 3; round++) {
      const items = compute(known.data.items ?? []);
      const result = await writeCart(items, known.etag);
      switch (result.kind) {
        case "written": {
          const cart = cartOf(result.data, items);
          client.setQueryData<Versioned<Cart>>(key, { data: cart, etag: result.etag, lastModified: result.lastModified });
          return { kind: "written", cart };
        }
        case "conflict": {
          const cart = cartOf(result.current, []);
          known = { data: cart, etag: result.currentEtag, lastModified: undefined };
          client.setQueryData<Versioned<Cart>>(key, known);
          if (onConflict === "notice") {
            // Re-read as well: the 412's copy is current, a fresh read makes sure of it.
            void client.invalidateQueries({ queryKey: key });
            return { kind: "conflict", cart };
          }
          continue;
        }
        case "failed":
          return { kind: "failed", message: problemText(result.problem, `The shop answered ${result.status}.`) };
        case "unknown":
          // Sent, perhaps written: read again to see.
          void client.invalidateQueries({ queryKey: key });
          return { kind: "unknown", message: "We lost the answer; the cart was read again to show what's saved." };
      }
    }
    void client.invalidateQueries({ queryKey: key });
    return { kind: "conflict", cart: known.data };
  });
}
