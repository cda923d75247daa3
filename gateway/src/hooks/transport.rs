//! Where hook requests go: the application over HTTP(S), or a function in the process (unit
//! tests of the gating, and embedding).
//!
//! HTTP uses one pooled keep-alive client per pod (hyper-util's), so a hook call is one request
//! on a warm connection, not a TCP and TLS handshake per `hello`. HTTPS verifies the backend
//! with the system's roots through rustls and ring.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Request, header};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use super::signing;

/// Largest hook answer read.
pub const MAX_ANSWER: usize = 1 << 20;

/// A backend's answer: HTTP status and body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

/// Sends one signed hook request.
pub trait HookTransport: Send + Sync + 'static {
    fn post(
        &self,
        url: &str,
        body: Bytes,
        signature: String,
    ) -> impl Future<Output = Result<Reply, String>> + Send;
}

/// The application over HTTP(S).
#[derive(Debug, Clone)]
pub struct HttpTransport {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl HttpTransport {
    pub fn new() -> Result<Self, String> {
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| format!("TLS roots for hook calls: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(60))
            .build(https);
        Ok(Self { client })
    }
}

impl HookTransport for HttpTransport {
    async fn post(&self, url: &str, body: Bytes, signature: String) -> Result<Reply, String> {
        let request = Request::post(url)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::USER_AGENT, "gateway-hooks")
            .header(signing::HEADER, signature)
            .body(Full::new(body))
            .map_err(|e| format!("bad hook request: {e}"))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = response.status().as_u16();
        let body = Limited::new(response.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .map_err(|e| format!("answer body: {e}"))?;
        Ok(Reply { status, body })
    }
}

/// An in-process backend's answer to `(url, body)`.
type AnswerFn = dyn Fn(&str, &[u8]) -> Result<Reply, String> + Send + Sync;

/// An in-process backend: `f(url, body)` answers.
#[derive(Clone)]
pub struct FnTransport {
    f: Arc<AnswerFn>,
}

impl FnTransport {
    pub fn new(f: impl Fn(&str, &[u8]) -> Result<Reply, String> + Send + Sync + 'static) -> Self {
        Self { f: Arc::new(f) }
    }
}

impl std::fmt::Debug for FnTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnTransport")
    }
}

impl HookTransport for FnTransport {
    async fn post(&self, url: &str, body: Bytes, _signature: String) -> Result<Reply, String> {
        (self.f)(url, &body)
    }
}

/// The transport a pod runs with.
#[derive(Debug, Clone)]
pub enum AnyTransport {
    Http(HttpTransport),
    Fn(FnTransport),
}

impl HookTransport for AnyTransport {
    async fn post(&self, url: &str, body: Bytes, signature: String) -> Result<Reply, String> {
        match self {
            Self::Http(t) => t.post(url, body, signature).await,
            Self::Fn(t) => t.post(url, body, signature).await,
        }
    }
}
