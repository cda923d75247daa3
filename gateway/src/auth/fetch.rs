//! A minimal HTTP(S) GET for JWKS documents: one request per connection, no redirects, a size
//! cap and a deadline. HTTPS verifies the server with the system's root certificates (honouring
//! `SSL_CERT_FILE` / `SSL_CERT_DIR`), through rustls with the ring provider already used by the
//! NATS client.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::{Request, StatusCode, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::ServerName};

/// Largest JWKS document read.
pub const MAX_BODY: usize = 1 << 20;

/// GETs `url` (http or https) within `deadline`; the body of a 200 answer.
pub async fn get(url: &str, deadline: Duration) -> Result<Bytes, String> {
    tokio::time::timeout(deadline, get_inner(url))
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {deadline:?}")))
}

async fn get_inner(url: &str) -> Result<Bytes, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err("the URL must start with http:// or https://".into()),
    };
    let host = uri.host().ok_or("the URL has no host")?.to_owned();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    // `[::1]` in a URL is `::1` to connect to.
    let connect_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = TcpStream::connect((connect_host.as_str(), port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    if https {
        let name = ServerName::try_from(connect_host)
            .map_err(|e| format!("bad server name {host}: {e}"))?;
        let tls = TlsConnector::from(tls_config()?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        request(tls, &uri).await
    } else {
        request(tcp, &uri).await
    }
}

fn tls_config() -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(
            "no root certificates found (install ca-certificates or set SSL_CERT_FILE)".into(),
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

async fn request<S>(io: S, uri: &Uri) -> Result<Bytes, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    let driver = tokio::spawn(conn);
    let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = Request::get(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json, application/jwk-set+json")
        .header(header::USER_AGENT, "gateway-jwks")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let result = async {
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        if response.status() != StatusCode::OK {
            return Err(format!("HTTP status {}", response.status()));
        }
        Limited::new(response.into_body(), MAX_BODY)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("body: {e}"))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get as route;

    async fn serve(app: Router) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    #[tokio::test]
    async fn fetches_bodies_and_refuses_errors() {
        let app = Router::new()
            .route("/ok", route(|| async { "{\"keys\":[]}" }))
            .route("/big", route(|| async { "x".repeat(MAX_BODY + 1) }))
            .route(
                "/slow",
                route(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            );
        let addr = serve(app).await;
        let d = Duration::from_secs(2);
        let body = get(&format!("http://{addr}/ok?x=1"), d).await.unwrap();
        assert_eq!(&body[..], b"{\"keys\":[]}");
        let e = get(&format!("http://{addr}/missing"), d).await.unwrap_err();
        assert!(e.contains("404"), "{e}");
        assert!(get(&format!("http://{addr}/big"), d).await.is_err());
        let e = get(&format!("http://{addr}/slow"), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(e.contains("within"), "{e}");
        assert!(get("ftp://example/x", d).await.is_err());
        assert!(get("not a url", d).await.is_err());
    }

    #[tokio::test]
    async fn unreachable_hosts_fail() {
        // Bind then drop: nothing listens on this port any more.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = get(&format!("http://{addr}/"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(e.contains("connect"), "{e}");
    }
}
