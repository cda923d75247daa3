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
use axum::extract::{ConnectInfo, DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use backplane::Backplane;
use protocol::{Payload, Topic};
use serde::Deserialize;
use session_store::SessionStore;
use tokio::net::TcpListener;

use crate::metrics::OutcomeLabel;
use crate::{PublishError, Shared, connection};

/// Serves the public port: a hyper HTTP/1 server per socket (so the upgrade request has a
/// header-read deadline against slowloris), after reading a PROXY v2 header from trusted
/// proxies when `--proxy-protocol` is on.
pub async fn serve_public(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
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
        tokio::spawn(serve_socket(tcp, peer, app.clone(), shared.clone()));
    }
}

async fn serve_socket(
    mut tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    app: Router,
    shared: Arc<Shared>,
) {
    let security = &shared.config.security;
    let deadline = security.header_read_timeout;
    let trusted = security
        .trusted_proxies
        .iter()
        .any(|net| net.contains(&crate::abuse::canonical(peer.ip())));
    let peer = if security.proxy_protocol && trusted {
        match tokio::time::timeout(deadline, crate::abuse::read_proxy_v2(&mut tcp)).await {
            Ok(Ok(header)) => header.source.unwrap_or(peer),
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "bad PROXY header; closing");
                return;
            }
            Err(_) => return,
        }
    } else {
        peer
    };
    let _ = tcp.set_nodelay(true);
    let service =
        hyper::service::service_fn(move |mut req: axum::http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
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

pub async fn serve_admin(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    let stop = shared.shutdown.clone();
    // The largest `/api/publish` body, instead of axum's 2 MB default: a bigger one is a 413.
    let body_limit = crate::sizes::max_publish_body(shared.config.max_message_size);
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/publish", post(api_publish))
        .route("/api/broadcast", post(crate::server_api::broadcast))
        .route("/api/disconnect", post(crate::server_api::disconnect))
        .route("/api/subscribe", post(crate::server_api::subscribe))
        .route("/api/unsubscribe", post(crate::server_api::unsubscribe))
        .route("/api/revoke", post(crate::server_api::revoke))
        .route("/admin/drain", post(admin_drain).get(drain_status))
        .route("/admin/cluster", get(admin_cluster))
        .route("/scaler", get(scaler))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ))
        // After the token layer: the page is static; its API calls carry the token.
        .merge(crate::assets::fleet_routes())
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
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
    shared
        .metrics
        .conn
        .total
        .get_or_create(&OutcomeLabel { outcome })
        .inc();
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
    shared
        .metrics
        .conn
        .total
        .get_or_create(&OutcomeLabel {
            outcome: "accepted",
        })
        .inc();
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
            connection::serve(socket, shared, ip, permit, upgrade).await;
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

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.drain.is_draining() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    if let Err(e) = shared.store.ping().await {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("store: {e}")).into_response();
    }
    if !shared.backplane.is_connected() {
        return (StatusCode::SERVICE_UNAVAILABLE, "backplane disconnected").into_response();
    }
    "ready".into_response()
}

async fn require_token(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if let Some(expected) = &shared.config.admin_token {
        // Through the Kubernetes pod proxy, `Authorization` is dropped: accept our own header too.
        let headers = request.headers();
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| {
                headers
                    .get("x-gateway-admin-token")
                    .and_then(|v| v.to_str().ok())
            })
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
            return (StatusCode::UNAUTHORIZED, "admin token required").into_response();
        }
    }
    next.run(request).await
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

#[derive(Debug, Deserialize)]
struct PublishRequest {
    topic: String,
    /// `None` when missing or `null`: refused, as a WebSocket `publish` without `data` is.
    data: Option<Box<protocol::RawJson>>,
    /// Idempotency key: a retry with the same id returns the first `seq` and stores nothing.
    id: Option<String>,
}

/// An `/api/publish` refusal: `{"error":…,"message":…}`.
fn api_error(status: StatusCode, error: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({"error": error, "message": message.to_string()});
    (status, Json(body)).into_response()
}

async fn api_publish(
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
    if shared.namespaces.of(&topic).is_ephemeral() {
        // No seq, no epoch, no dedup: nothing is stored (see `Shared::publish_ephemeral`).
        return match shared
            .publish_ephemeral(&topic, Payload::from_raw(&data))
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
        .publish(&topic, Payload::from_raw(&data), id.as_ref())
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

fn drain_report(shared: &Shared) -> serde_json::Value {
    serde_json::json!({
        "pod": shared.pod,
        "draining": shared.drain.is_draining(),
        "connections": shared.connections.len(),
        "closed": shared.drain.closed(),
    })
}

/// Starts a drain (idempotent) and answers at once; progress is on `GET /admin/drain`.
async fn admin_drain(State(shared): State<Arc<Shared>>) -> Response {
    if !shared.drain.is_draining() {
        let s = shared.clone();
        tokio::spawn(async move { crate::drain::drain(&s).await });
        // Let the drain flag be set before reporting.
        tokio::task::yield_now().await;
    }
    (StatusCode::ACCEPTED, Json(drain_report(&shared))).into_response()
}

async fn drain_status(State(shared): State<Arc<Shared>>) -> Response {
    Json(drain_report(&shared)).into_response()
}

/// The fleet as this pod sees it: one entry per live pod.
async fn admin_cluster(State(shared): State<Arc<Shared>>) -> Response {
    let pods = shared.cluster.pods(crate::cluster::max_age(&shared));
    Json(serde_json::json!({ "pod": shared.pod, "pods": pods })).into_response()
}

/// Connection counts for KEDA's metrics-api trigger (`valueLocation: fleet.connections`, or
/// `pod.connections` for this pod alone).
async fn scaler(State(shared): State<Arc<Shared>>) -> Response {
    let pods = shared.cluster.pods(crate::cluster::max_age(&shared));
    let live: Vec<_> = pods.iter().filter(|p| !p.beat.draining).collect();
    let connections: u64 = pods.iter().map(|p| p.beat.connections).sum();
    let capacity: u64 = live.iter().map(|p| p.beat.capacity).sum();
    let per_pod = if live.is_empty() {
        0
    } else {
        connections / live.len() as u64
    };
    let me = crate::cluster::heartbeat(&shared);
    Json(serde_json::json!({
        "pod": { "name": me.pod, "connections": me.connections, "capacity": me.capacity, "draining": me.draining },
        "fleet": { "pods": pods.len(), "connections": connections, "capacity": capacity, "connections_per_pod": per_pod },
    }))
    .into_response()
}
