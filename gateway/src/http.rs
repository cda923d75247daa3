//! HTTP: the public router (WebSocket upgrade with admission, health) and the admin router.
//!
//! Admission happens before the upgrade, where a refusal is cheap and clear: a draining pod or a
//! full one answers 503 with `Retry-After` (the balancer and the client try elsewhere), a
//! refused `Origin` gets 403.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::rejection::JsonRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use protocol::{Payload, Topic};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::{PublishError, Shared, connection};

/// How clients reach a public listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// `--listen`: probes, direct clients, proxies that only send `X-Forwarded-For`. PROXY
    /// headers are never read here, whoever the peer is.
    Direct,
    /// `--proxy-listen`: only `--trusted-proxies` may connect, and each connection starts with
    /// a PROXY v2 header.
    Proxied,
}

/// The socket peer of a connection (the load balancer's address on `--proxy-listen`), as
/// opposed to the client address that `ConnectInfo` carries. `drain-peer` selects by it.
#[derive(Debug, Clone, Copy)]
pub struct TcpPeer(pub std::net::IpAddr);

/// Serves a public port: a hyper HTTP/1 server per socket (so the upgrade request has a
/// header-read deadline against slowloris), after the PROXY v2 header on [`Ingress::Proxied`].
pub async fn serve_public(
    listener: TcpListener,
    ingress: Ingress,
    shared: Arc<Shared>,
) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/ws", get(upgrade))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    if shared.config.demo {
        app = app.merge(crate::assets::demo_routes());
    }
    let app = app.with_state(shared.clone());
    let stop = shared.shutdown.clone();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if ingress == Ingress::Proxied && !shared.config.security.is_trusted_proxy(peer.ip()) {
            // Closed before reading: an untrusted peer must not get to claim any address.
            tracing::debug!(%peer, "not a trusted proxy; closing");
            shared.metrics.conn.outcome("untrusted_proxy");
            drop(tcp);
            continue;
        }
        tokio::spawn(serve_socket(
            tcp,
            peer,
            ingress,
            app.clone(),
            shared.clone(),
        ));
    }
}

async fn serve_socket(
    mut tcp: tokio::net::TcpStream,
    tcp_peer: SocketAddr,
    ingress: Ingress,
    app: Router,
    shared: Arc<Shared>,
) {
    let deadline = shared.config.security.header_read_timeout;
    let peer = match ingress {
        Ingress::Direct => tcp_peer,
        // A `LOCAL` header (the balancer's own health check) leaves the balancer as the peer.
        Ingress::Proxied => {
            match tokio::time::timeout(deadline, crate::abuse::read_proxy_v2(&mut tcp)).await {
                Ok(Ok(header)) => header.source.unwrap_or(tcp_peer),
                Ok(Err(e)) => {
                    tracing::debug!(%tcp_peer, error = %e, "bad PROXY header; closing");
                    shared.metrics.conn.outcome("proxy_header");
                    return;
                }
                Err(_) => {
                    shared.metrics.conn.outcome("proxy_header");
                    return;
                }
            }
        }
    };
    let tcp_ip = TcpPeer(crate::abuse::canonical(tcp_peer.ip()));
    let _ = tcp.set_nodelay(true);
    let service =
        hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            req.extensions_mut().insert(tcp_ip);
            tower::ServiceExt::oneshot(app.clone(), req)
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(deadline)
        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
        .with_upgrades();
    match connection.await {
        Ok(()) => tracing::trace!(%peer, "HTTP connection done"),
        Err(e) => tracing::debug!(%peer, error = %e, "HTTP connection ended"),
    }
}

/// A reserved place among the pod's connections; released on drop (also when an upgrade
/// fails before the socket task starts).
#[derive(Debug)]
pub struct Slot {
    shared: Arc<Shared>,
}

impl Slot {
    fn reserve(shared: &Arc<Shared>) -> Option<Self> {
        let max = shared.config.max_connections;
        shared
            .slots
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        shared.metrics.conn.active.inc();
        Some(Self {
            shared: shared.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.slots.fetch_sub(1, Ordering::AcqRel);
        self.shared.metrics.conn.active.dec();
    }
}

fn refuse(
    shared: &Shared,
    status: StatusCode,
    outcome: &'static str,
    retry_after: Option<u32>,
) -> Response {
    shared.metrics.conn.outcome(outcome);
    let mut response = (status, outcome).into_response();
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, secs.into());
    }
    response
}

async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(TcpPeer(tcp_peer)): Extension<TcpPeer>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ws: WebSocketUpgrade,
) -> Response {
    if shared.drain.is_draining() {
        return refuse(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            Some(1),
        );
    }
    if shared.drain.peer_draining(tcp_peer) {
        // Its load balancer pod is stopping: the client retries, through another one.
        return refuse(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "peer_draining",
            Some(1),
        );
    }
    if !origin_allowed(&shared.config.allowed_origins, &headers) {
        return refuse(&shared, StatusCode::FORBIDDEN, "origin", None);
    }
    let ip = crate::abuse::client_ip(peer, &headers, &shared.config.security.trusted_proxies);
    let ip_guard = match shared.ip_limiter.admit(ip) {
        Ok(guard) => guard,
        Err(refusal) => {
            return refuse(
                &shared,
                StatusCode::TOO_MANY_REQUESTS,
                refusal.reason.as_str(),
                Some(refusal.retry_after_secs),
            );
        }
    };
    let Some(permit) = shared.handshakes.try_acquire() else {
        return refuse(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "handshakes",
            Some(1),
        );
    };
    let Some(slot) = Slot::reserve(&shared) else {
        return refuse(
            &shared,
            StatusCode::SERVICE_UNAVAILABLE,
            "capacity",
            Some(5),
        );
    };
    shared.metrics.conn.outcome("accepted");
    // Kept for the connect hook only: an idle connection without hooks holds none of it.
    let upgrade = shared
        .hooks
        .as_ref()
        .filter(|h| h.has_base())
        .map(|_| Box::new(upgrade_info(&headers, &uri)));
    let c = &shared.config;
    let token = shared.tasks.token();
    // Sizes derived from `--max-message-size` (see `sizes`): the write bound holds a batch plus
    // the largest message frame, so every accepted message can be written; the read bound
    // holds a publish of the largest payload.
    let max_read = crate::sizes::max_client_frame(c.max_message_size);
    ws.read_buffer_size(c.read_buffer_size)
        .write_buffer_size(c.write_buffer_size)
        .max_write_buffer_size(crate::sizes::max_write_buffer(
            c.write_buffer_size,
            c.max_message_size,
        ))
        .max_message_size(max_read)
        .max_frame_size(max_read)
        .on_upgrade(move |socket| async move {
            connection::serve(socket, shared, ip, tcp_peer, permit, upgrade).await;
            drop(ip_guard);
            drop(slot);
            drop(token);
        })
}

/// What the connect hook sees of the upgrade request.
fn upgrade_info(headers: &HeaderMap, uri: &axum::http::Uri) -> crate::application::UpgradeInfo {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    crate::application::UpgradeInfo {
        origin: text(header::ORIGIN),
        user_agent: text(header::USER_AGENT),
        cookie: text(header::COOKIE),
        query: uri.query().unwrap_or_default().to_owned(),
    }
}

fn origin_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    match headers.get(header::ORIGIN).map(|o| o.to_str()) {
        None => true,
        Some(Ok(origin)) => allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)),
        Some(Err(_)) => false,
    }
}

/// Whether this pod can take a new connection: not draining, below capacity, and no backend
/// down past `--unready-after-backend-down` (from the cached background checks: never a
/// blocking call, and no error text on the public port).
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let unready = |why: String| (StatusCode::SERVICE_UNAVAILABLE, why).into_response();
    if shared.drain.is_draining() {
        return unready("draining".into());
    }
    if shared.slots.load(Ordering::Acquire) >= shared.config.max_connections {
        return unready("full".into());
    }
    let grace = shared.config.unready_after_backend_down;
    if let Some(crate::health::Unavailable(backend)) = shared.health.unavailable(grace) {
        return unready(format!("backend unavailable: {}", backend.name()));
    }
    "ready".into_response()
}

#[derive(Debug, Deserialize)]
pub(crate) struct PublishRequest {
    topic: String,
    /// `None` when missing or `null`: refused, as a WebSocket `publish` without `data` is.
    data: Option<Box<protocol::RawJson>>,
    /// Idempotency key: a retry with the same id returns the first `seq` and stores nothing.
    id: Option<String>,
    /// Echo suppression: the session (on any pod) that gets a `skipped` frame instead.
    exclude_session: Option<String>,
}

/// The `exclude_session` of a server publish: a session id (32 lowercase hex characters), as
/// `welcome.session` gives it. Whether that session exists is not checked: one that is not
/// connected anywhere simply excludes no one now, and still gets `skipped` on a later replay.
pub(crate) fn parse_excluded_session(
    raw: Option<&str>,
) -> Result<Option<protocol::SessionId>, String> {
    raw.map(protocol::SessionId::parse)
        .transpose()
        .map_err(|e| format!("invalid `exclude_session`: {e}"))
}

/// An `/api/publish` refusal: `{"error":…,"message":…}`.
fn api_error(status: StatusCode, error: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({"error": error, "message": message.to_string()});
    (status, Json(body)).into_response()
}

pub(crate) async fn api_publish(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<PublishRequest>, JsonRejection>,
) -> Response {
    let req = match body {
        Ok(Json(req)) => req,
        // Over the body limit (see `serve_admin`): the payload cannot be within its limit.
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            shared
                .metrics
                .publish
                .refuse(crate::sizes::MAX_MESSAGE_SIZE);
            let max = shared.config.max_message_size;
            let limit = crate::sizes::max_publish_body(max);
            let message = format!("request body above {limit} bytes (data may be {max} bytes)");
            return api_error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", message);
        }
        Err(e @ JsonRejection::MissingJsonContentType(_)) => {
            return api_error(e.status(), "bad_request", e.body_text());
        }
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    let topic = match Topic::new(&req.topic) {
        Ok(t) => t,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "bad_request", e),
    };
    let Some(data) = req.data else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "missing field `data` (null is not a message)",
        );
    };
    let id = match req.id.as_deref().map(protocol::PublishId::new).transpose() {
        Ok(id) => id,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "bad_request", e),
    };
    let exclude = match parse_excluded_session(req.exclude_session.as_deref()) {
        Ok(exclude) => exclude,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "bad_request", e),
    };
    if shared.namespaces.of(&topic).is_ephemeral() {
        // No seq, no epoch, no dedup: nothing is stored (see `Shared::publish_ephemeral`).
        return match shared
            .publish_ephemeral(&topic, Payload::from_raw(&data), exclude.as_ref())
            .await
        {
            Ok(()) => Json(serde_json::json!({"topic": topic, "ephemeral": true})).into_response(),
            Err(e @ PublishError::TooLarge { .. }) => {
                api_error(StatusCode::PAYLOAD_TOO_LARGE, e.code().as_str(), e)
            }
            Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, e.code().as_str(), e),
        };
    }
    match shared
        .publish(
            &topic,
            Payload::from_raw(&data),
            id.as_ref(),
            exclude.as_ref(),
        )
        .await
    {
        Ok(appended) => Json(serde_json::json!({
            "topic": topic,
            "seq": appended.seq,
            "epoch": appended.epoch,
            "duplicate": appended.duplicate,
        }))
        .into_response(),
        Err(e @ PublishError::TooLarge { .. }) => {
            api_error(StatusCode::PAYLOAD_TOO_LARGE, e.code().as_str(), e)
        }
        // The append may have run before the failure: retry with the same id.
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, e.code().as_str(), e),
    }
}
