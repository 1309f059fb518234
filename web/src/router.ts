// A tiny router over the history API: patterns like `/orders/:id`, matched against the path
// part of a URL. Pure functions here; the React side is in navigation.tsx.

export interface Route<N extends string = string> {
  name: N;
  pattern: string;
}

export interface RouteMatch<N extends string = string> {
  name: N;
  params: Record<string, string>;
}

/** The path of a URL or path string: no query, no hash, a leading slash, no trailing slash. */
export function normalizePath(url: string): string {
  let path = url;
  const cut = path.search(/[?#]/);
  if (cut >= 0) path = path.slice(0, cut);
  // An absolute URL: keep its path only.
  const scheme = /^[a-z][a-z0-9+.-]*:\/\/[^/]*/i.exec(path);
  if (scheme) path = path.slice(scheme[0].length);
  if (!path.startsWith("/")) path = `/${path}`;
  path = path.replace(/\/{2,}/g, "/");
  if (path.length > 1 && path.endsWith("/")) path = path.slice(0, -1);
  return path;
}

function segments(path: string): string[] {
  return path === "/" ? [] : path.slice(1).split("/");
}

/**
 * The parameters of `path` under `pattern`, or null when it does not match. A `:name` segment
 * matches one non-empty segment, decoded; every other segment must be equal.
 */
export function matchPath(pattern: string, url: string): Record<string, string> | null {
  const want = segments(normalizePath(pattern));
  const have = segments(normalizePath(url));
  if (want.length !== have.length) return null;
  const params: Record<string, string> = {};
  for (let i = 0; i < want.length; i++) {
    const w = want[i]!;
    const h = have[i]!;
    if (w.startsWith(":")) {
      if (h === "") return null;
      let value: string;
      try {
        value = decodeURIComponent(h);
      } catch {
        return null; // a malformed escape is no match, not a crash
      }
      params[w.slice(1)] = value;
    } else if (w !== h) {
      return null;
    }
  }
  return params;
}

/** The first route whose pattern matches, in the order given. */
export function resolveRoute<N extends string>(routes: readonly Route<N>[], url: string): RouteMatch<N> | null {
  for (const route of routes) {
    const params = matchPath(route.pattern, url);
    if (params) return { name: route.name, params };
  }
  return null;
}

/** Fills a pattern's `:name` segments, encoding each value. */
export function buildPath(pattern: string, params: Record<string, string> = {}): string {
  const filled = segments(normalizePath(pattern)).map((segment) => {
    if (!segment.startsWith(":")) return segment;
    const value = params[segment.slice(1)];
    if (value === undefined) throw new Error(`missing parameter ${segment} for ${pattern}`);
    return encodeURIComponent(value);
  });
  return `/${filled.join("/")}`;
}
