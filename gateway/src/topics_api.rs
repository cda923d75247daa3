//! The admin port's topic reads (operator scope, behind the admin token like every `/api`
//! route): `GET /api/topics/{topic}` (the top, the fleet's subscribers and presence counts),
//! `GET /api/topics/{topic}/history?since=&epoch=&limit=&reverse=` (a page, as the `history`
//! frame answers it) and `GET /api/topics/{topic}/presence` (the members).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use protocol::{Epoch, HistoryMessage, HistoryQuery, Position, Topic};
use serde::{Deserialize, Serialize};
use session_store::SessionStore;

use crate::presence::PresenceStore;

use crate::Shared;

/// The routes, to be merged before the admin token layer.
pub fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/topics/{topic}", get(topic_state))
        .route("/api/topics/{topic}/history", get(topic_history))
        .route("/api/topics/{topic}/presence", get(topic_presence))
}

fn api_error(status: StatusCode, error: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({"error": error, "message": message.to_string()});
    (status, Json(body)).into_response()
}

fn unavailable(e: impl std::fmt::Display) -> Response {
    api_error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", e)
}

fn bad_topic(e: protocol::InvalidName) -> Response {
    api_error(StatusCode::BAD_REQUEST, "bad_request", e)
}

async fn topic_state(State(shared): State<Arc<Shared>>, Path(topic): Path<String>) -> Response {
    let topic = match Topic::new(&topic) {
        Ok(t) => t,
        Err(e) => return bad_topic(e),
    };
    let top = match shared.store.top(&topic).await {
        Ok(top) => top,
        Err(e) => return unavailable(e),
    };
    let subscribers = match crate::census::subscribers(&shared, &topic).await {
        Ok(n) => n,
        Err(e) => return unavailable(e),
    };
    let mut body = serde_json::json!({
        "topic": topic,
        "seq": top.seq,
        "epoch": top.epoch,
        "subscribers": subscribers,
    });
    if crate::presence::enabled(&shared, &topic) {
        match shared.presence.stats(&topic).await {
            Ok(stats) => {
                body["presence"] =
                    serde_json::json!({"members": stats.members, "users": stats.users});
            }
            Err(e) => return unavailable(e),
        }
    }
    Json(body).into_response()
}

/// `GET /api/topics/{topic}/presence`: the members, as the `presence` frame lists them (404 for
/// a topic without presence; 409 `limit_reached` above `--presence-max-list`).
async fn topic_presence(State(shared): State<Arc<Shared>>, Path(topic): Path<String>) -> Response {
    let topic = match Topic::new(&topic) {
        Ok(t) => t,
        Err(e) => return bad_topic(e),
    };
    if !crate::presence::enabled(&shared, &topic) {
        return api_error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{topic} has no presence"),
        );
    }
    let max = crate::presence::max_list(&shared, &topic);
    let live = crate::presence::live_pods(&shared);
    match shared.presence.members(&topic, &live, max).await {
        Ok(Some(listing)) => {
            let mut body = serde_json::json!({"topic": topic, "members": listing.members});
            if let Some(at) = listing.at {
                body["pseq"] = at.pseq.into();
                body["epoch"] = at.epoch.as_str().into();
            }
            Json(body).into_response()
        }
        Ok(None) => api_error(
            StatusCode::CONFLICT,
            "limit_reached",
            format!("more than {max} members: use GET /api/topics/{topic}"),
        ),
        Err(e) => unavailable(e),
    }
}

/// A page: the `history` frame's fields (payloads byte for byte as published).
#[derive(Debug, Serialize)]
struct HistoryBody {
    topic: Topic,
    seq: u64,
    epoch: Epoch,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    messages: Vec<HistoryMessage>,
}

/// `?since=&epoch=&limit=&reverse=`: `since` and `epoch` together are a position.
#[derive(Debug, Deserialize)]
struct HistoryParams {
    since: Option<u64>,
    epoch: Option<String>,
    limit: Option<u64>,
    reverse: Option<bool>,
}

async fn topic_history(
    State(shared): State<Arc<Shared>>,
    Path(topic): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Response {
    let topic = match Topic::new(&topic) {
        Ok(t) => t,
        Err(e) => return bad_topic(e),
    };
    let Query(params) = match params {
        Ok(p) => p,
        Err(e) => return api_error(StatusCode::BAD_REQUEST, "bad_request", e.body_text()),
    };
    let since = match (params.since, params.epoch) {
        (Some(seq), Some(epoch)) => Some(Position {
            seq,
            epoch: Epoch::new(epoch),
        }),
        (None, None) => None,
        // A seq means nothing without its epoch (the topic may have restarted since).
        _ => {
            return api_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "`since` and `epoch` go together",
            );
        }
    };
    let query = HistoryQuery {
        since,
        limit: params.limit,
        reverse: params.reverse.unwrap_or(false),
    };
    match crate::history::read(&shared, &topic, &query, usize::MAX).await {
        Ok(answer) => Json(HistoryBody {
            topic,
            seq: answer.top.seq,
            epoch: answer.top.epoch,
            recovered: answer.recovered,
            messages: answer
                .messages
                .into_iter()
                .map(|m| HistoryMessage {
                    seq: m.seq,
                    data: m.data,
                })
                .collect(),
        })
        .into_response(),
        Err(e) => unavailable(e),
    }
}
