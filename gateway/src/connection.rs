//! One task per WebSocket: reads client frames, answers them, and writes the deliveries the hub
//! queues for it.
//!
//! The task owns the socket, so replies are written in order without a second task or lock.
//! Deliveries are written in batches: everything queued (up to a bound) is fed to the socket and
//! flushed once, because a loopback `write` costs about as much as encoding hundreds of frames.
//! Every way a connection can end is a [`Close`], mapped to its close code in one place.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use protocol::{CloseAdvice, CloseCode, ErrorCode, ServerFrame, SessionId, client};
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite;

use crate::Shared;
use crate::abuse::{FrameLimiter, HandshakePermit};
use crate::application::UpgradeInfo;
use crate::auth::Grants;
use crate::control::ConnControl;
use crate::hub::{ConnId, Subscriber};
use crate::metrics::CodeLabel;
use crate::outbound::Batch;
use crate::replay::{Step, SubMap};

/// Deliveries written per flush at most: a long batch reaches the client in parts.
const MAX_BATCH: usize = 256;

/// Why a connection ends. [`Close::frame`] is the one mapping to close codes.
#[derive(Debug)]
pub enum Close {
    /// The client sent a close frame (tungstenite answers it), with this code if any.
    ByClient(Option<u16>),
    /// The transport is gone (EOF, reset, write timeout, idle): nothing more can be sent.
    Gone,
    /// Asked from outside: drain (1001), slow consumer (1013), takeover (1000), rebalance (1012).
    Requested(CloseCode, CloseAdvice),
    /// No `hello` within the handshake timeout.
    HelloTimeout,
    /// A message above `--max-message-size`.
    TooBig,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// A WebSocket protocol violation.
    Protocol,
    /// The store could not open or restore the session.
    Unavailable,
    /// Authentication failed (`unauthorized`), or the token expired (`token_expired`).
    Auth(&'static str),
    /// Sustained abuse of the frame or publish rate limits.
    Abusive,
    /// A subscription fell behind further than history reaches: the client must resume (and
    /// is told `recovered: false` for that topic).
    Lagged,
    /// A newer connection of the same session holds it (this pod or another).
    TakenOver,
    /// The application's connect hook refused the client, with its code and advice.
    Refused { error: String, reconnect: bool },
}

impl Close {
    fn frame(&self) -> Option<(CloseCode, CloseAdvice)> {
        match self {
            Close::ByClient(_) | Close::Gone => None,
            Close::Requested(code, advice) => Some((*code, advice.clone())),
            Close::HelloTimeout => Some((
                CloseCode::Policy,
                CloseAdvice::reconnect(Some(1_000)).with_error("hello_timeout"),
            )),
            Close::TooBig => Some((CloseCode::TooBig, CloseAdvice::stop("too_large"))),
            Close::InvalidUtf8 => {
                Some((CloseCode::InvalidPayload, CloseAdvice::stop("invalid_utf8")))
            }
            Close::Protocol => Some((
                CloseCode::ProtocolError,
                CloseAdvice::stop("protocol_error"),
            )),
            Close::Auth("token_expired") => Some((
                CloseCode::Policy,
                CloseAdvice::reconnect(None).with_error("token_expired"),
            )),
            Close::Auth(error) => Some((CloseCode::Policy, CloseAdvice::stop(error))),
            Close::Abusive => Some((CloseCode::Policy, CloseAdvice::stop("rate_limited"))),
            Close::Unavailable => Some((
                CloseCode::TryAgainLater,
                CloseAdvice::reconnect(Some(2_000)).with_error("unavailable"),
            )),
            Close::Lagged => Some((
                CloseCode::TryAgainLater,
                CloseAdvice::reconnect(Some(500)).with_error("lagged"),
            )),
            Close::TakenOver => Some((CloseCode::Normal, CloseAdvice::stop("session_taken_over"))),
            Close::Refused { error, reconnect } => Some((
                CloseCode::Policy,
                if *reconnect {
                    CloseAdvice::reconnect(Some(5_000)).with_error(error)
                } else {
                    CloseAdvice::stop(error)
                },
            )),
        }
    }
}

/// The session a connection holds after `hello`.
#[derive(Debug, Clone)]
pub struct SessionState {
    pub id: SessionId,
    pub secret: String,
    pub user: Option<String>,
    /// What presence shows of the session besides its user (`Member.info`).
    pub info: Option<serde_json::Value>,
    pub created_ms: u64,
    /// The generation this connection claimed: only it may save the session.
    pub generation: u64,
}

/// A connection's state, owned by its task.
#[derive(Debug)]
pub struct Conn {
    pub id: ConnId,
    pub shared: Arc<Shared>,
    pub control: Arc<ConnControl>,
    pub session: Option<SessionState>,
    pub subs: SubMap,
    /// What the client may subscribe and publish to (everything with `--auth off`).
    pub grants: Grants,
    /// When the token expires: the connection closes then unless `refresh` moved it.
    pub expires: Option<Instant>,
    pub limiter: FrameLimiter,
    /// Held from the upgrade until `welcome`: bounds handshakes in flight.
    pub handshake: Option<HandshakePermit>,
    /// The client's address (after trusted proxies), for the connect hook.
    pub peer: IpAddr,
    /// The upgrade's headers and query, until the connect hook has seen them (only kept when
    /// the hook is configured).
    pub upgrade: Option<Box<UpgradeInfo>>,
    /// What the connect hook granted: saved with the session so a resume restores it.
    pub granted: Option<session_store::HookGrant>,
    /// Publishes in flight, oldest first (see `publish`); `None` until the first publish.
    pub publishes: Option<Box<crate::publish::Pipeline>>,
    /// Where the client is in each join/leave topic (`presence::events`).
    pub presence_at: crate::presence::events::Positions,
    /// While set, replies are handed to the socket but not flushed: a `hello` with
    /// subscriptions writes `welcome` and their replies together (one write instead of one per
    /// frame; a loopback write costs about as much as the rest of a subscribe).
    pub batch_replies: bool,
}

/// Serves one upgraded socket until it closes.
///
/// A plain function returning the future, not an `async fn`: an `async fn` keeps its
/// arguments twice in the task (as arguments, and as the locals they are moved into), about
/// 400 bytes of every connection's footprint.
pub fn serve(
    mut socket: WebSocket,
    shared: Arc<Shared>,
    peer: IpAddr,
    tcp_peer: IpAddr,
    handshake: HandshakePermit,
    upgrade: Option<Box<UpgradeInfo>>,
) -> impl Future<Output = ()> + Send {
    let control = Arc::new(ConnControl::new());
    let id = shared.connections.register(control.clone(), tcp_peer);
    let limits = shared
        .config
        .security
        .frame_limits(shared.config.max_message_size);
    let mut conn = Conn {
        id,
        shared,
        control,
        session: None,
        subs: SubMap::default(),
        grants: Grants::all(),
        expires: None,
        limiter: FrameLimiter::new(limits),
        handshake: Some(handshake),
        peer,
        upgrade,
        granted: None,
        publishes: None,
        presence_at: None,
        batch_replies: false,
    };
    async move {
        let close = conn.run(&mut socket).await;
        conn.control.close_queue();
        tracing::debug!(conn = id, %peer, ?close, "connection ending");
        let started = std::time::Instant::now();
        Box::pin(conn.finish(&mut socket, close)).await;
        conn.shared.connections.remove(id);
        tracing::debug!(conn = id, took = ?started.elapsed(), "connection closed");
    }
}

impl Conn {
    async fn run(&mut self, socket: &mut WebSocket) -> Close {
        // Copies of the few settings needed here: the whole Config would sit in every idle
        // connection's task.
        let c = &self.shared.config;
        let (ping_interval, idle_timeout) = (c.ping_interval, c.idle_timeout);
        let save_every = c.resume_window / 2;
        let hello_deadline = Instant::now() + c.handshake_timeout;
        let mut last_seen = Instant::now();
        let mut next_ping = Instant::now() + ping_interval;
        let mut last_saved = Instant::now();
        let control = self.control.clone();
        // One timer for every deadline (each armed timer is reserved in every idle
        // connection's task), kept across iterations and moved only when its deadline does:
        // a timer made per iteration is registered and removed again for every batch.
        let timer = sleep_until(next_ping.min(hello_deadline));
        tokio::pin!(timer);
        loop {
            let mut wake = next_ping;
            if self.session.is_none() {
                wake = wake.min(hello_deadline);
            }
            if let Some(expires) = self.expires {
                wake = wake.min(expires);
            }
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                biased;
                () = control.changed() => {
                    if let Some((code, advice)) = control.requested() {
                        return Close::Requested(code, advice);
                    }
                    if self.session.is_some() {
                        let commands = control.take_commands();
                        // Boxed like the handlers (see below).
                        if !commands.is_empty()
                            && let Err(close) =
                                Box::pin(self.server_commands(socket, commands)).await
                        {
                            return close;
                        }
                    }
                    let batch = control.take_queued();
                    // Boxed: the handlers' state machines are large, and inlined they would be
                    // reserved in every idle connection's task (about 12 KiB each).
                    if !batch.is_empty()
                        && let Err(close) = Box::pin(self.deliver(socket, batch)).await
                    {
                        return close;
                    }
                    if self.session.is_some()
                        && let Some((notes, behind)) = control.take_presence()
                        && let Err(close) =
                            Box::pin(self.presence_notes(socket, notes, behind)).await
                    {
                        return close;
                    }
                }
                done = crate::publish::next_done(&mut self.publishes) => {
                    if let Err(close) = Box::pin(self.published(socket, done)).await {
                        return close;
                    }
                }
                // At the bound of publishes in flight, frames wait in the socket (and TCP
                // pushes back on the client) until the oldest publish completes.
                frame = socket.next(), if !self.publishing_full() => {
                    last_seen = Instant::now();
                    let message = match frame {
                        None => return Close::Gone,
                        Some(Ok(message)) => message,
                        Some(Err(e)) => return read_error(e),
                    };
                    if let Err(close) = Box::pin(self.on_message(socket, message)).await {
                        return close;
                    }
                }
                () = &mut timer => {
                    let now = Instant::now();
                    if self.session.is_none() && now >= hello_deadline {
                        return Close::HelloTimeout;
                    }
                    if self.expires.is_some_and(|expires| now >= expires) {
                        return Close::Auth("token_expired");
                    }
                    if now < next_ping {
                        continue;
                    }
                    if last_seen.elapsed() >= idle_timeout {
                        return Close::Gone;
                    }
                    next_ping = now + ping_interval;
                    // Keep the stored session alive while connected, so a client whose pod dies
                    // can resume however long it was quiet before.
                    let save = self.session.is_some() && last_saved.elapsed() >= save_every;
                    if save {
                        last_saved = now;
                    }
                    // Boxed like the handlers: a store call's future is large, and so is a
                    // write with its timeout.
                    if Box::pin(self.keep_alive(socket, save)).await.is_err() {
                        return Close::Gone;
                    }
                }
            }
        }
    }

    /// The periodic work of an open connection: save the session (when `save`), then ping.
    async fn keep_alive(&mut self, socket: &mut WebSocket, save: bool) -> Result<(), Close> {
        if save {
            self.save_session().await;
            self.index_session().await;
        }
        self.write(socket, Message::Ping(Default::default())).await
    }

    async fn on_message(&mut self, socket: &mut WebSocket, message: Message) -> Result<(), Close> {
        match message {
            Message::Text(text) => {
                self.shared.metrics.conn.received.inc();
                // Decode first so a rate-limited frame's `rate_limited` carries its `ref`.
                let decoded = client::decode(text.as_str());
                let reference = match &decoded {
                    Ok(frame) => reference_of(frame),
                    Err(e) => e.reference(),
                };
                // Replies go out in frame order: anything but a publish, which joins the
                // publishes in flight, waits for them.
                if !matches!(decoded, Ok(client::ClientFrame::Publish { .. })) {
                    self.settle_publishes(socket).await?;
                }
                if !self.admit_frame(socket, reference).await? {
                    return Ok(());
                }
                match decoded {
                    Ok(frame) => self.on_frame(socket, frame).await,
                    Err(e) => {
                        let message = bounded(e.to_string());
                        let reply = ServerFrame::error(e.code(), message, e.reference());
                        self.reply(socket, &reply).await
                    }
                }
            }
            Message::Binary(_) => {
                self.shared.metrics.conn.received.inc();
                self.settle_publishes(socket).await?;
                if !self.admit_frame(socket, None).await? {
                    return Ok(());
                }
                let reply = ServerFrame::error(
                    ErrorCode::BadRequest,
                    "binary frames are not supported: send JSON text frames",
                    None,
                );
                self.reply(socket, &reply).await
            }
            // tungstenite queued the pong; send it now rather than with the next write.
            Message::Ping(_) => socket.flush().await.map_err(|_| Close::Gone),
            Message::Pong(_) => Ok(()),
            Message::Close(frame) => Err(Close::ByClient(frame.map(|f| f.code))),
        }
    }

    async fn on_frame(
        &mut self,
        socket: &mut WebSocket,
        frame: client::ClientFrame,
    ) -> Result<(), Close> {
        use client::ClientFrame as F;
        if self.session.is_none() {
            return match frame {
                F::Hello {
                    token,
                    resume,
                    positions,
                    presence,
                    subscribe,
                } => {
                    self.hello(socket, token, resume, positions, presence, subscribe)
                        .await
                }
                other => {
                    let reply = ServerFrame::error(
                        ErrorCode::BadRequest,
                        format!("send hello before {}", other.kind()),
                        reference_of(&other),
                    );
                    self.reply(socket, &reply).await
                }
            };
        }
        match frame {
            F::Hello { .. } => {
                let reply =
                    ServerFrame::error(ErrorCode::BadRequest, "hello was already received", None);
                self.reply(socket, &reply).await
            }
            F::Subscribe {
                topic,
                since,
                presence_since,
                last,
                reference,
            } => {
                self.subscribe_from(socket, topic, since, presence_since, last, reference)
                    .await
            }
            F::Unsubscribe { topic, reference } => self.unsubscribe(socket, topic, reference).await,
            F::Publish {
                topic,
                data,
                id,
                exclude_self,
                reference,
            } => {
                self.publish(socket, topic, data, id, exclude_self, reference)
                    .await
            }
            F::Ping { reference } => self.reply(socket, &ServerFrame::Pong { reference }).await,
            F::Refresh { token, reference } => self.refresh(socket, token, reference).await,
            F::History {
                topic,
                query,
                reference,
            } => self.history(socket, topic, query, reference).await,
            F::Presence { topic, reference } => self.presence(socket, topic, reference).await,
            F::PresenceStats { topic, reference } => {
                self.presence_stats(socket, topic, reference).await
            }
            F::Rpc {
                method,
                data,
                reference,
            } => self.rpc(socket, method, data, reference).await,
        }
    }

    /// Writes a batch of queued deliveries, flushing every [`MAX_BATCH`] frames and at the
    /// end. A delivery after a gap, and any topic whose messages did not fit in the queue, is
    /// filled from history.
    async fn deliver(&mut self, socket: &mut WebSocket, batch: Batch) -> Result<(), Close> {
        let Batch {
            mut deliveries,
            lagging,
        } = batch;
        let mut unflushed = 0;
        // One clock read each for the batch's latency metric and its write deadline.
        let now_us = crate::envelope::now_us();
        let deadline = Instant::now() + self.shared.config.write_timeout;
        for delivery in deliveries.drain(..) {
            // Asked to close (e.g. drained): deliver nothing more.
            if self.control.is_closing() {
                return self.flush(socket).await;
            }
            match self.step(&delivery, now_us) {
                Step::Write(message) => {
                    self.feed_by(socket, message, deadline).await?;
                    unflushed += 1;
                    if unflushed == MAX_BATCH {
                        self.flush(socket).await?;
                        unflushed = 0;
                    }
                }
                Step::Skip => {}
                Step::Gap => {
                    self.flush(socket).await?;
                    unflushed = 0;
                    self.fill(socket, &delivery.topic).await?;
                    // History covered it (it was stored before it was published), so it is a
                    // duplicate now; anything else means the epoch moved on meanwhile.
                    if let Step::Write(message) = self.step(&delivery, now_us) {
                        self.feed(socket, message).await?;
                        unflushed += 1;
                    }
                }
            }
        }
        self.control.reuse_buffer(deliveries);
        self.flush(socket).await?;
        for topic in lagging {
            self.fill(socket, &topic).await?;
        }
        Ok(())
    }

    /// Sends one reply frame.
    pub async fn reply(
        &mut self,
        socket: &mut WebSocket,
        frame: &ServerFrame,
    ) -> Result<(), Close> {
        let message = Message::Text(frame.to_json().into());
        if self.batch_replies {
            return self.feed(socket, message).await;
        }
        self.write(socket, message).await
    }

    pub async fn write(&mut self, socket: &mut WebSocket, message: Message) -> Result<(), Close> {
        match timeout(self.shared.config.write_timeout, socket.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.write_failed(e)),
            Err(_) => Err(Close::Gone),
        }
    }

    /// Saves the session with its positions so the client can resume on any pod, then sends
    /// the close frame (if any) and waits briefly for the client's. Saving first means a
    /// drained client that reconnects at once finds its positions already stored.
    async fn finish(&mut self, socket: &mut WebSocket, close: Close) {
        // Written but not flushed is not sent: a flush failure leaves the positions where
        // the last successful flush put them.
        // A goodbye (events on, the client's 1000) ends the session before anything is written
        // (the first flush sends tungstenite's reply to the close), so whatever the client does
        // next is recorded after the end.
        let goodbye = matches!(close, Close::ByClient(code) if self.is_goodbye(code));
        if goodbye {
            // Over for good: its members leave now (before its `session.ended`), not when
            // the resume window has passed.
            let topics: Vec<protocol::Topic> = self.subs.keys().cloned().collect();
            for topic in &topics {
                self.presence_leave(topic).await;
            }
            self.events_goodbye().await;
        }
        let answer = !matches!(close, Close::Gone);
        self.settle_publishes_on_close(socket, answer).await;
        if answer {
            let _ = timeout(self.shared.config.close_grace, self.flush(socket)).await;
        }
        if !goodbye {
            self.save_session().await;
            // Resumable for the window from now: the per-user index must say so (for
            // disconnect).
            self.index_session().await;
        }
        if let Close::ByClient(_) = close {
            // tungstenite queued the reply to the client's close frame: send it. A client that
            // closes cleanly reads until that reply (the closing handshake), so it has every
            // message sent before it: the positions are confirmed.
            let replied = timeout(self.shared.config.close_grace, socket.flush()).await;
            if matches!(replied, Ok(Ok(()))) && !goodbye {
                self.save_session_as(true).await;
            }
        }
        if let Some((code, advice)) = close.frame() {
            self.shared
                .metrics
                .conn
                .closes
                .get_or_create(&CodeLabel {
                    code: code.as_u16(),
                })
                .inc();
            let frame = CloseFrame {
                code: code.as_u16(),
                reason: advice.to_reason().into(),
            };
            let grace = self.shared.config.close_grace;
            let mut handshake_done = false;
            let _ = timeout(grace, async {
                if socket.send(Message::Close(Some(frame))).await.is_ok() {
                    // Wait for the client's close frame so it sees ours before the TCP close.
                    while let Some(Ok(message)) = socket.next().await {
                        handshake_done |= matches!(message, Message::Close(_));
                    }
                }
            })
            .await;
            if handshake_done {
                // The client read our close frame, and so every message before it: the saved
                // positions are now known to be what it has.
                self.save_session_as(true).await;
            }
        }
        if self.control.is_disconnected() {
            // The server API deleted the session; a save that raced it must not bring it back.
            self.forget_session().await;
        }
        self.presence_detach();
        if !goodbye {
            self.events_detached().await;
        }
        for topic in self.subs.keys() {
            self.shared.hub.unsubscribe(topic, self.id);
        }
        self.shared
            .metrics
            .conn
            .subscriptions
            .dec_by(self.subs.len() as i64);
    }

    pub fn subscriber(&self) -> Subscriber {
        Subscriber {
            control: self.control.clone(),
        }
    }
}

fn reference_of(frame: &client::ClientFrame) -> Option<client::Ref> {
    use client::ClientFrame as F;
    match frame {
        F::Hello { .. } => None,
        F::Subscribe { reference, .. }
        | F::Unsubscribe { reference, .. }
        | F::Publish { reference, .. }
        | F::Ping { reference }
        | F::Refresh { reference, .. }
        | F::History { reference, .. }
        | F::Presence { reference, .. }
        | F::PresenceStats { reference, .. }
        | F::Rpc { reference, .. } => *reference,
    }
}

/// Longest decode error message sent back, in bytes.
const MAX_ERROR_MESSAGE: usize = 200;

/// Cuts a decode error message: serde's quotes the offending value, which can be as long as
/// the frame and, escaped twice (Debug, then JSON), twice as long: more than the write buffer
/// holds, which would drop the connection instead of answering.
fn bounded(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE {
        let mut cut = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// Maps a read error to how the connection ends.
fn read_error(e: axum::Error) -> Close {
    let Ok(e) = e.into_inner().downcast::<tungstenite::Error>() else {
        return Close::Gone;
    };
    match *e {
        tungstenite::Error::Capacity(_) => Close::TooBig,
        tungstenite::Error::Utf8(_) => Close::InvalidUtf8,
        // A peer that vanishes without a close frame is gone, not misbehaving.
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => Close::Gone,
        tungstenite::Error::Protocol(_) => Close::Protocol,
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Io(_)
        | tungstenite::Error::Tls(_)
        | tungstenite::Error::WriteBufferFull(_)
        | tungstenite::Error::Url(_)
        | tungstenite::Error::Http(_)
        | tungstenite::Error::HttpFormat(_)
        | tungstenite::Error::AttackAttempt => Close::Gone,
    }
}
