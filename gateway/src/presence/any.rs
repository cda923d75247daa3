//! [`AnyPresence`]: the presence store that goes with the pod's store (Redis when the store is,
//! else in process), delegating each call to it.

use std::collections::HashSet;
use std::time::Duration;

use protocol::{PresencePosition, Topic};

use super::{Change, Event, EventLog, Listing, LogRead, PresenceError, PresenceStore, Stats};
use super::{memory, redis};
use crate::Store;

/// The presence store of the pod's store: Redis when the store is, else in process.
#[derive(Debug, Clone)]
pub enum AnyPresence {
    Memory(memory::MemoryPresence),
    Redis(redis::RedisPresence),
}

impl AnyPresence {
    /// With Redis and events on, `outbox` is where joins and leaves stage their events.
    pub fn for_store(
        store: &Store,
        log: EventLog,
        outbox: Option<crate::events::outbox::RedisOutbox>,
    ) -> Self {
        match store {
            Store::Memory(_) => Self::Memory(memory::MemoryPresence::new(log)),
            Store::Redis(store) => {
                Self::Redis(redis::RedisPresence::new(store.clone(), log, outbox))
            }
        }
    }
}

macro_rules! delegate {
    ($self:ident, $method:ident($($arg:expr),*)) => {
        match $self {
            AnyPresence::Memory(p) => p.$method($($arg),*).await,
            // Boxed: fred's futures are ~15 KB, and unboxed they would size every future that
            // awaits this one (a connection's message handler among them) in memory mode too.
            AnyPresence::Redis(p) => Box::pin(p.$method($($arg),*)).await,
        }
    };
}

impl PresenceStore for AnyPresence {
    async fn apply(
        &self,
        topic: &Topic,
        pod: &str,
        ttl: Duration,
        changes: &[Change],
    ) -> Result<Vec<Event>, PresenceError> {
        delegate!(self, apply(topic, pod, ttl, changes))
    }

    async fn sweep(&self, topic: &Topic, live: &[String]) -> Result<Vec<Event>, PresenceError> {
        delegate!(self, sweep(topic, live))
    }

    async fn members(
        &self,
        topic: &Topic,
        live: &HashSet<String>,
        max: usize,
    ) -> Result<Option<Listing>, PresenceError> {
        delegate!(self, members(topic, live, max))
    }

    async fn events_since(
        &self,
        topic: &Topic,
        since: &PresencePosition,
        limit: usize,
    ) -> Result<LogRead, PresenceError> {
        delegate!(self, events_since(topic, since, limit))
    }

    async fn stats(&self, topic: &Topic) -> Result<Stats, PresenceError> {
        delegate!(self, stats(topic))
    }

    async fn register(&self, topics: &[Topic]) -> Result<(), PresenceError> {
        delegate!(self, register(topics))
    }

    async fn topics(&self) -> Result<Vec<Topic>, PresenceError> {
        delegate!(self, topics())
    }
}
