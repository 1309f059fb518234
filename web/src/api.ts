// The shop's API (docs/shop-api.md) as typed fetchers. Reads go through `getJson`; writes that
// must happen once go through the oncely library (`sendOptions` for `useIdempotentMutation`),
// versioned documents through `versioned` (If-Match, 412 as a conflict).

import {
  createVersionedClient,
  newIdempotencyKey,
  type Problem,
  type SendOptions,
  type Versioned,
  type VersionedClient,
  type WriteResult,
} from "./oncely/index.ts";
import { readConsistency, type ConsistencyInfo } from "./consistency.ts";
import { currentUser } from "./session.ts";

// ---------------------------------------------------------------------------------------------
// Resources

export interface User {
  id: string;
  name: string;
}

export interface Product {
  id: string;
  name: string;
  price_cents: number;
  /** The inventory's live count. */
  stock: number;
  description: string;
}

export interface Favourites {
  products: string[];
}

export interface CartItem {
  product: string;
  qty: number;
}

export interface Cart {
  items: CartItem[];
  version: number;
}

export type Card = "tok_ok" | "tok_declined";

/** 201: the saga finished and the order is confirmed. */
export interface CheckoutConfirmed {
  checkout: string;
  order: string;
  status: "confirmed";
  total_cents: number;
}

/** 202: the provider is slow; the saga goes on and `GET /api/checkouts/{id}` tells how it ends. */
export interface CheckoutAccepted {
  checkout: string;
  status: "pending";
  order?: string;
}

export type CheckoutAnswer = CheckoutConfirmed | CheckoutAccepted;

export type SagaStatus = "running" | "confirmed" | "declined" | "cancelled" | "failed";
export type StepState = "pending" | "running" | "done" | "failed" | "compensating" | "compensated";

export interface SagaStep {
  name: string;
  state: StepState;
  attempts: number;
}

export interface CheckoutProgress {
  checkout: string;
  order: string | null;
  status: SagaStatus;
  steps: SagaStep[];
  updated_at: string;
}

export type OrderStatus = "confirmed" | "cancelled" | "pending";
export type PaymentStatus = "pending" | "paid" | "refunded" | "failed";

export interface Order {
  id: string;
  status: OrderStatus;
  payment: PaymentStatus;
  total_cents: number;
  items: CartItem[];
  created_at: string;
  updated_at: string;
}

export interface AuditEvent {
  id: string;
  at: string;
  actor: string;
  action: string;
  entity: string;
  old: unknown;
  new: unknown;
  correlation_id?: string;
  client_addr?: string;
  user_agent?: string;
}

export interface OrderDetail extends Order {
  history: AuditEvent[];
}

export interface Address {
  id: string;
  line: string;
}

export interface Profile {
  name: string;
  email: string;
  notes: string;
  /** The seq of the notes' last save, when the shop says (autosaves after a reload go on from it). */
  notes_seq?: number;
  addresses: Address[];
  version: number;
  updated_by: string | null;
  updated_at: string | null;
}

/** What `PUT /api/profile` takes: the whole document without its version fields. */
export type ProfileDocument = {
  name: string;
  email: string;
  notes: string;
  addresses: Address[];
};

export interface NotesSaved {
  notes: string;
  seq: number;
  saved_at: string;
}

export interface ShopNotification {
  id: string;
  text: string;
  order: string | null;
  at: string;
}

export interface ReconciliationRun {
  id: string;
  started_at: string;
  finished_at: string | null;
  status: string;
  checked: number;
  mismatches_by_class: Record<string, number>;
}

export interface Finding {
  id: string | number;
  class: string;
  key: string;
  /** `open`, `acknowledged`, `resolved` or `healed`, where the shop says. */
  state?: string;
  /** Text, or the structured facts of the drift. */
  detail: unknown;
  first_seen: string;
}

export interface Reconciliation {
  last_run: ReconciliationRun | null;
  open_findings: Finding[];
  /** The newest findings of any state, heals included. */
  recent_findings?: Finding[];
}

export interface OutboxStatus {
  pending: number;
  oldest_pending_age_ms: number | null;
  published: number;
  /** Events given up on after their retries, where the shop reports it. */
  dead?: number;
  read_model_position: number;
  outbox_position: number;
}

export interface Chaos {
  provider_slow_ms: number;
  provider_fail_next: number;
  provider_timeout_next: number;
  webhook_drop_next: number;
  webhook_duplicate_next: number;
  webhook_reorder: boolean;
  favourites_fail: boolean;
}

export const CHAOS_OFF: Chaos = {
  provider_slow_ms: 0,
  provider_fail_next: 0,
  provider_timeout_next: 0,
  webhook_drop_next: 0,
  webhook_duplicate_next: 0,
  webhook_reorder: false,
  favourites_fail: false,
};

// ---------------------------------------------------------------------------------------------
// Errors

/** The shop's own problem types (`urn:oncely:shop:<slug>`). Match on these, never on `title`. */
export const ShopProblem = {
  unknownUser: "urn:oncely:shop:unknown-user",
  injectedFailure: "urn:oncely:shop:injected-failure",
  cardDeclined: "urn:oncely:shop:card-declined",
  notCancellable: "urn:oncely:shop:not-cancellable",
  staleSave: "urn:oncely:shop:stale-save",
} as const;

/** A refused request: its status, its RFC 9457 body when there was one, its correlation id. */
export class ApiError extends Error {
  readonly status: number;
  readonly problem: Problem | undefined;
  readonly correlationId: string | undefined;
  readonly headers: Headers;

  constructor(status: number, problem: Problem | undefined, headers: Headers = new Headers()) {
    super(problem?.detail ?? problem?.title ?? `The shop answered ${status}`);
    this.name = "ApiError";
    this.status = status;
    this.problem = problem;
    this.headers = headers;
    this.correlationId = headers.get("x-correlation-id") ?? undefined;
  }

  get type(): string | undefined {
    return this.problem?.type;
  }
}

/** What to tell a person about a failed request, from its problem (or its absence). */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    return error.problem?.detail ?? error.problem?.title ?? `The shop answered ${error.status}.`;
  }
  if (error instanceof TypeError) return "We couldn't reach the shop. Check your connection.";
  if (error instanceof Error && "status" in error && typeof error.status === "number") {
    const p = (error as { problem?: Problem }).problem;
    return p?.detail ?? p?.title ?? `The shop answered ${error.status}.`;
  }
  return error instanceof Error ? error.message : "Something went wrong.";
}

/** `problem.detail ?? problem.title`, or a fallback for a refusal without a problem body. */
export function problemText(problem: Problem | undefined, fallback: string): string {
  return problem?.detail ?? problem?.title ?? fallback;
}

// ---------------------------------------------------------------------------------------------
// Transport

/**
 * `fetch` with the shop's headers: `X-Shop-User` (the user picked on the start page, read at
 * send time) and a fresh `X-Correlation-Id`. Everything goes through it, the library included.
 */
export const shopFetch: typeof fetch = (input, init) => {
  const headers = new Headers(init?.headers);
  const user = currentUser();
  if (user !== null && !headers.has("x-shop-user")) headers.set("x-shop-user", user);
  if (!headers.has("x-correlation-id")) headers.set("x-correlation-id", newIdempotencyKey());
  return globalThis.fetch(input, { ...init, headers });
};

/** Options for every `sendIdempotent` / `useIdempotentMutation` of the shop. */
export const sendOptions: SendOptions = { fetch: shopFetch };

/**
 * The conditional-write client of the current user: the shop's headers, and a memory of ETags
 * per user, so that one user's cart tag is never sent for another's cart.
 */
const versionedByUser = new Map<string, VersionedClient>();
export function versioned(): VersionedClient {
  const user = currentUser() ?? "";
  let client = versionedByUser.get(user);
  if (!client) {
    client = createVersionedClient({ fetch: shopFetch });
    versionedByUser.set(user, client);
  }
  return client;
}

function isJsonType(contentType: string | null): boolean {
  const type = (contentType ?? "").split(";", 1)[0]!.trim().toLowerCase();
  return type === "application/json" || (type.startsWith("application/") && type.endsWith("+json"));
}

async function parse(response: Response): Promise<unknown> {
  const text = await response.text();
  if (text === "" || !isJsonType(response.headers.get("content-type"))) return text === "" ? null : text;
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

export interface Answer<T> {
  data: T;
  headers: Headers;
  status: number;
}

/** One request; a non-2xx answer throws `ApiError`, a lost one the `TypeError` of `fetch`. */
export async function request<T>(
  method: string,
  path: string,
  options: { body?: unknown; headers?: Record<string, string>; signal?: AbortSignal } = {},
): Promise<Answer<T>> {
  const headers: Record<string, string> = { accept: "application/json, application/problem+json", ...options.headers };
  if (options.body !== undefined) headers["content-type"] = "application/json";
  const response = await shopFetch(path, {
    method,
    headers,
    ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}),
    ...(options.signal ? { signal: options.signal } : {}),
  });
  const body = await parse(response);
  if (!response.ok) {
    const problem =
      typeof body === "object" && body !== null && !Array.isArray(body) ? (body as Problem) : undefined;
    throw new ApiError(response.status, problem, response.headers);
  }
  return { data: body as T, headers: response.headers, status: response.status };
}

async function getJson<T>(path: string, signal?: AbortSignal, headers?: Record<string, string>): Promise<T> {
  return (await request<T>("GET", path, { ...(signal ? { signal } : {}), ...(headers ? { headers } : {}) })).data;
}

const enc = encodeURIComponent;

// ---------------------------------------------------------------------------------------------
// Fetchers

export const getUsers = (signal?: AbortSignal) => getJson<User[]>("/api/users", signal);
export const getProducts = (signal?: AbortSignal) => getJson<Product[]>("/api/products", signal);
export const getFavourites = (signal?: AbortSignal) => getJson<Favourites>("/api/favourites", signal);

export async function setFavourite(product: string, on: boolean): Promise<void> {
  await request<null>(on ? "PUT" : "DELETE", `/api/favourites/${enc(product)}`);
}

export const readCart = (signal?: AbortSignal): Promise<Versioned<Cart>> =>
  versioned().readVersioned<Cart>("/api/cart", signal ? { signal } : {});

/** `PUT /api/cart` with `If-Match: etag`; a 412 comes back as a conflict holding the current cart. */
export const writeCart = (items: CartItem[], etag: string | undefined): Promise<WriteResult<{ items: CartItem[] }>> =>
  versioned().writeVersioned("/api/cart", "PUT", { items }, etag);

export const getCheckout = (id: string, signal?: AbortSignal) =>
  getJson<CheckoutProgress>(`/api/checkouts/${enc(id)}`, signal);

export interface ReadModelAnswer<T> {
  data: T;
  consistency: ConsistencyInfo;
}

function tokenHeader(token: number | undefined): Record<string, string> | undefined {
  return token === undefined ? undefined : { "x-consistency-token": String(token) };
}

/** The order read model; with `token`, the server waits (up to 2 s) for it to catch up. */
export async function getOrders(token: number | undefined, signal?: AbortSignal): Promise<ReadModelAnswer<Order[]>> {
  const headers = tokenHeader(token);
  const answer = await request<Order[]>("GET", "/api/orders", {
    ...(signal ? { signal } : {}),
    ...(headers ? { headers } : {}),
  });
  return { data: answer.data ?? [], consistency: readConsistency(answer.headers) };
}

/**
 * One order from the read model. `data` is null when the read model does not have it yet
 * (a 404 that says `X-Consistency: stale`): the page shows "Syncing..." and asks again.
 */
export async function getOrder(
  id: string,
  token: number | undefined,
  signal?: AbortSignal,
): Promise<ReadModelAnswer<OrderDetail | null>> {
  const headers = tokenHeader(token);
  try {
    const answer = await request<OrderDetail>("GET", `/api/orders/${enc(id)}`, {
      ...(signal ? { signal } : {}),
      ...(headers ? { headers } : {}),
    });
    return { data: answer.data, consistency: readConsistency(answer.headers) };
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      const consistency = readConsistency(error.headers);
      if (consistency.consistency === "stale") return { data: null, consistency };
    }
    throw error;
  }
}

export const readProfile = (signal?: AbortSignal): Promise<Versioned<Profile>> =>
  versioned().readVersioned<Profile>("/api/profile", signal ? { signal } : {});

export const writeProfile = (doc: ProfileDocument, etag: string): Promise<WriteResult<ProfileDocument>> =>
  versioned().writeVersioned<ProfileDocument>("/api/profile", "PUT", doc, etag);

/** `DELETE` with `If-Match`; the answer is the new profile and its ETag. */
export const removeAddress = (id: string, etag: string): Promise<WriteResult<Profile | undefined>> =>
  versioned().writeVersioned<Profile | undefined>(`/api/profile/addresses/${enc(id)}`, "DELETE", undefined, etag);

/** Autosave of the notes; `user` is explicit so a save still in flight after a user switch stays theirs. */
export async function saveNotes(user: string, notes: string, seq: number): Promise<NotesSaved> {
  return (await request<NotesSaved>("PUT", "/api/profile/notes", { body: { notes, seq }, headers: { "x-shop-user": user } }))
    .data;
}

export const getNotifications = (signal?: AbortSignal) =>
  getJson<ShopNotification[]>("/api/notifications", signal);

export const getReconciliation = (signal?: AbortSignal) =>
  getJson<Reconciliation>("/api/admin/reconciliation", signal);

export async function runReconciliation(): Promise<ReconciliationRun> {
  return (await request<ReconciliationRun>("POST", "/api/admin/reconciliation/run")).data;
}

export const getOutbox = (signal?: AbortSignal) => getJson<OutboxStatus>("/api/admin/outbox", signal);
export const getChaos = (signal?: AbortSignal) => getJson<Chaos>("/api/chaos", signal);

export async function putChaos(chaos: Chaos): Promise<Chaos> {
  const answer = await request<Chaos | null>("PUT", "/api/chaos", { body: chaos });
  return answer.data && typeof answer.data === "object" ? { ...CHAOS_OFF, ...answer.data } : chaos;
}

export async function resetDemo(): Promise<void> {
  await request<unknown>("POST", "/api/reset");
}
