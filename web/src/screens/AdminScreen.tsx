import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { pendingIntents, retireIntent } from "../oncely/index.ts";
import {
  CHAOS_OFF,
  describeError,
  getChaos,
  getNotifications,
  getOutbox,
  getReconciliation,
  putChaos,
  resetDemo,
  runReconciliation,
  type Chaos,
} from "../api.ts";
import { clearAccepted } from "../accepted-checkout.ts";
import { clearConsistencyTokens } from "../consistency.ts";
import { formatDuration, fullTime, humanize, relativeTime } from "../format.ts";
import { Link } from "../navigation.tsx";
import { resetNotesSession } from "../notes-session.ts";
import { keys, useNow } from "../queries.ts";
import { showToast } from "../toast.ts";
import { ConfirmDialog } from "../components/ConfirmDialog.tsx";
import { Spinner } from "../components/icons.tsx";
import { EmptyState, ErrorState, PageHeader, Panel, Pill, Skeleton, TryIt } from "../components/ui.tsx";

// ---------------------------------------------------------------------------------------------
// Chaos

type NumberField = "provider_slow_ms" | "provider_fail_next" | "provider_timeout_next" | "webhook_drop_next" | "webhook_duplicate_next";
type BoolField = "webhook_reorder" | "favourites_fail";

const NUMBER_FIELDS: { field: NumberField; label: string; unit: string; hint: string; max: number }[] = [
  { field: "provider_slow_ms", label: "Provider slow", unit: "ms", max: 60_000, hint: "The payment provider answers this much later. A slow checkout answers 202 and the saga finishes in the background." },
  { field: "provider_fail_next", label: "Provider fails next", unit: "calls", max: 20, hint: "The next N provider calls fail. The saga retries its step; the browser retries with the same key." },
  { field: "provider_timeout_next", label: "Provider times out next", unit: "calls", max: 20, hint: "The next N provider calls time out: did the payment happen? Reconciliation and the keys find out." },
  { field: "webhook_drop_next", label: "Drop next webhooks", unit: "webhooks", max: 20, hint: "The next N payment webhooks are lost. Orders stay “payment pending” until reconciliation finds them." },
  { field: "webhook_duplicate_next", label: "Duplicate next webhooks", unit: "webhooks", max: 20, hint: "The next N webhooks arrive twice. The inbox applies each once; no double notification." },
];

const BOOL_FIELDS: { field: BoolField; label: string; hint: string }[] = [
  { field: "webhook_reorder", label: "Reorder webhooks", hint: "Webhooks arrive out of order; the payment status still ends right." },
  { field: "favourites_fail", label: "Favourites failing", hint: "Favourite toggles answer 503. The heart flips, then rolls back with a Retry." },
];

function activeSwitches(chaos: Chaos): number {
  return (
    NUMBER_FIELDS.filter((f) => chaos[f.field] > 0).length + BOOL_FIELDS.filter((f) => chaos[f.field]).length
  );
}

function ChaosPanel({ user }: { user: string }) {
  const client = useQueryClient();
  const chaos = useQuery({ queryKey: keys.chaos(user), queryFn: ({ signal }) => getChaos(signal), refetchInterval: 5000 });
  const [draft, setDraft] = useState<Chaos | null>(null);
  const apply = useMutation({
    mutationKey: [user, "chaos"],
    mutationFn: (next: Chaos) => putChaos(next),
    onSuccess: (saved) => {
      client.setQueryData(keys.chaos(user), saved);
      setDraft(null);
      showToast(activeSwitches(saved) === 0 ? "All faults off." : "Faults armed.", { tone: "success" });
    },
    onError: (error) => showToast(`Couldn't change the switches: ${describeError(error)}`, { tone: "error" }),
  });

  const server = chaos.data ? { ...CHAOS_OFF, ...chaos.data } : undefined;
  const shown = draft ?? server;
  const changed = draft !== null && server !== undefined && JSON.stringify(draft) !== JSON.stringify(server);

  if (chaos.isPending) return <Panel title="Chaos"><Skeleton height={160} /></Panel>;
  if (chaos.isError && !shown) {
    return (
      <Panel title="Chaos">
        <ErrorState error={chaos.error} onRetry={() => void chaos.refetch()} what="the fault switches" testId="chaos-error" />
      </Panel>
    );
  }
  if (!shown) return null;
  const set = (patch: Partial<Chaos>) => setDraft({ ...shown, ...patch });

  return (
    <Panel
      title="Chaos"
      className="chaos"
      testId="chaos-panel"
      aside={
        <Pill tone={activeSwitches(server ?? CHAOS_OFF) > 0 ? "warn" : "good"} testId="chaos-active">
          {activeSwitches(server ?? CHAOS_OFF) > 0 ? `${activeSwitches(server ?? CHAOS_OFF)} armed` : "All off"}
        </Pill>
      }
    >
      <p className="muted small">Counts mean “the next N”; they run down as the faults happen.</p>
      <form
        className="chaos-form"
        onSubmit={(event) => {
          event.preventDefault();
          apply.mutate(shown);
        }}
      >
        {NUMBER_FIELDS.map(({ field, label, unit, hint, max }) => (
          <label key={field} className="chaos-row">
            <span className="chaos-label">
              {label}
              <span className="muted small">{hint}</span>
            </span>
            <span className="chaos-input">
              <input
                className="input input-number"
                type="number"
                min={0}
                max={max}
                step={field === "provider_slow_ms" ? 500 : 1}
                value={shown[field]}
                onChange={(e) => set({ [field]: Math.max(0, Math.min(max, Math.floor(Number(e.target.value) || 0))) })}
                data-testid={`chaos-${field}`}
              />
              <span className="muted small">{unit}</span>
            </span>
          </label>
        ))}
        {BOOL_FIELDS.map(({ field, label, hint }) => (
          <label key={field} className="chaos-row">
            <span className="chaos-label">
              {label}
              <span className="muted small">{hint}</span>
            </span>
            <span className="chaos-input">
              <input
                type="checkbox"
                className="switch"
                checked={shown[field]}
                onChange={(e) => set({ [field]: e.target.checked })}
                data-testid={`chaos-${field}`}
              />
            </span>
          </label>
        ))}
        <div className="button-row">
          <button type="submit" className="button button-primary" disabled={!changed || apply.isPending} data-testid="chaos-apply">
            {apply.isPending ? <Spinner size={12} /> : null}
            Apply
          </button>
          <button
            type="button"
            className="button"
            disabled={apply.isPending}
            onClick={() => apply.mutate(CHAOS_OFF)}
            data-testid="chaos-clear"
          >
            Turn everything off
          </button>
          {changed ? (
            <button type="button" className="link-button" onClick={() => setDraft(null)}>
              Undo edits
            </button>
          ) : null}
        </div>
      </form>
    </Panel>
  );
}

// ---------------------------------------------------------------------------------------------
// Reconciliation

function ReconciliationPanel({ user }: { user: string }) {
  const client = useQueryClient();
  const now = useNow();
  const recon = useQuery({ queryKey: keys.reconciliation(user), queryFn: ({ signal }) => getReconciliation(signal), refetchInterval: 10_000 });
  const run = useMutation({
    mutationKey: [user, "reconciliation-run"],
    mutationFn: runReconciliation,
    onSuccess: (lastRun) => {
      client.setQueryData(keys.reconciliation(user), (old: typeof recon.data) => (old ? { ...old, last_run: lastRun } : old));
      void client.invalidateQueries({ queryKey: keys.reconciliation(user) });
      void client.invalidateQueries({ queryKey: keys.orders(user) });
      const found = Object.values(lastRun?.mismatches_by_class ?? {}).reduce((a, b) => a + b, 0);
      showToast(found === 0 ? "Reconciliation ran: everything matches." : `Reconciliation ran: ${found} mismatch${found === 1 ? "" : "es"}.`);
    },
    onError: (error) => showToast(`The run failed: ${describeError(error)}`, { tone: "error" }),
  });

  const last = recon.data?.last_run ?? null;
  const mismatches = Object.entries(last?.mismatches_by_class ?? {});
  const findings = recon.data?.open_findings ?? [];
  const healed = (recon.data?.recent_findings ?? []).filter((f) => f.state === "healed");

  return (
    <Panel
      title="Reconciliation"
      testId="reconciliation-panel"
      aside={
        <button
          type="button"
          className="button button-small"
          onClick={() => run.mutate()}
          disabled={run.isPending}
          data-testid="reconciliation-run"
        >
          {run.isPending ? <Spinner size={12} /> : null}
          {run.isPending ? "Running..." : "Run now"}
        </button>
      }
    >
      <p className="muted small">Compares the shop's payments with the provider's records and reports what differs.</p>
      {recon.isPending ? (
        <Skeleton height={80} />
      ) : recon.isError && !recon.data ? (
        <ErrorState error={recon.error} onRetry={() => void recon.refetch()} what="the reconciliation" testId="reconciliation-error" />
      ) : (
        <>
          <div className="stat-row" data-testid="reconciliation-last-run">
            {last ? (
              <>
                <div className="stat">
                  <span className="stat-label">Last run</span>
                  <span className="stat-value" title={fullTime(last.started_at)}>
                    {relativeTime(last.finished_at ?? last.started_at, now)}
                  </span>
                </div>
                <div className="stat">
                  <span className="stat-label">Status</span>
                  <span className="stat-value">{humanize(last.status)}</span>
                </div>
                <div className="stat">
                  <span className="stat-label">Checked</span>
                  <span className="stat-value">{last.checked}</span>
                </div>
              </>
            ) : (
              <p className="muted">It has not run yet.</p>
            )}
          </div>
          {last ? (
            mismatches.length === 0 ? (
              <p className="small" data-testid="reconciliation-mismatches">
                <Pill tone="good">No mismatches</Pill>
              </p>
            ) : (
              <table className="kv-table" data-testid="reconciliation-mismatches">
                <thead>
                  <tr>
                    <th>Mismatch class</th>
                    <th className="num">Count</th>
                  </tr>
                </thead>
                <tbody>
                  {mismatches.map(([cls, count]) => (
                    <tr key={cls} data-class={cls}>
                      <td>
                        <code>{cls}</code>
                      </td>
                      <td className="num">{count}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )
          ) : null}
          <h3 className="subhead">Open findings</h3>
          {findings.length === 0 ? (
            <p className="muted small" data-testid="reconciliation-findings" data-count={0}>
              None open.
            </p>
          ) : (
            <ul className="findings" data-testid="reconciliation-findings" data-count={findings.length}>
              {findings.map((f) => (
                <li key={f.id} className="finding" data-testid="reconciliation-finding" data-class={f.class}>
                  <div>
                    <code>{f.class}</code> <span className="mono small">{f.key}</span>
                  </div>
                  <div className="muted small">{detailText(f.detail)}</div>
                  <div className="muted tiny" title={fullTime(f.first_seen)}>
                    first seen {relativeTime(f.first_seen, now)}
                  </div>
                </li>
              ))}
            </ul>
          )}
          <h3 className="subhead">Healed</h3>
          {healed.length === 0 ? (
            <p className="muted small" data-testid="reconciliation-healed" data-count={0}>
              Nothing healed yet.
            </p>
          ) : (
            <ul className="findings" data-testid="reconciliation-healed" data-count={healed.length}>
              {healed.map((f) => (
                <li key={f.id} className="finding" data-testid="reconciliation-healed-finding" data-class={f.class}>
                  <div>
                    <Pill tone="good">healed</Pill> <code>{f.class}</code> <span className="mono small">{f.key}</span>
                  </div>
                  <div className="muted tiny" title={fullTime(f.first_seen)}>
                    seen {relativeTime(f.first_seen, now)}
                  </div>
                </li>
              ))}
            </ul>
          )}
        </>
      )}
    </Panel>
  );
}

// ---------------------------------------------------------------------------------------------
// Outbox and notifications

function OutboxPanel({ user }: { user: string }) {
  const outbox = useQuery({ queryKey: keys.outbox(user), queryFn: ({ signal }) => getOutbox(signal), refetchInterval: 2000 });
  const o = outbox.data;
  const lag = o ? Math.max(0, o.outbox_position - o.read_model_position) : 0;
  return (
    <Panel title="Outbox" testId="outbox-panel" aside={o ? <Pill tone={o.pending > 0 ? "warn" : "good"}>{o.pending > 0 ? "Behind" : "Caught up"}</Pill> : null}>
      <p className="muted small">Events written with each order, published to the read model and the notifications inbox.</p>
      {outbox.isPending ? (
        <Skeleton height={60} />
      ) : outbox.isError && !o ? (
        <ErrorState error={outbox.error} onRetry={() => void outbox.refetch()} what="the outbox" testId="outbox-error" />
      ) : o ? (
        <div className="stat-grid">
          <div className="stat">
            <span className="stat-label">Pending</span>
            <span className="stat-value" data-testid="outbox-pending">
              {o.pending}
            </span>
          </div>
          <div className="stat">
            <span className="stat-label">Oldest pending</span>
            <span className="stat-value" data-testid="outbox-oldest-age">
              {o.pending > 0 && o.oldest_pending_age_ms !== null ? formatDuration(o.oldest_pending_age_ms) : "—"}
            </span>
          </div>
          <div className="stat">
            <span className="stat-label">Published</span>
            <span className="stat-value" data-testid="outbox-published">
              {o.published}
            </span>
          </div>
          {o.dead !== undefined ? (
            <div className="stat">
              <span className="stat-label">Dead</span>
              <span className="stat-value" data-testid="outbox-dead">
                {o.dead}
              </span>
            </div>
          ) : null}
          <div className="stat">
            <span className="stat-label">Positions</span>
            <span className="stat-value" data-testid="outbox-positions" title="read model / outbox">
              {o.read_model_position} / {o.outbox_position}
              {lag > 0 ? <span className="muted small"> ({lag} behind)</span> : null}
            </span>
          </div>
        </div>
      ) : null}
    </Panel>
  );
}

function NotificationsPanel({ user }: { user: string }) {
  const now = useNow();
  const list = useQuery({ queryKey: keys.notifications(user), queryFn: ({ signal }) => getNotifications(signal), refetchInterval: 3000 });
  const items = list.data ?? [];
  return (
    <Panel title="Notifications" testId="notifications-panel">
      <p className="muted small">Written by an inbox consumer of the outbox: each event applied once, however often it is delivered.</p>
      {list.isPending ? (
        <Skeleton height={60} />
      ) : list.isError && !list.data ? (
        <ErrorState error={list.error} onRetry={() => void list.refetch()} what="the notifications" testId="notifications-error" />
      ) : items.length === 0 ? (
        <EmptyState title="No notifications yet." testId="notifications-empty" />
      ) : (
        <ul className="notifications">
          {items.map((n) => (
            <li key={n.id} className="notification" data-testid="notification" data-order-id={n.order ?? undefined}>
              <span>{n.text}</span>
              <span className="muted tiny">
                {n.order ? (
                  <>
                    <Link to={`/orders/${encodeURIComponent(n.order)}`}>{n.order}</Link> ·{" "}
                  </>
                ) : null}
                <span title={fullTime(n.at)}>{relativeTime(n.at, now)}</span>
              </span>
            </li>
          ))}
        </ul>
      )}
    </Panel>
  );
}

// ---------------------------------------------------------------------------------------------
// Reset

function ResetDemo() {
  const client = useQueryClient();
  const [confirming, setConfirming] = useState(false);
  const reset = useMutation({
    mutationFn: resetDemo,
    onSuccess: () => {
      // What this tab remembered about the old data means nothing now.
      for (const intent of pendingIntents()) retireIntent(intent.name, intent.key);
      clearAccepted();
      clearConsistencyTokens();
      resetNotesSession();
      setConfirming(false);
      void client.resetQueries();
      showToast("Demo data reset to the seed.", { tone: "success" });
    },
    onError: (error) => {
      setConfirming(false);
      showToast(`Couldn't reset: ${describeError(error)}`, { tone: "error" });
    },
  });
  return (
    <Panel title="Start over" testId="reset-panel">
      <p className="muted small">Back to the seed data: products, stock, carts, orders, profiles and switches.</p>
      <button type="button" className="button button-danger-outline" onClick={() => setConfirming(true)} data-testid="reset-demo">
        Reset demo data
      </button>
      <ConfirmDialog
        open={confirming}
        title="Reset the demo data?"
        confirmLabel="Reset everything"
        cancelLabel="Keep the data"
        busy={reset.isPending}
        onCancel={() => setConfirming(false)}
        onConfirm={() => reset.mutate()}
      >
        <p>Every order, cart and profile change of every user is dropped, for everyone using this shop.</p>
      </ConfirmDialog>
    </Panel>
  );
}

export function AdminScreen({ user }: { user: string }) {
  return (
    <div className="screen">
      <PageHeader
        title="Behind the scenes"
        caption="failures you can inject, and the jobs that notice them: reconciliation, the outbox, an inbox that applies each event once."
      />
      <TryIt>
        Set <em>drop next webhooks</em> to 1 and place an order: it stays <em>payment pending</em>. Press <em>Run now</em>:
        reconciliation reports a <code>missing_webhook</code>. Set <em>duplicate next webhooks</em> to 1: one notification,
        not two.
      </TryIt>
      <div className="admin-layout">
        <div className="stack">
          <ChaosPanel user={user} />
          <ResetDemo />
        </div>
        <div className="stack">
          <ReconciliationPanel user={user} />
          <OutboxPanel user={user} />
          <NotificationsPanel user={user} />
        </div>
      </div>
    </div>
  );
}

/** A finding's detail as one line: text as it is, structured facts as `name: value` pairs. */
function detailText(detail: unknown): string {
  if (typeof detail === "string") return detail;
  if (detail && typeof detail === "object") {
    return Object.entries(detail as Record<string, unknown>)
      .map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : String(v)}`)
      .join(", ");
  }
  return detail === undefined || detail === null ? "" : String(detail);
}
