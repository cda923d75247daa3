//! Sessions on a connection: `hello` (new or resumed), subscribe with recovery, unsubscribe, and
//! saving the session so any pod can resume it.
//!
//! Recovery is where the guarantees live. A subscription joins the hub first and reads the
//! topic's history second: every message after the read is then in the connection's queue, the
//! history covers everything up to it, and the connection drops whatever it already wrote
//! (`seq` at or below its position), so the client sees each message once, in order.

use std::collections::{BTreeMap, HashMap};

use axum::extract::ws::{Message, WebSocket};
use protocol::{
    ErrorCode, Position, ResumeToken, ServerFrame, SessionId, Topic, client::Ref, encode_message,
    server::ResumedTopic,
};
use session_store::{SessionRecord, SessionStore, StoredMessage, now_ms, recover};

use crate::connection::{Close, Conn, SessionState, SubState};

/// What subscribing a topic gave.
struct Joined {
    top: Position,
    /// `Some` when a position was given: whether everything after it could be recovered.
    recovered: Option<bool>,
    missed: Vec<StoredMessage>,
}

#[derive(Debug, thiserror::Error)]
enum JoinError {
    #[error("{0}")]
    Hub(#[from] crate::hub::HubError),
    #[error("{0}")]
    Store(#[from] session_store::StoreError),
}

impl Conn {
    pub(crate) async fn hello(
        &mut self,
        socket: &mut WebSocket,
        token: Option<String>,
        resume: Option<String>,
        positions: HashMap<Topic, Position>,
    ) -> Result<(), Close> {
        let user = self.authenticate(token)?;
        let previous = match resume.as_deref().map(ResumeToken::parse) {
            Some(Ok(token)) => match self.shared.store.load_session(&token.session).await {
                // A session resumes only with its secret and only for the same user.
                Ok(Some(record)) if token.secret_matches(&record.secret) && record.user == user => {
                    Some(record)
                }
                Ok(_) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load session");
                    let reply = ServerFrame::error(
                        ErrorCode::Unavailable,
                        "session store unavailable",
                        None,
                    );
                    self.reply(socket, &reply).await?;
                    return Err(Close::Unavailable);
                }
            },
            // A malformed token resumes nothing: the client gets a fresh session.
            Some(Err(_)) | None => None,
        };
        let resumed = previous.is_some();
        let last_pod = previous.as_ref().map(|r| r.last_pod.clone());
        let (state, mut restore) = match previous {
            Some(record) => (
                SessionState {
                    id: record.id,
                    secret: record.secret,
                    user: record.user,
                    created_ms: record.created_ms,
                },
                record.subscriptions,
            ),
            None => {
                let token = ResumeToken::generate(SessionId::generate());
                (
                    SessionState {
                        id: token.session,
                        secret: token.secret,
                        user,
                        created_ms: now_ms(),
                    },
                    BTreeMap::new(),
                )
            }
        };
        if resumed {
            // The client's own positions are what it really received: they win over ours.
            restore.extend(positions);
        }
        // Grants may have shrunk since the session was saved (a new token): restore only what
        // this token allows.
        restore.retain(|topic, _| self.grants.can_subscribe(topic));
        if let Some(old) = self
            .shared
            .connections
            .bind_session(self.id, state.id.clone())
        {
            old.take_over();
        }
        if let Some(pod) = last_pod.filter(|p| *p != self.shared.pod) {
            // The session may still be open on its last pod (a client that reconnected before
            // the old socket died): tell that pod to close it.
            crate::cluster::send_takeover(&self.shared, &pod, &state.id).await;
        }
        let resume_token = ResumeToken {
            session: state.id.clone(),
            secret: state.secret.clone(),
        };
        self.session = Some(state);

        let mut topics = HashMap::new();
        let mut replay = Vec::new();
        let mut skipped = 0;
        for (topic, position) in restore {
            if self.subs.len() >= self.shared.config.max_subscriptions {
                skipped += 1;
                continue;
            }
            match self.join(&topic, Some(position)).await {
                Ok(joined) => {
                    topics.insert(
                        topic.clone(),
                        ResumedTopic {
                            seq: joined.top.seq,
                            epoch: joined.top.epoch.clone(),
                            recovered: joined.recovered.unwrap_or(false),
                        },
                    );
                    replay.push((topic, joined));
                }
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "cannot restore subscription");
                    let reply = ServerFrame::error(ErrorCode::Unavailable, e.to_string(), None);
                    self.reply(socket, &reply).await?;
                    return Err(Close::Unavailable);
                }
            }
        }
        if let Err(e) = self.store_session().await {
            tracing::warn!(error = %e, "cannot save session");
            let reply =
                ServerFrame::error(ErrorCode::Unavailable, "session store unavailable", None);
            self.reply(socket, &reply).await?;
            return Err(Close::Unavailable);
        }
        let welcome = ServerFrame::Welcome {
            session: resume_token.session.to_string(),
            resume: resume_token.to_string(),
            pod: self.shared.pod.clone(),
            user: self.session.as_ref().and_then(|s| s.user.clone()),
            resumed,
            topics,
        };
        self.reply(socket, &welcome).await?;
        // The handshake is over: let the next one in.
        self.handshake = None;
        if skipped > 0 {
            let reply = ServerFrame::error(
                ErrorCode::LimitReached,
                format!(
                    "{skipped} subscriptions not restored: at most {} per connection",
                    self.shared.config.max_subscriptions
                ),
                None,
            );
            self.reply(socket, &reply).await?;
        }
        for (topic, joined) in replay {
            self.replay(socket, &topic, joined).await?;
        }
        Ok(())
    }

    /// Checks `hello.token` and sets the connection's grants and expiry; returns the user.
    fn authenticate(&mut self, token: Option<String>) -> Result<Option<String>, Close> {
        let auth = &self.shared.auth;
        if auth.mode() == crate::auth::AuthMode::Off {
            self.grants = crate::auth::Grants::all();
            return Ok(None);
        }
        match token {
            Some(token) => match auth.verify(&token) {
                Ok(identity) => {
                    self.expires = identity
                        .expires_in()
                        .map(|d| tokio::time::Instant::now() + d);
                    self.grants = identity.grants;
                    Ok(Some(identity.user))
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "token refused");
                    Err(Close::Auth(e.close_error()))
                }
            },
            None => match auth.anonymous() {
                Some(grants) => {
                    self.grants = grants;
                    Ok(None)
                }
                None => Err(Close::Auth("unauthorized")),
            },
        }
    }

    pub(crate) async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        topic: Topic,
        since: Option<Position>,
        reference: Option<Ref>,
    ) -> Result<(), Close> {
        if let Some(sub) = self.subs.get(&topic) {
            // Already subscribed: confirm where the client is; nothing is sent twice.
            let reply = ServerFrame::Subscribed {
                topic,
                seq: sub.last_seq,
                epoch: sub.epoch.clone(),
                recovered: None,
                reference,
            };
            return self.reply(socket, &reply).await;
        }
        if !self.grants.can_subscribe(&topic) {
            let reply = ServerFrame::error(
                ErrorCode::Forbidden,
                format!("may not subscribe to {topic}"),
                reference,
            );
            return self.reply(socket, &reply).await;
        }
        if self.subs.len() >= self.shared.config.max_subscriptions {
            let reply = ServerFrame::error(
                ErrorCode::LimitReached,
                format!(
                    "at most {} subscriptions per connection",
                    self.shared.config.max_subscriptions
                ),
                reference,
            );
            return self.reply(socket, &reply).await;
        }
        let joined = match self.join(&topic, since).await {
            Ok(joined) => joined,
            Err(e) => {
                let reply = ServerFrame::error(ErrorCode::Unavailable, e.to_string(), reference);
                return self.reply(socket, &reply).await;
            }
        };
        let reply = ServerFrame::Subscribed {
            topic: topic.clone(),
            seq: joined.top.seq,
            epoch: joined.top.epoch.clone(),
            recovered: joined.recovered,
            reference,
        };
        self.reply(socket, &reply).await?;
        self.replay(socket, &topic, joined).await?;
        if let Err(e) = self.store_session().await {
            tracing::warn!(error = %e, "cannot save session after subscribe");
        }
        Ok(())
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
        if let Err(e) = self.store_session().await {
            tracing::warn!(error = %e, "cannot save session after unsubscribe");
        }
        let reply = ServerFrame::Unsubscribed {
            topic,
            reason: None,
            reference,
        };
        self.reply(socket, &reply).await
    }

    /// Joins the hub for `topic`, then reads what the client missed since `since`.
    async fn join(&mut self, topic: &Topic, since: Option<Position>) -> Result<Joined, JoinError> {
        self.shared
            .hub
            .subscribe(topic, self.id, self.subscriber())
            .await?;
        let started = std::time::Instant::now();
        let read = match &since {
            Some(since) => self
                .shared
                .store
                .history(topic, since.seq)
                .await
                .map(|page| recover(since, page)),
            None => self
                .shared
                .store
                .top(topic)
                .await
                .map(|top| session_store::Recovery {
                    recovered: false,
                    messages: Vec::new(),
                    top,
                }),
        };
        self.shared
            .metrics
            .store
            .observe(if since.is_some() { "history" } else { "top" }, started);
        let recovery = match read {
            Ok(r) => r,
            Err(e) => {
                self.shared.hub.unsubscribe(topic, self.id);
                return Err(e.into());
            }
        };
        self.subs.insert(
            topic.clone(),
            SubState {
                last_seq: recovery.top.seq,
                epoch: recovery.top.epoch.clone(),
            },
        );
        self.shared.metrics.conn.subscriptions.inc();
        Ok(Joined {
            top: recovery.top,
            recovered: since.map(|_| recovery.recovered),
            missed: recovery.messages,
        })
    }

    /// Writes the messages a client missed, oldest first.
    async fn replay(
        &mut self,
        socket: &mut WebSocket,
        topic: &Topic,
        joined: Joined,
    ) -> Result<(), Close> {
        for m in joined.missed.iter().filter(|m| m.seq <= joined.top.seq) {
            let frame = encode_message(topic, m.seq, None, &m.data);
            self.write(socket, Message::Text(frame.into())).await?;
            self.shared.metrics.conn.delivered.inc();
        }
        Ok(())
    }

    fn record(&self) -> Option<SessionRecord> {
        let s = self.session.as_ref()?;
        Some(SessionRecord {
            id: s.id.clone(),
            secret: s.secret.clone(),
            user: s.user.clone(),
            subscriptions: self
                .subs
                .iter()
                .map(|(t, sub)| {
                    (
                        t.clone(),
                        Position {
                            seq: sub.last_seq,
                            epoch: sub.epoch.clone(),
                        },
                    )
                })
                .collect(),
            created_ms: s.created_ms,
            last_pod: self.shared.pod.clone(),
        })
    }

    async fn store_session(&self) -> Result<(), session_store::StoreError> {
        let Some(record) = self.record() else {
            return Ok(());
        };
        let started = std::time::Instant::now();
        let result = self
            .shared
            .store
            .save_session(&record, self.shared.config.resume_window)
            .await;
        self.shared.metrics.store.observe("save_session", started);
        result
    }

    /// Saves the session with the positions written so far: the resume window starts now.
    pub(crate) async fn save_session(&self) {
        let Some(session) = &self.session else { return };
        if self.control.is_taken_over()
            || !self.shared.connections.holds_session(self.id, &session.id)
        {
            // Taken over by a newer connection, which owns the record now.
            return;
        }
        if let Err(e) = self.store_session().await {
            tracing::warn!(error = %e, "cannot save session on disconnect; the client resumes from its own positions");
        }
    }
}
