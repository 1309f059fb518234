import { dismissToast, useToast } from "../toast.ts";

export function Toaster() {
  const toast = useToast();
  return (
    <div className="toast-region" aria-live="polite">
      {toast ? (
        <div className={`toast toast-${toast.tone}`} data-testid="toast" data-tone={toast.tone} role="status" key={toast.id}>
          <span data-testid="toast-message">{toast.message}</span>
          {toast.action ? (
            <button
              type="button"
              className="toast-action"
              data-testid="toast-action"
              onClick={() => {
                const action = toast.action;
                dismissToast(toast.id);
                action?.run();
              }}
            >
              {toast.action.label}
            </button>
          ) : null}
          <button
            type="button"
            className="toast-close"
            aria-label="Dismiss"
            data-testid="toast-dismiss"
            onClick={() => dismissToast(toast.id)}
          >
            ×
          </button>
        </div>
      ) : null}
    </div>
  );
}
