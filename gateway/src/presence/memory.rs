//! Presence in process: the embedded default, one pod. Same rules as the Redis store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{Member, Topic};
use tokio::time::Instant;

use super::{Change, Event, Op, PresenceError, PresenceStore, Stats, member_of, user_key};

#[derive(Debug, Clone, Default)]
pub struct MemoryPresence {
    topics: Arc<Mutex<HashMap<Topic, Members>>>,
}

#[derive(Debug, Default)]
struct Members {
    /// session → (owner pod, "" when detached; expiry; user key)
    sessions: HashMap<String, (String, Instant, String)>,
    /// user key → sessions present
    users: HashMap<String, u64>,
}

impl Members {
    fn remove(&mut self, session: &str) -> Option<Event> {
        let (_, _, user) = self.sessions.remove(session)?;
        let n = self.users.get_mut(&user).map_or(0, |n| {
            *n -= 1;
            *n
        });
        if n == 0 {
            self.users.remove(&user);
        }
        Some(Event {
            join: false,
            member: member_of(session, &user),
            user_edge: n == 0,
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
                    let entry = (pod.to_owned(), until, user.clone());
                    if members
                        .sessions
                        .insert(change.session.clone(), entry)
                        .is_none()
                    {
                        let n = members.users.entry(user.clone()).or_default();
                        *n += 1;
                        events.push(Event {
                            join: true,
                            member: member_of(&change.session, &user),
                            user_edge: *n == 1,
                        });
                    }
                }
                Op::Detach => {
                    if let Some(entry) = members.sessions.get_mut(&change.session)
                        && entry.0 == pod
                    {
                        *entry = (String::new(), until, user);
                    }
                }
                Op::Leave => events.extend(members.remove(&change.session)),
            }
        }
        if members.sessions.is_empty() {
            topics.remove(topic);
        }
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
            .filter(|(_, (owner, until, _))| !live.contains(owner) && *until < now)
            .map(|(s, _)| s.clone())
            .collect();
        let events = gone.iter().filter_map(|s| members.remove(s)).collect();
        if members.sessions.is_empty() {
            topics.remove(topic);
        }
        Ok(events)
    }

    async fn members(
        &self,
        topic: &Topic,
        live: &HashSet<String>,
        max: usize,
    ) -> Result<Option<Vec<Member>>, PresenceError> {
        let now = Instant::now();
        let topics = self.topics.lock().expect("presence lock");
        let Some(members) = topics.get(topic) else {
            return Ok(Some(Vec::new()));
        };
        if members.sessions.len() > max {
            return Ok(None);
        }
        Ok(Some(
            members
                .sessions
                .iter()
                .filter(|(_, (owner, until, _))| live.contains(owner) || *until >= now)
                .map(|(session, (_, _, user))| member_of(session, user))
                .collect(),
        ))
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
        Ok(self
            .topics
            .lock()
            .expect("presence lock")
            .keys()
            .cloned()
            .collect())
    }
}
