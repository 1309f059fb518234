// The shop's browser suite: headless Chromium (Debian's /usr/bin/chromium) driven by
// playwright-core against the real shop (`oncely demo`), each test injecting the failure it
// is about and checking what the user sees and what the server holds.
//
//   node e2e/run.mjs --bin ../target/debug/oncely [--only NAME] [--screenshots ../docs/ui]
//
// Exits 1 if any test fails; prints one line per test.

import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

import { tests } from "./tests.mjs";

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const bin = arg("bin", process.env.ONCELY_BIN);
const only = arg("only", undefined);
const shots = arg("screenshots", process.env.ONCELY_UI_SCREENSHOTS);
const executablePath = arg("chromium", process.env.ONCELY_CHROMIUM ?? "/usr/bin/chromium");
if (!bin) {
  console.error("e2e: --bin PATH (the oncely binary) is required");
  process.exit(2);
}

/** Starts `oncely demo` on a free port with a database of its own; resolves its base URL. */
function startShop(dir) {
  const child = spawn(
    bin,
    ["demo", "--listen", "127.0.0.1:0", "--db", `sqlite://${join(dir, "shop.db")}`],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  return new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error("the shop did not start within 30 s")), 30_000);
    lines.on("line", (line) => {
      const m = line.match(/listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1].replace(/\/$/, "") });
      }
    });
    child.on("exit", (code) => reject(new Error(`the shop exited (${code}) before listening`)));
  });
}

/** A small client of the shop's API for the tests' own checks, as `user`. */
function api(base) {
  return async (method, path, { user = "ada", body, headers = {} } = {}) => {
    const res = await fetch(base + path, {
      method,
      headers: {
        "x-shop-user": user,
        ...(body === undefined ? {} : { "content-type": "application/json" }),
        ...headers,
      },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    let json;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    return { status: res.status, headers: res.headers, json, text };
  };
}

const dir = mkdtempSync(join(tmpdir(), "oncely-e2e-"));
const { child, url } = await startShop(dir);
if (shots) mkdirSync(shots, { recursive: true });
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});

let failed = 0;
try {
  for (const t of tests) {
    if (only && t.name !== only) continue;
    const call = api(url);
    await call("POST", "/api/reset");
    const contexts = [];
    const newPage = async (user = "ada") => {
      const context = await browser.newContext({ viewport: { width: 1280, height: 860 } });
      contexts.push(context);
      await context.addInitScript((u) => {
        // The start page's choice, made before the app reads it.
        if (!window.localStorage.getItem("oncely-shop:user")) {
          window.localStorage.setItem("oncely-shop:user", u);
        }
      }, user);
      const page = await context.newPage();
      page.setDefaultTimeout(15_000);
      return page;
    };
    const shot = async (page, name) => {
      if (shots) await page.screenshot({ path: join(shots, `${name}.png`) });
    };
    const started = Date.now();
    try {
      await t.run({ url, api: call, newPage, shot });
      console.log(`ok    ${t.name} (${Date.now() - started} ms)`);
    } catch (e) {
      failed += 1;
      console.log(`FAIL  ${t.name}: ${e?.stack ?? e}`);
    } finally {
      for (const c of contexts) await c.close();
    }
  }
} finally {
  await browser.close();
  child.kill("SIGTERM");
  rmSync(dir, { recursive: true, force: true });
}
console.log(failed ? `${failed} browser test(s) failed` : "every browser test passed");
process.exit(failed ? 1 : 0);
