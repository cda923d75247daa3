//! Rust client of the WebSocket gateway (wire protocol v1, see `docs/protocol.md`).
//!
//! A [`Client`] is a cheap, cloneable handle; the connection itself runs in a task of its own
//! and reports what happens as a [`Stream`] of [`Event`]s. On top of the gateway's guarantees
//! the client:
//!
//! - keeps each topic's `{seq, epoch}` [`Position`], drops duplicates by `seq`, and turns
//!   every possible loss (`recovered:false`, an epoch change, a skipped `seq`) into an
//!   [`Event::Gap`]: never a silent gap;
//! - reconnects with full-jitter exponential backoff, trying its URLs in turn; follows the
//!   gateway's close advice (`after_ms` is waited, `reconnect:false` stops with
//!   [`Event::Closed`]), and on `token_expired` fetches a new token from its [`TokenSource`];
//! - resumes with its resume token and every topic's position in `hello`, and re-subscribes
//!   with `since` when the session could not be resumed;
//! - finds dead connections with app-level pings, and refreshes the token before `exp`.
//!
//! Besides subscriptions and publishes it makes the requests answered by one frame, with typed
//! results: [`Client::rpc`] (the application's rpc hook), [`Client::history`] (a page of a
//! topic's history without subscribing), [`Client::presence`] and [`Client::presence_stats`].
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use gateway_client::{ClientConfig, Event};
//!
//! # async fn demo() -> Result<(), gateway_client::ClientError> {
//! let (client, mut events) = gateway_client::connect(ClientConfig::new(["ws://127.0.0.1:8080/ws"]));
//! client.subscribe("chat", None).await?;
//! let seq = client.publish("chat", &serde_json::json!({"text": "hi"}), None).await?;
//! println!("published as {seq}");
//! while let Some(event) = events.next().await {
//!     match event {
//!         Event::Message(m) => println!("{} #{}: {}", m.topic, m.seq, m.data.get()),
//!         Event::Gap(g) => eprintln!("gap on {}: {}", g.topic, g.reason.as_str()),
//!         Event::Closed { .. } => break,
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! Poll the event stream: it is bounded, and a client whose events are not read stops reading
//! its socket (the gateway then serves it from history, or closes it with 1013 `lagged`).

#![forbid(unsafe_code)]

mod config;
mod connection;
mod presence;
mod queries;
mod topics;
mod wire;

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};

pub use config::{Backoff, ClientConfig, TokenError, TokenSource};
pub use presence::{PresenceEvent, PresencePosition};
pub use queries::{
    HistoryMessage, HistoryPage, HistoryQuery, PresenceMember, PresenceStats, valid_method,
};
pub use topics::{Gap, GapReason, Message};
pub use wire::{CloseAdvice, Position};

/// What the client reports, in the order it happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// A `welcome`: connected (again). `resumed` says whether the session was resumed.
    Connected {
        session: String,
        pod: Option<String>,
        user: Option<String>,
        resumed: bool,
    },
    /// A topic is subscribed (or restored by a resume) and delivers from `position` on.
    Subscribed { topic: String, position: Position },
    /// The gateway removed a subscription (`reason`: e.g. `forbidden` after a refresh).
    Unsubscribed {
        topic: String,
        reason: Option<String>,
    },
    /// A message, once and in `seq` order.
    Message(Message),
    /// Messages may be missing on a topic (`recovered:false`, an epoch change, a skipped seq).
    Gap(Gap),
    /// A message at or below the topic's position, dropped (e.g. an overlapping resume).
    Duplicate { topic: String, seq: u64 },
    /// A join or leave on a topic with join/leave events, once and in `pseq` order (a resume
    /// or re-subscribe sends the topic's presence position, so missed ones are replayed).
    Presence(PresenceEvent),
    /// Members sent in place of join/leave events the gateway could not replay (its log no
    /// longer had them, or the presence epoch changed): replaces what was known of the
    /// topic's members; the events after `pseq` follow.
    PresenceList {
        topic: String,
        members: Vec<PresenceMember>,
        pseq: u64,
        epoch: String,
    },
    /// The connection ended; `code` is the close code (`None`: no close frame).
    Disconnected {
        code: Option<u16>,
        reason: String,
        advice: Option<CloseAdvice>,
    },
    /// The next attempt starts after `delay` (the server's `after_ms`, or the backoff).
    Reconnecting { attempt: u32, delay: Duration },
    /// The token was refreshed in place (`refreshed`), with its new `exp`.
    Refreshed { exp: Option<u64> },
    /// Something failed that does not end the client (an `error` frame without a request, a
    /// token fetch that failed, a refused subscription).
    Error(ClientError),
    /// The client stopped for good: after [`Client::close`] (`error: None`) or because the
    /// gateway said not to reconnect.
    Closed { error: Option<ClientError> },
}

/// Errors of client calls and events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The gateway answered with an `error` frame (act on `code`).
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    /// The connection closed before the reply: the outcome is unknown (retry a publish with the
    /// same id).
    #[error("the connection closed before the reply")]
    Disconnected,
    /// No reply in time.
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// The gateway closed with `reconnect:false` (or `token_expired` without a token source).
    #[error("closed by the gateway ({code} {error}), not reconnecting")]
    Stopped { code: u16, error: String },
    #[error("invalid topic {0:?}: 1-200 characters of A-Z a-z 0-9 _ . : -")]
    InvalidTopic(String),
    #[error("invalid rpc method {0:?}: 1-100 characters of A-Z a-z 0-9 _ . : / -")]
    InvalidMethod(String),
    #[error("data is not JSON: {0}")]
    Data(String),
    #[error("token source failed: {0}")]
    Token(String),
}

impl ClientError {
    /// The gateway's error code, for `Server` errors.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

/// How to publish (see [`Client::publish_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOptions<'a> {
    /// Idempotency key: a retry with the same id gets the first attempt's `seq`.
    pub id: Option<&'a str>,
    /// Echo suppression: this client's session is sent a `skipped` frame in the message's
    /// place instead of the message. Its position moves past it, so no gap is reported, and
    /// nothing is emitted for it (on a resume too).
    pub exclude_self: bool,
}

/// Requests from the handles to the connection task.
#[derive(Debug)]
pub(crate) enum Command {
    Subscribe {
        topic: String,
        since: Option<Position>,
        reply: Reply<Position>,
    },
    Unsubscribe {
        topic: String,
        reply: Reply<()>,
    },
    Publish {
        topic: String,
        data: Box<RawValue>,
        id: Option<String>,
        exclude_self: bool,
        reply: Reply<u64>,
    },
    /// A request answered by one frame (`rpc`, `history`, `presence`, `presence_stats`): the
    /// frame without its `ref`; the reply is the answer's text.
    Query {
        frame: serde_json::Map<String, serde_json::Value>,
        reply: Reply<String>,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

/// A handle on the client; clone it freely. The connection stops when [`Client::close`] is
/// called or every handle is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<Mutex<Shared>>,
    request_timeout: Duration,
}

/// What the handles read of the connection task's state.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub positions: BTreeMap<String, Position>,
    pub resume: Option<String>,
}

/// The client's events, in order. Ends after [`Event::Closed`].
#[derive(Debug)]
pub struct Events {
    rx: mpsc::Receiver<Event>,
}

impl Stream for Events {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

/// How many events may wait unread before the connection stops reading its socket.
const EVENT_BUFFER: usize = 1024;
/// How long a request may wait for its reply (including a wait for a connection).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts a client: it connects in the background and keeps reconnecting until closed.
/// Must be called within a Tokio runtime.
pub fn connect(config: ClientConfig) -> (Client, Events) {
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (events_tx, rx) = mpsc::channel(EVENT_BUFFER);
    let shared = Arc::new(Mutex::new(Shared {
        positions: BTreeMap::new(),
        resume: config.resume.clone(),
    }));
    let task = connection::Connection::new(config, commands_rx, events_tx, shared.clone());
    tokio::spawn(task.run());
    let client = Client {
        commands,
        shared,
        request_timeout: REQUEST_TIMEOUT,
    };
    (client, Events { rx })
}

/// Whether `topic` is a valid topic name (1-200 characters of `A-Z a-z 0-9 _ . : -`).
pub fn valid_topic(topic: &str) -> bool {
    (1..=200).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

fn check_topic(topic: &str) -> Result<(), ClientError> {
    if valid_topic(topic) {
        Ok(())
    } else {
        Err(ClientError::InvalidTopic(topic.to_owned()))
    }
}

impl Client {
    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, ClientError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(self.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ClientError::Closed),
            Err(_) => Err(ClientError::Timeout(self.request_timeout)),
        }
    }

    /// Subscribes to `topic`; resolves once the gateway confirmed it, with the position delivery
    /// starts after. `since` asks for every message after that position (a [`Event::Gap`] says
    /// when they are no longer there). Subscriptions are kept across reconnects.
    pub async fn subscribe(
        &self,
        topic: &str,
        since: Option<Position>,
    ) -> Result<Position, ClientError> {
        check_topic(topic)?;
        let topic = topic.to_owned();
        self.request(|reply| Command::Subscribe {
            topic,
            since,
            reply,
        })
        .await
    }

    /// Unsubscribes from `topic`.
    pub async fn unsubscribe(&self, topic: &str) -> Result<(), ClientError> {
        let topic = topic.to_owned();
        self.request(|reply| Command::Unsubscribe { topic, reply })
            .await
    }

    /// Publishes `data` on `topic` and resolves with its `seq` once it is in the topic's
    /// history. With an `id`, a retry after [`ClientError::Disconnected`] or an `unavailable`
    /// error is safe: it gets the first attempt's `seq`.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
        id: Option<&str>,
    ) -> Result<u64, ClientError> {
        let data =
            serde_json::value::to_raw_value(data).map_err(|e| ClientError::Data(e.to_string()))?;
        self.publish_raw(topic, data, id).await
    }

    /// Publishes JSON text as is (forwarded byte for byte by the gateway).
    pub async fn publish_raw(
        &self,
        topic: &str,
        data: Box<RawValue>,
        id: Option<&str>,
    ) -> Result<u64, ClientError> {
        let options = PublishOptions {
            id,
            ..PublishOptions::default()
        };
        self.publish_raw_with(topic, data, options).await
    }

    /// [`Client::publish`] with [`PublishOptions`]: e.g. `exclude_self`, so this client is
    /// not sent its own message (its position still moves past it: no gap is reported).
    pub async fn publish_with<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        data: &T,
        options: PublishOptions<'_>,
    ) -> Result<u64, ClientError> {
        let data =
            serde_json::value::to_raw_value(data).map_err(|e| ClientError::Data(e.to_string()))?;
        self.publish_raw_with(topic, data, options).await
    }

    /// [`Client::publish_raw`] with [`PublishOptions`].
    pub async fn publish_raw_with(
        &self,
        topic: &str,
        data: Box<RawValue>,
        options: PublishOptions<'_>,
    ) -> Result<u64, ClientError> {
        check_topic(topic)?;
        let topic = topic.to_owned();
        let id = options.id.map(str::to_owned);
        let exclude_self = options.exclude_self;
        self.request(|reply| Command::Publish {
            topic,
            data,
            id,
            exclude_self,
            reply,
        })
        .await
    }

    /// Every subscribed topic's position, as the next `hello` would present it.
    pub fn positions(&self) -> BTreeMap<String, Position> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .positions
            .clone()
    }

    /// The session's resume token (from the last `welcome`). Keep it secret; a process that
    /// restarts resumes its session with it ([`ClientConfig::resume`]) and each topic's
    /// position (`since` in [`Client::subscribe`]).
    pub fn resume_token(&self) -> Option<String> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .resume
            .clone()
    }

    /// Closes the connection for good (close code 1000); the session stays resumable on the
    /// gateway for its resume window. The event stream ends with [`Event::Closed`].
    pub async fn close(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Close { reply }).is_ok() {
            let _ = done.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names() {
        assert!(valid_topic("chat.room-1:a_b"));
        assert!(!valid_topic(""));
        assert!(!valid_topic("a b"));
        assert!(!valid_topic(&"x".repeat(201)));
    }
}
