import { useQuery } from "@tanstack/react-query";
import { ApiError, getCheckout, type CheckoutProgress } from "../api.ts";
import { isTerminal } from "../checkout-state.ts";
import { fullTime, relativeTime } from "../format.ts";
import { Link } from "../navigation.tsx";
import { keys, useNow } from "../queries.ts";
import { SagaSteps } from "../components/SagaSteps.tsx";
import { Spinner } from "../components/icons.tsx";
import { EmptyState, ErrorState, Notice, PageHeader, Panel, Pill, Skeleton, TryIt, type PillTone } from "../components/ui.tsx";

const STATUS: Record<CheckoutProgress["status"], { tone: PillTone; text: string }> = {
  running: { tone: "info", text: "Running" },
  confirmed: { tone: "good", text: "Confirmed" },
  declined: { tone: "bad", text: "Declined" },
  cancelled: { tone: "bad", text: "Cancelled" },
  failed: { tone: "bad", text: "Failed" },
};

function Summary({ progress }: { progress: CheckoutProgress }) {
  switch (progress.status) {
    case "running":
      return (
        <Notice tone="info" testId="saga-summary">
          <Spinner size={12} /> The saga is still running; this page follows it.
        </Notice>
      );
    case "confirmed":
      return (
        <Notice tone="good" testId="saga-summary">
          Every step is done: the order is confirmed and paid.
        </Notice>
      );
    case "declined":
      return (
        <Notice tone="bad" testId="saga-summary">
          The card was declined, so the saga undid what it had done: <strong>stock released</strong>,{" "}
          <strong>order cancelled</strong>. Nothing was charged.
        </Notice>
      );
    case "cancelled":
      return (
        <Notice tone="bad" testId="saga-summary">
          The checkout was cancelled: <strong>stock released</strong>, <strong>order cancelled</strong>.
        </Notice>
      );
    case "failed":
      return (
        <Notice tone="bad" testId="saga-summary">
          A step failed for good. The steps below say what was undone.
        </Notice>
      );
  }
}

export function CheckoutScreen({ user, id }: { user: string; id: string }) {
  const now = useNow();
  const progress = useQuery({
    queryKey: keys.checkout(user, id),
    queryFn: ({ signal }) => getCheckout(id, signal),
    refetchInterval: (query) => (isTerminal(query.state.data?.status) || query.state.error instanceof ApiError ? false : 1000),
  });
  const status = progress.data ? STATUS[progress.data.status] : undefined;

  return (
    <div className="screen screen-narrow">
      <PageHeader
        title="Checkout progress"
        caption="a saga that undoes its finished steps (compensation) when a later one fails."
        aside={
          status ? (
            <Pill tone={status.tone} testId="saga-status" state={progress.data?.status}>
              {status.text}
            </Pill>
          ) : null
        }
      />
      <TryIt>
        Place an order with the declined card (<code>tok_declined</code>): the payment fails and the earlier steps are undone.
        Set <em>provider slow ms</em> to 3000 to watch the steps move one by one.
      </TryIt>

      {progress.isPending ? (
        <Panel>
          <Skeleton width="40%" height={18} />
          <Skeleton width="80%" />
          <Skeleton width="70%" />
        </Panel>
      ) : progress.isError && !progress.data ? (
        progress.error instanceof ApiError && progress.error.status === 404 ? (
          <EmptyState title="There is no such checkout." testId="checkout-missing">
            <Link to="/orders">See your orders</Link>
          </EmptyState>
        ) : (
          <ErrorState error={progress.error} onRetry={() => void progress.refetch()} what="the checkout" testId="checkout-error" />
        )
      ) : (
        <Panel
          title={<span className="mono">{progress.data.checkout}</span>}
          aside={
            <span className="muted small" title={fullTime(progress.data.updated_at)}>
              updated {relativeTime(progress.data.updated_at, now)}
            </span>
          }
        >
          <Summary progress={progress.data} />
          <SagaSteps progress={progress.data} />
          {progress.data.order ? (
            <p className="small">
              Order{" "}
              <Link to={`/orders/${encodeURIComponent(progress.data.order)}`} data-testid="saga-order-link">
                {progress.data.order}
              </Link>
            </p>
          ) : null}
        </Panel>
      )}
    </div>
  );
}
