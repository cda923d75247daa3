//! The `presence` and `presence_stats` frames, and the connection's presence hooks: attach on
//! subscribe (and on resume), leave on `unsubscribe`, detach when the connection ends; and the
//! bound on a session's `info` checked at `hello`.

use axum::extract::ws::WebSocket;
use protocol::client::Ref;
use protocol::{ErrorCode, PresencePosition, ServerFrame, SessionId, Topic};

use super::{Change, Op, PresenceStore, Who, enabled, live_pods, record};
use crate::connection::{Close, Conn};

impl Conn {
    /// Refuses a fresh `hello` whose `info` (the token's claim or the connect hook's answer)
    /// is larger than `--presence-info-max-bytes` as compact JSON: `too_large`, then a close
    /// with `info_too_large` that asks the client not to retry (the same token or backend
    /// answer would be refused again).
    pub(crate) async fn check_info(
        &mut self,
        socket: &mut WebSocket,
        info: Option<&serde_json::Value>,
    ) -> Result<(), Close> {
        let max = self.shared.config.app.presence_info_max_bytes;
        let Some(info) = info else { return Ok(()) };
        let len = serde_json::to_string(info).map_or(usize::MAX, |s| s.len());
        if len as u64 <= max {
            return Ok(());
        }
        let message = format!("info is {len} bytes, more than {max}");
        let reply = ServerFrame::error(ErrorCode::TooLarge, message, None);
        self.reply(socket, &reply).await?;
        Err(Close::Refused {
            error: "info_too_large".into(),
            reconnect: false,
        })
    }

    /// The user and info this connection's session is listed with.
    fn who(&self) -> Who {
        let Some(session) = &self.session else {
            return Who::default();
        };
        Who {
            user: session.user.clone(),
            info: session
                .info
                .as_ref()
                .and_then(|i| serde_json::to_string(i).ok()),
        }
    }

    /// Whether `topic` has presence here, answering the frame's error when not (or forbidden).
    async fn presence_allowed(
        &mut self,
        socket: &mut WebSocket,
        topic: &Topic,
        reference: Option<Ref>,
    ) -> Result<bool, Close> {
        let refusal = if !self.grants.can_subscribe(topic) {
            Some((
                ErrorCode::Forbidden,
                format!("may not see the presence of {topic}"),
            ))
        } else if !enabled(&self.shared, topic) {
            Some((ErrorCode::BadRequest, format!("{topic} has no presence")))
        } else {
            None
        };
        match refusal {
            Some((code, message)) => {
                self.reply(socket, &ServerFrame::error(code, message, reference))
                    .await?;
                Ok(false)
            }
            None => Ok(true),
        }
    }

    pub(crate) async fn presence(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        if !self.presence_allowed(socket, &topic, reference).await? {
            return Ok(());
        }
        let max = super::max_list(&self.shared, &topic);
        let live = live_pods(&self.shared);
        let reply = match self.shared.presence.members(&topic, &live, max).await {
            Ok(Some(listing)) => ServerFrame::Presence {
                topic,
                members: listing.members,
                pseq: listing.at.as_ref().map(|at| at.pseq),
                epoch: listing.at.map(|at| at.epoch),
                recovered: None,
                reference,
            },
            Ok(None) => ServerFrame::error(
                ErrorCode::LimitReached,
                format!("more than {max} members: use presence_stats"),
                reference,
            ),
            Err(e) => ServerFrame::error(ErrorCode::Unavailable, e.to_string(), reference),
        };
        self.reply(socket, &reply).await
    }

    pub(crate) async fn presence_stats(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        if !self.presence_allowed(socket, &topic, reference).await? {
            return Ok(());
        }
        let reply = match self.shared.presence.stats(&topic).await {
            Ok(stats) => ServerFrame::PresenceStats {
                topic,
                members: stats.members,
                users: stats.users,
                reference,
            },
            Err(e) => ServerFrame::error(ErrorCode::Unavailable, e.to_string(), reference),
        };
        self.reply(socket, &reply).await
    }

    /// After restoring a subscription on resume: the member is still present (detached, or
    /// owned by the pod the session left); this pod takes it over with its next batch.
    pub(crate) fn presence_resume(&self, topic: &Topic) {
        let Some(session) = &self.session else { return };
        if enabled(&self.shared, topic) {
            self.shared
                .presence_registry
                .attach_later(topic, self.id, &session.id, self.who());
        }
    }

    /// After `subscribe`: present, at once. A session already present (subscribed before it
    /// resumed) is not joined again. Returns the join's position on a join/leave topic (the
    /// topic's position right after it: the call changed one member), so the subscription
    /// follows on from there without reading it again.
    pub(crate) async fn presence_attach(&self, topic: &Topic) -> Option<PresencePosition> {
        let session = self.session.as_ref()?;
        if !enabled(&self.shared, topic) {
            return None;
        }
        let shared = &self.shared;
        let who = self.who();
        shared
            .presence_registry
            .attach(topic, self.id, &session.id, who.clone());
        let change = change(Op::Attach, &session.id, who);
        let ttl = shared.config.resume_window;
        match shared
            .presence
            .apply(topic, &shared.pod, ttl, &[change])
            .await
        {
            Ok(events) => {
                record(shared, topic, &events).await;
                crate::events::hooks::presence(shared, topic, &events).await;
                events.into_iter().find_map(|e| e.logged)
            }
            // Written at the next refresh instead.
            Err(e) => {
                tracing::debug!(%topic, error = %e, "presence attach not written");
                None
            }
        }
    }

    /// After `unsubscribe` (or a refresh that revoked the topic): gone, at once; its join/leave
    /// events are no longer followed.
    pub(crate) async fn presence_leave(&mut self, topic: &Topic) {
        self.forget_presence_position(topic);
        let Some(session) = &self.session else { return };
        if !enabled(&self.shared, topic) {
            return;
        }
        let shared = &self.shared;
        shared.presence_registry.forget(topic, self.id, &session.id);
        let change = change(Op::Leave, &session.id, self.who());
        let ttl = shared.config.resume_window;
        match shared
            .presence
            .apply(topic, &shared.pod, ttl, &[change])
            .await
        {
            Ok(events) => {
                record(shared, topic, &events).await;
                crate::events::hooks::presence(shared, topic, &events).await;
            }
            Err(e) => {
                tracing::warn!(%topic, error = %e, "presence leave not written; the member expires")
            }
        }
    }

    /// When the connection ends: its members stay present, detached, until the resume window
    /// passes (written with the pod's next batch).
    pub(crate) fn presence_detach(&self) {
        let Some(session) = &self.session else { return };
        for topic in self.subs.keys() {
            if enabled(&self.shared, topic) {
                self.shared
                    .presence_registry
                    .detach(topic, self.id, &session.id);
            }
        }
    }
}

fn change(op: Op, session: &SessionId, who: Who) -> Change {
    Change {
        op,
        session: session.to_string(),
        user: who.user,
        info: who.info,
    }
}
