import { useQueryClient } from "@tanstack/react-query";
import { useEffect, useRef, useState } from "react";
import { useIdempotentMutation } from "../oncely/index.ts";
import { getOrder, sendOptions, ShopProblem, type AuditEvent, type Order } from "../api.ts";
import { describeChange } from "../changes.ts";
import { reaskDelay } from "../checkout-state.ts";
import { recordConsistencyToken } from "../consistency.ts";
import { formatMoney, fullTime, humanize, relativeTime, shortId } from "../format.ts";
import { Link } from "../navigation.tsx";
import { invalidateAfterOrder, keys, useNow, useProductIndex, useUserName } from "../queries.ts";
import { useReadModel } from "../read-model.ts";
import { showToast } from "../toast.ts";
import { ConfirmDialog } from "../components/ConfirmDialog.tsx";
import { ConsistencyBadge } from "../components/ConsistencyBadge.tsx";
import { Spinner } from "../components/icons.tsx";
import { OrderStatusPill, PaymentPill } from "../components/OrderPills.tsx";
import { EmptyState, ErrorState, Notice, PageHeader, Panel, Skeleton, TryIt } from "../components/ui.tsx";

function History({ events, now }: { events: AuditEvent[]; now: number }) {
  const nameOf = useUserName();
  if (events.length === 0) return <p className="muted">No history yet.</p>;
  const sorted = [...events].sort((a, b) => new Date(a.at).getTime() - new Date(b.at).getTime());
  return (
    <ol className="history" data-testid="order-history">
      {sorted.map((event) => {
        const changes = describeChange(event.old, event.new);
        return (
          <li key={event.id} className="history-event" data-testid="history-event" data-action={event.action}>
            <div className="history-head">
              <strong>{nameOf(event.actor)}</strong>
              <span className="history-action">{humanize(event.action)}</span>
              <span className="muted small" title={fullTime(event.at)}>
                {relativeTime(event.at, now)}
              </span>
            </div>
            {changes.length > 0 ? (
              <ul className="changes">
                {changes.map((change, i) => (
                  <li key={change.field ?? i}>
                    {change.field ? <span className="change-field">{change.field}</span> : null}
                    {change.from === "—" ? null : (
                      <>
                        <span className="change-old">{change.from}</span>
                        <span className="change-arrow" aria-label="changed to">
                          →
                        </span>
                      </>
                    )}
                    <span className="change-new">{change.to}</span>
                  </li>
                ))}
              </ul>
            ) : null}
            {event.correlation_id ? (
              <span className="muted tiny mono" title={`X-Correlation-Id: ${event.correlation_id}`}>
                request {shortId(event.correlation_id)}
              </span>
            ) : null}
          </li>
        );
      })}
    </ol>
  );
}

function CancelOrder({ user, order }: { user: string; order: Order }) {
  const client = useQueryClient();
  const [confirming, setConfirming] = useState(false);
  const round = useRef(0);
  const cancel = useIdempotentMutation<void, Order>({
    intent: `cancel-order:${user}:${order.id}`,
    request: () => ({ method: "POST", url: `/api/orders/${encodeURIComponent(order.id)}/cancel` }),
    resumeOnMount: true,
    send: sendOptions,
    onOutcome: (outcome) => {
      if (outcome.kind === "unknown") return;
      recordConsistencyToken(user, outcome.headers);
      invalidateAfterOrder(client, user);
      if (outcome.kind === "succeeded") showToast("Order cancelled. The refund is on its way.", { tone: "success" });
    },
  });

  const { state, outcome, resume } = cancel;
  useEffect(() => {
    if (state !== "unknown") {
      if (state !== "processing") round.current = 0;
      return;
    }
    const timer = setTimeout(resume, reaskDelay(round.current++));
    return () => clearTimeout(timer);
  }, [state, outcome, resume]);

  const unknown = state === "unknown" || (state === "idle" && cancel.pending !== undefined);
  const busy = state === "processing" || unknown;
  const cancellable = order.status !== "cancelled" && state !== "succeeded";

  let status: { state: string; text: string; tone: "info" | "warn" | "bad" | "good" } | undefined;
  if (state === "processing") status = { state: "processing", text: "Cancelling...", tone: "info" };
  else if (unknown)
    status = {
      state: "unknown",
      text: "We're checking whether the cancellation went through. We keep asking with the same key.",
      tone: "warn",
    };
  else if (state === "succeeded") status = { state: "success", text: "Cancelled: refund requested, stock released.", tone: "good" };
  else if (state === "failed" && outcome?.kind === "failed") {
    const text =
      outcome.problem?.type === ShopProblem.notCancellable
        ? "This order can't be cancelled: it is already cancelled, or not yours."
        : (outcome.problem?.detail ?? `The shop refused (${outcome.status}).`);
    status = { state: "failure", text, tone: "bad" };
  }

  return (
    <div className="cancel-box">
      <button
        type="button"
        className="button button-danger-outline"
        onClick={() => setConfirming(true)}
        disabled={!cancellable || busy}
        data-testid="order-cancel"
      >
        {state === "processing" ? <Spinner size={12} /> : null}
        {order.status === "cancelled" ? "Cancelled" : "Cancel order"}
      </button>
      {status ? (
        <div data-testid="cancel-status" data-state={status.state}>
          <Notice tone={status.tone}>
            {status.text}{" "}
            {unknown ? (
              <button type="button" className="link-button" onClick={resume} data-testid="cancel-check-again">
                Check now
              </button>
            ) : null}
          </Notice>
        </div>
      ) : null}
      <ConfirmDialog
        open={confirming}
        title={`Cancel order ${order.id}?`}
        confirmLabel="Cancel order"
        cancelLabel="Keep order"
        onCancel={() => setConfirming(false)}
        onConfirm={() => {
          setConfirming(false);
          cancel.submit();
        }}
      >
        <p>
          The payment of {formatMoney(order.total_cents)} is refunded and the stock goes back on the shelf. This can't be
          undone.
        </p>
      </ConfirmDialog>
    </div>
  );
}

export function OrderScreen({ user, id }: { user: string; id: string }) {
  const now = useNow();
  const products = useProductIndex(user);
  const { query, behind, token } = useReadModel(user, keys.order(user, id), (t, signal) => getOrder(id, t, signal));
  const order = query.data?.data;

  return (
    <div className="screen">
      <PageHeader
        title={`Order ${id}`}
        caption="an audit trail of who changed what, and a destructive action behind a confirmation, sent once."
        aside={<ConsistencyBadge info={query.data?.consistency} behind={behind} token={token} testId="order-sync" />}
      />
      <TryIt>
        Cancel this order: a confirmation first, then one request with an idempotency key, however often it is retried. The
        history below gains the cancellation with who did it and what changed.
      </TryIt>
      <p className="small">
        <Link to="/orders">← All orders</Link>
      </p>

      {query.isPending ? (
        <Panel>
          <Skeleton width="50%" height={18} />
          <Skeleton width="80%" />
        </Panel>
      ) : query.isError && query.data === undefined ? (
        <ErrorState error={query.error} onRetry={() => void query.refetch()} what="this order" testId="order-error" />
      ) : !order ? (
        <EmptyState title="This order isn't in the history yet." testId="order-missing">
          {behind ? "Syncing... the read model is catching up." : <Link to="/orders">See your orders</Link>}
        </EmptyState>
      ) : (
        <div className="order-layout">
          <Panel
            title="Summary"
            aside={
              <span className="order-pills">
                <OrderStatusPill status={order.status} testId="order-detail-status" />
                <PaymentPill payment={order.payment} />
              </span>
            }
          >
            <table className="items-table">
              <thead>
                <tr>
                  <th>Item</th>
                  <th className="num">Qty</th>
                  <th className="num">Price</th>
                </tr>
              </thead>
              <tbody>
                {(order.items ?? []).map((item) => {
                  const product = products.get(item.product);
                  return (
                    <tr key={item.product}>
                      <td>{product?.name ?? item.product}</td>
                      <td className="num">{item.qty}</td>
                      <td className="num">{product ? formatMoney(product.price_cents * item.qty) : "—"}</td>
                    </tr>
                  );
                })}
              </tbody>
              <tfoot>
                <tr>
                  <td colSpan={2}>Total</td>
                  <td className="num" data-testid="order-total">
                    {formatMoney(order.total_cents)}
                  </td>
                </tr>
              </tfoot>
            </table>
            <p className="muted small">
              Placed <span title={fullTime(order.created_at)}>{relativeTime(order.created_at, now)}</span>, last change{" "}
              <span title={fullTime(order.updated_at)}>{relativeTime(order.updated_at, now)}</span>.
            </p>
            <CancelOrder user={user} order={order} />
          </Panel>
          <Panel title="History">
            <History events={order.history ?? []} now={now} />
          </Panel>
        </div>
      )}
    </div>
  );
}
