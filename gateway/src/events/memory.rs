//! The embedded default: the event log and the session tracker in process. Delivery follows the
//! same rules as with Redis (oldest first, removed only after a 2xx, retried with backoff);
//! what is not delivered when the process ends is lost with it, like everything else in memory.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::Topic;
use session_store::now_ms;

use super::store::{Ended, Entry, EventLog, EventQueue, Tracker};
use super::{Event, EventError};

#[derive(Debug, Default)]
struct Partition {
    next_id: u64,
    entries: VecDeque<Entry>,
    /// The first this many entries were handed out and not acknowledged: handed out again,
    /// alone, before anything newer (as a Redis consumer group's pending entries are).
    pending: usize,
}

/// Partitions of events in process.
#[derive(Debug, Clone)]
pub struct MemoryLog {
    partitions: Arc<Vec<Mutex<Partition>>>,
}

impl MemoryLog {
    pub fn new(partitions: u32) -> Self {
        Self {
            partitions: Arc::new((0..partitions.max(1)).map(|_| Mutex::default()).collect()),
        }
    }

    fn partition(
        &self,
        partition: u32,
    ) -> Result<std::sync::MutexGuard<'_, Partition>, EventError> {
        self.partitions
            .get(partition as usize)
            .map(|p| p.lock().expect("event log lock"))
            .ok_or_else(|| EventError::Corrupt(format!("no partition {partition}")))
    }
}

impl EventLog for MemoryLog {
    async fn append(&self, partition: u32, json: &str) -> Result<(), EventError> {
        let json = json.to_owned();
        let mut p = self.partition(partition)?;
        p.next_id += 1;
        let id = p.next_id.to_string();
        p.entries.push_back(Entry {
            id,
            json,
            at_ms: now_ms(),
        });
        Ok(())
    }
}

impl EventQueue for MemoryLog {
    /// One process, one deliverer: the lease is always held.
    async fn lease(&self, _: u32, _: &str, _: Duration) -> Result<bool, EventError> {
        Ok(true)
    }

    async fn release(&self, _: u32, _: &str) -> Result<(), EventError> {
        Ok(())
    }

    async fn next_batch(
        &self,
        partition: u32,
        _: &str,
        max: usize,
    ) -> Result<Vec<Entry>, EventError> {
        let mut p = self.partition(partition)?;
        let n = if p.pending > 0 {
            p.pending.min(max)
        } else {
            p.entries.len().min(max)
        };
        p.pending = p.pending.max(n);
        Ok(p.entries.iter().take(n).cloned().collect())
    }

    async fn ack(&self, partition: u32, ids: &[String]) -> Result<(), EventError> {
        let ids: HashSet<&String> = ids.iter().collect();
        let mut p = self.partition(partition)?;
        let acked = p
            .entries
            .iter()
            .take(p.pending)
            .filter(|e| ids.contains(&e.id))
            .count();
        p.pending -= acked;
        p.entries.retain(|e| !ids.contains(&e.id));
        Ok(())
    }

    async fn bound(&self, partition: u32, max: u64) -> Result<(u64, u64), EventError> {
        let mut p = self.partition(partition)?;
        let len = p.entries.len() as u64;
        let drop = len.saturating_sub(max);
        p.entries.drain(..drop as usize);
        p.pending = p.pending.saturating_sub(drop as usize);
        Ok((len, drop))
    }
}

#[derive(Debug, Default)]
struct Session {
    user: Option<String>,
    /// The pod and connection holding it; `None` once detached.
    pod: Option<(String, u64)>,
    deadline_ms: u64,
    topics: HashSet<Topic>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, Session>,
    occupants: HashMap<Topic, HashSet<String>>,
    /// Detached sessions by deadline.
    deadlines: BTreeMap<(u64, String), ()>,
}

/// Sessions and occupancy in process (one pod: no dead pods to detach).
#[derive(Debug, Clone, Default)]
pub struct MemoryTracker {
    state: Arc<Mutex<State>>,
}

impl MemoryTracker {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("tracker lock")
    }
}

impl Tracker for MemoryTracker {
    async fn attach(
        &self,
        session: &str,
        user: Option<&str>,
        pod: &str,
        conn: u64,
        _started: Option<&Event>,
    ) -> Result<bool, EventError> {
        // One process: the decision and the event the caller appends next are lost together.
        let mut state = self.state();
        let state = &mut *state;
        let new = !state.sessions.contains_key(session);
        let s = state.sessions.entry(session.to_owned()).or_default();
        if s.pod.is_none() {
            state.deadlines.remove(&(s.deadline_ms, session.to_owned()));
        }
        s.pod = Some((pod.to_owned(), conn));
        if user.is_some() {
            s.user = user.map(str::to_owned);
        }
        Ok(new)
    }

    async fn detach(
        &self,
        session: &str,
        pod: &str,
        conn: Option<u64>,
        deadline_ms: u64,
    ) -> Result<(), EventError> {
        let mut state = self.state();
        let state = &mut *state;
        if let Some(s) = state.sessions.get_mut(session)
            && s.pod
                .as_ref()
                .is_some_and(|(p, c)| p == pod && conn.is_none_or(|conn| conn == *c))
        {
            s.pod = None;
            s.deadline_ms = deadline_ms;
            state
                .deadlines
                .insert((deadline_ms, session.to_owned()), ());
        }
        Ok(())
    }

    async fn subscribe(&self, session: &str, topic: &Topic, _: &Event) -> Result<bool, EventError> {
        let mut state = self.state();
        if let Some(s) = state.sessions.get_mut(session) {
            s.topics.insert(topic.clone());
        }
        let occupants = state.occupants.entry(topic.clone()).or_default();
        Ok(occupants.insert(session.to_owned()) && occupants.len() == 1)
    }

    async fn unsubscribe(
        &self,
        session: &str,
        topic: &Topic,
        _: &Event,
    ) -> Result<bool, EventError> {
        let mut state = self.state();
        if let Some(s) = state.sessions.get_mut(session) {
            s.topics.remove(topic);
        }
        Ok(leave(&mut state, session, topic))
    }

    async fn end(
        &self,
        session: &str,
        only_detached: bool,
        ended: &Event,
    ) -> Result<Option<Ended>, EventError> {
        let mut state = self.state();
        match state.sessions.get(session) {
            None => return Ok(None),
            Some(s) if only_detached && s.pod.is_some() => return Ok(None),
            Some(_) => {}
        }
        let s = state.sessions.remove(session).expect("checked above");
        state.deadlines.remove(&(s.deadline_ms, session.to_owned()));
        let mut vacated: Vec<Topic> = s
            .topics
            .into_iter()
            .filter(|t| leave(&mut state, session, t))
            .collect();
        vacated.sort();
        Ok(Some(Ended {
            ended: Some(ended.clone().user(s.user.as_deref())),
            user: s.user,
            vacated: vacated.iter().map(Event::vacated).collect(),
        }))
    }

    async fn expired(&self, now_ms: u64, max: usize) -> Result<Vec<String>, EventError> {
        Ok(self
            .state()
            .deadlines
            .keys()
            .take_while(|(deadline, _)| *deadline <= now_ms)
            .take(max)
            .map(|(_, s)| s.clone())
            .collect())
    }

    async fn alive(&self, _: &str, _: Duration) -> Result<(), EventError> {
        Ok(())
    }

    /// One process: no other pod to die.
    async fn dead_pods(&self) -> Result<Vec<String>, EventError> {
        Ok(Vec::new())
    }

    async fn detach_pod(&self, _: &str, _: u64) -> Result<u64, EventError> {
        Ok(0)
    }

    async fn sweeper_lease(&self, _: &str, _: Duration) -> Result<bool, EventError> {
        Ok(true)
    }
}

/// Removes `session` from `topic`'s occupants; `true` when it was the last.
fn leave(state: &mut State, session: &str, topic: &Topic) -> bool {
    let Some(occupants) = state.occupants.get_mut(topic) else {
        return false;
    };
    let left = occupants.remove(session);
    let empty = occupants.is_empty();
    if empty {
        state.occupants.remove(topic);
    }
    left && empty
}
