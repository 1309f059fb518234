// The browser tests: each injects the failure it is about, then checks what the page shows
// and what the server holds. Each gets a freshly reset shop.

const CHAOS_OFF = {
  provider_slow_ms: 0,
  provider_fail_next: 0,
  provider_timeout_next: 0,
  webhook_drop_next: 0,
  webhook_duplicate_next: 0,
  webhook_reorder: false,
  favourites_fail: false,
};

function check(condition, message) {
  if (!condition) throw new Error(message);
}

/** Waits until the element `testid` has `attr` equal to `value`. */
async function until(page, testid, attr, value, timeout = 20_000) {
  await page.waitForSelector(`[data-testid="${testid}"][${attr}="${value}"]`, { timeout });
}

async function chaos(api, switches) {
  const r = await api("PUT", "/api/chaos", { body: { ...CHAOS_OFF, ...switches } });
  check(r.status === 200, `PUT /api/chaos answered ${r.status}: ${r.text}`);
}

/** The user's orders as the server holds them, waiting for the read model to catch up. */
async function orders(api, user = "ada") {
  for (let i = 0; i < 50; i += 1) {
    const r = await api("GET", "/api/orders", { user });
    if (r.status === 200 && r.headers.get("x-consistency") !== "stale") return r.json;
    await new Promise((res) => setTimeout(res, 100));
  }
  throw new Error("the order history never caught up");
}

/** The charges the fake provider executed. */
async function charges(api) {
  const r = await api("GET", "/api/admin/provider");
  check(r.status === 200, `GET /api/admin/provider answered ${r.status}`);
  return r.json.charges;
}

async function stockOf(api, product) {
  const r = await api("GET", "/api/products");
  return r.json.find((p) => p.id === product).stock;
}

/** A cart of one tea, through the UI, then the cart page with a card chosen. */
async function cartWithTea(page, url, card = "tok_ok") {
  await page.goto(`${url}/products`);
  await page.getByTestId("add-to-cart-tea").click();
  await page.waitForSelector('[data-testid="cart-count"]');
  await page.goto(`${url}/cart`);
  await page.getByTestId(`card-${card}`).check();
}

/** Every `Idempotency-Key` the page sends to POST /api/checkout. */
function keysSent(page) {
  const keys = [];
  page.on("request", (req) => {
    if (req.method() === "POST" && req.url().endsWith("/api/checkout")) {
      keys.push(req.headers()["idempotency-key"]);
    }
  });
  return keys;
}

export const tests = [
  {
    name: "double-and-triple-click-place-one-order",
    async run({ url, api, newPage, shot }) {
      await chaos(api, { provider_slow_ms: 600 });
      const page = await newPage();
      const keys = keysSent(page);
      await cartWithTea(page, url);
      // A triple click with the mouse, and three clicks in one frame, before React can
      // re-render the button disabled.
      await page.getByTestId("place-order").click({ clickCount: 3 });
      await page.getByTestId("place-order").evaluate((b) => { b.click(); b.click(); }).catch(() => {});
      await until(page, "checkout-state", "data-state", "processing", 5_000).catch(() => {});
      check(
        await page.getByTestId("place-order").isDisabled().catch(() => true),
        "the button stays disabled while the order is in flight",
      );
      await shot(page, "checkout-processing");
      await until(page, "checkout-state", "data-state", "success");
      await shot(page, "checkout-success");
      const mine = await orders(api);
      check(mine.length === 1, `one order, got ${mine.length}`);
      check(new Set(keys).size === 1, `one key for every send, got ${JSON.stringify(keys)}`);
      check((await charges(api)).length === 1, "one charge");
    },
  },
  {
    name: "network-dropped-after-the-request-left",
    async run({ url, api, newPage, shot }) {
      await chaos(api, { provider_slow_ms: 1200 });
      const page = await newPage();
      const keys = keysSent(page);
      await cartWithTea(page, url);
      const sent = page.waitForRequest((r) => r.url().endsWith("/api/checkout"));
      await page.getByTestId("place-order").click();
      await sent;
      await page.context().setOffline(true);
      await until(page, "sync-indicator", "data-state", "offline", 5_000).catch(() => {});
      await shot(page, "checkout-offline");
      await new Promise((res) => setTimeout(res, 1500));
      await page.context().setOffline(false);
      await until(page, "checkout-state", "data-state", "success", 30_000);
      await page.waitForSelector('[data-testid="checkout-order-link"]');
      const mine = await orders(api);
      check(mine.length === 1, `one order, got ${mine.length}`);
      check(new Set(keys).size === 1, `the retry used the same key: ${JSON.stringify(keys)}`);
      check((await charges(api)).length === 1, "one charge");
    },
  },
  {
    name: "reload-during-checkout-reuses-the-key",
    async run({ url, api, newPage, shot }) {
      await chaos(api, { provider_slow_ms: 1500 });
      const page = await newPage();
      const keys = keysSent(page);
      await cartWithTea(page, url);
      const sent = page.waitForRequest((r) => r.url().endsWith("/api/checkout"));
      await page.getByTestId("place-order").click();
      await sent;
      await page.reload();
      await until(page, "checkout-state", "data-state", "success", 30_000);
      await shot(page, "checkout-after-reload");
      const key = await page.getByTestId("checkout-key").getAttribute("data-key");
      check(keys.length >= 2, `the reloaded page asked again: ${JSON.stringify(keys)}`);
      check(keys.every((k) => k === key), `the same key after the reload: ${JSON.stringify(keys)} vs ${key}`);
      const mine = await orders(api);
      check(mine.length === 1, `one order, got ${mine.length}`);
      check((await charges(api)).length === 1, "one charge");
    },
  },
  {
    // The provider slow, then failing: the pivot is retried with the same key (it must
    // learn whether the card was charged), the page shows the saga working through the
    // failures, never a success before the server has one, and one charge in the end.
    name: "provider-slow-then-failing-is-retried-under-one-key-and-shown",
    async run({ url, api, newPage, shot }) {
      await chaos(api, { provider_slow_ms: 300, provider_fail_next: 20 });
      const page = await newPage();
      await cartWithTea(page, url);
      await page.getByTestId("place-order").click();
      await page.waitForSelector('[data-testid="saga-step-capture_payment"]', { timeout: 30_000 });
      await page.waitForFunction(
        () => /attempt/.test(document.querySelector('[data-testid="saga-step-capture_payment-state"]')?.textContent ?? ""),
        undefined,
        { timeout: 30_000 },
      );
      const state = await page.getByTestId("checkout-state").getAttribute("data-state");
      check(state === "processing", `processing while the provider fails, not ${state}`);
      check(
        (await page.getByTestId("place-order").count()) === 0 ||
          (await page.getByTestId("place-order").isDisabled()),
        "no second order can be placed meanwhile",
      );
      await shot(page, "checkout-provider-failing");
      await until(page, "checkout-state", "data-state", "success", 60_000);
      const mine = (await orders(api)).filter((o) => o.status === "confirmed");
      check(mine.length === 1, `one confirmed order, got ${mine.length}`);
      check((await charges(api)).length === 1, "one charge, however many attempts");
    },
  },
  {
    name: "two-windows-edit-one-profile-and-merge",
    async run({ url, api, newPage, shot }) {
      const a = await newPage();
      const b = await newPage();
      await a.goto(`${url}/profile`);
      await b.goto(`${url}/profile`);
      await a.getByTestId("profile-name").fill("Ada King");
      await b.getByTestId("profile-email").fill("ada@analytical.engine");
      await a.getByTestId("profile-save").click();
      await a.waitForSelector('[data-testid="profile-updated"]');
      await a.waitForFunction(() => !document.querySelector('[data-testid="profile-save"]:not([disabled])') || true);
      await new Promise((res) => setTimeout(res, 300));
      await b.getByTestId("profile-save").click();
      await b.waitForSelector('[data-testid="conflict-view"]');
      await shot(b, "profile-conflict");
      const who = await b.getByTestId("conflict-who").textContent();
      check(/Ada/.test(who ?? ""), `the conflict names who changed it: ${who}`);
      await b.getByTestId("conflict-merge").click();
      if (await b.getByTestId("merge-save").isVisible().catch(() => false)) {
        await b.getByTestId("merge-save").click();
      }
      await b.waitForSelector('[data-testid="conflict-view"]', { state: "detached" });
      const profile = await api("GET", "/api/profile");
      check(profile.json.name === "Ada King", `the first edit survived: ${profile.text}`);
      check(profile.json.email === "ada@analytical.engine", `the second edit survived: ${profile.text}`);
    },
  },
  {
    name: "optimistic-favourite-rolls-back-when-refused",
    async run({ url, api, newPage, shot }) {
      await chaos(api, { favourites_fail: true });
      const page = await newPage();
      await page.goto(`${url}/products`);
      const heart = page.getByTestId("favourite-toggle-tea");
      await until(page, "favourite-toggle-tea", "data-favourite", "false");
      await heart.click();
      await page.waitForSelector('[data-testid="toast-message"]');
      const text = await page.getByTestId("toast-message").textContent();
      check(/Couldn't save/.test(text ?? ""), `the toast says so: ${text}`);
      await until(page, "favourite-toggle-tea", "data-favourite", "false");
      await shot(page, "favourite-rolled-back");
      let favs = await api("GET", "/api/favourites");
      check(!favs.json.products.includes("tea"), "nothing stored");
      await chaos(api, {});
      await page.getByTestId("toast-action").click();
      await until(page, "favourite-toggle-tea", "data-favourite", "true");
      favs = await api("GET", "/api/favourites");
      check(favs.json.products.includes("tea"), "the retry stored it");
    },
  },
  {
    name: "dropped-webhook-is-healed-by-reconciliation",
    async run({ url, api, newPage, shot }) {
      await chaos(api, { webhook_drop_next: 1 });
      const page = await newPage();
      await cartWithTea(page, url);
      await page.getByTestId("place-order").click();
      await until(page, "checkout-state", "data-state", "success");
      const id = await page.getByTestId("checkout-order-link").getAttribute("data-order-id");
      await page.goto(`${url}/orders/${id}`);
      await until(page, "payment-status", "data-state", "pending");
      await shot(page, "order-payment-pending");
      // Past the job's settle time (webhooks still on their way are not drift yet).
      await new Promise((res) => setTimeout(res, 2500));
      await until(page, "payment-status", "data-state", "pending");
      await page.goto(`${url}/admin`);
      await page.getByTestId("reconciliation-run").click();
      await page.waitForSelector('[data-testid="reconciliation-mismatches"] tr[data-class="missing_webhook"]');
      await page.waitForSelector('[data-testid="reconciliation-healed-finding"][data-class="missing_webhook"]');
      await shot(page, "reconciliation-dashboard");
      await page.goto(`${url}/orders/${id}`);
      await until(page, "payment-status", "data-state", "paid");
      await shot(page, "order-paid-after-reconciliation");
    },
  },
  {
    name: "declined-card-shows-the-compensation-and-the-stock-is-back",
    async run({ url, api, newPage, shot }) {
      const before = await stockOf(api, "tea");
      const page = await newPage();
      await cartWithTea(page, url, "tok_declined");
      await page.getByTestId("place-order").click();
      await until(page, "checkout-state", "data-state", "failure");
      const title = await page.getByTestId("checkout-status-title").textContent();
      check(/declined/i.test(title ?? ""), `the failure is explicit: ${title}`);
      await page.getByTestId("checkout-progress-link").click();
      await until(page, "saga-status", "data-state", "declined");
      await until(page, "saga-step-reserve_stock", "data-state", "compensated");
      await shot(page, "checkout-declined-compensated");
      check((await stockOf(api, "tea")) === before, "the stock is back");
      check((await charges(api)).length === 0, "nothing charged");
    },
  },
];
