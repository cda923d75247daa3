//! What the server (the server API, see `server_api` and `fleet`) does to a connection:
//! server-side subscriptions, the per-user session index, disconnect, revocations.

use axum::extract::ws::WebSocket;
use protocol::{ErrorCode, ServerFrame, Topic};
use session_store::{Revocations, SessionStore, UserSessions};

use crate::connection::{Close, Conn};
use crate::control::ServerCommand;

impl Conn {
    /// Subscribes the client to `topic` on the server's behalf (the connect hook's `subscribe`
    /// list, `/api/subscribe`): no grants or subscribe hook are checked, the application chose
    /// it. Presence is as for a client's `subscribe`: the session joins (a `join` for the
    /// others) and follows the topic's join/leave events from its own join on. The client gets
    /// `subscribed` with `reason: "server"` (and `pseq`/`pepoch` on a join/leave topic).
    pub(crate) async fn server_subscribe(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
    ) -> Result<(), Close> {
        if self.subs.get(&topic).is_some() {
            return Ok(());
        }
        if self.subs.len() >= self.shared.config.max_subscriptions {
            tracing::info!(%topic, "server-side subscription over --max-subscriptions: skipped");
            return Ok(());
        }
        let mut budget = self.shared.config.replay_budget;
        let joined = match self.join(&topic, None, true, &mut budget).await {
            Ok(joined) => joined,
            Err(e) => {
                let reply = ServerFrame::error(ErrorCode::Unavailable, e.to_string(), None);
                return self.reply(socket, &reply).await;
            }
        };
        let own_join = self.presence_attach(&topic).await;
        self.events_subscribed(&topic).await;
        let at = self.presence_start(&topic, None, own_join).await;
        let reply = ServerFrame::Subscribed {
            topic,
            seq: joined.top.as_ref().map(|t| t.seq),
            epoch: joined.top.map(|t| t.epoch),
            recovered: None,
            pseq: at.as_ref().map(|at| at.pseq),
            pepoch: at.map(|at| at.epoch),
            reason: Some("server"),
            reference: None,
        };
        self.reply(socket, &reply).await?;
        self.save_session().await;
        Ok(())
    }

    /// Applies server-side subscription changes, in order.
    pub(crate) async fn server_commands(
        &mut self,
        socket: &mut WebSocket,
        commands: Vec<ServerCommand>,
    ) -> Result<(), Close> {
        for command in commands {
            match command {
                ServerCommand::Subscribe(topic) => self.server_subscribe(socket, topic).await?,
                ServerCommand::Unsubscribe(topic) => self.server_unsubscribe(socket, topic).await?,
            }
        }
        Ok(())
    }

    /// Removes a subscription on the server's behalf, like a client's `unsubscribe` (the member
    /// leaves at once: one `leave`): `unsubscribed` with `reason: "server"`.
    async fn server_unsubscribe(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
    ) -> Result<(), Close> {
        if self.subs.remove(&topic).is_none() {
            return Ok(());
        }
        self.shared.hub.unsubscribe(&topic, self.id);
        self.shared.metrics.conn.subscriptions.dec();
        self.presence_leave(&topic).await;
        self.events_unsubscribed(&topic).await;
        self.save_session().await;
        let reply = ServerFrame::Unsubscribed {
            topic,
            reason: Some("server"),
            reference: None,
        };
        self.reply(socket, &reply).await
    }

    /// Notes in the per-user index that this session can be resumed for the resume window
    /// from now (anonymous sessions are not indexed: nobody can disconnect them by user).
    pub(crate) async fn index_session(&self) {
        let Some(session) = &self.session else { return };
        let Some(user) = &session.user else { return };
        if self.control.is_disconnected() {
            return;
        }
        let window = self.shared.config.resume_window;
        if let Err(e) = self
            .shared
            .users
            .add_session(user, &session.id, window)
            .await
        {
            tracing::warn!(error = %e, "cannot index the session under its user");
        }
    }

    /// Deletes the session record (after the server API's disconnect).
    pub(crate) async fn forget_session(&self) {
        let Some(session) = &self.session else { return };
        if let Err(e) = self.shared.store.delete_session(&session.id).await {
            tracing::warn!(error = %e, "cannot delete a disconnected session");
        }
    }

    /// Whether the user or the token is revoked (`/api/revoke`). A store that cannot answer
    /// refuses: a revocation must hold while Redis is in trouble.
    pub(crate) async fn revoked(
        &self,
        user: Option<&str>,
        jti: Option<&str>,
    ) -> Result<bool, Close> {
        if user.is_none() && jti.is_none() {
            return Ok(false);
        }
        self.shared.users.is_revoked(user, jti).await.map_err(|e| {
            tracing::warn!(error = %e, "cannot check revocations");
            Close::Unavailable
        })
    }
}
