//! What events are kept in, one small trait per concern, each with a memory and a Redis
//! implementation:
//! - [`EventLog`]: appending an event to its partition.
//! - [`EventQueue`]: what delivery needs: a partition's lease, its oldest undelivered events,
//!   marking them delivered, and the backlog bound.
//! - [`Tracker`]: sessions (attached to a pod, or detached with a deadline) and the sessions
//!   subscribed to each topic, deciding `topic.occupied`/`vacated` and each session's end once.

use std::future::Future;
use std::time::Duration;

use protocol::Topic;

use super::memory::{MemoryLog, MemoryTracker};
use super::outbox::RedisOutbox;
use super::redis_log::RedisLog;
use super::redis_tracker::RedisTracker;
use super::{Event, EventError};
use crate::Store;

/// One stored event: its log id (increasing within a partition) and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub json: String,
    /// When it was appended (Unix ms), for the lag metric.
    pub at_ms: u64,
}

pub trait EventLog: Send + Sync + 'static {
    /// Appends one event (its JSON) to `partition`.
    fn append(
        &self,
        partition: u32,
        json: &str,
    ) -> impl Future<Output = Result<(), EventError>> + Send;
}

pub trait EventQueue: Send + Sync + 'static {
    /// Takes or renews `partition`'s delivery lease for `holder`; `true` while it is held.
    fn lease(
        &self,
        partition: u32,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, EventError>> + Send;

    /// Gives the lease up (at shutdown), so another pod takes over at once.
    fn release(
        &self,
        partition: u32,
        holder: &str,
    ) -> impl Future<Output = Result<(), EventError>> + Send;

    /// Up to `max` of the oldest undelivered events: first those read before but not delivered
    /// (by any pod, a dead one's included), then new ones.
    fn next_batch(
        &self,
        partition: u32,
        holder: &str,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Entry>, EventError>> + Send;

    /// Marks delivered events and removes them from the log.
    fn ack(
        &self,
        partition: u32,
        ids: &[String],
    ) -> impl Future<Output = Result<(), EventError>> + Send;

    /// Trims the partition to `max` undelivered events (oldest first); returns the backlog
    /// before trimming and how many were dropped.
    fn bound(
        &self,
        partition: u32,
        max: u64,
    ) -> impl Future<Output = Result<(u64, u64), EventError>> + Send;
}

/// A session as the tracker ended it: its user, its `session.ended` (with the user; `None`
/// when this call finished an end an earlier one decided, whose event is staged already), and
/// the `topic.vacated` events of the topics it was the last session of.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub user: Option<String>,
    pub ended: Option<Event>,
    pub vacated: Vec<Event>,
}

pub trait Tracker: Send + Sync + 'static {
    /// The session is connected on `pod` by connection `conn` (fresh or resumed). `true` when
    /// the tracker did not know it (a fresh session, or one from before events were on): its
    /// topics must be added. `started` (a fresh `hello`'s `session.started`) is staged with
    /// the decision when it is `true`.
    fn attach(
        &self,
        session: &str,
        user: Option<&str>,
        pod: &str,
        conn: u64,
        started: Option<&Event>,
    ) -> impl Future<Output = Result<bool, EventError>> + Send;

    /// Its connection `conn` on `pod` ended (`None`: whichever, the pod is gone); it may resume
    /// until `deadline_ms`. Ignored when another connection holds the session since.
    fn detach(
        &self,
        session: &str,
        pod: &str,
        conn: Option<u64>,
        deadline_ms: u64,
    ) -> impl Future<Output = Result<(), EventError>> + Send;

    /// The session subscribed `topic`; `true` when no session was subscribed before, and then
    /// `occupied` is staged with the decision.
    fn subscribe(
        &self,
        session: &str,
        topic: &Topic,
        occupied: &Event,
    ) -> impl Future<Output = Result<bool, EventError>> + Send;

    /// The session unsubscribed `topic`; `true` when it was the last one, and then `vacated`
    /// is staged with the decision.
    fn unsubscribe(
        &self,
        session: &str,
        topic: &Topic,
        vacated: &Event,
    ) -> impl Future<Output = Result<bool, EventError>> + Send;

    /// Ends the session; `None` when it had ended already (each end is reported once) or, with
    /// `only_detached`, when it is attached to a pod (resumed before its deadline). `ended`
    /// (its user is replaced by the one the tracker kept) is staged with the decision, and so
    /// is each `topic.vacated`. An end that fails halfway is finished by the next call.
    fn end(
        &self,
        session: &str,
        only_detached: bool,
        ended: &Event,
    ) -> impl Future<Output = Result<Option<Ended>, EventError>> + Send;

    /// Detached sessions whose deadline is at or before `now_ms`, at most `max`.
    fn expired(
        &self,
        now_ms: u64,
        max: usize,
    ) -> impl Future<Output = Result<Vec<String>, EventError>> + Send;

    /// Marks `pod` alive for `ttl`.
    fn alive(
        &self,
        pod: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), EventError>> + Send;

    /// Pods that hold sessions but whose liveness mark is gone (killed, or cut off).
    fn dead_pods(&self) -> impl Future<Output = Result<Vec<String>, EventError>> + Send;

    /// Detaches (deadline `deadline_ms`) every session `pod` holds: a dead pod's, or at a pod's
    /// start those of its previous run under the same name. Returns how many.
    fn detach_pod(
        &self,
        pod: &str,
        deadline_ms: u64,
    ) -> impl Future<Output = Result<u64, EventError>> + Send;

    /// Takes or renews the sweeper's lease.
    fn sweeper_lease(
        &self,
        holder: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<bool, EventError>> + Send;
}

/// The log of the pod's store.
#[derive(Debug, Clone)]
pub enum AnyLog {
    Memory(MemoryLog),
    Redis(RedisLog),
}

impl AnyLog {
    pub fn for_store(store: &Store, partitions: u32) -> Self {
        match store {
            Store::Memory(_) => Self::Memory(MemoryLog::new(partitions)),
            Store::Redis(store) => Self::Redis(RedisLog::new(store.clone())),
        }
    }
}

/// The tracker of the pod's store.
#[derive(Debug, Clone)]
pub enum AnyTracker {
    Memory(MemoryTracker),
    /// Boxed: its scripts make it much larger than the memory tracker.
    Redis(Box<RedisTracker>),
}

impl AnyTracker {
    /// The tracker of the pod's store; with Redis its scripts stage events in `outbox`.
    pub fn for_store(store: &Store, outbox: Option<&RedisOutbox>) -> Self {
        match (store, outbox) {
            (Store::Redis(store), Some(outbox)) => {
                Self::Redis(Box::new(RedisTracker::new(store.clone(), outbox.clone())))
            }
            _ => Self::Memory(MemoryTracker::default()),
        }
    }
}

macro_rules! delegate {
    ($enum:ident, $self:ident, $method:ident($($arg:expr),*)) => {
        match $self {
            $enum::Memory(x) => x.$method($($arg),*).await,
            // Boxed: see `AnyStore`'s `delegate!` (fred's futures are ~15 KB).
            $enum::Redis(x) => Box::pin(x.$method($($arg),*)).await,
        }
    };
}

impl EventLog for AnyLog {
    async fn append(&self, partition: u32, json: &str) -> Result<(), EventError> {
        delegate!(AnyLog, self, append(partition, json))
    }
}

impl EventQueue for AnyLog {
    async fn lease(&self, partition: u32, holder: &str, ttl: Duration) -> Result<bool, EventError> {
        delegate!(AnyLog, self, lease(partition, holder, ttl))
    }
    async fn release(&self, partition: u32, holder: &str) -> Result<(), EventError> {
        delegate!(AnyLog, self, release(partition, holder))
    }
    async fn next_batch(
        &self,
        partition: u32,
        holder: &str,
        max: usize,
    ) -> Result<Vec<Entry>, EventError> {
        delegate!(AnyLog, self, next_batch(partition, holder, max))
    }
    async fn ack(&self, partition: u32, ids: &[String]) -> Result<(), EventError> {
        delegate!(AnyLog, self, ack(partition, ids))
    }
    async fn bound(&self, partition: u32, max: u64) -> Result<(u64, u64), EventError> {
        delegate!(AnyLog, self, bound(partition, max))
    }
}

impl Tracker for AnyTracker {
    async fn attach(
        &self,
        session: &str,
        user: Option<&str>,
        pod: &str,
        conn: u64,
        started: Option<&Event>,
    ) -> Result<bool, EventError> {
        delegate!(AnyTracker, self, attach(session, user, pod, conn, started))
    }
    async fn detach(
        &self,
        session: &str,
        pod: &str,
        conn: Option<u64>,
        deadline_ms: u64,
    ) -> Result<(), EventError> {
        delegate!(AnyTracker, self, detach(session, pod, conn, deadline_ms))
    }
    async fn subscribe(
        &self,
        session: &str,
        topic: &Topic,
        occupied: &Event,
    ) -> Result<bool, EventError> {
        delegate!(AnyTracker, self, subscribe(session, topic, occupied))
    }
    async fn unsubscribe(
        &self,
        session: &str,
        topic: &Topic,
        vacated: &Event,
    ) -> Result<bool, EventError> {
        delegate!(AnyTracker, self, unsubscribe(session, topic, vacated))
    }
    async fn end(
        &self,
        session: &str,
        only_detached: bool,
        ended: &Event,
    ) -> Result<Option<Ended>, EventError> {
        delegate!(AnyTracker, self, end(session, only_detached, ended))
    }
    async fn expired(&self, now_ms: u64, max: usize) -> Result<Vec<String>, EventError> {
        delegate!(AnyTracker, self, expired(now_ms, max))
    }
    async fn alive(&self, pod: &str, ttl: Duration) -> Result<(), EventError> {
        delegate!(AnyTracker, self, alive(pod, ttl))
    }
    async fn dead_pods(&self) -> Result<Vec<String>, EventError> {
        delegate!(AnyTracker, self, dead_pods())
    }
    async fn detach_pod(&self, pod: &str, deadline_ms: u64) -> Result<u64, EventError> {
        delegate!(AnyTracker, self, detach_pod(pod, deadline_ms))
    }
    async fn sweeper_lease(&self, holder: &str, ttl: Duration) -> Result<bool, EventError> {
        delegate!(AnyTracker, self, sweeper_lease(holder, ttl))
    }
}
