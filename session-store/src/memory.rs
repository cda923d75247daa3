//! The in-process store: the embedded default of a single gateway.
//!
//! Same semantics as the Redis store (capped history by count and age, epochs, publish ids,
//! session generations and TTLs) so the gateway behaves the same in both modes. A process-local
//! store never goes backwards, so its epochs change only when a topic expires. Expired entries
//! are swept lazily: on access, and over the whole map every few thousand writes.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{Epoch, Payload, Position, PublishId, SessionId, Topic};
use tokio::time::Instant;

use crate::ordered::{Issued, IssuedAppend, Lane, OrderedAppends};
use crate::{
    Appended, Claim, Extras, HistoryLimits, HistoryPage, Owner, PAGE_BYTES, PrefixLimits,
    SessionRecord, SessionStore, StoreError, StoredMessage,
};

const SWEEP_EVERY: u64 = 4_096;

#[derive(Debug, Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limits: HistoryLimits,
    prefix_limits: PrefixLimits,
    topics: Mutex<HashMap<Topic, TopicState>>,
    sessions: Mutex<HashMap<SessionId, SessionEntry>>,
    writes: AtomicU64,
}

#[derive(Debug)]
struct SessionEntry {
    record: Option<Box<StoredRecord>>,
    owner: Owner,
    expires: Instant,
}

/// A [`SessionRecord`] as kept here: its positions in a boxed slice rather than a `BTreeMap`,
/// whose first node has room for eleven entries. Every session of an embedded pod has one,
/// so this is a part of each idle session's footprint.
#[derive(Debug)]
struct StoredRecord {
    id: SessionId,
    secret: String,
    user: Option<String>,
    subscriptions: Box<[(Topic, Position)]>,
    confirmed: bool,
    created_ms: u64,
    last_pod: String,
    /// Boxed: only sessions admitted by a connect hook have one.
    granted: Option<Box<crate::HookGrant>>,
    info: Option<Box<serde_json::Value>>,
}

impl StoredRecord {
    fn new(r: &SessionRecord) -> Box<Self> {
        Box::new(Self {
            id: r.id.clone(),
            secret: r.secret.clone(),
            user: r.user.clone(),
            subscriptions: r
                .subscriptions
                .iter()
                .map(|(t, p)| (t.clone(), p.clone()))
                .collect(),
            confirmed: r.confirmed,
            created_ms: r.created_ms,
            last_pod: r.last_pod.clone(),
            granted: r.granted.clone().map(Box::new),
            info: r.info.clone().map(Box::new),
        })
    }

    fn record(&self) -> SessionRecord {
        SessionRecord {
            id: self.id.clone(),
            secret: self.secret.clone(),
            user: self.user.clone(),
            subscriptions: self.subscriptions.iter().cloned().collect(),
            confirmed: self.confirmed,
            created_ms: self.created_ms,
            last_pod: self.last_pod.clone(),
            granted: self.granted.as_deref().cloned(),
            info: self.info.as_deref().cloned(),
        }
    }
}

#[derive(Debug)]
struct TopicState {
    seq: u64,
    epoch: Epoch,
    history: VecDeque<(StoredMessage, Instant)>,
    /// Publish ids seen recently, with what their first append got.
    ids: HashMap<PublishId, (u64, Instant)>,
    touched: Instant,
}

impl TopicState {
    fn new(now: Instant, after: Option<&Epoch>) -> Self {
        let mut epoch = Epoch::generate();
        if let Some(old) = after
            && !epoch.is_newer_than(old)
        {
            // Within the same millisecond as the old one (or a clock step back): stay ordered.
            epoch = Epoch::at(
                u64::from_str_radix(&old.as_str()[..12], 16).unwrap_or(0) + 1,
                0,
            );
        }
        Self {
            seq: 0,
            epoch,
            history: VecDeque::new(),
            ids: HashMap::new(),
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
        Self::with_prefix_limits(limits, PrefixLimits::default())
    }

    /// A store applying `prefix_limits` to the topics under their prefixes, `limits` to others.
    pub fn with_prefix_limits(limits: HistoryLimits, prefix_limits: PrefixLimits) -> Self {
        Self {
            inner: Arc::new(Inner {
                limits,
                prefix_limits,
                topics: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                writes: AtomicU64::new(0),
            }),
        }
    }

    /// One newest-first page of messages with `seq` below `before`: see
    /// [`crate::ReverseHistory`].
    pub(crate) fn page_before(&self, topic: &Topic, before: u64, limit: usize) -> HistoryPage {
        self.with_topic(topic, |state, _| {
            let mut bytes = 0;
            let messages = state
                .history
                .iter()
                .rev()
                .filter(|(m, _)| m.seq < before)
                .take(limit)
                .take_while(|(m, _)| {
                    let first = bytes == 0;
                    bytes += m.data.len().max(1);
                    first || bytes <= PAGE_BYTES
                })
                .map(|(m, _)| m.clone())
                .collect();
            HistoryPage {
                top: state.top(),
                messages,
            }
        })
    }

    fn limits_of(&self, topic: &Topic) -> HistoryLimits {
        self.inner.prefix_limits.get(topic, self.inner.limits)
    }

    /// Runs `f` on the topic's live state, replacing a topic that expired while idle.
    fn with_topic<R>(&self, topic: &Topic, f: impl FnOnce(&mut TopicState, Instant) -> R) -> R {
        let now = Instant::now();
        let limits = self.limits_of(topic);
        let mut topics = self.inner.topics.lock().expect("topics lock");
        let state = topics
            .entry(topic.clone())
            .or_insert_with(|| TopicState::new(now, None));
        if now.duration_since(state.touched) >= limits.ttl {
            *state = TopicState::new(now, Some(&state.epoch));
        }
        state.trim(&limits, now);
        f(state, now)
    }

    fn maybe_sweep(&self) {
        if self.inner.writes.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        let now = Instant::now();
        self.inner
            .topics
            .lock()
            .expect("topics lock")
            .retain(|topic, t| now.duration_since(t.touched) < self.limits_of(topic).ttl);
        self.inner
            .sessions
            .lock()
            .expect("sessions lock")
            .retain(|_, entry| entry.expires > now);
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(HistoryLimits::default())
    }
}

/// Appends are applied synchronously, so [`Issued::now`] finishes them in issue order.
impl OrderedAppends for MemoryStore {
    fn issue_append_with(
        &self,
        _lane: &mut Lane,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
        extras: Extras<'_>,
    ) -> IssuedAppend {
        let (store, topic, data, id) = (self.clone(), topic.clone(), data.clone(), id.cloned());
        let exclude = extras.exclude.cloned();
        Issued::now(async move {
            let extras = Extras {
                exclude: exclude.as_ref(),
                stage: None,
            };
            store.append_with(&topic, &data, id.as_ref(), extras).await
        })
    }
}

impl SessionStore for MemoryStore {
    /// `extras.stage` is ignored: in one process the caller's append of the event next is as
    /// good as the same step (a crash loses both).
    async fn append_with(
        &self,
        topic: &Topic,
        data: &Payload,
        id: Option<&PublishId>,
        extras: Extras<'_>,
    ) -> Result<Appended, StoreError> {
        let exclude = extras.exclude;
        let limits = self.limits_of(topic);
        let appended = self.with_topic(topic, |state, now| {
            state.touched = now;
            if let Some(id) = id {
                state
                    .ids
                    .retain(|_, (_, at)| now.duration_since(*at) < limits.dedup_window);
                if let Some((seq, _)) = state.ids.get(id) {
                    return Appended {
                        seq: *seq,
                        epoch: state.epoch.clone(),
                        duplicate: true,
                    };
                }
            }
            state.seq += 1;
            if let Some(id) = id {
                state.ids.insert(id.clone(), (state.seq, now));
            }
            if limits.max_len > 0 {
                state.history.push_back((
                    StoredMessage {
                        seq: state.seq,
                        data: data.clone(),
                        exclude: exclude.cloned(),
                    },
                    now,
                ));
                state.trim(&limits, now);
            }
            Appended {
                seq: state.seq,
                epoch: state.epoch.clone(),
                duplicate: false,
            }
        });
        self.maybe_sweep();
        Ok(appended)
    }

    async fn top(&self, topic: &Topic) -> Result<Position, StoreError> {
        Ok(self.with_topic(topic, |state, _| state.top()))
    }

    async fn tops(&self, topics: &[Topic]) -> Result<Vec<Position>, StoreError> {
        Ok(topics
            .iter()
            .map(|t| self.with_topic(t, |state, _| state.top()))
            .collect())
    }

    async fn history(
        &self,
        topic: &Topic,
        after: u64,
        limit: usize,
    ) -> Result<HistoryPage, StoreError> {
        Ok(self.with_topic(topic, |state, _| {
            let mut bytes = 0;
            let messages = state
                .history
                .iter()
                .filter(|(m, _)| m.seq > after)
                .take(limit.max(1))
                .take_while(|(m, _)| {
                    let first = bytes == 0;
                    bytes += m.data.len().max(1);
                    first || bytes <= PAGE_BYTES
                })
                .map(|(m, _)| m.clone())
                .collect();
            HistoryPage {
                top: state.top(),
                messages,
            }
        }))
    }

    async fn new_epoch(&self, topic: &Topic, stale: &Epoch) -> Result<Position, StoreError> {
        Ok(self.with_topic(topic, |state, now| {
            if state.epoch == *stale {
                *state = TopicState::new(now, Some(stale));
            }
            state.top()
        }))
    }

    async fn claim_session(
        &self,
        id: &SessionId,
        pod: &str,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        let now = Instant::now();
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        let entry = sessions.entry(id.clone()).or_insert_with(|| SessionEntry {
            record: None,
            owner: Owner {
                pod: String::new(),
                generation: 0,
            },
            expires: now,
        });
        let live = entry.expires > now;
        if !live {
            entry.record = None;
        }
        let previous = (live && entry.owner.generation > 0).then(|| entry.owner.clone());
        // Generations only grow, even across an expired entry, so a stale takeover can never
        // match a newer connection.
        let generation = entry.owner.generation + 1;
        entry.owner = Owner {
            pod: pod.to_owned(),
            generation,
        };
        entry.expires = entry.expires.max(now + ttl);
        drop(sessions);
        self.maybe_sweep();
        Ok(Claim {
            generation,
            previous,
        })
    }

    async fn save_session(
        &self,
        session: &SessionRecord,
        generation: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        let entry = sessions
            .entry(session.id.clone())
            .or_insert_with(|| SessionEntry {
                record: None,
                owner: Owner {
                    pod: session.last_pod.clone(),
                    generation,
                },
                expires: now,
            });
        if entry.owner.generation > generation {
            return Ok(false);
        }
        entry.owner = Owner {
            pod: session.last_pod.clone(),
            generation,
        };
        entry.record = Some(StoredRecord::new(session));
        entry.expires = now + ttl;
        Ok(true)
    }

    async fn load_session(&self, id: &SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let mut sessions = self.inner.sessions.lock().expect("sessions lock");
        match sessions.get(id) {
            Some(entry) if entry.expires > Instant::now() => {
                Ok(entry.record.as_ref().map(|r| r.record()))
            }
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
