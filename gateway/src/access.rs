//! What a connection may do: its rate limits, publishing under its grants, and `refresh`.
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
use crate::connection::{Close, Conn};

impl Conn {
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
    /// the publishes in flight before it.
    pub(crate) async fn publish(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        data: Payload,
        id: Option<PublishId>,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        if !self.grants.can_publish(&topic) {
            let reply = ServerFrame::error(
                ErrorCode::Forbidden,
                format!("may not publish to {topic}"),
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
        self.issue_publish(socket, topic, data, id, reference).await
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
