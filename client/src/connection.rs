//! The connection task: one WebSocket at a time, reconnected until the client is closed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::ClientConfig;
use crate::topics::{Gap, Outcome, Topics};
use crate::wire::{
    ClientFrame, CloseAdvice, ErrorFrame, MessageFrame, Position, Published, Reference, Refreshed,
    ServerFrame, Subscribed, Unsubscribed, Welcome, token_expiry,
};
use crate::{ClientError, Command, Event, Reply};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A request waiting for its reply, by `ref`.
#[derive(Debug)]
enum Pending {
    Subscribe {
        topic: String,
        since: Option<Position>,
    },
    Unsubscribe(Option<Reply<()>>),
    Publish(Reply<u64>),
    Ping,
    Refresh,
}

#[derive(Debug)]
struct QueuedPublish {
    topic: String,
    data: Box<RawValue>,
    id: Option<String>,
    reply: Reply<u64>,
}

/// How a connection ended.
enum End {
    /// Closed by the user (or every handle dropped).
    Closed(Option<oneshot::Sender<()>>),
    /// The connection is gone; reconnect unless the advice says otherwise.
    Lost {
        code: Option<u16>,
        reason: String,
        up_since: Option<Instant>,
    },
}

pub(crate) struct Connection {
    config: ClientConfig,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<Event>,
    shared_positions: Arc<Mutex<BTreeMap<String, Position>>>,
    topics: Topics,
    confirmed: HashSet<String>,
    waiters: HashMap<String, Vec<Reply<Position>>>,
    pending: HashMap<u64, Pending>,
    queue: Vec<QueuedPublish>,
    next_ref: u64,
    resume: Option<String>,
    token: Option<String>,
    token_stale: bool,
    attempt: u32,
    url_index: usize,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Connection {
    pub(crate) fn new(
        config: ClientConfig,
        commands: mpsc::UnboundedReceiver<Command>,
        events: mpsc::Sender<Event>,
        shared_positions: Arc<Mutex<BTreeMap<String, Position>>>,
    ) -> Self {
        let token = config.token.clone();
        Connection {
            config,
            commands,
            events,
            shared_positions,
            topics: Topics::default(),
            confirmed: HashSet::new(),
            waiters: HashMap::new(),
            pending: HashMap::new(),
            queue: Vec::new(),
            next_ref: 1,
            resume: None,
            token,
            token_stale: false,
            attempt: 0,
            url_index: 0,
        }
    }

    async fn emit(&self, event: Event) {
        // A dropped event stream is the user's choice: keep serving the handles.
        let _ = self.events.send(event).await;
    }

    fn share_positions(&self) {
        *self
            .shared_positions
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = self.topics.positions();
    }

    pub(crate) async fn run(mut self) {
        let mut delay = Duration::ZERO;
        loop {
            if let Some(done) = self.wait(delay).await {
                break self.finish(None, done).await;
            }
            match self.session().await {
                End::Closed(done) => break self.finish(None, done).await,
                End::Lost {
                    code,
                    reason,
                    up_since,
                } => {
                    let advice = CloseAdvice::parse(&reason);
                    self.lost_connection();
                    self.emit(Event::Disconnected {
                        code,
                        reason,
                        advice: advice.clone(),
                    })
                    .await;
                    if let Some(stop) = self.stop_reason(code, advice.as_ref()) {
                        break self.finish(Some(stop), None).await;
                    }
                    if up_since.is_some_and(|t| t.elapsed() >= self.config.stable_after) {
                        self.attempt = 0;
                    }
                    delay = match advice.and_then(|a| a.after_ms) {
                        Some(ms) => Duration::from_millis(ms).min(self.config.max_after),
                        None => self.config.backoff.delay(self.attempt),
                    };
                    self.attempt += 1;
                    self.url_index += 1;
                    self.emit(Event::Reconnecting {
                        attempt: self.attempt,
                        delay,
                    })
                    .await;
                }
            }
        }
    }

    /// `Some` when the advice says not to reconnect.
    fn stop_reason(&mut self, code: Option<u16>, advice: Option<&CloseAdvice>) -> Option<ClientError> {
        let advice = advice?;
        let code = code.unwrap_or(1006);
        let error = advice.error.clone().unwrap_or_default();
        if !advice.reconnect {
            return Some(ClientError::Stopped { code, error });
        }
        if error == "token_expired" {
            if self.config.token_source.is_none() {
                return Some(ClientError::Stopped { code, error });
            }
            self.token_stale = true;
        }
        None
    }

    /// Fails what cannot survive the connection; subscriptions are restored by the next one.
    fn lost_connection(&mut self) {
        for (_, pending) in self.pending.drain() {
            if let Pending::Publish(reply) = pending {
                let _ = reply.send(Err(ClientError::Disconnected));
            }
        }
        self.confirmed.clear();
    }

    async fn finish(&mut self, error: Option<ClientError>, done: Option<oneshot::Sender<()>>) {
        let failure = error.clone().unwrap_or(ClientError::Closed);
        for (_, pending) in self.pending.drain() {
            if let Pending::Publish(reply) = pending {
                let _ = reply.send(Err(failure.clone()));
            }
        }
        for queued in self.queue.drain(..) {
            let _ = queued.reply.send(Err(failure.clone()));
        }
        for (_, waiters) in self.waiters.drain() {
            for w in waiters {
                let _ = w.send(Err(failure.clone()));
            }
        }
        if let Some(e) = &error {
            self.emit(Event::Error(e.clone())).await;
        }
        self.emit(Event::Closed { error }).await;
        if let Some(done) = done {
            let _ = done.send(());
        }
        // Later requests find the task gone and get `Closed`.
        self.commands.close();
        while let Some(cmd) = self.commands.recv().await {
            self.refuse(cmd);
        }
    }

    fn refuse(&self, cmd: Command) {
        match cmd {
            Command::Subscribe { reply, .. } => drop(reply.send(Err(ClientError::Closed))),
            Command::Unsubscribe { reply, .. } => drop(reply.send(Err(ClientError::Closed))),
            Command::Publish { reply, .. } => drop(reply.send(Err(ClientError::Closed))),
            Command::Close { reply } => drop(reply.send(())),
        }
    }

    /// Waits `delay` while taking commands; `Some` when the client was closed meanwhile.
    async fn wait(&mut self, delay: Duration) -> Option<Option<oneshot::Sender<()>>> {
        let deadline = Instant::now() + delay;
        loop {
            tokio::select! {
                _ = sleep_until(deadline) => return None,
                cmd = self.commands.recv() => match cmd {
                    None => return Some(None),
                    Some(Command::Close { reply }) => return Some(Some(reply)),
                    Some(cmd) => self.offline_command(cmd),
                },
            }
        }
    }

    /// A command while there is no connection: recorded, sent once connected.
    fn offline_command(&mut self, cmd: Command) {
        match cmd {
            Command::Subscribe {
                topic,
                since,
                reply,
            } => {
                self.topics.add(&topic, since);
                self.waiters.entry(topic).or_default().push(reply);
                self.share_positions();
            }
            Command::Unsubscribe { topic, reply } => {
                self.topics.remove(&topic);
                self.share_positions();
                let _ = reply.send(Ok(()));
            }
            Command::Publish {
                topic,
                data,
                id,
                reply,
            } => self.queue.push(QueuedPublish {
                topic,
                data,
                id,
                reply,
            }),
            Command::Close { reply } => drop(reply.send(())),
        }
    }

    async fn current_token(&mut self) -> Result<Option<String>, ClientError> {
        let Some(source) = self.config.token_source.clone() else {
            return Ok(self.token.clone());
        };
        let expiring = self
            .token
            .as_deref()
            .and_then(token_expiry)
            .is_some_and(|exp| exp <= now_secs() + 1);
        if self.token.is_none() || self.token_stale || expiring {
            let token = source
                .fetch()
                .await
                .map_err(|e| ClientError::Token(e.to_string()))?;
            self.token = Some(token);
            self.token_stale = false;
        }
        Ok(self.token.clone())
    }

    fn take_ref(&mut self) -> u64 {
        let r = self.next_ref;
        self.next_ref += 1;
        r
    }

    /// One connection, from the upgrade to its end.
    async fn session(&mut self) -> End {
        let lost = |reason: &str| End::Lost {
            code: None,
            reason: reason.to_owned(),
            up_since: None,
        };
        let token = match self.current_token().await {
            Ok(t) => t,
            Err(e) => {
                self.emit(Event::Error(e)).await;
                return lost("");
            }
        };
        if self.config.urls.is_empty() {
            return lost("");
        }
        let url = self.config.urls[self.url_index % self.config.urls.len()].clone();
        let connect_deadline = Instant::now() + self.config.connect_timeout;
        let ws = match tokio::time::timeout_at(
            connect_deadline,
            tokio_tungstenite::connect_async(url.as_str()),
        )
        .await
        {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                tracing::debug!(%url, error = %e, "connect failed");
                return lost("");
            }
            Err(_) => return lost(""),
        };
        let (mut sink, mut stream) = ws.split();
        let hello_positions = self.topics.positions();
        let hello = ClientFrame::Hello {
            token: token.as_deref(),
            resume: self.resume.as_deref(),
            positions: hello_positions.clone(),
        }
        .to_text();
        if sink.send(WsMessage::text(hello)).await.is_err() {
            return lost("");
        }
        let mut live = Live {
            sink,
            up_since: None,
            welcome_deadline: Some(connect_deadline),
            pong_deadline: None,
            next_ping: None,
            refresh_at: None,
            close: None,
            hello_positions,
        };
        loop {
            let timer = live.next_timer();
            tokio::select! {
                frame = stream.next() => match frame {
                    Some(Ok(WsMessage::Text(text))) => {
                        live.pong_deadline = None;
                        if let Err(()) = self.on_frame(&mut live, text.as_str()).await {
                            return live.lost();
                        }
                    }
                    Some(Ok(WsMessage::Close(frame))) => live.close = frame.map(|f| (u16::from(f.code), f.reason.to_string())),
                    Some(Ok(_)) => live.pong_deadline = None,
                    Some(Err(_)) | None => return live.lost(),
                },
                cmd = self.commands.recv() => match cmd {
                    None => return live.closed(None).await,
                    Some(Command::Close { reply }) => return live.closed(Some(reply)).await,
                    Some(cmd) if live.up_since.is_some() => {
                        if self.online_command(&mut live, cmd).await.is_err() {
                            return live.lost();
                        }
                    }
                    Some(cmd) => self.offline_command(cmd),
                },
                _ = sleep_until(timer.unwrap_or_else(far_future)), if timer.is_some() => {
                    if self.on_timer(&mut live).await.is_err() {
                        return live.lost();
                    }
                }
            }
        }
    }

    async fn send(&mut self, live: &mut Live, frame: ClientFrame<'_>) -> Result<(), ()> {
        live.sink
            .send(WsMessage::text(frame.to_text()))
            .await
            .map_err(|_| ())
    }

    async fn send_subscribe(&mut self, live: &mut Live, topic: &str) -> Result<(), ()> {
        let since = self.topics.position(topic);
        let reference = self.take_ref();
        let frame = ClientFrame::Subscribe {
            topic,
            since: since.as_ref(),
            reference,
        };
        let sent = self.send(live, frame).await;
        self.pending.insert(
            reference,
            Pending::Subscribe {
                topic: topic.to_owned(),
                since,
            },
        );
        sent
    }

    async fn send_publish(&mut self, live: &mut Live, p: QueuedPublish) -> Result<(), ()> {
        let reference = self.take_ref();
        let frame = ClientFrame::Publish {
            topic: &p.topic,
            data: &p.data,
            id: p.id.as_deref(),
            reference,
        };
        let sent = self.send(live, frame).await;
        self.pending.insert(reference, Pending::Publish(p.reply));
        sent
    }

    async fn online_command(&mut self, live: &mut Live, cmd: Command) -> Result<(), ()> {
        match cmd {
            Command::Subscribe {
                topic,
                since,
                reply,
            } => {
                if self.confirmed.contains(&topic) {
                    let position = self.topics.position(&topic);
                    let _ = reply.send(position.ok_or(ClientError::Disconnected));
                    return Ok(());
                }
                let new = !self.topics.contains(&topic);
                self.topics.add(&topic, since);
                self.waiters.entry(topic.clone()).or_default().push(reply);
                if new {
                    self.send_subscribe(live, &topic).await?;
                }
                Ok(())
            }
            Command::Unsubscribe { topic, reply } => {
                if !self.topics.remove(&topic) {
                    let _ = reply.send(Ok(()));
                    return Ok(());
                }
                self.confirmed.remove(&topic);
                self.share_positions();
                let reference = self.take_ref();
                self.pending
                    .insert(reference, Pending::Unsubscribe(Some(reply)));
                self.send(live, ClientFrame::Unsubscribe { topic: &topic, reference })
                    .await
            }
            Command::Publish {
                topic,
                data,
                id,
                reply,
            } => {
                let p = QueuedPublish {
                    topic,
                    data,
                    id,
                    reply,
                };
                self.send_publish(live, p).await
            }
            Command::Close { reply } => {
                let _ = reply.send(());
                Ok(())
            }
        }
    }

    async fn on_timer(&mut self, live: &mut Live) -> Result<(), ()> {
        let now = Instant::now();
        if live.welcome_deadline.is_some_and(|t| t <= now)
            || live.pong_deadline.is_some_and(|t| t <= now)
        {
            return Err(());
        }
        if live.next_ping.is_some_and(|t| t <= now) {
            live.next_ping = self.config.ping_interval.map(|i| now + i);
            if live.pong_deadline.is_none() {
                live.pong_deadline = Some(now + self.config.pong_timeout);
            }
            let reference = self.take_ref();
            self.pending.insert(reference, Pending::Ping);
            self.send(live, ClientFrame::Ping { reference }).await?;
        }
        if live.refresh_at.is_some_and(|t| t <= now) {
            live.refresh_at = None;
            if let Some(source) = self.config.token_source.clone() {
                match source.fetch().await {
                    Ok(token) => {
                        let reference = self.take_ref();
                        self.pending.insert(reference, Pending::Refresh);
                        let frame = ClientFrame::Refresh {
                            token: &token,
                            reference,
                        };
                        let sent = self.send(live, frame).await;
                        self.token = Some(token);
                        sent?;
                    }
                    Err(e) => self.emit(Event::Error(ClientError::Token(e.to_string()))).await,
                }
            }
        }
        Ok(())
    }

    /// When to send `refresh` for a token expiring at `exp`.
    fn refresh_at(&self, exp: Option<u64>) -> Option<Instant> {
        let before = self.config.refresh_before?;
        self.config.token_source.as_ref()?;
        let exp = exp.or_else(|| self.token.as_deref().and_then(token_expiry))?;
        let remaining = Duration::from_secs(exp.saturating_sub(now_secs()));
        let wait = if remaining > before * 2 {
            remaining - before
        } else {
            remaining / 2
        };
        Some(Instant::now() + wait)
    }

    async fn gap(&self, gap: Option<Gap>) {
        if let Some(gap) = gap {
            self.emit(Event::Gap(gap)).await;
        }
    }

    async fn confirm(&mut self, topic: &str) {
        let Some(position) = self.topics.position(topic) else {
            return;
        };
        self.confirmed.insert(topic.to_owned());
        for w in self.waiters.remove(topic).unwrap_or_default() {
            let _ = w.send(Ok(position.clone()));
        }
        self.share_positions();
        self.emit(Event::Subscribed {
            topic: topic.to_owned(),
            position,
        })
        .await;
    }

    async fn on_frame(&mut self, live: &mut Live, text: &str) -> Result<(), ()> {
        let frame = match ServerFrame::parse(text) {
            Ok(f) => f,
            Err(e) => {
                let message = format!("unreadable frame from the gateway: {e}");
                self.emit(Event::Error(ClientError::Server {
                    code: "bad_frame".into(),
                    message,
                }))
                .await;
                return Ok(());
            }
        };
        match frame {
            ServerFrame::Message(MessageFrame {
                topic,
                seq,
                epoch,
                data,
            }) => {
                let (gap, outcome) = self.topics.message(&topic, seq, epoch, data);
                self.gap(gap).await;
                match outcome {
                    Some(Outcome::Deliver(m)) => {
                        self.share_positions();
                        self.emit(Event::Message(m)).await;
                    }
                    Some(Outcome::Duplicate { seq }) => {
                        self.emit(Event::Duplicate { topic, seq }).await;
                    }
                    None => {}
                }
            }
            ServerFrame::Welcome(Welcome {
                session,
                resume,
                pod,
                user,
                resumed,
                topics,
            }) => {
                live.welcome_deadline = None;
                live.up_since = Some(Instant::now());
                live.next_ping = self.config.ping_interval.map(|i| Instant::now() + i);
                live.refresh_at = self.refresh_at(None);
                self.resume = Some(resume);
                let restored = if resumed { topics } else { BTreeMap::new() };
                // Restored topics first: their replay follows the welcome.
                for (topic, t) in &restored {
                    if !self.topics.contains(topic) {
                        let reference = self.take_ref();
                        self.pending.insert(reference, Pending::Unsubscribe(None));
                        self.send(live, ClientFrame::Unsubscribe { topic, reference })
                            .await?;
                        continue;
                    }
                    let gap = self
                        .topics
                        .restored(topic, t, live.hello_positions.get(topic));
                    self.gap(gap).await;
                    self.confirm(topic).await;
                }
                self.emit(Event::Connected {
                    session,
                    pod,
                    user,
                    resumed,
                })
                .await;
                for topic in self.topics.names() {
                    if !restored.contains_key(&topic) {
                        self.send_subscribe(live, &topic).await?;
                    }
                }
                for p in std::mem::take(&mut self.queue) {
                    self.send_publish(live, p).await?;
                }
            }
            ServerFrame::Subscribed(Subscribed {
                topic,
                seq,
                epoch,
                recovered,
                reference,
            }) => {
                let since = match reference.and_then(|r| self.pending.remove(&r)) {
                    Some(Pending::Subscribe { topic: t, since }) if t == topic => since,
                    _ => None,
                };
                let top = Position { seq, epoch };
                let gap = self
                    .topics
                    .subscribed(&topic, top, recovered, since.as_ref());
                self.gap(gap).await;
                self.confirm(&topic).await;
            }
            ServerFrame::Published(Published { seq, reference }) => {
                if let Some(Pending::Publish(reply)) = reference.and_then(|r| self.pending.remove(&r))
                {
                    let _ = reply.send(Ok(seq));
                }
            }
            ServerFrame::Unsubscribed(Unsubscribed {
                topic,
                reason,
                reference,
            }) => match reference.and_then(|r| self.pending.remove(&r)) {
                Some(Pending::Unsubscribe(reply)) => {
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(()));
                    }
                }
                _ => {
                    // Removed by the gateway (e.g. a refreshed token no longer grants it).
                    self.topics.remove(&topic);
                    self.confirmed.remove(&topic);
                    self.share_positions();
                    self.emit(Event::Unsubscribed { topic, reason }).await;
                }
            },
            ServerFrame::Pong(Reference { reference }) => {
                if let Some(r) = reference {
                    self.pending.remove(&r);
                }
            }
            ServerFrame::Refreshed(Refreshed { exp, reference }) => {
                if let Some(r) = reference {
                    self.pending.remove(&r);
                }
                live.refresh_at = self.refresh_at(exp);
                self.emit(Event::Refreshed { exp }).await;
            }
            ServerFrame::Error(ErrorFrame {
                code,
                message,
                reference,
            }) => {
                let error = ClientError::Server { code, message };
                match reference.and_then(|r| self.pending.remove(&r)) {
                    Some(Pending::Publish(reply)) => drop(reply.send(Err(error))),
                    Some(Pending::Subscribe { topic, .. }) => {
                        self.topics.remove(&topic);
                        self.share_positions();
                        for w in self.waiters.remove(&topic).unwrap_or_default() {
                            let _ = w.send(Err(error.clone()));
                        }
                        self.emit(Event::Error(error)).await;
                    }
                    Some(Pending::Unsubscribe(reply)) => {
                        let result = if error.code() == Some("not_subscribed") {
                            Ok(())
                        } else {
                            Err(error)
                        };
                        if let Some(reply) = reply {
                            let _ = reply.send(result);
                        }
                    }
                    Some(Pending::Ping | Pending::Refresh) | None => {
                        self.emit(Event::Error(error)).await;
                    }
                }
            }
            ServerFrame::Other => {}
        }
        Ok(())
    }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400)
}

/// The state of one live connection.
struct Live {
    sink: SplitSink<Ws, WsMessage>,
    up_since: Option<Instant>,
    welcome_deadline: Option<Instant>,
    pong_deadline: Option<Instant>,
    next_ping: Option<Instant>,
    refresh_at: Option<Instant>,
    close: Option<(u16, String)>,
    hello_positions: BTreeMap<String, Position>,
}

impl Live {
    fn next_timer(&self) -> Option<Instant> {
        [
            self.welcome_deadline,
            self.pong_deadline,
            self.next_ping,
            self.refresh_at,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn lost(&mut self) -> End {
        let (code, reason) = match self.close.take() {
            Some((code, reason)) => (Some(code), reason),
            None => (None, String::new()),
        };
        End::Lost {
            code,
            reason,
            up_since: self.up_since,
        }
    }

    async fn closed(mut self, reply: Option<oneshot::Sender<()>>) -> End {
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = self.sink.send(WsMessage::Close(Some(frame))).await;
        End::Closed(reply)
    }
}
