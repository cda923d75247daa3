//! The connection task: one WebSocket at a time, reconnected until the client is closed.
//! `live` runs one connection, `frames` handles what the gateway sends, `hello` keeps the
//! subscriptions the `hello` itself opens until the gateway answers them.

mod frames;
mod hello;
mod live;

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
    ServerFrame, SkippedFrame, Subscribed, Unsubscribed, Welcome, token_expiry,
};
use crate::{ClientError, Command, Event, Reply, Shared};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long to wait for the server to end the TCP connection after its close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A request waiting for its reply, by `ref`.
#[derive(Debug)]
enum Pending {
    Subscribe {
        topic: String,
        since: Option<Position>,
    },
    Unsubscribe(Option<Reply<()>>),
    Publish(Reply<u64>),
    /// `rpc`, `history`, `presence`, `presence_stats`: the reply frame, decoded by the caller.
    Query(Reply<String>),
    Ping,
    Refresh,
}

#[derive(Debug)]
struct QueuedPublish {
    topic: String,
    data: Box<RawValue>,
    id: Option<String>,
    exclude_self: bool,
    reply: Reply<u64>,
}

/// A read request (or `rpc`) waiting for a connection.
#[derive(Debug)]
struct QueuedQuery {
    frame: serde_json::Map<String, serde_json::Value>,
    reply: Reply<String>,
}

#[derive(Debug)]
enum Queued {
    Publish(QueuedPublish),
    Query(QueuedQuery),
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
    shared: Arc<Mutex<Shared>>,
    topics: Topics,
    confirmed: HashSet<String>,
    waiters: HashMap<String, Vec<Reply<Position>>>,
    pending: HashMap<u64, Pending>,
    /// Requests made while offline, sent in order once connected.
    queue: Vec<Queued>,
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
        shared: Arc<Mutex<Shared>>,
    ) -> Self {
        let token = config.token.clone();
        let resume = config.resume.clone();
        Connection {
            config,
            commands,
            events,
            shared,
            topics: Topics::default(),
            confirmed: HashSet::new(),
            waiters: HashMap::new(),
            pending: HashMap::new(),
            queue: Vec::new(),
            next_ref: 1,
            resume,
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
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        shared.positions = self.topics.positions();
        shared.resume.clone_from(&self.resume);
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
    fn stop_reason(
        &mut self,
        code: Option<u16>,
        advice: Option<&CloseAdvice>,
    ) -> Option<ClientError> {
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
            match pending {
                Pending::Publish(reply) => drop(reply.send(Err(ClientError::Disconnected))),
                Pending::Query(reply) => drop(reply.send(Err(ClientError::Disconnected))),
                Pending::Subscribe { .. }
                | Pending::Unsubscribe(_)
                | Pending::Ping
                | Pending::Refresh => {}
            }
        }
        self.confirmed.clear();
    }

    async fn finish(&mut self, error: Option<ClientError>, done: Option<oneshot::Sender<()>>) {
        let failure = error.clone().unwrap_or(ClientError::Closed);
        for (_, pending) in self.pending.drain() {
            match pending {
                Pending::Publish(reply) => drop(reply.send(Err(failure.clone()))),
                Pending::Query(reply) => drop(reply.send(Err(failure.clone()))),
                Pending::Subscribe { .. }
                | Pending::Unsubscribe(_)
                | Pending::Ping
                | Pending::Refresh => {}
            }
        }
        for queued in self.queue.drain(..) {
            match queued {
                Queued::Publish(p) => drop(p.reply.send(Err(failure.clone()))),
                Queued::Query(q) => drop(q.reply.send(Err(failure.clone()))),
            }
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
            Command::Query { reply, .. } => drop(reply.send(Err(ClientError::Closed))),
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
                for w in self.waiters.remove(&topic).unwrap_or_default() {
                    let _ = w.send(Err(ClientError::Closed));
                }
                let _ = reply.send(Ok(()));
            }
            Command::Publish {
                topic,
                data,
                id,
                exclude_self,
                reply,
            } => self.queue.push(Queued::Publish(QueuedPublish {
                topic,
                data,
                id,
                exclude_self,
                reply,
            })),
            Command::Query { frame, reply } => {
                self.queue.push(Queued::Query(QueuedQuery { frame, reply }))
            }
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
}
