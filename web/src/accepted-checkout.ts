// A 202 is a definite answer for the library (the intent is retired), but the order is not
// decided yet. The page remembers the accepted checkout in sessionStorage so that a reload
// goes on following it instead of forgetting it.

const PREFIX = "oncely-shop:accepted-checkout:";

export interface AcceptedCheckout {
  checkout: string;
  at: number;
}

export function loadAccepted(user: string): AcceptedCheckout | undefined {
  try {
    const raw = globalThis.sessionStorage?.getItem(PREFIX + user);
    if (!raw) return undefined;
    const parsed = JSON.parse(raw) as Partial<AcceptedCheckout>;
    return typeof parsed.checkout === "string" && typeof parsed.at === "number"
      ? { checkout: parsed.checkout, at: parsed.at }
      : undefined;
  } catch {
    return undefined;
  }
}

export function saveAccepted(user: string, checkout: string): void {
  try {
    globalThis.sessionStorage?.setItem(PREFIX + user, JSON.stringify({ checkout, at: Date.now() }));
  } catch {
    // storage refused: a reload forgets it, the order page still shows it
  }
}

export function clearAccepted(user?: string): void {
  try {
    const s = globalThis.sessionStorage;
    if (!s) return;
    if (user !== undefined) {
      s.removeItem(PREFIX + user);
      return;
    }
    for (let i = s.length - 1; i >= 0; i--) {
      const key = s.key(i);
      if (key?.startsWith(PREFIX)) s.removeItem(key);
    }
  } catch {
    // nothing to clear
  }
}
