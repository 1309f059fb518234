import type { ConsistencyInfo } from "../consistency.ts";
import { Spinner } from "./icons.tsx";
import { Pill } from "./ui.tsx";

/** What the read model's answer said about itself: syncing, up to date, or eventual. */
export function ConsistencyBadge({
  info,
  behind,
  token,
  testId,
}: {
  info: ConsistencyInfo | undefined;
  behind: boolean;
  token: number | undefined;
  testId: string;
}) {
  const position = info?.position !== undefined ? `read model at ${info.position}` : undefined;
  if (behind) {
    return (
      <span data-testid={testId} data-consistency="stale" className="pill-wrap">
        <Pill tone="info" title={`Waiting for position ${token ?? "?"}${position ? `; ${position}` : ""}`}>
          <Spinner size={11} /> Syncing...
        </Pill>
      </span>
    );
  }
  if (!info) return null;
  if (info.consistency === "fresh" || (token !== undefined && info.consistency !== "stale")) {
    return (
      <span data-testid={testId} data-consistency="fresh" className="pill-wrap">
        <Pill tone="good" title={`Includes your writes up to ${token ?? "?"}${position ? `; ${position}` : ""}`}>
          Up to date with your changes
        </Pill>
      </span>
    );
  }
  return (
    <span data-testid={testId} data-consistency={info.consistency} className="pill-wrap">
      <Pill tone="neutral" title={position ?? "X-Consistency: eventual"}>
        Eventually consistent
      </Pill>
    </span>
  );
}
