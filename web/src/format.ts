// Formatting shared by the screens: money, times, ids.

const money = new Intl.NumberFormat("en-GB", { style: "currency", currency: "EUR" });

/** Cents as money, e.g. 450 → "€4.50". The contract gives cents and no currency; the demo uses euros. */
export function formatMoney(cents: number): string {
  return money.format((Number.isFinite(cents) ? cents : 0) / 100);
}

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

function plural(n: number, unit: string): string {
  return `${n} ${unit}${n === 1 ? "" : "s"}`;
}

/**
 * "just now", "2 minutes ago", "3 hours ago", "yesterday", "5 days ago"; a time a little in the
 * future (clocks differ) is "just now", further ahead "in 10 minutes". Dates older than a month
 * are shown as a date.
 */
export function relativeTime(when: Date | string | number, now: number = Date.now()): string {
  const time = new Date(when).getTime();
  if (Number.isNaN(time)) return "at an unknown time";
  const diff = now - time;
  const ahead = diff < 0;
  const ms = Math.abs(diff);
  if (ms < 45_000) return "just now";
  let text: string;
  if (ms < 90_000) text = "1 minute";
  else if (ms < HOUR) text = plural(Math.round(ms / MINUTE), "minute");
  else if (ms < DAY) text = plural(Math.round(ms / HOUR), "hour");
  else if (!ahead && ms < 2 * DAY) return "yesterday";
  else if (ms < 30 * DAY) text = plural(Math.round(ms / DAY), "day");
  else return `on ${new Date(time).toLocaleDateString("en-GB", { day: "numeric", month: "short", year: "numeric" })}`;
  return ahead ? `in ${text}` : `${text} ago`;
}

/** A duration in ms as "850 ms", "4.2 s", "3 min 5 s". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(ms < 10_000 ? 1 : 0)} s`;
  const minutes = Math.floor(ms / 60_000);
  const seconds = Math.round((ms % 60_000) / 1000);
  return seconds === 0 ? `${minutes} min` : `${minutes} min ${seconds} s`;
}

/** A clock time for lists: "14:03:12". */
export function clockTime(when: Date | string | number): string {
  const date = new Date(when);
  if (Number.isNaN(date.getTime())) return "—";
  return date.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

/** A date and time for titles and tooltips. */
export function fullTime(when: Date | string | number): string {
  const date = new Date(when);
  if (Number.isNaN(date.getTime())) return "unknown time";
  return date.toLocaleString("en-GB", { dateStyle: "medium", timeStyle: "medium" });
}

/** The start of a long id or key, enough to recognise it: "3f2a9c1e…". */
export function shortId(id: string, length = 8): string {
  return id.length <= length + 1 ? id : `${id.slice(0, length)}…`;
}

/** "Ada Lovelace" → "Ada"; an unknown id is shown as it is. */
export function firstName(name: string): string {
  return name.trim().split(/\s+/, 1)[0] ?? name;
}

/** `reserve_stock` → "Reserve stock". */
export function humanize(name: string): string {
  const words = name.replace(/[_.-]+/g, " ").trim();
  return words.charAt(0).toUpperCase() + words.slice(1);
}
