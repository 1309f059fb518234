// Place order, once. The intent (one per cart contents, its key in sessionStorage) is sent by
// the library with the same key on every retry and after a reload; the panel shows only what
// the server confirmed: Processing, Success, Failure, or Unknown while it keeps asking.

import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useRef, useState } from "react";
import { pendingIntents, useIdempotentMutation, type Intent } from "../oncely/index.ts";
import {
  ApiError,
  getCheckout,
  sendOptions,
  type Card,
  type CartItem,
  type CheckoutAnswer,
} from "../api.ts";
import { clearAccepted, loadAccepted, saveAccepted } from "../accepted-checkout.ts";
import {
  CHECKOUT_INTENT_PREFIX,
  checkoutIntentName,
  describeCheckout,
  isTerminal,
  reaskDelay,
  type CheckoutViewState,
} from "../checkout-state.ts";
import { recordConsistencyToken } from "../consistency.ts";
import { clockTime, formatMoney, shortId } from "../format.ts";
import { Link } from "../navigation.tsx";
import { invalidateAfterOrder, keys } from "../queries.ts";
import { SagaSteps } from "../components/SagaSteps.tsx";
import { Spinner } from "../components/icons.tsx";
import { Notice, Pill, type PillTone } from "../components/ui.tsx";

interface CheckoutVars {
  card: Card;
  items: CartItem[];
}

const CARDS: { id: Card; label: string; hint: string }[] = [
  { id: "tok_ok", label: "Visa ending 4242", hint: "A good card: the payment goes through." },
  { id: "tok_declined", label: "Visa ending 0002", hint: "A declined card: the saga undoes its steps." },
];

const STATE_PILL: Record<CheckoutViewState, { tone: PillTone; text: string }> = {
  idle: { tone: "neutral", text: "Not placed" },
  processing: { tone: "info", text: "Processing" },
  success: { tone: "good", text: "Success" },
  failure: { tone: "bad", text: "Failure" },
  unknown: { tone: "warn", text: "Unknown" },
};

/** The pending checkout of this user in this tab, whatever cart it was for. */
function pendingCheckout(user: string): Intent | undefined {
  return pendingIntents().find((intent) => intent.name.startsWith(`${CHECKOUT_INTENT_PREFIX}${user}:`));
}

export function CheckoutPanel({
  user,
  items,
  onBusyChange,
}: {
  user: string;
  items: CartItem[];
  onBusyChange: (busy: boolean) => void;
}) {
  const client = useQueryClient();
  const [card, setCard] = useState<Card>("tok_ok");
  const [following, setFollowing] = useState<string | undefined>(() => loadAccepted(user)?.checkout);
  const round = useRef(0);

  // A pending intent wins over the cart as it is now: it may already have been carried out, and
  // only its own key can tell. Once placed, the name stays put while its outcome is on screen:
  // a confirmed order empties the cart, and a new name would be a new (blank) intent.
  const waiting = pendingCheckout(user);
  const fresh = checkoutIntentName(user, items);
  const [placed, setPlaced] = useState<string | undefined>(() => waiting?.name);
  const name = waiting?.name ?? placed ?? fresh;
  const waitingName = waiting?.name;
  useEffect(() => {
    if (waitingName !== undefined) setPlaced(waitingName);
  }, [waitingName]);

  const order = useIdempotentMutation<CheckoutVars, CheckoutAnswer>({
    intent: name,
    request: (vars) => ({
      method: "POST",
      url: "/api/checkout",
      body: { card: vars.card, items: vars.items.map((item) => ({ product: item.product, qty: item.qty })) },
    }),
    resumeOnMount: true,
    send: sendOptions,
    onOutcome: (outcome) => {
      if (outcome.kind === "unknown") return;
      recordConsistencyToken(user, outcome.headers);
      if (outcome.kind === "succeeded" && outcome.body?.status === "pending" && outcome.body.checkout) {
        saveAccepted(user, outcome.body.checkout);
        setFollowing(outcome.body.checkout);
        return;
      }
      // Confirmed (the cart is emptied) or refused (a declined card released its stock).
      invalidateAfterOrder(client, user);
    },
  });

  const progress = useQuery({
    queryKey: keys.checkout(user, following ?? "-"),
    queryFn: ({ signal }) => getCheckout(following ?? "", signal),
    enabled: following !== undefined,
    refetchInterval: (query) => (isTerminal(query.state.data?.status) || query.state.error instanceof ApiError ? false : 1000),
    refetchOnWindowFocus: false,
  });

  const status = progress.data?.status;
  useEffect(() => {
    if (!isTerminal(status)) return;
    clearAccepted(user);
    invalidateAfterOrder(client, user);
  }, [status, user, client]);

  // The accepted checkout is gone (e.g. the demo data was reset): stop following it.
  const lost = progress.error instanceof ApiError && progress.error.status === 404;
  useEffect(() => {
    if (!lost) return;
    clearAccepted(user);
    setFollowing(undefined);
  }, [lost, user]);

  // Unknown: keep asking with the same key, calmly.
  const { state, outcome, resume } = order;
  // Once unknown, a re-ask in flight still shows "We're checking what happened".
  const [rechecking, setRechecking] = useState(false);
  useEffect(() => {
    if (state === "unknown") setRechecking(true);
    else if (state !== "processing") setRechecking(false);
  }, [state]);
  useEffect(() => {
    if (state !== "unknown") {
      if (state !== "processing") round.current = 0;
      return;
    }
    const timer = setTimeout(resume, reaskDelay(round.current++));
    return () => clearTimeout(timer);
  }, [state, outcome, resume]);

  const view = describeCheckout({
    state: order.state,
    outcome: order.outcome,
    hasPending: order.pending !== undefined,
    rechecking,
    ...(following !== undefined ? { following } : {}),
    ...(progress.data ? { progress: progress.data } : {}),
  });

  const busy = view.state === "processing" || view.state === "unknown";
  useEffect(() => onBusyChange(busy), [busy, onBusyChange]);

  const key = order.pending?.key ?? order.outcome?.key;
  const pill = STATE_PILL[view.state];
  const canPlace = items.length > 0 && !busy && view.state !== "success";

  // After a refusal the user may change the cart: the next order is another intent.
  const settledOn = view.state === "failure" || view.state === "idle";
  useEffect(() => {
    if (settledOn && placed !== undefined && placed !== fresh) setPlaced(undefined);
  }, [settledOn, placed, fresh]);

  const place = () => {
    setFollowing(undefined);
    clearAccepted(user);
    setPlaced(name);
    order.submit({ card, items });
  };
  const startOver = () => {
    order.reset();
    setPlaced(undefined);
    setFollowing(undefined);
    clearAccepted(user);
  };

  const staleCart = waiting !== undefined && waiting.name !== checkoutIntentName(user, items);

  return (
    <section className="panel checkout" aria-labelledby="checkout-title">
      <div className="panel-head">
        <h2 id="checkout-title">Checkout</h2>
        <Pill tone={pill.tone} testId="checkout-state" state={view.state}>
          {pill.text}
        </Pill>
      </div>

      {staleCart ? (
        <Notice tone="warn" testId="checkout-pending-notice">
          We're still confirming the order you placed at {clockTime(waiting.startedAt)}, before your cart changed. Its
          outcome comes first.
        </Notice>
      ) : null}

      {view.state === "idle" || view.state === "failure" ? (
        <fieldset className="cards" disabled={busy}>
          <legend>Pay with</legend>
          {CARDS.map((c) => (
            <label key={c.id} className={`card-option${card === c.id ? " selected" : ""}`}>
              <input
                type="radio"
                name="card"
                value={c.id}
                checked={card === c.id}
                onChange={() => setCard(c.id)}
                data-testid={`card-${c.id}`}
              />
              <span className="card-text">
                <span className="card-label">{c.label}</span>
                <span className="muted small">{c.hint}</span>
              </span>
              <code className="small">{c.id}</code>
            </label>
          ))}
        </fieldset>
      ) : null}

      <div
        className={`checkout-status checkout-${view.state}`}
        data-testid="checkout-status"
        data-state={view.state}
        role="status"
        aria-live="polite"
      >
        {view.state === "processing" || (view.state === "unknown" && order.state === "processing") ? <Spinner size={16} /> : null}
        <div>
          <p className="checkout-title" data-testid="checkout-status-title">
            {view.title}
          </p>
          {view.detail ? <p className="muted">{view.detail}</p> : null}
          {view.state === "success" && view.order ? (
            <p>
              Order{" "}
              <Link to={`/orders/${encodeURIComponent(view.order)}`} data-testid="checkout-order-link" data-order-id={view.order}>
                {view.order}
              </Link>
              {view.totalCents !== undefined ? ` · ${formatMoney(view.totalCents)}` : null}
              {view.replayed ? (
                <Pill tone="info" testId="checkout-replayed" title="Idempotent-Replayed: true">
                  stored answer
                </Pill>
              ) : null}
            </p>
          ) : null}
          {view.checkout && view.state !== "idle" ? (
            <p className="small">
              <Link to={`/checkouts/${encodeURIComponent(view.checkout)}`} data-testid="checkout-progress-link">
                See the saga's steps
              </Link>
            </p>
          ) : null}
          {view.state === "unknown" && order.outcome?.kind === "unknown" ? (
            <p className="muted small" data-testid="checkout-unknown-reason">
              Last try: {order.outcome.message}.
            </p>
          ) : null}
        </div>
      </div>

      {following && progress.data && !isTerminal(progress.data.status) ? <SagaSteps progress={progress.data} /> : null}

      <div className="checkout-actions">
        {view.state === "success" ? (
          <>
            {view.order ? (
              <Link to={`/orders/${encodeURIComponent(view.order)}`} className="button button-primary">
                View order
              </Link>
            ) : null}
            <button type="button" className="button" onClick={startOver} data-testid="checkout-new">
              Start a new order
            </button>
          </>
        ) : view.state === "unknown" ? (
          <button type="button" className="button" onClick={order.resume} data-testid="checkout-check-again">
            {order.state === "processing" ? <Spinner size={12} /> : null}
            Check now
          </button>
        ) : (
          <button
            type="button"
            className="button button-primary button-wide"
            onClick={place}
            disabled={!canPlace}
            aria-disabled={!canPlace}
            data-testid="place-order"
          >
            {busy ? <Spinner size={14} /> : null}
            {busy ? "Placing order..." : view.state === "failure" ? "Try again" : "Place order"}
          </button>
        )}
      </div>

      {key ? (
        <p className="key-line small muted" data-testid="checkout-key" data-key={key}>
          Idempotency key <code>{shortId(key, 13)}</code>
          {order.outcome && order.outcome.attempts > 1 ? ` · ${order.outcome.attempts} attempts, one key` : null}
        </p>
      ) : null}
    </section>
  );
}
