//! Sessions on a connection: `hello` (new or resumed), subscribe with recovery, unsubscribe, and
//! saving the session so any pod can resume it.
//!
//! Recovery is where the guarantees live. A subscription joins the hub first and reads the
//! topic's history second: every message after the read is then in the connection's queue, the
//! history covers everything up to it, and the connection drops whatever it already wrote
//! (`seq` at or below its position), so the client sees each message once, in order. Whether a
//! position is recovered is decided from the first page of history; the messages themselves are
//! written after `subscribed`/`welcome`, page by page (see `replay`), so a resume never holds a
//! topic's backlog in memory.
//!
//! A session lives on one connection at a time. `hello` claims the session's next generation
//! in the store; the previous holder (found in the same atomic step) is told to close, but only
//! if it holds an older generation, and only the latest generation may save the record. Two
//! concurrent resumes of one session therefore leave exactly one connection, the later claim.
//! Saving the record is in `saving`.
//!
//! Layout: this file: subscribing (with recovery), unsubscribing, joining the hub; `hello`:
//! the handshake itself.

use axum::extract::ws::WebSocket;
use protocol::{ErrorCode, Position, PresencePosition, ServerFrame, Topic, client::Ref};
use session_store::{SessionStore, recover};

use crate::connection::{Close, Conn};
use crate::replay::SubState;

mod hello;

/// Messages read to decide whether a position is recovered (and to estimate its replay size).
const SAMPLE: usize = 16;

/// What subscribing a topic gave.
pub(crate) struct Joined {
    /// `None` on an ephemeral topic.
    pub top: Option<Position>,
    /// `Some` when a position was given: whether everything after it could be recovered.
    pub recovered: Option<bool>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("{0}")]
    Hub(#[from] crate::hub::HubError),
    #[error("{0}")]
    Store(#[from] session_store::StoreError),
}

impl Conn {
    pub(crate) async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        since: Option<Position>,
        presence_since: Option<PresencePosition>,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        if self
            .subscribe_unsaved(socket, topic, since, presence_since, reference)
            .await?
        {
            self.save_session().await;
        }
        Ok(())
    }

    /// [`Conn::subscribe`] without saving the session: whether a subscription was added (the
    /// caller saves, once for several).
    pub(super) async fn subscribe_unsaved(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        since: Option<Position>,
        presence_since: Option<PresencePosition>,
        reference: Option<Ref>,
    ) -> Result<bool, Close> {
        if let Some(sub) = self.subs.get(&topic) {
            // Already subscribed: confirm where the client is; nothing is sent twice.
            let at = self.presence_position(&topic).cloned();
            let reply = ServerFrame::Subscribed {
                topic,
                seq: (!sub.ephemeral).then_some(sub.fed),
                epoch: (!sub.ephemeral).then(|| sub.epoch.clone()),
                recovered: None,
                pseq: at.as_ref().map(|at| at.pseq),
                pepoch: at.map(|at| at.epoch),
                reason: None,
                reference,
            };
            return self.reply(socket, &reply).await.map(|()| false);
        }
        if !self.grants.can_subscribe(&topic) {
            let reply = ServerFrame::subscribe_error(
                ErrorCode::Forbidden,
                format!("may not subscribe to {topic}"),
                &topic,
                reference,
            );
            return self.reply(socket, &reply).await.map(|()| false);
        }
        if self.subs.len() >= self.shared.config.max_subscriptions {
            let reply = ServerFrame::subscribe_error(
                ErrorCode::LimitReached,
                format!(
                    "at most {} subscriptions per connection",
                    self.shared.config.max_subscriptions
                ),
                &topic,
                reference,
            );
            return self.reply(socket, &reply).await.map(|()| false);
        }
        if !self.subscribe_hook(socket, &topic, reference).await? {
            return Ok(false);
        }
        let mut budget = self.shared.config.replay_budget;
        let joined = match self.join(&topic, since, true, &mut budget).await {
            Ok(joined) => joined,
            Err(e) => {
                let reply = ServerFrame::subscribe_error(
                    ErrorCode::Unavailable,
                    e.to_string(),
                    &topic,
                    reference,
                );
                return self.reply(socket, &reply).await.map(|()| false);
            }
        };
        let own_join = self.presence_attach(&topic).await;
        self.events_subscribed(&topic).await;
        let catch_up = presence_since.is_some();
        let at = self.presence_start(&topic, presence_since, own_join).await;
        let reply = ServerFrame::Subscribed {
            topic: topic.clone(),
            seq: joined.top.as_ref().map(|t| t.seq),
            epoch: joined.top.map(|t| t.epoch),
            recovered: joined.recovered,
            pseq: at.as_ref().map(|at| at.pseq),
            pepoch: at.as_ref().map(|at| at.epoch.clone()),
            reason: None,
            reference,
        };
        self.reply(socket, &reply).await?;
        if joined.recovered == Some(true) {
            self.fill(socket, &topic).await?;
        }
        if catch_up && at.is_some() {
            self.presence_catch_up(socket, &topic).await?;
        }
        Ok(true)
    }

    pub(crate) async fn unsubscribe(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        if self.subs.remove(&topic).is_none() {
            let reply = ServerFrame::error(
                ErrorCode::NotSubscribed,
                format!("not subscribed to {topic}"),
                reference,
            );
            return self.reply(socket, &reply).await;
        }
        self.shared.hub.unsubscribe(&topic, self.id);
        self.shared.metrics.conn.subscriptions.dec();
        self.presence_leave(&topic).await;
        self.events_unsubscribed(&topic).await;
        self.save_session().await;
        let reply = ServerFrame::Unsubscribed {
            topic,
            reason: None,
            reference,
        };
        self.reply(socket, &reply).await
    }

    /// Joins the hub for `topic`, then decides from the first page of history whether what
    /// the client missed since `since` can be replayed within `budget` (payload bytes, spent
    /// by the estimate). An untrusted `since` (a saved position the client may not have read
    /// up to) is never recovered.
    pub(crate) async fn join(
        &mut self,
        topic: &Topic,
        since: Option<Position>,
        trusted: bool,
        budget: &mut usize,
    ) -> Result<Joined, JoinError> {
        self.shared
            .hub
            .subscribe(topic, self.id, self.subscriber())
            .await?;
        if self.shared.namespaces.of(topic).is_ephemeral() {
            // Nothing to read: no history, no position. Never claimed recovered.
            self.subs.insert(topic.clone(), SubState::ephemeral());
            self.shared.metrics.conn.subscriptions.inc();
            return Ok(Joined {
                top: None,
                recovered: Some(false),
            });
        }
        let started = std::time::Instant::now();
        let read = match &since {
            Some(since) => self
                .shared
                .store
                .history(topic, since.seq, SAMPLE)
                .await
                .map(|page| {
                    let bytes = page.bytes();
                    let sampled = page.messages.len().max(1);
                    let recovery = recover(since, page);
                    let missed = recovery.top.seq.saturating_sub(since.seq) as usize;
                    (recovery.recovered, recovery.top, missed * bytes / sampled)
                }),
            None => self
                .shared
                .store
                .top(topic)
                .await
                .map(|top| (false, top, 0)),
        };
        self.shared
            .metrics
            .store
            .observe(if since.is_some() { "history" } else { "top" }, started);
        let (mut recovered, top, estimate) = match read {
            Ok(r) => r,
            Err(e) => {
                self.shared.hub.unsubscribe(topic, self.id);
                return Err(e.into());
            }
        };
        if recovered && !trusted {
            tracing::debug!(%topic, "saved position not confirmed by the client: not recovered");
            recovered = false;
        }
        if recovered && estimate > *budget {
            tracing::info!(%topic, estimate, budget = *budget, "replay over the budget: not recovered");
            recovered = false;
        }
        let at = match (&since, recovered) {
            (Some(since), true) => {
                *budget -= estimate;
                since.clone()
            }
            _ => top.clone(),
        };
        self.subs.insert(topic.clone(), SubState::at(at));
        self.shared.metrics.conn.subscriptions.inc();
        Ok(Joined {
            top: Some(top),
            recovered: since.map(|_| recovered),
        })
    }
}
