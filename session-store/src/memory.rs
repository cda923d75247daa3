//! The in-process store: the embedded default of a single gateway.
//!
//! Same semantics as the Redis store (capped history by count and age, epochs, session TTLs)
//! so the gateway behaves the same in both modes. Expired entries are swept lazily: on access,
//! and over the whole map every few thousand writes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{Epoch, Payload, Position, SessionId, Topic};
use tokio::time::Instant;

use crate::{
    Appended, HistoryLimits, HistoryPage, SessionRecord, SessionStore, StoreError, StoredMessage,
};

const SWEEP_EVERY: u64 = 4_096;

#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: HistoryLimits,
    topics: Mutex<HashMap<Topic, TopicState>>,
    sessions: Mutex<HashMap<SessionId, (SessionRecord, Instant)>>,
    writes: AtomicU64,
}

#[derive(Debug)]
struct TopicState {
    seq: u64,
    epoch: Epoch,
    history: VecDeque<(StoredMessage, Instant)>,
    touched: Instant,
}

impl TopicState {
    fn new(now: Instant) -> Self {
        Self {
            seq: 0,
            epoch: Epoch::generate(),
            history: VecDeque::new(),
            touched: now,
        }
    }

    fn trim(&mut self, limits: &HistoryLimits, now: Instant) {
        while self.history.len() > limits.max_len {
            self.history.pop_front();
        }
        while let Some((_, at)) = self.history.front() {
            if now.duration_since(*at) >= limits.ttl {
                self.history.pop_front();
            } else {
                break;
            }
        }
    }

    fn top(&self) -> Position {
        Position {
            seq: self.seq,
            epoch: self.epoch.clone(),
        }
    }
}

impl MemoryStore {
    pub fn new(limits: HistoryLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                topics: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                writes: AtomicU64::new(0),
            }),
        }
    }

    /// Runs `f` on the topic's live state, replacing a topic that expired while idle.
    fn with_topic<R>(&self, topic: &Topic, f: impl FnOnce(&mut TopicState, Instant) -> R) -> R {
        let now = Instant::now();
        let mut topics = self.inner.topics.lock().expect("topics lock");
        let state = topics
            .entry(topic.clone())
            .or_insert_with(|| TopicState::new(now));
        if now.duration_since(state.touched) >= self.inner.limits.ttl {
            *state = TopicState::new(now);
        }
        state.trim(&self.inner.limits, now);
        f(state, now)
    }

    fn maybe_sweep(&self) {
        if self.inner.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        let now = Instant::now();
        let ttl = self.inner.limits.ttl;
        self.inner
            .topics
            .lock()
            .expect("topics lock")
            .retain(|_, t| now.duration_since(t.touched) < ttl);
        self.inner
            .sessions
            .lock()
            .expect("sessions lock")
            .retain(|_, (_, expires)| *expires > now);
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(HistoryLimits::default())
    }
}

impl SessionStore for MemoryStore {
    async fn append(&self, topic: &Topic, data: &Payload) -> Result<Appended, StoreError> {
        let limits = self.inner.limits;
        let appended = self.with_topic(topic, |state, now| {
            state.seq += 1;
            state.touched = now;
            if limits.max_len > 0 {
                state.history.push_back((
                    StoredMessage {
                        seq: state.seq,
                        data: data.clone(),
                    },
                    now,
                ));
                state.trim(&limits, now);
            }
            Appended {
                seq: state.seq,
                epoch: state.epoch.clone(),
            }
        });
        self.maybe_sweep();
        Ok(appended)
    }

    async fn top(&self, topic: &Topic) -> Result<Position, StoreError> {
        Ok(self.with_topic(topic, |state, _| state.top()))
    }

    async fn history(&self, topic: &Topic, after: u64) -> Result<HistoryPage, StoreError> {
        Ok(self.with_topic(topic, |state, _| HistoryPage {
            top: state.top(),
            messages: state
                .history
                .iter()
                .filter(|(m, _)| m.seq > after)
                .map(|(m, _)| m.clone())
                .collect(),
        }))
    }

    async fn save_session(&self, session: &SessionRecord, ttl: Duration) -> Result<(), StoreError> {
        let expires = Instant::now() + ttl;
        self.inner
            .sessions
            .lock()
            .expect("sessions lock")
            .insert(session.id.clone(), (session.clone(), expires));
        self.maybe_sweep();
        Ok(())
    }

    async fn load_session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        match sessions.get(id) {
            Some((record, expires)) if *expires > Instant::now() => Ok(Some(record.clone())),
            Some(_) => {
                sessions.remove(id);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn delete_session(&self, id: &SessionId) -> Result<(), StoreError> {
        self.inner
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(id);
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
