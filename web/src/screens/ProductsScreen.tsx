import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { getFavourites, setFavourite, type Favourites, type Product } from "../api.ts";
import { addOne, writeCartItems } from "../cart-ops.ts";
import { formatMoney } from "../format.ts";
import { navigate } from "../navigation.tsx";
import { keys, useProducts } from "../queries.ts";
import { showToast } from "../toast.ts";
import { HeartIcon, RefreshIcon, Spinner } from "../components/icons.tsx";
import { ProductArt } from "../components/ProductArt.tsx";
import { EmptyState, ErrorState, Notice, PageHeader, Pill, Skeleton, TryIt } from "../components/ui.tsx";

function withFavourite(favs: Favourites | undefined, product: string, on: boolean): Favourites {
  const rest = (favs?.products ?? []).filter((p) => p !== product);
  return { products: on ? [...rest, product] : rest };
}

/** The heart: flips at once, rolls back and offers a retry when the server refuses. */
function useFavouriteToggle(user: string) {
  const client = useQueryClient();
  const key = keys.favourites(user);
  const mutationKey = [user, "favourite"];
  const toggle = useMutation({
    mutationKey,
    mutationFn: ({ product, on }: { product: string; on: boolean; name: string }) => setFavourite(product, on),
    onMutate: async ({ product, on }) => {
      await client.cancelQueries({ queryKey: key });
      const was = client.getQueryData<Favourites>(key)?.products.includes(product) ?? !on;
      client.setQueryData<Favourites>(key, (old) => withFavourite(old, product, on));
      return { was };
    },
    onError: (_error, vars, context) => {
      // Roll back this product only, and only if no later click changed it since.
      const now = client.getQueryData<Favourites>(key);
      if ((now?.products.includes(vars.product) ?? false) === vars.on) {
        client.setQueryData<Favourites>(key, withFavourite(now, vars.product, context?.was ?? !vars.on));
      }
      showToast("Couldn't save. Retry?", {
        tone: "error",
        action: { label: "Retry", run: () => toggle.mutate(vars) },
      });
    },
    onSettled: () => {
      // The last toggle in flight re-reads the truth; earlier ones would only flicker.
      if (client.isMutating({ mutationKey }) === 1) void client.invalidateQueries({ queryKey: key });
    },
  });
  return toggle;
}

function useAddToCart(user: string) {
  const client = useQueryClient();
  return useMutation({
    mutationKey: [user, "cart-write"],
    mutationFn: (product: Product) => writeCartItems(client, user, (items) => addOne(items, product.id), "recompute"),
    onSuccess: (result, product) => {
      if (result.kind === "written") {
        showToast(`${product.name} is in your cart.`, {
          tone: "success",
          action: { label: "View cart", run: () => navigate("/cart") },
        });
      } else if (result.kind === "conflict") {
        showToast("The cart kept changing elsewhere; please try again.", { tone: "error" });
      } else {
        showToast(result.message, { tone: "error" });
      }
    },
    onError: () => showToast("We couldn't reach the shop. Your cart is unchanged.", { tone: "error" }),
  });
}

function ProductCard({
  product,
  favourite,
  onToggle,
  onAdd,
  adding,
}: {
  product: Product;
  favourite: boolean;
  onToggle: () => void;
  onAdd: () => void;
  adding: boolean;
}) {
  const soldOut = product.stock <= 0;
  return (
    <li className="product-card" data-testid="product-card" data-product-id={product.id}>
      <div className="product-art-wrap">
        <ProductArt id={product.id} name={product.name} />
        <button
          type="button"
          className={`heart${favourite ? " on" : ""}`}
          onClick={onToggle}
          aria-pressed={favourite}
          aria-label={favourite ? `Remove ${product.name} from favourites` : `Add ${product.name} to favourites`}
          data-testid={`favourite-toggle-${product.id}`}
          data-favourite={favourite ? "true" : "false"}
        >
          <HeartIcon filled={favourite} size={20} />
        </button>
      </div>
      <div className="product-body">
        <div className="product-title-row">
          <h3>{product.name}</h3>
          <span className="price">{formatMoney(product.price_cents)}</span>
        </div>
        <p className="muted product-description">{product.description}</p>
        <div className="product-foot">
          <span className={`stock${soldOut ? " out" : product.stock <= 3 ? " low" : ""}`} data-testid={`stock-${product.id}`}>
            {soldOut ? "Out of stock" : product.stock <= 3 ? `Only ${product.stock} left` : `${product.stock} in stock`}
          </span>
          <button
            type="button"
            className="button button-primary button-small"
            onClick={onAdd}
            disabled={soldOut || adding}
            data-testid={`add-to-cart-${product.id}`}
          >
            {adding ? <Spinner size={12} /> : null}
            {adding ? "Adding" : "Add to cart"}
          </button>
        </div>
      </div>
    </li>
  );
}

function ProductSkeletons() {
  return (
    <ul className="product-grid" data-testid="products-skeleton" aria-busy="true" aria-label="Loading products">
      {[0, 1, 2, 3, 4, 5].map((i) => (
        <li key={i} className="product-card">
          <Skeleton height={120} className="block" />
          <div className="product-body">
            <Skeleton width="55%" height={16} />
            <Skeleton width="90%" />
            <Skeleton width="70%" />
          </div>
        </li>
      ))}
    </ul>
  );
}

export function ProductsScreen({ user }: { user: string }) {
  const products = useProducts(user);
  const favourites = useQuery({ queryKey: keys.favourites(user), queryFn: ({ signal }) => getFavourites(signal) });
  const toggle = useFavouriteToggle(user);
  const add = useAddToCart(user);
  const favs = new Set(favourites.data?.products ?? []);
  const refreshing = products.isFetching && !products.isPending;

  return (
    <div className="screen">
      <PageHeader
        title="Products"
        caption="stale-while-revalidate reads, and an optimistic toggle that rolls back when the server refuses."
        aside={
          refreshing ? (
            <Pill tone="info" testId="products-refreshing">
              <Spinner size={11} /> Refreshing...
            </Pill>
          ) : products.isSuccess ? (
            <button type="button" className="link-button" onClick={() => void products.refetch()} data-testid="products-refresh">
              <RefreshIcon size={14} /> Refresh
            </button>
          ) : null
        }
      />
      <TryIt>
        Switch to another window and back: the list stays and is marked <em>Refreshing...</em> while it reloads. In{" "}
        <strong>Behind the scenes</strong> turn on <em>favourites failing</em>, then tap a heart: it flips at once, then rolls
        back with a <em>Retry</em>.
      </TryIt>

      {products.isPending ? (
        <ProductSkeletons />
      ) : products.isError && !products.data ? (
        <ErrorState error={products.error} onRetry={() => void products.refetch()} what="the products" testId="products-error" />
      ) : products.data.length === 0 ? (
        <EmptyState title="No products yet." testId="products-empty">
          The shop has nothing for sale right now. <strong>Reset demo data</strong> in Behind the scenes brings the seed back.
        </EmptyState>
      ) : (
        <>
          {products.isError ? (
            <Notice tone="warn" testId="products-stale-error">
              We couldn't refresh the list; this is what we had.{" "}
              <button type="button" className="link-button" onClick={() => void products.refetch()}>
                Retry
              </button>
            </Notice>
          ) : null}
          <ul className={`product-grid${refreshing ? " is-refreshing" : ""}`} aria-label="Products" aria-busy={refreshing}>
            {products.data.map((product) => (
              <ProductCard
                key={product.id}
                product={product}
                favourite={favs.has(product.id)}
                onToggle={() => toggle.mutate({ product: product.id, on: !favs.has(product.id), name: product.name })}
                onAdd={() => add.mutate(product)}
                adding={add.isPending && add.variables?.id === product.id}
              />
            ))}
          </ul>
        </>
      )}
    </div>
  );
}
