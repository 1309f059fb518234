import { describe, expect, it } from "vitest";
import { buildPath, matchPath, normalizePath, resolveRoute } from "../router.ts";

const routes = [
  { name: "start", pattern: "/" },
  { name: "orders", pattern: "/orders" },
  { name: "order", pattern: "/orders/:id" },
  { name: "checkout", pattern: "/checkouts/:id" },
] as const;

describe("router", () => {
  it("normalizes paths: query, hash, trailing and double slashes, absolute URLs", () => {
    expect(normalizePath("/orders/?x=1#top")).toBe("/orders");
    expect(normalizePath("orders//ord_1/")).toBe("/orders/ord_1");
    expect(normalizePath("")).toBe("/");
    expect(normalizePath("https://shop.example/cart?x")).toBe("/cart");
  });

  it("matches static and parameter segments, decoding parameters", () => {
    expect(matchPath("/orders", "/orders")).toEqual({});
    expect(matchPath("/orders/:id", "/orders/ord%2F7")).toEqual({ id: "ord/7" });
    expect(matchPath("/orders/:id", "/orders")).toBeNull();
    expect(matchPath("/orders/:id", "/orders/a/b")).toBeNull();
    expect(matchPath("/orders/:id", "/order/a")).toBeNull();
  });

  it("treats a malformed escape as no match rather than throwing", () => {
    expect(matchPath("/orders/:id", "/orders/%E0%A4%A")).toBeNull();
  });

  it("resolves the first matching route in order", () => {
    expect(resolveRoute(routes, "/")).toEqual({ name: "start", params: {} });
    expect(resolveRoute(routes, "/orders/ord_9?tab=history")).toEqual({ name: "order", params: { id: "ord_9" } });
    expect(resolveRoute(routes, "/checkouts/ck_1/")).toEqual({ name: "checkout", params: { id: "ck_1" } });
    expect(resolveRoute(routes, "/nowhere")).toBeNull();
  });

  it("builds paths, encoding parameters, and round-trips with matching", () => {
    const path = buildPath("/orders/:id", { id: "ord 1/x" });
    expect(path).toBe("/orders/ord%201%2Fx");
    expect(matchPath("/orders/:id", path)).toEqual({ id: "ord 1/x" });
    expect(() => buildPath("/orders/:id")).toThrow(/missing parameter/);
  });
});
