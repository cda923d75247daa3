//! Static pages embedded in the binary: the demo page (public port, with `--demo`) and the fleet
//! page (admin port `/`).
//!
//! Both are plain HTML, CSS and ES modules with no dependency and no CDN, so they work offline.
//! The demo page is built on the client SDK (`clients/js`), served from the same bytes the npm
//! package ships. The fleet page reads `/admin/cluster` and posts `/admin/drain`; it holds no
//! data itself, so it is served without the admin token (its API calls carry the token).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const DEMO_HTML: &str = include_str!("../assets/demo/index.html");
const DEMO_JS: &str = include_str!("../assets/demo/demo.js");
const DEMO_CSS: &str = include_str!("../assets/demo/demo.css");
const SDK_JS: &str = include_str!("../../clients/js/src/gateway-client.js");
const SDK_TYPES: &str = include_str!("../../clients/js/src/gateway-client.d.ts");
const FLEET_HTML: &str = include_str!("../assets/fleet/index.html");
const FLEET_JS: &str = include_str!("../assets/fleet/fleet.js");
const FLEET_CSS: &str = include_str!("../assets/fleet/fleet.css");

/// The demo may connect to other pods of a local fleet (`?urls=`), hence `ws:`/`wss:`.
const DEMO_CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                        style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'none'; \
                        frame-ancestors 'none'";
/// The fleet page talks to its own admin endpoints only, and must not be framed (drain button).
const FLEET_CSP: &str = "default-src 'self'; connect-src 'self'; img-src 'self' data:; \
                         style-src 'self'; script-src 'self'; base-uri 'none'; form-action 'none'; \
                         frame-ancestors 'none'";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TS: &str = "application/typescript; charset=utf-8";

fn asset(body: &'static str, content_type: &'static str, csp: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Small files, embedded in the binary: revalidate so an upgraded pod serves its own version.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    response
}

/// The demo page on the public port: `/`, its script and style, and the SDK at
/// `/sdk/gateway-client.js` (with its types at `/sdk/gateway-client.d.ts`).
pub fn demo_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset(DEMO_HTML, HTML, DEMO_CSP) }))
        .route("/demo.js", get(|| async { asset(DEMO_JS, JS, DEMO_CSP) }))
        .route(
            "/demo.css",
            get(|| async { asset(DEMO_CSS, CSS, DEMO_CSP) }),
        )
        .route(
            "/sdk/gateway-client.js",
            get(|| async { asset(SDK_JS, JS, DEMO_CSP) }),
        )
        .route(
            "/sdk/gateway-client.d.ts",
            get(|| async { asset(SDK_TYPES, TS, DEMO_CSP) }),
        )
}

/// The fleet page on the admin port: `/`, its script and style.
pub fn fleet_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset(FLEET_HTML, HTML, FLEET_CSP) }))
        .route(
            "/fleet.js",
            get(|| async { asset(FLEET_JS, JS, FLEET_CSP) }),
        )
        .route(
            "/fleet.css",
            get(|| async { asset(FLEET_CSS, CSS, FLEET_CSP) }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_reference_only_embedded_files() {
        // No CDN: every script and stylesheet is one of ours.
        for page in [DEMO_HTML, FLEET_HTML] {
            assert!(!page.contains("http://") && !page.contains("https://"));
        }
        assert!(DEMO_HTML.contains("demo.js") && DEMO_HTML.contains("demo.css"));
        assert!(DEMO_JS.contains("./sdk/gateway-client.js"));
        assert!(FLEET_HTML.contains("fleet.js") && FLEET_HTML.contains("fleet.css"));
        assert!(SDK_JS.contains("export class GatewayClient"));
    }
}
