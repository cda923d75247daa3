//! What a connection may do: who its token says it is, its rate limits, publishing under its
//! grants, and `refresh`.
//!
//! Every frame passes [`Conn::admit_frame`] first: over the frame rate it is answered with
//! `rate_limited` and dropped; sustained abuse closes the connection with 1008. Publishing is
//! checked for size (`too_large`), then spends the byte budget. Grants come from the token (see
//! `auth`) and change only on `refresh`, which removes the subscriptions the new token no longer
//! allows.

use axum::extract::ws::WebSocket;
use protocol::client::Ref;
use protocol::{ErrorCode, Payload, PublishId, ServerFrame, Topic};

use crate::abuse::Verdict;
use crate::auth::AuthMode;
use crate::config::PublishPolicy;
use crate::connection::{Close, Conn};

/// Who `hello.token` says the client is.
#[derive(Debug, Default)]
pub(crate) struct Authenticated {
    pub user: Option<String>,
    /// The token's `exp`, for the connect hook.
    pub exp: Option<u64>,
    /// The token's `jti`, checked against revocations.
    pub jti: Option<String>,
    /// The token's `info` claim, for presence (the connect hook's `info` wins over it).
    pub info: Option<serde_json::Value>,
}

impl Conn {
    /// Checks `hello.token` and sets the connection's grants and expiry; returns the user and
    /// the token's `exp`. Without a token, when the connect hook is configured, the hook decides
    /// (it may identify the user from a cookie or the query).
    pub(crate) fn authenticate(&mut self, token: Option<String>) -> Result<Authenticated, Close> {
        let auth = &self.shared.auth;
        if auth.mode() == crate::auth::AuthMode::Off {
            self.grants = crate::auth::Grants::all();
            return Ok(Authenticated::default());
        }
        let connect_hook = self.shared.hooks.as_ref().is_some_and(|h| h.has_base());
        match token {
            Some(token) => match auth.verify(&token) {
                Ok(identity) => {
                    self.expires = identity
                        .expires_in()
                        .map(|d| tokio::time::Instant::now() + d);
                    self.grants = identity.grants;
                    Ok(Authenticated {
                        user: Some(identity.user),
                        exp: identity.exp,
                        jti: identity.jti,
                        info: identity.info,
                    })
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "token refused");
                    Err(Close::Auth(e.close_error()))
                }
            },
            None => match auth.anonymous() {
                Some(grants) => {
                    self.grants = grants;
                    Ok(Authenticated::default())
                }
                None if connect_hook => {
                    // Nothing until the hook grants it.
                    self.grants = crate::auth::Grants::none();
                    Ok(Authenticated::default())
                }
                None => Err(Close::Auth("unauthorized")),
            },
        }
    }

    /// Whether the frame may be processed; answers `rate_limited` when not.
    pub(crate) async fn admit_frame(
        &mut self,
        socket: &mut WebSocket,
        reference: Option<Ref>,
    ) -> Result<bool, Close> {
        let verdict = self.limiter.check_frame();
        self.rate_verdict(socket, verdict, reference).await
    }

    async fn rate_verdict(
        &mut self,
        socket: &mut WebSocket,
        verdict: Verdict,
        reference: Option<Ref>,
    ) -> Result<bool, Close> {
        match verdict {
            Verdict::Allow => Ok(true),
            Verdict::Limited => {
                self.settle_publishes(socket).await?;
                let reply = ServerFrame::error(
                    ErrorCode::RateLimited,
                    "slow down: frame dropped",
                    reference,
                );
                self.reply(socket, &reply).await?;
                Ok(false)
            }
            Verdict::Abusive => Err(Close::Abusive),
        }
    }

    /// Checks a `publish` frame and issues it; a refused one is answered in frame order, after
    /// the publishes in flight before it. With `exclude_self` this connection's session is
    /// excluded from the message's delivery (it gets `skipped` in its place).
    pub(crate) async fn publish(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        data: Payload,
        id: Option<PublishId>,
        exclude_self: bool,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        let namespace = self.shared.namespaces.of(&topic);
        let (ephemeral, server_only, hooked) = (
            namespace.is_ephemeral(),
            namespace.publish == PublishPolicy::Server,
            namespace.publish_hook && self.shared.hooks.is_some(),
        );
        if !self.grants.can_publish(&topic) || server_only {
            let why = if server_only {
                " (only the server publishes there)"
            } else {
                ""
            };
            let reply = ServerFrame::error(
                ErrorCode::Forbidden,
                format!("may not publish to {topic}{why}"),
                reference,
            );
            self.settle_publishes(socket).await?;
            return self.reply(socket, &reply).await;
        }
        // Before the byte budget: a payload above the limit is refused, not rate limited (it
        // could exceed the burst and never pass).
        if let Err(e) = self.shared.check_publishable(&topic, &data) {
            self.settle_publishes(socket).await?;
            let reply = ServerFrame::error(e.code(), e.to_string(), reference);
            return self.reply(socket, &reply).await;
        }
        let verdict = self.limiter.check_publish(data.len());
        if !self.rate_verdict(socket, verdict, reference).await? {
            return Ok(());
        }
        // The application's answer, and an ephemeral publish (no append to pipeline), come
        // after the publishes in flight before them: replies stay in frame order.
        if ephemeral || hooked {
            self.settle_publishes(socket).await?;
        }
        // The application approves (or rewrites) the message before anything is stored.
        let Some(data) = self.publish_hook(socket, &topic, data, reference).await? else {
            return Ok(());
        };
        let exclude = if exclude_self {
            self.session.as_ref().map(|s| s.id.clone())
        } else {
            None
        };
        if ephemeral {
            let reply = match self
                .shared
                .publish_ephemeral(&topic, data, exclude.as_ref())
                .await
            {
                Ok(()) => ServerFrame::Published {
                    topic,
                    seq: None,
                    reference,
                },
                Err(e) => ServerFrame::error(e.code(), e.to_string(), reference),
            };
            return self.reply(socket, &reply).await;
        }
        self.issue_publish(socket, topic, data, id, exclude, reference)
            .await
    }

    /// `refresh`: a new token for the same user; grants and expiry follow it.
    pub(crate) async fn refresh(
        &mut self,
        socket: &mut WebSocket,
        token: String,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        if self.shared.auth.mode() == AuthMode::Off {
            // Nothing to refresh; the token is not read.
            return self
                .reply(
                    socket,
                    &ServerFrame::Refreshed {
                        exp: None,
                        reference,
                    },
                )
                .await;
        }
        let identity = match self.shared.auth.verify(&token) {
            Ok(identity) => identity,
            Err(e) => {
                let reply = ServerFrame::error(ErrorCode::Unauthorized, e.close_error(), reference);
                return self.reply(socket, &reply).await;
            }
        };
        if self
            .revoked(Some(&identity.user), identity.jti.as_deref())
            .await?
        {
            let reply = ServerFrame::error(ErrorCode::Unauthorized, "revoked", reference);
            return self.reply(socket, &reply).await;
        }
        let user = self.session.as_ref().and_then(|s| s.user.clone());
        if user.as_deref() != Some(identity.user.as_str()) {
            let reply = ServerFrame::error(
                ErrorCode::Forbidden,
                "a refreshed token must be for the same user",
                reference,
            );
            return self.reply(socket, &reply).await;
        }
        self.expires = identity
            .expires_in()
            .map(|d| tokio::time::Instant::now() + d);
        self.grants = identity.grants;
        let revoked: Vec<Topic> = self
            .subs
            .keys()
            .filter(|t| !self.grants.can_subscribe(t))
            .cloned()
            .collect();
        for topic in revoked {
            self.subs.remove(&topic);
            self.shared.hub.unsubscribe(&topic, self.id);
            self.shared.metrics.conn.subscriptions.dec();
            self.presence_leave(&topic).await;
            self.events_unsubscribed(&topic).await;
            let reply = ServerFrame::Unsubscribed {
                topic,
                reason: Some("forbidden"),
                reference: None,
            };
            self.reply(socket, &reply).await?;
        }
        self.reply(
            socket,
            &ServerFrame::Refreshed {
                exp: identity.exp,
                reference,
            },
        )
        .await
    }
}
