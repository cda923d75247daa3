//! What a connection asks the application's backend (the hooks, see `hooks`): `connect` on a
//! fresh `hello`, `subscribe` and `publish` where the namespace asks for them, and `rpc`.
//!
//! Each call runs on the connection's task, so its replies stay in order; the connection's own
//! deliveries wait meanwhile (at most `--hook-timeout`), other connections do not. A hook that
//! gives no answer (down, slow, busy, breaker open) is `unavailable` to the client: nothing is
//! subscribed, stored or granted without the application's answer.

use axum::extract::ws::WebSocket;
use protocol::client::{Ref, RpcMethod};
use protocol::{ErrorCode, Payload, RawJson, ServerFrame, Topic};
use session_store::HookGrant;

use crate::auth::Grants;
use crate::connection::{Close, Conn};
use crate::hooks::{self, wire};

/// From the upgrade request, for the connect hook (kept only until `hello`).
#[derive(Debug, Default, Clone)]
pub struct UpgradeInfo {
    pub origin: Option<String>,
    pub user_agent: Option<String>,
    pub cookie: Option<String>,
    pub query: String,
}

/// What the connect hook decided for a fresh session.
#[derive(Debug, Default)]
pub struct Admitted {
    pub user: Option<String>,
    /// Grants and expiry the hook set, saved with the session for resumes.
    pub granted: Option<HookGrant>,
    /// Topics to subscribe the client to after `welcome`.
    pub subscribe: Vec<Topic>,
    /// The session's presence `info`, when the hook gave one (not `null`).
    pub info: Option<serde_json::Value>,
}

/// JSON `null`, for an `rpc` without `data`.
fn null() -> Payload {
    Payload::parse("null").expect("null is JSON")
}

/// The payload as raw JSON for a hook body.
fn raw(payload: &Payload) -> &RawJson {
    serde_json::from_str(payload.as_str()).expect("payloads are valid JSON")
}

/// A close-reason `error` from an application's code: short and plain, or `refused`.
fn close_error(code: &str) -> String {
    let plain = !code.is_empty()
        && code.len() <= 40
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if plain {
        code.to_owned()
    } else {
        "refused".to_owned()
    }
}

impl Conn {
    fn session_id(&self) -> String {
        self.session
            .as_ref()
            .map(|s| s.id.to_string())
            .unwrap_or_default()
    }

    fn user(&self) -> Option<&str> {
        self.session.as_ref().and_then(|s| s.user.as_deref())
    }

    /// The connect hook for a fresh `hello`: `Ok(None)` when no `--hook-url` is set.
    pub(crate) async fn connect_hook(
        &mut self,
        socket: &mut WebSocket,
        token_user: Option<&str>,
        token_exp: Option<u64>,
    ) -> Result<Option<Admitted>, Close> {
        let Some(hooks) = self.shared.hooks.clone().filter(|h| h.has_base()) else {
            return Ok(None);
        };
        let info = self.upgrade.take().unwrap_or_default();
        let mut headers = std::collections::BTreeMap::new();
        for (name, value) in [
            ("origin", &info.origin),
            ("user-agent", &info.user_agent),
            ("cookie", &info.cookie),
        ] {
            if let Some(value) = value {
                headers.insert(name, value.as_str());
            }
        }
        let body = wire::ConnectRequest {
            client_ip: self.peer.to_string(),
            pod: &self.shared.pod,
            token_claims: token_user.map(|sub| wire::TokenClaims {
                sub,
                exp: token_exp,
            }),
            headers,
            query: &info.query,
        };
        let answer = match hooks.connect(&body).await.expect("base URL checked") {
            Ok(answer) => answer,
            Err(e) => {
                let reply = ServerFrame::error(ErrorCode::Unavailable, e.to_string(), None);
                self.reply(socket, &reply).await?;
                return Err(Close::Unavailable);
            }
        };
        if let Some(refusal) = answer.error {
            hooks.refused("connect");
            let reply = ServerFrame::error(
                hooks::refusal_code(&refusal),
                hooks::refusal_message(&refusal, "refused by the application"),
                None,
            );
            self.reply(socket, &reply).await?;
            return Err(Close::Refused {
                error: close_error(&refusal.code),
                reconnect: answer.reconnect,
            });
        }
        let user = answer.user.or_else(|| token_user.map(str::to_owned));
        let granted = match answer.grants {
            Some(g) => Some(HookGrant {
                sub: g.sub,
                publish: g.publish,
                expire_at: answer.expire_at,
            }),
            None => {
                // Only an expiry: the token's (or the default) grants stay.
                self.set_expiry(answer.expire_at);
                None
            }
        };
        if let Some(g) = &granted {
            self.apply_grant(g, user.as_deref());
        }
        let subscribe = answer
            .subscribe
            .iter()
            .filter_map(|t| Topic::new(t).ok())
            .collect();
        Ok(Some(Admitted {
            user,
            granted,
            subscribe,
            info: answer.info.filter(|i| !i.is_null()),
        }))
    }

    /// Sets the grants and expiry a connect hook gave (on `hello`, or restored on resume).
    pub(crate) fn apply_grant(&mut self, grant: &HookGrant, user: Option<&str>) {
        self.grants = Grants::from_patterns(&grant.sub, &grant.publish, user);
        self.set_expiry(grant.expire_at);
    }

    fn set_expiry(&mut self, expire_at: Option<u64>) {
        if let Some(exp) = expire_at {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let left = std::time::Duration::from_secs(exp.saturating_sub(now));
            self.expires = Some(tokio::time::Instant::now() + left);
        }
    }

    /// On a resume: the restored subscriptions whose namespace asks for `resubscribe` are
    /// re-checked, one call per hook URL (normally one), before any is joined. A refused topic
    /// is not restored (the client subscribes again and meets the subscribe hook); when the
    /// application does not answer, those topics are not restored either: nothing is
    /// subscribed without its answer.
    pub(crate) async fn recheck_restored(
        &mut self,
        restore: &mut std::collections::BTreeMap<Topic, protocol::Position>,
        session: &str,
        user: Option<&str>,
    ) {
        let Some(hooks) = self.shared.hooks.clone() else {
            return;
        };
        let mut by_url: std::collections::BTreeMap<Option<String>, Vec<Topic>> = Default::default();
        for topic in restore.keys() {
            let namespace = self.shared.namespaces.of(topic);
            if namespace.resubscribe_hook {
                by_url
                    .entry(namespace.hook_url.clone())
                    .or_default()
                    .push(topic.clone());
            }
        }
        for (base, topics) in by_url {
            let body = wire::ResubscribeRequest {
                user,
                session,
                topics: topics.iter().map(Topic::as_str).collect(),
            };
            let refused: Vec<Topic> = match hooks.resubscribe(base.as_deref(), &body).await {
                Ok(answer) => {
                    if !answer.refuse.is_empty() {
                        hooks.refused("resubscribe");
                    }
                    topics
                        .into_iter()
                        .filter(|t| answer.refuse.iter().any(|r| r == t.as_str()))
                        .collect()
                }
                Err(e) => {
                    tracing::info!(error = %e, count = topics.len(), "resubscribe hook gave no answer: not restoring those topics");
                    topics
                }
            };
            for topic in refused {
                restore.remove(&topic);
            }
        }
    }

    /// The subscribe hook, where the topic's namespace asks for it: `Ok(true)` to go on.
    pub(crate) async fn subscribe_hook(
        &mut self,
        socket: &mut WebSocket,
        topic: &Topic,
        reference: Option<Ref>,
    ) -> Result<bool, Close> {
        let namespace = self.shared.namespaces.of(topic);
        let Some(hooks) = self
            .shared
            .hooks
            .clone()
            .filter(|_| namespace.subscribe_hook)
        else {
            return Ok(true);
        };
        let base = namespace.hook_url.clone();
        let session = self.session_id();
        let body = wire::SubscribeRequest {
            user: self.user(),
            session: &session,
            topic: topic.as_str(),
        };
        let reply = match hooks.subscribe(base.as_deref(), &body).await {
            Ok(wire::SubscribeAnswer { error: None }) => return Ok(true),
            Ok(wire::SubscribeAnswer {
                error: Some(refusal),
            }) => {
                hooks.refused("subscribe");
                ServerFrame::subscribe_error(
                    ErrorCode::Forbidden,
                    hooks::refusal_message(&refusal, &format!("may not subscribe to {topic}")),
                    topic,
                    reference,
                )
            }
            Err(e) => ServerFrame::subscribe_error(
                ErrorCode::Unavailable,
                e.to_string(),
                topic,
                reference,
            ),
        };
        self.reply(socket, &reply).await?;
        Ok(false)
    }

    /// The publish hook, before the append, where the topic's namespace asks for it: the data
    /// to store (the client's, or what the application replaced it with), or `None` when the
    /// publish was answered with an `error` (nothing is stored, no `seq` is used).
    pub(crate) async fn publish_hook(
        &mut self,
        socket: &mut WebSocket,
        topic: &Topic,
        data: Payload,
        reference: Option<Ref>,
    ) -> Result<Option<Payload>, Close> {
        let namespace = self.shared.namespaces.of(topic);
        let Some(hooks) = self.shared.hooks.clone().filter(|_| namespace.publish_hook) else {
            return Ok(Some(data));
        };
        let base = namespace.hook_url.clone();
        let session = self.session_id();
        let body = wire::PublishRequest {
            user: self.user(),
            session: &session,
            topic: topic.as_str(),
            data: raw(&data),
        };
        let reply = match hooks.publish(base.as_deref(), &body).await {
            Ok(wire::DataAnswer {
                error: None,
                data: None,
            }) => return Ok(Some(data)),
            Ok(wire::DataAnswer {
                error: None,
                data: Some(replaced),
            }) => {
                let replaced = Payload::from_raw(&replaced);
                match self.shared.check_publishable(topic, &replaced) {
                    Ok(()) => return Ok(Some(replaced)),
                    Err(e) => ServerFrame::error(
                        e.code(),
                        format!("the application's replacement: {e}"),
                        reference,
                    ),
                }
            }
            Ok(wire::DataAnswer {
                error: Some(refusal),
                ..
            }) => {
                hooks.refused("publish");
                ServerFrame::error(
                    ErrorCode::Forbidden,
                    hooks::refusal_message(&refusal, &format!("may not publish to {topic}")),
                    reference,
                )
            }
            Err(e) => ServerFrame::error(ErrorCode::Unavailable, e.to_string(), reference),
        };
        self.reply(socket, &reply).await?;
        Ok(None)
    }

    /// `rpc`: the application's `rpc` hook answers with `rpc_result` or an `error`.
    pub(crate) async fn rpc(
        &mut self,
        socket: &mut WebSocket,
        method: RpcMethod,
        data: Option<Payload>,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        let Some(hooks) = self.shared.hooks.clone().filter(|h| h.has_base()) else {
            let reply = ServerFrame::error(
                ErrorCode::BadRequest,
                "rpc is not enabled: the gateway has no --hook-url",
                reference,
            );
            return self.reply(socket, &reply).await;
        };
        let data = data.unwrap_or_else(null);
        let session = self.session_id();
        let body = wire::RpcRequest {
            user: self.user(),
            session: &session,
            method: method.as_str(),
            data: raw(&data),
        };
        let reply = match hooks.rpc(&body).await.expect("base URL checked") {
            Ok(wire::DataAnswer { error: None, data }) => ServerFrame::RpcResult {
                reference,
                data: data.map_or_else(null, |d| Payload::from_raw(&d)),
            },
            Ok(wire::DataAnswer {
                error: Some(refusal),
                ..
            }) => {
                hooks.refused("rpc");
                ServerFrame::error(
                    hooks::refusal_code(&refusal),
                    hooks::refusal_message(&refusal, "refused by the application"),
                    reference,
                )
            }
            Err(e) => ServerFrame::error(ErrorCode::Unavailable, e.to_string(), reference),
        };
        self.reply(socket, &reply).await
    }
}
