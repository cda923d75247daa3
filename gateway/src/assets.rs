//! Static pages embedded in the binary: the demo page (public port, with `--demo`) and the fleet
//! page (admin port `/`).
//!
//! Both are plain HTML, CSS and ES modules with no dependency and no CDN, so they work offline.
//! The demo page is built on the client SDK (`clients/js`), served from the same bytes the npm
//! package ships: its entry point `gateway-client.js` and every module that one imports, each
//! at `/sdk/<file>`, so the browser follows the relative imports (`SDK_MODULES`). The fleet page reads `/admin/cluster` and posts `/admin/drain`; it holds no
//! data itself, so it is served without the admin token (its API calls carry the token).

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const DEMO_HTML: &str = include_str!("../assets/demo/index.html");
const DEMO_JS: &str = include_str!("../assets/demo/demo.js");
const DEMO_CSS: &str = include_str!("../assets/demo/demo.css");
const SDK_TYPES: &str = include_str!("../../clients/js/src/gateway-client.d.ts");
const FLEET_HTML: &str = include_str!("../assets/fleet/index.html");
const FLEET_JS: &str = include_str!("../assets/fleet/fleet.js");
const FLEET_CSS: &str = include_str!("../assets/fleet/fleet.css");

/// The SDK's entry point (the file pages import), first of `SDK_MODULES`.
const SDK_ENTRY: &str = "gateway-client.js";
/// The SDK's ES modules, served at `/sdk/<file>`: the entry point and every module it imports,
/// directly or not. A module added to the SDK goes here too; the unit tests fail until it does.
const SDK_MODULES: &[(&str, &str)] = &[
    (
        SDK_ENTRY,
        include_str!("../../clients/js/src/gateway-client.js"),
    ),
    ("client.js", include_str!("../../clients/js/src/client.js")),
    (
        "connection.js",
        include_str!("../../clients/js/src/connection.js"),
    ),
    ("errors.js", include_str!("../../clients/js/src/errors.js")),
    ("frames.js", include_str!("../../clients/js/src/frames.js")),
    (
        "positions.js",
        include_str!("../../clients/js/src/positions.js"),
    ),
    (
        "presence.js",
        include_str!("../../clients/js/src/presence.js"),
    ),
    (
        "protocol.js",
        include_str!("../../clients/js/src/protocol.js"),
    ),
    (
        "reconnect.js",
        include_str!("../../clients/js/src/reconnect.js"),
    ),
    (
        "requests.js",
        include_str!("../../clients/js/src/requests.js"),
    ),
    (
        "storage.js",
        include_str!("../../clients/js/src/storage.js"),
    ),
    (
        "subscription.js",
        include_str!("../../clients/js/src/subscription.js"),
    ),
    (
        "subscriptions.js",
        include_str!("../../clients/js/src/subscriptions.js"),
    ),
    ("token.js", include_str!("../../clients/js/src/token.js")),
];

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
/// `/sdk/gateway-client.js` with its modules next to it (types at `/sdk/gateway-client.d.ts`).
pub fn demo_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let router = Router::new()
        .route("/", get(|| async { asset(DEMO_HTML, HTML, DEMO_CSP) }))
        .route("/demo.js", get(|| async { asset(DEMO_JS, JS, DEMO_CSP) }))
        .route(
            "/demo.css",
            get(|| async { asset(DEMO_CSS, CSS, DEMO_CSP) }),
        )
        .route(
            "/sdk/gateway-client.d.ts",
            get(|| async { asset(SDK_TYPES, TS, DEMO_CSP) }),
        );
    SDK_MODULES.iter().fold(router, |router, &(file, body)| {
        router.route(
            &format!("/sdk/{file}"),
            get(move || async move { asset(body, JS, DEMO_CSP) }),
        )
    })
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
    use std::collections::{BTreeSet, VecDeque};

    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn sdk_module(file: &str) -> &'static str {
        SDK_MODULES
            .iter()
            .find(|(name, _)| *name == file)
            .map(|(_, body)| *body)
            .unwrap_or_else(|| panic!("{file} is not in SDK_MODULES"))
    }

    /// The modules `source` names in its top-level `import … from '…'`, `import '…'` and
    /// `export … from '…'` statements (which may span lines; the SDK writes them at column 0).
    fn imported_modules(source: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut statement: Option<String> = None;
        for line in source.lines() {
            if statement.is_none() && (line.starts_with("import") || line.starts_with("export")) {
                statement = Some(String::new());
            }
            let Some(text) = statement.as_mut() else {
                continue;
            };
            text.push_str(line.trim());
            text.push(' ');
            if !line.trim_end().ends_with(';') {
                continue;
            }
            let text = statement.take().unwrap_or_default();
            let text = text.trim_end().trim_end_matches(';').trim_end();
            let Some(quote) = text.chars().last().filter(|c| *c == '\'' || *c == '"') else {
                continue;
            };
            let Some(open) = text[..text.len() - 1].rfind(quote) else {
                continue;
            };
            let before = text[..open].trim_end();
            if before.ends_with("from") || before == "import" {
                found.push(text[open + 1..text.len() - 1].to_string());
            }
        }
        found
    }

    #[test]
    fn the_import_parser_finds_every_form_and_nothing_else() {
        let source = "// import { a } from './commented.js';\n\
                      import { a, b } from './one.js';\n\
                      import {\n  c,\n  d,\n} from \"./two.js\";\n\
                      import './three.js';\n\
                      export { e } from './four.js';\n\
                      export const f = {\n  g() {\n    return 'x from ';\n  },\n};\n\
                      export function h() {\n  const from = 'y';\n  return from;\n}\n";
        assert_eq!(
            imported_modules(source),
            ["./one.js", "./two.js", "./three.js", "./four.js"]
        );
    }

    #[test]
    fn every_module_the_sdk_imports_is_served_and_every_served_one_is_imported() {
        let served: BTreeSet<&str> = SDK_MODULES.iter().map(|(file, _)| *file).collect();
        assert_eq!(served.len(), SDK_MODULES.len(), "a module is listed twice");
        let mut reached = BTreeSet::from([SDK_ENTRY]);
        let mut to_read = VecDeque::from([SDK_ENTRY]);
        while let Some(file) = to_read.pop_front() {
            let source = sdk_module(file);
            // A dynamic import would escape this walk: the SDK has none.
            assert!(!source.contains("import("), "{file} has a dynamic import");
            for spec in imported_modules(source) {
                // Relative, with its extension, next to the entry point: what a browser can
                // fetch from `/sdk/` and Node ESM can resolve, with no bundler.
                let name = spec.strip_prefix("./").unwrap_or_else(|| {
                    panic!("{file} imports {spec:?}: only './<file>.js' is served")
                });
                assert!(
                    name.ends_with(".js") && !name.contains('/'),
                    "{file} imports {spec:?}: only './<file>.js' is served"
                );
                assert!(
                    served.contains(name),
                    "{file} imports {spec}, which SDK_MODULES does not serve"
                );
                if let Some(&name) = served.get(name)
                    && reached.insert(name)
                {
                    to_read.push_back(name);
                }
            }
        }
        assert!(reached.len() > 1, "the entry point imports nothing");
        assert_eq!(
            reached, served,
            "SDK_MODULES serves a module nothing imports"
        );
    }

    #[tokio::test]
    async fn the_demo_routes_serve_each_sdk_module_as_javascript() {
        for &(file, body) in SDK_MODULES {
            let response = demo_routes::<()>()
                .oneshot(
                    Request::get(format!("/sdk/{file}"))
                        .body(Body::empty())
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "/sdk/{file}");
            assert_eq!(response.headers()[header::CONTENT_TYPE], JS, "/sdk/{file}");
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(bytes, body.as_bytes(), "/sdk/{file}");
        }
        let missing = demo_routes::<()>()
            .oneshot(Request::get("/sdk/missing.js").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn pages_reference_only_embedded_files() {
        // No CDN: every script and stylesheet is one of ours.
        for page in [DEMO_HTML, FLEET_HTML] {
            assert!(!page.contains("http://") && !page.contains("https://"));
        }
        assert!(DEMO_HTML.contains("demo.js") && DEMO_HTML.contains("demo.css"));
        assert!(DEMO_JS.contains(&format!("./sdk/{SDK_ENTRY}")));
        assert!(FLEET_HTML.contains("fleet.js") && FLEET_HTML.contains("fleet.css"));
        assert!(sdk_module(SDK_ENTRY).contains("export { GatewayClient } from './client.js';"));
        assert!(sdk_module("client.js").contains("export class GatewayClient"));
    }
}
