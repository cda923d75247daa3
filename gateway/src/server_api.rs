//! The server API on the admin port (operator scope): per-user commands across the fleet,
//! revocations and broadcasts (design §11, `docs/backend.md`). `/api/publish` is in `http`.
//!
//! - `POST /api/disconnect {user, reason?}`: deletes every resumable session of the user (from
//!   the per-user index), then tells every pod to close the user's connections with 1008
//!   `{"reconnect":false,"error":"disconnected"}`.
//! - `POST /api/subscribe` / `POST /api/unsubscribe {user, topic}`: every live connection of
//!   the user subscribes (`subscribed` with `reason:"server"`) or unsubscribes
//!   (`unsubscribed` with `reason:"server"`), and saves its session so it survives a resume.
//! - `POST /api/revoke {user | jti, until}`: refused on `hello`, `refresh` and resume until
//!   `until` (Unix seconds).
//! - `POST /api/broadcast {topics, data, id?}`: one payload to many topics, each sequenced.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use protocol::{Payload, PublishId, Topic};
use serde::Deserialize;
use session_store::{Revocations, Revoked, SessionStore, UserSessions};

use crate::Shared;
use crate::fleet::{self, FleetMessage};

/// Topics one broadcast may name at most.
pub const MAX_BROADCAST_TOPICS: usize = 1_000;

fn error(status: StatusCode, error: &str, message: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({"error": error, "message": message.to_string()});
    (status, Json(body)).into_response()
}

fn bad_request(message: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

fn unavailable(message: impl std::fmt::Display) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
}

/// A refused request, answered `{"error":"bad_request","message":…}`.
struct Refused {
    status: StatusCode,
    message: String,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        error(self.status, "bad_request", self.message)
    }
}

fn body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, Refused> {
    body.map(|Json(t)| t).map_err(|e| Refused {
        status: e.status(),
        message: e.body_text(),
    })
}

fn user(user: &str) -> Result<(), Refused> {
    if user.is_empty() || user.len() > 256 || user.chars().any(char::is_control) {
        return Err(Refused {
            status: StatusCode::BAD_REQUEST,
            message: "`user` must be 1-256 characters, no control characters".into(),
        });
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectRequest {
    user: String,
    /// Logged, for the operator's record.
    reason: Option<String>,
}

pub async fn disconnect(
    State(shared): State<Arc<Shared>>,
    req: Result<Json<DisconnectRequest>, JsonRejection>,
) -> Response {
    let req = match body(req) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = user(&req.user) {
        return e.into_response();
    }
    // Records first: a connection closed by the fleet message must find nothing to resume.
    let sessions = match shared.users.take_sessions(&req.user).await {
        Ok(sessions) => sessions,
        Err(e) => return unavailable(e),
    };
    for id in &sessions {
        if let Err(e) = shared.store.delete_session(id).await {
            return unavailable(e);
        }
        let why = crate::events::Why::Disconnected;
        crate::events::hooks::ended(&shared, id.as_str(), Some(&req.user), why).await;
    }
    let message = FleetMessage::Disconnect {
        user: req.user.clone(),
    };
    if let Err(e) = fleet::send(&shared, &message).await {
        return unavailable(format!("sessions deleted, but the pods were not told: {e}"));
    }
    tracing::info!(user = %req.user, reason = req.reason.as_deref().unwrap_or(""), sessions = sessions.len(), "user disconnected by the server API");
    Json(serde_json::json!({"user": req.user, "sessions": sessions.len()})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserTopicRequest {
    user: String,
    topic: String,
}

async fn user_topic(
    shared: &Shared,
    req: Result<Json<UserTopicRequest>, JsonRejection>,
    subscribe: bool,
) -> Response {
    let req = match body(req) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    if let Err(e) = user(&req.user) {
        return e.into_response();
    }
    let topic = match Topic::new(&req.topic) {
        Ok(t) => t,
        Err(e) => return bad_request(e),
    };
    let message = if subscribe {
        FleetMessage::Subscribe {
            user: req.user.clone(),
            topic: topic.clone(),
        }
    } else {
        FleetMessage::Unsubscribe {
            user: req.user.clone(),
            topic: topic.clone(),
        }
    };
    match fleet::send(shared, &message).await {
        Ok(()) => Json(serde_json::json!({"user": req.user, "topic": topic})).into_response(),
        Err(e) => unavailable(e),
    }
}

pub async fn subscribe(
    State(shared): State<Arc<Shared>>,
    req: Result<Json<UserTopicRequest>, JsonRejection>,
) -> Response {
    user_topic(&shared, req, true).await
}

pub async fn unsubscribe(
    State(shared): State<Arc<Shared>>,
    req: Result<Json<UserTopicRequest>, JsonRejection>,
) -> Response {
    user_topic(&shared, req, false).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeRequest {
    user: Option<String>,
    jti: Option<String>,
    /// Unix seconds.
    until: u64,
}

pub async fn revoke(
    State(shared): State<Arc<Shared>>,
    req: Result<Json<RevokeRequest>, JsonRejection>,
) -> Response {
    let req = match body(req) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    let who = match (req.user, req.jti) {
        (Some(u), None) => {
            if let Err(e) = user(&u) {
                return e.into_response();
            }
            Revoked::User(u)
        }
        (None, Some(j)) if !j.is_empty() && j.len() <= 256 => Revoked::Jti(j),
        _ => return bad_request("give exactly one of `user` and `jti` (1-256 characters)"),
    };
    let until_ms = req.until.saturating_mul(1_000);
    if let Err(e) = shared.users.revoke(&who, until_ms).await {
        return unavailable(e);
    }
    let (kind, name) = match &who {
        Revoked::User(u) => ("user", u),
        Revoked::Jti(j) => ("jti", j),
    };
    tracing::info!(kind, name = %name, until = req.until, "revoked by the server API");
    Json(serde_json::json!({kind: name, "until": req.until})).into_response()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    topics: Vec<String>,
    data: Option<Box<protocol::RawJson>>,
    /// Idempotency key, applied per topic.
    id: Option<String>,
    /// Echo suppression on every topic: the session that gets `skipped` frames instead.
    exclude_session: Option<String>,
}

pub async fn broadcast(
    State(shared): State<Arc<Shared>>,
    req: Result<Json<BroadcastRequest>, JsonRejection>,
) -> Response {
    let req = match body(req) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    let Some(data) = req.data else {
        return bad_request("missing field `data` (null is not a message)");
    };
    if req.topics.is_empty() || req.topics.len() > MAX_BROADCAST_TOPICS {
        return bad_request(format!(
            "`topics` must list 1-{MAX_BROADCAST_TOPICS} topics"
        ));
    }
    let id = match req.id.as_deref().map(PublishId::new).transpose() {
        Ok(id) => id,
        Err(e) => return bad_request(e),
    };
    let exclude = match crate::http::parse_excluded_session(req.exclude_session.as_deref()) {
        Ok(exclude) => exclude,
        Err(e) => return bad_request(e),
    };
    let data = Payload::from_raw(&data);
    let mut results = Vec::with_capacity(req.topics.len());
    for name in &req.topics {
        let topic = match Topic::new(name) {
            Ok(t) => t,
            Err(e) => {
                results.push(serde_json::json!({"topic": name, "error": e.to_string()}));
                continue;
            }
        };
        let result = if shared.namespaces.of(&topic).is_ephemeral() {
            shared
                .publish_ephemeral(&topic, data.clone(), exclude.as_ref())
                .await
                .map(|()| serde_json::json!({"topic": topic, "ephemeral": true}))
        } else {
            shared
                .publish(&topic, data.clone(), id.as_ref(), exclude.as_ref())
                .await
                .map(|a| serde_json::json!({"topic": topic, "seq": a.seq, "epoch": a.epoch}))
        };
        results.push(
            result.unwrap_or_else(|e| serde_json::json!({"topic": topic, "error": e.to_string()})),
        );
    }
    Json(serde_json::json!({"results": results})).into_response()
}
