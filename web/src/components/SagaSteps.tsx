// The checkout saga's steps with their states, compensation included: when a later step fails,
// the finished ones are undone ("stock released", "order cancelled").

import type { CheckoutProgress, SagaStep, StepState } from "../api.ts";
import { humanize } from "../format.ts";
import { CheckIcon, CrossIcon, DotIcon, Spinner, UndoIcon } from "./icons.tsx";

const STEP_LABELS: Record<string, string> = {
  place_order: "Place order",
  create_order: "Place order",
  reserve_stock: "Reserve stock",
  capture_payment: "Capture payment",
  charge_payment: "Capture payment",
  payment: "Capture payment",
  confirm: "Confirm",
  confirm_order: "Confirm",
};

/** What undoing a step means to the customer. */
const COMPENSATED: Record<string, string> = {
  place_order: "order cancelled",
  create_order: "order cancelled",
  reserve_stock: "stock released",
  capture_payment: "payment refunded",
  charge_payment: "payment refunded",
  payment: "payment refunded",
  confirm: "confirmation withdrawn",
  confirm_order: "confirmation withdrawn",
};

export function stepLabel(name: string): string {
  return STEP_LABELS[name] ?? humanize(name);
}

export function stepStateText(step: SagaStep): string {
  switch (step.state) {
    case "pending":
      return "Waiting";
    case "running":
      return step.attempts > 1 ? `In progress (attempt ${step.attempts})` : "In progress";
    case "done":
      return step.attempts > 1 ? `Done after ${step.attempts} attempts` : "Done";
    case "failed":
      return step.attempts > 1 ? `Failed after ${step.attempts} attempts` : "Failed";
    case "compensating":
      return "Undoing...";
    case "compensated":
      return COMPENSATED[step.name] ?? "Undone";
  }
}

function StepIcon({ state }: { state: StepState }) {
  switch (state) {
    case "done":
      return <CheckIcon size={14} />;
    case "failed":
      return <CrossIcon size={14} />;
    case "running":
    case "compensating":
      return <Spinner size={12} />;
    case "compensated":
      return <UndoIcon size={14} />;
    case "pending":
      return <DotIcon size={14} />;
  }
}

export function SagaSteps({ progress }: { progress: CheckoutProgress }) {
  const steps = progress.steps ?? [];
  if (steps.length === 0) return <p className="muted small">The saga has not reported any steps yet.</p>;
  return (
    <ol className="saga" data-testid="saga-steps">
      {steps.map((step) => (
        <li
          key={step.name}
          className={`saga-step saga-${step.state}`}
          data-testid={`saga-step-${step.name}`}
          data-state={step.state}
        >
          <span className="saga-icon">
            <StepIcon state={step.state} />
          </span>
          <span className="saga-name">{stepLabel(step.name)}</span>
          <span className="saga-state" data-testid={`saga-step-${step.name}-state`}>
            {stepStateText(step)}
          </span>
        </li>
      ))}
    </ol>
  );
}
