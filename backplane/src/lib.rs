//! Cross-pod fan-out.
//!
//! Layout:
//! - this file: the [`Backplane`] trait, the [`Subject`]s it carries and the [`Subscription`]
//!   stream it hands out.
//! - [`memory`]: the in-process implementation (embedded default, single node; also lets tests
//!   run several gateway instances in one process).
//! - [`nats`]: the NATS implementation (one client per pod; subjects and their name encoding
//!   in [`nats::subjects`]).
//! - [`AnyBackplane`]: either of them, chosen at runtime from the configuration.
//!
//! The backplane is at-most-once and carries opaque bytes; ordering and loss are repaired above
//! it, from the store's history (a pod holds an arrival that is ahead of the `seq` it expects and
//! fills the gap from history, and re-syncs every topic after [`Backplane::reconnects`] ticks).

#![forbid(unsafe_code)]

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use protocol::{SessionId, Topic};
use tokio::sync::watch;

pub mod memory;
pub mod nats;

pub use memory::MemoryBackplane;
pub use nats::{NatsAuth, NatsBackplane, NatsConfig};

/// What a message is addressed to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// Messages of a topic, for every pod with local subscribers.
    Topic(Topic),
    /// Messages for one session, wherever it is connected (e.g. "you were taken over").
    Session(SessionId),
    /// Every pod's periodic heartbeat (load view).
    Heartbeat,
    /// Commands for one pod, by pod name.
    Control(String),
    /// Commands for every pod (the server API's disconnect and server-side subscriptions).
    Fleet,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Topic(t) => write!(f, "topic {t}"),
            Self::Session(s) => write!(f, "session {s}"),
            Self::Heartbeat => f.write_str("heartbeats"),
            Self::Control(p) => write!(f, "control {p}"),
            Self::Fleet => f.write_str("fleet control"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    #[error("backplane unavailable: {0}")]
    Unavailable(String),
    #[error("backplane call timed out")]
    Timeout,
    /// A configuration or subject the backplane cannot use (bad URL or prefix, a name that
    /// encodes to an oversized subject): retrying will not help.
    #[error("invalid backplane input: {0}")]
    Invalid(String),
}

/// A live subscription: a stream of payloads. Dropping it unsubscribes.
pub struct Subscription {
    inner: Pin<Box<dyn Stream<Item = Bytes> + Send>>,
}

impl Subscription {
    pub fn new(stream: impl Stream<Item = Bytes> + Send + 'static) -> Self {
        Self {
            inner: Box::pin(stream),
        }
    }
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Subscription")
    }
}

impl Stream for Subscription {
    type Item = Bytes;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.inner.as_mut().poll_next(cx)
    }
}

/// Publish/subscribe between pods. Cheap to clone and share.
pub trait Backplane: Send + Sync + 'static {
    /// Publishes `payload` to everyone subscribed to `subject` (at most once).
    fn publish(
        &self,
        subject: &Subject,
        payload: Bytes,
    ) -> impl Future<Output = Result<(), BackplaneError>> + Send;

    /// Subscribes to `subject`. When this returns, messages published afterwards are delivered.
    fn subscribe(
        &self,
        subject: &Subject,
    ) -> impl Future<Output = Result<Subscription, BackplaneError>> + Send;

    /// A counter that ticks each time the connection to the backplane was re-established:
    /// anything published meanwhile may have been missed and must be re-read from history.
    fn reconnects(&self) -> watch::Receiver<u64>;

    /// Whether the backplane is connected now: feeds `/readyz`.
    fn is_connected(&self) -> bool;

    /// The largest payload one publish may carry, when the backplane has a limit (NATS: the
    /// server's `max_payload`). A larger publish fails, so callers refuse it up front.
    fn max_payload(&self) -> Option<usize>;
}

/// The backplane the gateway runs with, picked at startup: memory when no NATS URL is
/// configured (embedded default), NATS otherwise. An enum rather than a trait object because
/// [`Backplane`]'s methods return `impl Future` and are therefore not object safe.
#[derive(Debug, Clone)]
pub enum AnyBackplane {
    Memory(MemoryBackplane),
    Nats(NatsBackplane),
}

impl From<MemoryBackplane> for AnyBackplane {
    fn from(b: MemoryBackplane) -> Self {
        Self::Memory(b)
    }
}

impl From<NatsBackplane> for AnyBackplane {
    fn from(b: NatsBackplane) -> Self {
        Self::Nats(b)
    }
}

impl Backplane for AnyBackplane {
    async fn publish(&self, subject: &Subject, payload: Bytes) -> Result<(), BackplaneError> {
        match self {
            Self::Memory(b) => b.publish(subject, payload).await,
            Self::Nats(b) => b.publish(subject, payload).await,
        }
    }

    async fn subscribe(&self, subject: &Subject) -> Result<Subscription, BackplaneError> {
        match self {
            Self::Memory(b) => b.subscribe(subject).await,
            Self::Nats(b) => b.subscribe(subject).await,
        }
    }

    fn reconnects(&self) -> watch::Receiver<u64> {
        match self {
            Self::Memory(b) => b.reconnects(),
            Self::Nats(b) => b.reconnects(),
        }
    }

    fn is_connected(&self) -> bool {
        match self {
            Self::Memory(b) => b.is_connected(),
            Self::Nats(b) => b.is_connected(),
        }
    }

    fn max_payload(&self) -> Option<usize> {
        match self {
            Self::Memory(b) => b.max_payload(),
            Self::Nats(b) => b.max_payload(),
        }
    }
}
