//! One task per WebSocket: reads client frames, answers them, and writes the deliveries the hub
//! queues for it.
//!
//! The task owns the socket, so replies are written in order without a second task or lock.
//! Deliveries are written in batches: everything queued (up to a bound) is fed to the socket and
//! flushed once, because a loopback `write` costs about as much as encoding hundreds of frames.
//! Every way a connection can end is a [`Close`], mapped to its close code in one place.
//!
//! Layout: this file holds the connection's state and its task's loop (timers, control
//! requests, deliveries, writes); `close` (every way it ends, and the close codes), `dispatch`
//! (reading and dispatching client frames) and `finish` (saving, the closing handshake and
//! cleanup).

mod close;
mod dispatch;
mod finish;

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use protocol::{ServerFrame, SessionId};
use tokio::time::{Instant, sleep_until, timeout};

pub use close::Close;
use close::read_error;

use crate::Shared;
use crate::abuse::{FrameLimiter, HandshakePermit};
use crate::application::UpgradeInfo;
use crate::auth::Grants;
use crate::control::ConnControl;
use crate::hub::{ConnId, Subscriber};
use crate::outbound::Batch;
use crate::replay::{Step, SubMap};

/// Deliveries written per flush at most: a long batch reaches the client in parts.
const MAX_BATCH: usize = 256;

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

    pub fn subscriber(&self) -> Subscriber {
        Subscriber {
            control: self.control.clone(),
        }
    }
}
