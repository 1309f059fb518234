//! The web UI, embedded at build time from `web/dist` (see `build.rs`): each file at its
//! path, any other path outside `/api` answered with `index.html` (the UI routes on the
//! client) unless it names a file, which is 404. Files whose names carry a content hash are
//! cached for good; `index.html` is revalidated every time, so a new build reaches the
//! browser at once. Every answer carries `X-Content-Type-Options: nosniff`.

use axum::body::Body;
use axum::http::{header, HeaderValue, Response, StatusCode};
use axum::response::IntoResponse;

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Its path under the site's root (`/assets/index-Bb7GY_VE.js`).
    pub path: &'static str,
    /// Its bytes.
    pub bytes: &'static [u8],
    /// Its content type.
    pub content_type: &'static str,
    /// Whether its name carries a content hash (never changes under that name).
    pub immutable: bool,
}

include!(concat!(env!("OUT_DIR"), "/web_assets.rs"));

/// The page served while no UI was built into the binary.
pub const NOT_BUILT: &str = "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><title>oncely shop</title></head>
<body>
<h1>oncely shop</h1>
<p>The shop's API is running under <a href=\"/api/openapi.json\">/api</a>, but its web UI was
not built into this binary.</p>
<p>Build it, then build the shop again:</p>
<pre>cd web &amp;&amp; npm ci &amp;&amp; npm run build</pre>
</body></html>
";

/// Whether the UI is built into this binary.
pub fn is_built() -> bool {
    !ASSETS.is_empty()
}

fn find<'a>(assets: &'a [Asset], path: &str) -> Option<&'a Asset> {
    assets
        .binary_search_by(|a| a.path.cmp(path))
        .ok()
        .and_then(|i| assets.get(i))
}

/// Whether `path` names a file rather than a route of the UI: anything under `/assets/`, or
/// a last segment with an extension (`/favicon.ico`). The UI's own routes (`/orders/ord_1`)
/// have none.
fn names_a_file(path: &str) -> bool {
    path.starts_with("/assets/") || path.rsplit('/').next().is_some_and(|s| s.contains('.'))
}

/// The answer for `path` (outside `/api`) from `assets`: the file, the UI's entry page for
/// its own routes, or 404 for a file that is not there (answering it with the entry page
/// would hand a script or stylesheet tag an HTML page with 200).
pub fn answer_from(assets: &[Asset], path: &str) -> Response<Body> {
    if let Some(asset) = find(assets, path) {
        return page(asset.bytes, asset.content_type, asset.immutable);
    }
    if path != "/index.html" && names_a_file(path) {
        let mut r =
            crate::problem::Problem::not_found(format!("no file {path} in the UI")).into_response();
        let h = r.headers_mut();
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        h.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
        return r;
    }
    match find(assets, "/index.html") {
        // A client-side route: the UI's entry page.
        Some(index) => page(index.bytes, index.content_type, index.immutable),
        None => page(NOT_BUILT.as_bytes(), "text/html; charset=utf-8", false),
    }
}

/// The answer for `path` (outside `/api`).
pub fn answer(path: &str) -> Response<Body> {
    answer_from(ASSETS, path)
}

/// Every UI answer says so: a browser takes each file as the type it is served with, never
/// as what its bytes look like.
const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");

fn page(bytes: &'static [u8], content_type: &'static str, immutable: bool) -> Response<Body> {
    let mut r = Response::new(Body::from(bytes));
    *r.status_mut() = StatusCode::OK;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_build_every_path_answers_how_to_build_it() {
        for path in ["/", "/orders/ord_1", "/index.html"] {
            let r = answer_from(&[], path);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[header::CACHE_CONTROL], "no-cache");
        }
    }

    #[test]
    fn the_table_is_sorted_for_lookups() {
        assert!(ASSETS.windows(2).all(|w| w[0].path < w[1].path));
    }

    #[test]
    fn files_client_routes_and_cache_headers() {
        let assets = [
            Asset {
                path: "/assets/app-AbCd1234.js",
                bytes: b"js",
                content_type: "text/javascript; charset=utf-8",
                immutable: true,
            },
            Asset {
                path: "/index.html",
                bytes: b"<html>",
                content_type: "text/html; charset=utf-8",
                immutable: false,
            },
        ];
        let js = answer_from(&assets, "/assets/app-AbCd1234.js");
        assert_eq!(
            js.headers()[header::CACHE_CONTROL],
            "public, max-age=31536000, immutable"
        );
        assert_eq!(
            js.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let route = answer_from(&assets, "/profile");
        assert_eq!(
            route.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
        assert_eq!(route.headers()[header::CACHE_CONTROL], "no-cache");
        for r in [&js, &route] {
            assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        }
    }

    #[test]
    fn a_missing_file_is_404_never_the_entry_page() {
        let assets = [Asset {
            path: "/index.html",
            bytes: b"<html>",
            content_type: "text/html; charset=utf-8",
            immutable: false,
        }];
        for built in [&assets[..], &[]] {
            for path in [
                "/assets/app-Old12345.js",
                "/assets/x",
                "/favicon.ico",
                "/a/b.css",
            ] {
                let r = answer_from(built, path);
                assert_eq!(r.status(), StatusCode::NOT_FOUND, "{path}");
                assert_eq!(
                    r.headers()[header::CONTENT_TYPE],
                    oncely_core::problem::PROBLEM_CONTENT_TYPE
                );
                assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            }
            for path in ["/", "/index.html", "/orders/ord_1"] {
                assert_eq!(answer_from(built, path).status(), StatusCode::OK, "{path}");
            }
        }
    }
}
