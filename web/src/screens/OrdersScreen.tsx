import { getOrders, type Order } from "../api.ts";
import { formatMoney, fullTime, relativeTime } from "../format.ts";
import { Link, navigate } from "../navigation.tsx";
import { keys, useNow, useProductIndex } from "../queries.ts";
import { useReadModel } from "../read-model.ts";
import { ConsistencyBadge } from "../components/ConsistencyBadge.tsx";
import { OrderStatusPill, PaymentPill } from "../components/OrderPills.tsx";
import { EmptyState, ErrorState, PageHeader, Panel, Skeleton, TryIt } from "../components/ui.tsx";

function itemsSummary(order: Pick<Order, "items">, names: Map<string, { name: string }>): string {
  const items = order.items ?? [];
  if (items.length === 0) return "No items";
  return items.map((item) => `${item.qty} × ${names.get(item.product)?.name ?? item.product}`).join(", ");
}

export function OrdersScreen({ user }: { user: string }) {
  const now = useNow();
  const products = useProductIndex(user);
  const { query, behind, token } = useReadModel(user, keys.orders(user), getOrders);
  const orders = query.data?.data;

  return (
    <div className="screen">
      <PageHeader
        title="Orders"
        caption="read-your-writes on an eventually consistent read model (X-Consistency-Token)."
        aside={<ConsistencyBadge info={query.data?.consistency} behind={behind} token={token} testId="orders-sync" />}
      />
      <TryIt>
        Place an order, then come here: the history is a read model fed by the outbox, so it may lag. The page sends the
        token its checkout got and shows <em>Syncing...</em> until your order is in.
      </TryIt>

      <Panel>
        {query.isPending ? (
          <div aria-busy="true" data-testid="orders-skeleton">
            {behind ? <p className="muted small">Syncing... waiting for the history to include your latest change.</p> : null}
            {[0, 1, 2].map((i) => (
              <div key={i} className="order-row">
                <Skeleton width="30%" />
                <Skeleton width="20%" />
                <Skeleton width="15%" />
              </div>
            ))}
          </div>
        ) : query.isError && !orders ? (
          <ErrorState error={query.error} onRetry={() => void query.refetch()} what="your orders" testId="orders-error" />
        ) : !orders || orders.length === 0 ? (
          <EmptyState title={behind ? "Your first order is on its way..." : "No orders yet."} testId="orders-empty">
            {behind ? "The history is catching up with your checkout." : <Link to="/products">Start shopping</Link>}
          </EmptyState>
        ) : (
          <ul className="order-list" aria-label="Orders">
            {orders.map((order) => (
              <li
                key={order.id}
                className="order-row clickable"
                data-testid="order-row"
                data-order-id={order.id}
                data-status={order.status}
                data-payment={order.payment}
                onClick={() => navigate(`/orders/${encodeURIComponent(order.id)}`)}
              >
                <div className="order-main">
                  <Link to={`/orders/${encodeURIComponent(order.id)}`} className="mono" onClick={(e) => e.stopPropagation()}>
                    {order.id}
                  </Link>
                  <span className="muted small">{itemsSummary(order, products)}</span>
                </div>
                <span className="muted small" title={fullTime(order.created_at)}>
                  {relativeTime(order.created_at, now)}
                </span>
                <span className="order-total">{formatMoney(order.total_cents)}</span>
                <span className="order-pills">
                  <OrderStatusPill status={order.status} />
                  <PaymentPill payment={order.payment} />
                </span>
              </li>
            ))}
          </ul>
        )}
      </Panel>
    </div>
  );
}
