//! `hello`: a fresh session or a resumed one, its claim on the session's next generation, the
//! subscriptions it restores (with their replay) and the ones it asks for, then `welcome`.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::extract::ws::WebSocket;
use protocol::{
    ErrorCode, Position, PresencePosition, ResumeToken, ServerFrame, SessionId, Topic,
    server::ResumedTopic,
};
use session_store::{SessionStore, now_ms};

use crate::access::Authenticated;
use crate::connection::{Close, Conn, SessionState};
use crate::control::Bind;

impl Conn {
    pub(crate) async fn hello(
        &mut self,
        socket: &mut WebSocket,
        token: Option<String>,
        resume: Option<String>,
        positions: HashMap<Topic, Position>,
        mut presence: HashMap<Topic, PresencePosition>,
        subscribe: Vec<Topic>,
    ) -> Result<(), Close> {
        let Authenticated {
            mut user,
            exp: token_exp,
            jti,
            info: mut fresh_info,
        } = self.authenticate(token)?;
        let previous = match resume.as_deref().map(ResumeToken::parse) {
            Some(Ok(token)) => match self.shared.store.load_session(&token.session).await {
                // A session resumes only with its secret and only for the same user; one whose
                // user came from the connect hook resumes with its secret alone (the hook is not
                // called again: a drain must not become a storm of auth calls).
                Ok(Some(record))
                    if token.secret_matches(&record.secret)
                        && (record.user == user
                            || (user.is_none() && record.granted.is_some())) =>
                {
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
        let mut server_subs = Vec::new();
        if !resumed {
            if let Some(admitted) = self
                .connect_hook(socket, user.as_deref(), token_exp)
                .await?
            {
                user = admitted.user;
                self.granted = admitted.granted;
                server_subs = admitted.subscribe;
                // The application's backend has the last word over the token's claim.
                if admitted.info.is_some() {
                    fresh_info = admitted.info;
                }
            }
            self.check_info(socket, fresh_info.as_ref()).await?;
            if user.is_none() && self.shared.auth.mode() == crate::auth::AuthMode::Required {
                return Err(Close::Auth("unauthorized"));
            }
        }
        // Positions the server saved are trusted only when the client is known to have read up
        // to them (see `SessionRecord::confirmed`); the client's own are always trusted.
        let mut saved_confirmed = true;
        let (mut state, mut restore) = match previous {
            Some(record) => {
                saved_confirmed = record.confirmed;
                if let Some(granted) = &record.granted {
                    self.apply_grant(granted, record.user.as_deref());
                }
                self.granted = record.granted;
                (
                    SessionState {
                        id: record.id,
                        secret: record.secret,
                        user: record.user,
                        info: record.info,
                        created_ms: record.created_ms,
                        generation: 0,
                    },
                    record.subscriptions,
                )
            }
            None => {
                let token = ResumeToken::generate(SessionId::generate());
                (
                    SessionState {
                        id: token.session,
                        secret: token.secret,
                        user,
                        info: fresh_info,
                        created_ms: now_ms(),
                        generation: 0,
                    },
                    BTreeMap::new(),
                )
            }
        };
        // Revoked users and tokens (`/api/revoke`) get nothing, fresh or resumed.
        if self.revoked(state.user.as_deref(), jti.as_deref()).await? {
            return Err(Close::Auth("revoked"));
        }
        let from_client: HashSet<Topic> = positions.keys().cloned().collect();
        if resumed {
            // The client's own positions are what it really received: they win over ours.
            restore.extend(positions);
        }
        // Grants may have shrunk since the session was saved (a new token): restore only what
        // this token allows.
        restore.retain(|topic, _| self.grants.can_subscribe(topic));
        if resumed && !restore.is_empty() {
            let (id, user) = (state.id.to_string(), state.user.clone());
            self.recheck_restored(&mut restore, &id, user.as_deref())
                .await;
        }
        if resumed {
            self.claim(socket, &mut state).await?;
        } else {
            // A new session id is random and unknown to every other pod: nobody to take over,
            // so it starts at the first generation without a store round trip. Any later claim
            // (a resume) takes a higher one.
            state.generation = 1;
            if let Bind::Superseded =
                self.shared
                    .connections
                    .bind_session(self.id, state.id.clone(), state.generation)
            {
                return Err(Close::TakenOver);
            }
        }
        let resume_token = ResumeToken {
            session: state.id.clone(),
            secret: state.secret.clone(),
        };
        self.shared
            .connections
            .set_user(self.id, state.user.clone());
        self.session = Some(state);

        let mut topics = HashMap::new();
        let mut replay = Vec::new();
        let mut presence_replay = Vec::new();
        let mut skipped = 0;
        let mut budget = self.shared.config.replay_budget;
        for (topic, position) in restore {
            if self.subs.len() >= self.shared.config.max_subscriptions {
                skipped += 1;
                continue;
            }
            let trusted = saved_confirmed || from_client.contains(&topic);
            match self
                .join(&topic, Some(position), trusted, &mut budget)
                .await
            {
                Ok(joined) => {
                    self.presence_resume(&topic);
                    let since = presence.remove(&topic);
                    let catch_up = since.is_some();
                    let at = self.presence_start(&topic, since, None).await;
                    if catch_up && at.is_some() {
                        presence_replay.push(topic.clone());
                    }
                    let recovered = joined.recovered.unwrap_or(false);
                    topics.insert(
                        topic.clone(),
                        ResumedTopic {
                            seq: joined.top.as_ref().map(|t| t.seq),
                            epoch: joined.top.map(|t| t.epoch),
                            recovered,
                            pseq: at.as_ref().map(|at| at.pseq),
                            pepoch: at.map(|at| at.epoch),
                        },
                    );
                    if recovered {
                        replay.push(topic);
                    }
                }
                Err(e) => {
                    tracing::warn!(%topic, error = %e, "cannot restore subscription");
                    let reply = ServerFrame::error(ErrorCode::Unavailable, e.to_string(), None);
                    self.reply(socket, &reply).await?;
                    return Err(Close::Unavailable);
                }
            }
        }
        // A fresh session that subscribes in `hello` (and records no lifecycle events, whose
        // order starts with the session) is saved once, after its subscriptions and before
        // anything is flushed: `welcome` and the `subscribed` frames are only buffered until
        // then. Saving it here as well would cost each such handshake a second save, a second
        // store round trip in a fleet. Should that one save fail, the client may already hold
        // `welcome` (with many subscriptions the buffer is written as it fills): its resume
        // then finds no session and starts a fresh one, as after an expired record, and
        // resubscribes from the positions it was given.
        let save_once = !resumed
            && !subscribe.is_empty()
            && server_subs.is_empty()
            && self.shared.events.is_none();
        if !save_once {
            // The positions saved here are the client's own (nothing is replayed yet): a hello
            // that fails from now on leaves a record the client can resume from.
            self.first_save(socket, resumed).await?;
        }
        let welcome = ServerFrame::Welcome {
            session: resume_token.session.to_string(),
            resume: resume_token.to_string(),
            pod: self.shared.pod.clone(),
            user: self.session.as_ref().and_then(|s| s.user.clone()),
            resumed,
            topics,
        };
        // With subscriptions to follow, `welcome` and their replies go out in one write (a
        // resume's replay flushes its own pages, `welcome` with the first).
        let batched = !subscribe.is_empty();
        self.batch_replies = batched;
        let replied: Result<bool, Close> = async {
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
            for topic in replay {
                self.fill(socket, &topic).await?;
            }
            // The join/leave events missed while away, after the messages (or a fresh list).
            for topic in presence_replay {
                self.presence_catch_up(socket, &topic).await?;
            }
            for topic in server_subs {
                self.server_subscribe(socket, topic).await?;
            }
            // The client's own initial subscriptions, each exactly like a `subscribe` without
            // `ref` (grants, limits and hooks apply), saved once for all of them.
            let mut added = false;
            for topic in subscribe {
                added |= self
                    .subscribe_unsaved(socket, topic, None, None, None)
                    .await?;
            }
            Ok(added)
        }
        .await;
        self.batch_replies = false;
        let added = replied?;
        if save_once {
            self.first_save(socket, resumed).await?;
        }
        if batched {
            self.flush(socket).await?;
        }
        if (resumed || added) && !save_once {
            // Save what the replay sent, so a client resuming without positions after this
            // connection dies starts where the replay stopped (and the new subscriptions).
            self.save_session().await;
        }
        Ok(())
    }

    /// The session's first save on this connection, which makes its resume token good (and,
    /// with lifecycle events, records its start).
    async fn first_save(&mut self, socket: &mut WebSocket, resumed: bool) -> Result<(), Close> {
        match self.store_session(false).await {
            Ok(true) => {
                self.index_session().await;
                self.events_attached(resumed).await;
                Ok(())
            }
            Ok(false) => Err(Close::TakenOver),
            Err(e) => {
                tracing::warn!(error = %e, "cannot save session");
                let reply =
                    ServerFrame::error(ErrorCode::Unavailable, "session store unavailable", None);
                self.reply(socket, &reply).await?;
                Err(Close::Unavailable)
            }
        }
    }

    /// Claims the session's next generation and closes whoever held it before.
    async fn claim(
        &mut self,
        socket: &mut WebSocket,
        state: &mut SessionState,
    ) -> Result<(), Close> {
        let shared = self.shared.clone();
        let claim = match shared
            .store
            .claim_session(&state.id, &shared.pod, shared.config.resume_window)
            .await
        {
            Ok(claim) => claim,
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim session");
                let reply =
                    ServerFrame::error(ErrorCode::Unavailable, "session store unavailable", None);
                self.reply(socket, &reply).await?;
                return Err(Close::Unavailable);
            }
        };
        state.generation = claim.generation;
        match shared
            .connections
            .bind_session(self.id, state.id.clone(), claim.generation)
        {
            Bind::Bound(Some(old)) => old.take_over(),
            Bind::Bound(None) => {}
            Bind::Superseded => return Err(Close::TakenOver),
        }
        if let Some(owner) = claim
            .previous
            .filter(|o| o.pod != shared.pod && !o.pod.is_empty())
        {
            // The session may still be open on the pod that held it (a client that reconnected
            // before the old socket died): tell that pod to close it. Only older generations
            // close, so a late message never hits a newer connection.
            crate::cluster::send_takeover(&shared, &owner.pod, &state.id, claim.generation).await;
        }
        Ok(())
    }
}
