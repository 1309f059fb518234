import type { OrderStatus, PaymentStatus } from "../api.ts";
import { Pill, type PillTone } from "./ui.tsx";

const ORDER: Record<OrderStatus, { tone: PillTone; text: string }> = {
  confirmed: { tone: "good", text: "Confirmed" },
  cancelled: { tone: "neutral", text: "Cancelled" },
  pending: { tone: "info", text: "Pending" },
};

const PAYMENT: Record<PaymentStatus, { tone: PillTone; text: string }> = {
  pending: { tone: "warn", text: "payment pending" },
  paid: { tone: "good", text: "paid" },
  refunded: { tone: "neutral", text: "refunded" },
  failed: { tone: "bad", text: "payment failed" },
};

export function OrderStatusPill({ status, testId = "order-status" }: { status: OrderStatus; testId?: string }) {
  const s = ORDER[status] ?? { tone: "neutral" as const, text: status };
  return (
    <Pill tone={s.tone} testId={testId} state={status}>
      {s.text}
    </Pill>
  );
}

export function PaymentPill({ payment }: { payment: PaymentStatus }) {
  const s = PAYMENT[payment] ?? { tone: "neutral" as const, text: payment };
  return (
    <Pill tone={s.tone} testId="payment-status" state={payment} title={`payment: ${payment}`}>
      {s.text}
    </Pill>
  );
}
