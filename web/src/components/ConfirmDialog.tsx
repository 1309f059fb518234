// A confirmation for destructive actions, on the native <dialog>: focus stays inside, Escape
// cancels, and the safe choice has the focus when it opens.

import { useEffect, useRef, type ReactNode } from "react";

export function ConfirmDialog({
  open,
  title,
  children,
  confirmLabel,
  cancelLabel = "Keep it",
  onConfirm,
  onCancel,
  busy = false,
}: {
  open: boolean;
  title: string;
  children: ReactNode;
  confirmLabel: string;
  cancelLabel?: string;
  onConfirm: () => void;
  onCancel: () => void;
  busy?: boolean;
}) {
  const ref = useRef<HTMLDialogElement>(null);
  const cancelRef = useRef<HTMLButtonElement>(null);

  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    if (open && !dialog.open) {
      if (typeof dialog.showModal === "function") dialog.showModal();
      else dialog.setAttribute("open", "");
      cancelRef.current?.focus();
    } else if (!open && dialog.open) {
      dialog.close();
    }
  }, [open]);

  return (
    <dialog
      ref={ref}
      className="dialog"
      data-testid="confirm-dialog"
      aria-labelledby="confirm-dialog-title"
      onCancel={(event) => {
        event.preventDefault();
        if (!busy) onCancel();
      }}
      onClick={(event) => {
        // A click on the backdrop (the dialog element itself, outside its box) cancels.
        if (event.target === ref.current && !busy) onCancel();
      }}
    >
      {open ? (
        <div className="dialog-box">
          <h2 id="confirm-dialog-title">{title}</h2>
          <div className="dialog-text">{children}</div>
          <div className="dialog-actions">
            <button
              ref={cancelRef}
              type="button"
              className="button"
              onClick={onCancel}
              disabled={busy}
              data-testid="confirm-cancel"
            >
              {cancelLabel}
            </button>
            <button
              type="button"
              className="button button-danger"
              onClick={onConfirm}
              disabled={busy}
              data-testid="confirm-accept"
            >
              {confirmLabel}
            </button>
          </div>
        </div>
      ) : null}
    </dialog>
  );
}
