// Small shared pieces: the pattern caption, panels, skeletons, pills, empty and error states.

import type { ReactNode } from "react";
import { describeError } from "../api.ts";
import { AlertIcon } from "./icons.tsx";

/** The one line on every screen that names the pattern it shows. */
export function PatternCaption({ children }: { children: ReactNode }) {
  return (
    <p className="pattern" data-testid="pattern-caption">
      <span className="pattern-label">Pattern</span>
      <span>{children}</span>
    </p>
  );
}

/** How to see the pattern in a minute. */
export function TryIt({ children }: { children: ReactNode }) {
  return (
    <details className="try-it">
      <summary>Try it</summary>
      <div className="try-it-body">{children}</div>
    </details>
  );
}

export function PageHeader({ title, caption, aside }: { title: string; caption: ReactNode; aside?: ReactNode }) {
  return (
    <header className="page-header">
      <div className="page-title-row">
        <h1>{title}</h1>
        {aside ? <div className="page-aside">{aside}</div> : null}
      </div>
      <PatternCaption>{caption}</PatternCaption>
    </header>
  );
}

export function Panel({
  title,
  children,
  aside,
  className,
  testId,
}: {
  title?: ReactNode;
  children: ReactNode;
  aside?: ReactNode;
  className?: string;
  testId?: string;
}) {
  return (
    <section className={`panel${className ? ` ${className}` : ""}`} data-testid={testId}>
      {title || aside ? (
        <div className="panel-head">
          {title ? <h2>{title}</h2> : <span />}
          {aside}
        </div>
      ) : null}
      {children}
    </section>
  );
}

export function Skeleton({ width, height = 14, className }: { width?: string; height?: number; className?: string }) {
  return (
    <span
      className={`skeleton${className ? ` ${className}` : ""}`}
      style={{ width: width ?? "100%", height }}
      aria-hidden="true"
    />
  );
}

export type PillTone = "neutral" | "good" | "warn" | "bad" | "info";

export function Pill({
  tone = "neutral",
  children,
  testId,
  title,
  state,
}: {
  tone?: PillTone;
  children: ReactNode;
  testId?: string;
  title?: string;
  /** A machine-readable value for tests (`data-state`), beside the words shown. */
  state?: string;
}) {
  return (
    <span className={`pill pill-${tone}`} data-testid={testId} data-state={state} title={title}>
      {children}
    </span>
  );
}

export function EmptyState({ title, children, testId }: { title: string; children?: ReactNode; testId?: string }) {
  return (
    <div className="empty" data-testid={testId}>
      <p className="empty-title">{title}</p>
      {children ? <div className="muted">{children}</div> : null}
    </div>
  );
}

/** A read that failed, told apart from "loading" and "empty", with a way to try again. */
export function ErrorState({
  error,
  onRetry,
  testId,
  what,
}: {
  error: unknown;
  onRetry: () => void;
  testId?: string;
  what: string;
}) {
  return (
    <div className="error-state" role="alert" data-testid={testId}>
      <AlertIcon size={20} />
      <div>
        <p className="error-title">We couldn't load {what}.</p>
        <p className="muted">{describeError(error)}</p>
      </div>
      <button type="button" className="button" onClick={onRetry} data-testid={testId ? `${testId}-retry` : undefined}>
        Retry
      </button>
    </div>
  );
}

export function Notice({
  tone = "info",
  children,
  onDismiss,
  testId,
}: {
  tone?: "info" | "warn" | "bad" | "good";
  children: ReactNode;
  onDismiss?: () => void;
  testId?: string;
}) {
  return (
    <div className={`notice notice-${tone}`} role="status" data-testid={testId}>
      <div className="notice-body">{children}</div>
      {onDismiss ? (
        <button type="button" className="link-button" onClick={onDismiss} aria-label="Dismiss">
          Dismiss
        </button>
      ) : null}
    </div>
  );
}
