//! The admin port: metrics and the scaler's numbers (read scope), drain, undrain, drain-peer and
//! the server API (operator scope), and the static fleet page. See `docs/operations.md`.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;

use crate::Shared;

mod scope;

pub use scope::{AdminTokens, Scope, TokenError};

pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tokens: Arc<AdminTokens>,
) -> std::io::Result<()> {
    let stop = shared.shutdown.clone();
    // The largest `/api/publish` body, instead of axum's 2 MB default: a bigger one is a 413.
    let body_limit = crate::sizes::max_publish_body(shared.config.max_message_size);
    let read = Router::new()
        .route("/metrics", get(metrics))
        .route("/admin/cluster", get(admin_cluster))
        .route("/scaler", get(scaler))
        .route_layer(middleware::from_fn_with_state(
            (tokens.clone(), Scope::Read),
            scope::require,
        ));
    let operator = Router::new()
        .route("/api/publish", post(crate::http::api_publish))
        .route("/api/broadcast", post(crate::server_api::broadcast))
        .route("/api/disconnect", post(crate::server_api::disconnect))
        .route("/api/subscribe", post(crate::server_api::subscribe))
        .route("/api/unsubscribe", post(crate::server_api::unsubscribe))
        .route("/api/revoke", post(crate::server_api::revoke))
        .route("/admin/drain", post(admin_drain).get(drain_status))
        .route("/admin/undrain", post(admin_undrain))
        .route("/admin/drain-peer", post(drain_peer).get(drain_peer_status))
        .merge(crate::topics_api::routes())
        .route_layer(middleware::from_fn_with_state(
            (tokens, Scope::Operator),
            scope::require,
        ));
    let app = read
        .merge(operator)
        // Outside the token layers: the page is static; its API calls carry the token.
        .merge(crate::assets::fleet_routes())
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
}

/// OpenMetrics, unless the scraper asks for the Prometheus text format only (`Accept:
/// text/plain` without `application/openmetrics-text`, as `promtool` and older agents do).
async fn metrics(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.contains("text/plain") && !accept.contains("application/openmetrics-text") {
        return (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            shared.metrics.encode_prometheus_text(),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
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

/// Undoes an operator's drain (200 with the drain report), or 409 while the pod is stopping.
async fn admin_undrain(State(shared): State<Arc<Shared>>) -> Response {
    match shared.drain.undrain() {
        Ok(was_draining) => {
            shared.metrics.drain.draining.set(0);
            if was_draining {
                tracing::info!("drain undone by an operator");
            }
            Json(drain_report(&shared)).into_response()
        }
        Err(e) => {
            let body = serde_json::json!({"error": "terminating", "message": e.to_string()});
            (StatusCode::CONFLICT, Json(body)).into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct PeerRequest {
    /// The socket peer whose connections are drained: a load balancer pod's address.
    peer: IpAddr,
}

fn peer_report(shared: &Shared, peer: IpAddr) -> serde_json::Value {
    serde_json::json!({
        "pod": shared.pod,
        "peer": peer,
        "draining": shared.drain.peer_draining(peer),
        "connections": shared.connections.count_from(peer),
    })
}

/// Starts closing the connections from one peer (idempotent) and answers at once, 202 with the
/// connections left from it; progress is on `GET /admin/drain-peer?peer=IP`.
async fn drain_peer(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<PeerRequest>, JsonRejection>,
) -> Response {
    let peer = match body {
        Ok(Json(req)) => crate::abuse::canonical(req.peer),
        Err(e) => {
            let body = serde_json::json!({"error": "bad_request", "message": e.body_text()});
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    if !shared.drain.peer_draining(peer) {
        let s = shared.clone();
        tokio::spawn(async move { crate::drain::drain_peer(&s, peer).await });
        tokio::task::yield_now().await;
    }
    (StatusCode::ACCEPTED, Json(peer_report(&shared, peer))).into_response()
}

async fn drain_peer_status(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<PeerRequest>, QueryRejection>,
) -> Response {
    match query {
        Ok(Query(req)) => {
            Json(peer_report(&shared, crate::abuse::canonical(req.peer))).into_response()
        }
        Err(e) => {
            let body = serde_json::json!({"error": "bad_request", "message": e.body_text()});
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
    }
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
