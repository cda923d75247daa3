//! Presence in process: the embedded default, one pod. Same rules as the Redis store,
//! join/leave logs included (a process never loses its log, so only trimming makes events
//! unrecoverable; an idle topic's log is dropped `EventLog::ttl` after its last event).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{Epoch, PresencePosition, Topic};
use tokio::time::Instant;

use super::user_key;
use super::{
    Change, Event, EventLog, Listing, LogRead, Op, PresenceError, PresenceStore, Stats, member_of,
};

#[derive(Debug, Clone)]
pub struct MemoryPresence {
    topics: Arc<Mutex<HashMap<Topic, Members>>>,
    logs: Arc<Mutex<HashMap<Topic, Log>>>,
    policy: EventLog,
}

/// One topic's join/leave log.
#[derive(Debug)]
struct Log {
    epoch: Epoch,
    pseq: u64,
    /// The last events, oldest first, each with its pseq.
    events: VecDeque<Event>,
    last: Instant,
}

impl Log {
    fn new() -> Self {
        Self {
            epoch: Epoch::generate(),
            pseq: 0,
            events: VecDeque::new(),
            last: Instant::now(),
        }
    }

    fn position(&self) -> PresencePosition {
        PresencePosition {
            pseq: self.pseq,
            epoch: self.epoch.clone(),
        }
    }

    fn append(&mut self, event: &mut Event, size: u64) {
        self.pseq += 1;
        self.last = Instant::now();
        event.logged = Some(self.position());
        self.events.push_back(event.clone());
        while self.events.len() as u64 > size {
            self.events.pop_front();
        }
    }
}

impl MemoryPresence {
    pub fn new(policy: EventLog) -> Self {
        Self {
            topics: Arc::default(),
            logs: Arc::default(),
            policy,
        }
    }

    /// Gives `events` their pseq when `topic` logs them.
    fn log(&self, topic: &Topic, events: &mut [Event]) {
        if events.is_empty() || !self.policy.logs(topic) {
            return;
        }
        let mut logs = self.logs.lock().expect("presence log lock");
        let log = logs.entry(topic.clone()).or_insert_with(Log::new);
        for event in events {
            log.append(event, self.policy.size);
        }
    }
}

#[derive(Debug, Default)]
struct Members {
    /// session → (owner pod, "" when detached; expiry; user key; info)
    sessions: HashMap<String, (String, Instant, String, Option<String>)>,
    /// user key → sessions present
    users: HashMap<String, u64>,
}

impl Members {
    fn remove(&mut self, session: &str) -> Option<Event> {
        let (_, _, user, info) = self.sessions.remove(session)?;
        let n = self.users.get_mut(&user).map_or(0, |n| {
            *n -= 1;
            *n
        });
        if n == 0 {
            self.users.remove(&user);
        }
        Some(Event {
            join: false,
            member: member_of(session, &user, info.as_deref()),
            user_edge: n == 0,
            logged: None,
            staged: None,
        })
    }
}

impl PresenceStore for MemoryPresence {
    async fn apply(
        &self,
        topic: &Topic,
        pod: &str,
        ttl: Duration,
        changes: &[Change],
    ) -> Result<Vec<Event>, PresenceError> {
        let until = Instant::now() + ttl;
        let mut topics = self.topics.lock().expect("presence lock");
        let members = topics.entry(topic.clone()).or_default();
        let mut events = Vec::new();
        for change in changes {
            let user = user_key(change.user.as_deref(), &change.session);
            match change.op {
                Op::Attach => {
                    let entry = (pod.to_owned(), until, user.clone(), change.info.clone());
                    if members
                        .sessions
                        .insert(change.session.clone(), entry)
                        .is_none()
                    {
                        let n = members.users.entry(user.clone()).or_default();
                        *n += 1;
                        events.push(Event {
                            join: true,
                            member: member_of(&change.session, &user, change.info.as_deref()),
                            user_edge: *n == 1,
                            logged: None,
                            staged: None,
                        });
                    }
                }
                Op::Detach => {
                    if let Some(entry) = members.sessions.get_mut(&change.session)
                        && entry.0 == pod
                    {
                        *entry = (String::new(), until, user, change.info.clone());
                    }
                }
                Op::Leave => events.extend(members.remove(&change.session)),
            }
        }
        if members.sessions.is_empty() {
            topics.remove(topic);
        }
        // Under the members' lock: pseq order is the order the changes were decided in.
        self.log(topic, &mut events);
        Ok(events)
    }

    async fn sweep(&self, topic: &Topic, live: &[String]) -> Result<Vec<Event>, PresenceError> {
        let now = Instant::now();
        let mut topics = self.topics.lock().expect("presence lock");
        let Some(members) = topics.get_mut(topic) else {
            return Ok(Vec::new());
        };
        let gone: Vec<String> = members
            .sessions
            .iter()
            .filter(|(_, (owner, until, _, _))| !live.contains(owner) && *until < now)
            .map(|(s, _)| s.clone())
            .collect();
        let mut events: Vec<Event> = gone.iter().filter_map(|s| members.remove(s)).collect();
        if members.sessions.is_empty() {
            topics.remove(topic);
        }
        self.log(topic, &mut events);
        Ok(events)
    }

    async fn members(
        &self,
        topic: &Topic,
        live: &HashSet<String>,
        max: usize,
    ) -> Result<Option<Listing>, PresenceError> {
        let now = Instant::now();
        let topics = self.topics.lock().expect("presence lock");
        let at = self.policy.logs(topic).then(|| {
            let mut logs = self.logs.lock().expect("presence log lock");
            logs.entry(topic.clone())
                .or_insert_with(Log::new)
                .position()
        });
        let Some(members) = topics.get(topic) else {
            return Ok(Some(Listing {
                members: Vec::new(),
                at,
            }));
        };
        if members.sessions.len() > max {
            return Ok(None);
        }
        let members = members
            .sessions
            .iter()
            .filter(|(_, (owner, until, _, _))| live.contains(owner) || *until >= now)
            .map(|(session, (_, _, user, info))| member_of(session, user, info.as_deref()))
            .collect();
        Ok(Some(Listing { members, at }))
    }

    async fn events_since(
        &self,
        topic: &Topic,
        since: &PresencePosition,
        limit: usize,
    ) -> Result<LogRead, PresenceError> {
        let mut logs = self.logs.lock().expect("presence log lock");
        let log = logs.entry(topic.clone()).or_insert_with(Log::new);
        let top = log.position();
        let first = log
            .events
            .front()
            .and_then(|e| e.logged.as_ref())
            .map(|l| l.pseq);
        let complete = since.epoch == log.epoch
            && since.pseq <= log.pseq
            && (since.pseq == log.pseq || first.is_some_and(|first| first <= since.pseq + 1));
        let events = complete.then(|| {
            log.events
                .iter()
                .filter(|e| e.logged.as_ref().is_some_and(|l| l.pseq > since.pseq))
                .take(limit.max(1))
                .map(|e| Event {
                    user_edge: false,
                    ..e.clone()
                })
                .collect()
        });
        Ok(LogRead { top, events })
    }

    async fn stats(&self, topic: &Topic) -> Result<Stats, PresenceError> {
        let topics = self.topics.lock().expect("presence lock");
        Ok(topics.get(topic).map_or(
            Stats {
                members: 0,
                users: 0,
            },
            |m| Stats {
                members: m.sessions.len() as u64,
                users: m.users.len() as u64,
            },
        ))
    }

    /// Every topic with members is known here already.
    async fn register(&self, _topics: &[Topic]) -> Result<(), PresenceError> {
        Ok(())
    }

    async fn topics(&self) -> Result<Vec<Topic>, PresenceError> {
        // Called every sweep round: drop the logs of topics idle for longer than their ttl
        // (no session that saw them can still resume).
        let ttl = self.policy.ttl;
        self.logs
            .lock()
            .expect("presence log lock")
            .retain(|_, log| log.last.elapsed() < ttl);
        Ok(self
            .topics
            .lock()
            .expect("presence lock")
            .keys()
            .cloned()
            .collect())
    }
}
