//! The web app, embedded: `web/dist` (built by `npm run build` in `web/`, committed)
//! is compiled into the binary, so `chorus serve` needs no Node and no files at run
//! time. `/` is `index.html`; `/assets/*` are the script, the styles and whatever
//! else the build emits. Screens live after the `#` (hash routing), so the server
//! needs no fallback for client-side paths.
//!
//! The bundle's file names are fixed (no content hashes: CI checks that a fresh build
//! reproduces the committed one byte for byte), so nothing here may be cached
//! without asking: every answer says `Cache-Control: no-cache` and carries a strong
//! `ETag` from the embedded file's SHA-256, and a matching `If-None-Match` gets
//! `304 Not Modified`, an empty round trip.

use crate::error::ApiError;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use rust_embed::Embed;

/// The built bundle. `debug-embed` makes debug builds embed it too, so tests run the
/// same bytes a release serves.
#[derive(Embed)]
#[folder = "../../web/dist/"]
struct Dist;

/// What the page may load: only its own origin (the API and the WebSocket included),
/// no inline scripts, never framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
     connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// `GET /`: the app's page.
pub async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

/// `GET /assets/{*path}`: a file of the bundle, or 404 `not_found`.
pub async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve(&format!("assets/{path}"), &headers)
}

fn serve(path: &str, request: &HeaderMap) -> Response {
    let Some(file) = Dist::get(path) else {
        return ApiError::not_found(format!("no asset {path}")).into_response();
    };
    let etag = etag(&file.metadata.sha256_hash());
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(v) = HeaderValue::from_str(&etag) {
        headers.insert(header::ETAG, v);
    }
    let matches = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    if matches {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(path)),
    );
    if path == "index.html" {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    (headers, file.data).into_response()
}

fn etag(hash: &[u8; 32]) -> String {
    let mut s = String::with_capacity(2 + 32);
    s.push('"');
    // Half the hash is plenty to tell two builds apart.
    for b in &hash[..16] {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('"');
    s
}

/// By extension: the few kinds a Vite build emits.
fn content_type(path: &str) -> &'static str {
    let ext = path.rsplit_once('.').map_or("", |(_, e)| e);
    match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "webp" => "image/webp",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bundle_has_a_page_and_its_assets() {
        let index = Dist::get("index.html").expect("web/dist/index.html is embedded");
        let html = std::str::from_utf8(&index.data).unwrap();
        let loaded = |n: &str| n.ends_with(".js") || n.ends_with(".css");
        for name in Dist::iter().filter(|n| loaded(n)) {
            assert!(
                html.contains(&format!("/{name}")),
                "index.html does not load {name}"
            );
        }
        assert!(
            Dist::iter().any(|n| n.ends_with(".js")),
            "no script in the bundle"
        );
    }

    #[test]
    fn content_types_by_extension() {
        assert_eq!(content_type("index.html"), "text/html; charset=utf-8");
        assert_eq!(
            content_type("assets/app.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("assets/app.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("assets/x"), "application/octet-stream");
    }

    #[test]
    fn a_matching_etag_is_not_modified() {
        let first = serve("index.html", &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(first.headers()[header::CACHE_CONTROL], "no-cache");
        let tag = first.headers()[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, tag);
        assert_eq!(
            serve("index.html", &again).status(),
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            serve("assets/nope.js", &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }
}
