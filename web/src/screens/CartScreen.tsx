import { useMutation, useQueryClient } from "@tanstack/react-query";
import { useCallback, useState } from "react";
import type { Cart } from "../api.ts";
import { MAX_QTY, itemCount, setQty, writeCartItems } from "../cart-ops.ts";
import { formatMoney } from "../format.ts";
import { Link } from "../navigation.tsx";
import { useCart, useProductIndex } from "../queries.ts";
import { showToast } from "../toast.ts";
import { ProductArt } from "../components/ProductArt.tsx";
import { EmptyState, ErrorState, Notice, PageHeader, Pill, Skeleton, TryIt } from "../components/ui.tsx";
import { CheckoutPanel } from "./CheckoutPanel.tsx";

function useCartWrite(user: string, onConflict: (cart: Cart) => void) {
  const client = useQueryClient();
  return useMutation({
    mutationKey: [user, "cart-write"],
    mutationFn: ({ product, qty }: { product: string; qty: number }) =>
      writeCartItems(client, user, (items) => setQty(items, product, qty), "notice"),
    onSuccess: (result) => {
      if (result.kind === "conflict") onConflict(result.cart);
      else if (result.kind === "failed" || result.kind === "unknown") showToast(result.message, { tone: "error" });
    },
    onError: () => showToast("We couldn't reach the shop. Your cart is unchanged.", { tone: "error" }),
  });
}

export function CartScreen({ user }: { user: string }) {
  const cart = useCart(user);
  const products = useProductIndex(user);
  const [notice, setNotice] = useState<string | null>(null);
  const [checkoutBusy, setCheckoutBusy] = useState(false);
  const write = useCartWrite(user, () =>
    setNotice("Your cart changed in another tab or window, so we loaded the current one. Check it and make your change again."),
  );
  const onBusyChange = useCallback((busy: boolean) => setCheckoutBusy(busy), []);

  const items = cart.data?.data.items ?? [];
  const priced = items.every((item) => products.has(item.product));
  const total = items.reduce((sum, item) => sum + (products.get(item.product)?.price_cents ?? 0) * item.qty, 0);
  const locked = write.isPending || checkoutBusy;
  const change = (product: string, qty: number) => {
    setNotice(null);
    write.mutate({ product, qty });
  };

  return (
    <div className="screen">
      <PageHeader
        title="Cart"
        caption="versioned writes (If-Match, 412), and the same idempotency key on every retry and after a reload."
        aside={
          cart.data?.etag ? (
            <Pill tone="neutral" testId="cart-etag" title="The ETag of the last read; the next write sends it as If-Match">
              ETag {cart.data.etag}
            </Pill>
          ) : null
        }
      />
      <TryIt>
        Open this cart in two tabs and change a quantity in each: the second gets a 412 and a notice. Triple-click{" "}
        <em>Place order</em>: one order. In Behind the scenes set <em>provider fail next</em> to 3 and place an order: the
        retries share one key. Reload while it says <em>Processing...</em>: the page asks again with the same key.
      </TryIt>

      {notice ? (
        <Notice tone="warn" onDismiss={() => setNotice(null)} testId="cart-notice">
          {notice}
        </Notice>
      ) : null}

      <div className="cart-layout">
        <section className="panel" aria-label="Items">
          {cart.isPending ? (
            <div data-testid="cart-skeleton" aria-busy="true">
              {[0, 1].map((i) => (
                <div key={i} className="cart-line">
                  <Skeleton width="56px" height={44} />
                  <Skeleton width="40%" />
                  <Skeleton width="80px" />
                </div>
              ))}
            </div>
          ) : cart.isError && !cart.data ? (
            <ErrorState error={cart.error} onRetry={() => void cart.refetch()} what="your cart" testId="cart-error" />
          ) : items.length === 0 ? (
            <EmptyState title="Your cart is empty." testId="cart-empty">
              <Link to="/products">Browse the products</Link>
            </EmptyState>
          ) : (
            <>
              <ul className="cart-lines">
                {items.map((item) => {
                  const product = products.get(item.product);
                  const label = product?.name ?? item.product;
                  return (
                    <li key={item.product} className="cart-line" data-testid="cart-line" data-product-id={item.product}>
                      <ProductArt id={item.product} name={label} size="small" />
                      <div className="cart-line-text">
                        <span className="cart-line-name">{product ? label : <Skeleton width="6rem" />}</span>
                        {product ? <span className="muted small">{formatMoney(product.price_cents)} each</span> : null}
                      </div>
                      <div className="stepper" role="group" aria-label={`Quantity of ${label}`}>
                        <button
                          type="button"
                          onClick={() => change(item.product, item.qty - 1)}
                          disabled={locked || item.qty <= 1}
                          aria-label={`One less ${label}`}
                          data-testid={`cart-dec-${item.product}`}
                        >
                          −
                        </button>
                        <span className="stepper-value" data-testid={`cart-qty-${item.product}`}>
                          {item.qty}
                        </span>
                        <button
                          type="button"
                          onClick={() => change(item.product, item.qty + 1)}
                          disabled={locked || item.qty >= MAX_QTY}
                          aria-label={`One more ${label}`}
                          data-testid={`cart-inc-${item.product}`}
                        >
                          +
                        </button>
                      </div>
                      <span className="cart-line-total">
                        {product ? formatMoney(product.price_cents * item.qty) : <Skeleton width="3.5rem" />}
                      </span>
                      <button
                        type="button"
                        className="link-button"
                        onClick={() => change(item.product, 0)}
                        disabled={locked}
                        data-testid={`cart-remove-${item.product}`}
                      >
                        Remove
                      </button>
                    </li>
                  );
                })}
              </ul>
              <div className="cart-total">
                <span className="muted">
                  {itemCount(items)} item{itemCount(items) === 1 ? "" : "s"}
                  {write.isPending ? " · saving..." : ""}
                </span>
                <span className="cart-total-value" data-testid="cart-total">
                  {priced ? formatMoney(total) : <Skeleton width="4rem" height={18} />}
                </span>
              </div>
            </>
          )}
        </section>

        <CheckoutPanel user={user} items={items} onBusyChange={onBusyChange} />
      </div>
    </div>
  );
}
