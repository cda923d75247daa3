//! Presence: who is in a topic, keyed on the session, not the socket.
//!
//! A member is one session subscribed to a topic with presence on. It stays present while its
//! session is connected **or resumable**: when its connection ends (a drain's 1001, a
//! rebalance's 1012, a network drop) the member is only *detached*, with an expiry one resume
//! window ahead, and a resume on any pod attaches it again without a join. So moving thousands
//! of sockets between pods changes no presence at all. A member leaves on `unsubscribe`, or
//! when it is detached (or its pod is gone from the fleet view) and its expiry passed: the
//! session can no longer resume.
//!
//! Writes are batched per pod: a `subscribe` attaches at once (so the member is listed when its
//! `subscribed` arrives), everything else (the attaches of resumed sessions, detaches, expiry
//! refreshes of attached members every third of the resume window) goes out once per heartbeat
//! interval in one call per topic. The
//! first live pod by name sweeps expired members of every presence topic every [`SWEEP_BEATS`]
//! beats; the store removes each member once, so each leave is counted once whichever pod
//! sweeps.
//!
//! In a namespace with `join_leave`, the store also gives each join and leave the topic's next
//! presence sequence number `pseq` (in the same step that decides it) and keeps the last
//! `--presence-log-size` events for recovery ([`EventLog`]); [`events`] sends them to the
//! topic's subscribers on every pod and replays what a connection missed.
//!
//! Layout: this file (the [`PresenceStore`] trait and its data, [`AnyPresence`], whether a topic
//! has presence, the pod's local registry and its task); [`memory`] and [`redis`] (the two
//! stores); [`frames`] (the `presence` and `presence_stats` frames, and the connection's hooks);
//! [`events`] (join/leave fan-out, ordering and recovery); [`value`] (how a member, its
//! `info` included, is stored).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{Epoch, Member, PresencePosition, SessionId, Topic};

use crate::hub::ConnId;
use crate::{Shared, Store};

pub mod events;
pub mod frames;
pub mod memory;
pub mod metrics;
pub mod order;
pub mod redis;
pub mod value;

pub use value::member_of;

/// Every this many heartbeats a pod sweeps every presence topic for expired members.
pub const SWEEP_BEATS: u32 = 5;

/// Whether `topic` has presence: its namespace's `presence` (`--presence` for the default one).
pub fn enabled(shared: &Shared, topic: &Topic) -> bool {
    shared.namespaces.of(topic).presence
}

/// The largest member list a `presence` request on `topic` gets: its namespace's
/// `presence_max_list` (`--presence-max-list` for the default one).
pub fn max_list(shared: &Shared, topic: &Topic) -> usize {
    shared.namespaces.of(topic).presence_max_list
}

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("presence unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt presence reply: {0}")]
    Corrupt(String),
}

/// What a pod changes about one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Present and connected here (a join when it was not present).
    Attach,
    /// Its connection here ended; present until the resume window passes.
    Detach,
    /// Gone now (`unsubscribe`).
    Leave,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub op: Op,
    pub session: String,
    pub user: Option<String>,
    /// The session's `info` as compact JSON, stored with the member.
    pub info: Option<String>,
}

/// Who a member is besides its session: its user and its `info` (compact JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Who {
    pub user: Option<String>,
    pub info: Option<String>,
}

/// A member joining or leaving, as the store decided it (once per member and change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub join: bool,
    pub member: Member,
    /// The user's first session to join, or last to leave.
    pub user_edge: bool,
    /// Its place in the topic's join/leave log, when the topic's namespace has `join_leave`.
    pub logged: Option<PresencePosition>,
    /// The lifecycle event (id, JSON) the store staged with it (Redis, with events on).
    pub staged: Option<(String, String)>,
}

/// Which topics log their joins and leaves (`join_leave`), how many events each keeps, and for
/// how long after the last one: the stores assign `pseq` only for these.
#[derive(Debug, Clone)]
pub struct EventLog {
    namespaces: crate::Namespaces,
    /// Events kept per topic.
    pub size: u64,
    /// How long a topic's position and log outlive its last event: two resume windows, so
    /// every session that can still resume finds them.
    pub ttl: Duration,
}

impl EventLog {
    pub fn new(namespaces: crate::Namespaces, size: u64, resume_window: Duration) -> Self {
        Self {
            namespaces,
            size: size.max(1),
            ttl: resume_window * 2,
        }
    }

    pub fn logs(&self, topic: &Topic) -> bool {
        let ns = self.namespaces.of(topic);
        ns.presence && ns.join_leave
    }
}

/// A topic's members, and for a topic with join/leave events the position they are at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub members: Vec<Member>,
    pub at: Option<PresencePosition>,
}

/// What the log holds after a client's position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRead {
    /// The topic's presence position now.
    pub top: PresencePosition,
    /// The events after the client's position, from the next one on (at most the limit asked
    /// for), or `None` when they are not all in the log any more or the epoch differs.
    pub events: Option<Vec<Event>>,
}

/// A position that matches no epoch: reading from it returns the top alone.
pub fn nowhere() -> PresencePosition {
    PresencePosition {
        pseq: 0,
        epoch: Epoch::new(""),
    }
}

/// Counts of a topic's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    pub members: u64,
    pub users: u64,
}

/// The key a user is counted under: anonymous sessions are users of their own.
pub fn user_key(user: Option<&str>, session: &str) -> String {
    match user {
        Some(user) => format!("u:{user}"),
        None => format!("s:{session}"),
    }
}

/// Members of topics, shared by the fleet.
pub trait PresenceStore: Send + Sync + 'static {
    /// Applies `pod`'s changes to `topic`'s members; attached and detached members expire
    /// `ttl` from now unless refreshed. Returns the joins and leaves this caused.
    fn apply(
        &self,
        topic: &Topic,
        pod: &str,
        ttl: Duration,
        changes: &[Change],
    ) -> impl Future<Output = Result<Vec<Event>, PresenceError>> + Send;

    /// Removes the members owned by no pod in `live` whose expiry passed; returns the leaves.
    fn sweep(
        &self,
        topic: &Topic,
        live: &[String],
    ) -> impl Future<Output = Result<Vec<Event>, PresenceError>> + Send;

    /// The members (owned by a pod in `live`, or not yet expired), or `None` when there are
    /// more than `max`; on a topic with join/leave events, with the position they are at.
    fn members(
        &self,
        topic: &Topic,
        live: &HashSet<String>,
        max: usize,
    ) -> impl Future<Output = Result<Option<Listing>, PresenceError>> + Send;

    /// The logged join/leave events after `since` (at most `limit`), and the topic's position.
    fn events_since(
        &self,
        topic: &Topic,
        since: &PresencePosition,
        limit: usize,
    ) -> impl Future<Output = Result<LogRead, PresenceError>> + Send;

    /// Member and user counts, in constant time (members not swept yet included).
    fn stats(&self, topic: &Topic) -> impl Future<Output = Result<Stats, PresenceError>> + Send;

    /// Registers topics that have members, for sweeps.
    fn register(&self, topics: &[Topic]) -> impl Future<Output = Result<(), PresenceError>> + Send;

    /// Every registered topic; a topic without members is unregistered by the call.
    fn topics(&self) -> impl Future<Output = Result<Vec<Topic>, PresenceError>> + Send;
}

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
            AnyPresence::Redis(p) => p.$method($($arg),*).await,
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

/// One attached member on this pod.
#[derive(Debug, Clone)]
struct Local {
    conn: ConnId,
    who: Who,
}

/// This pod's members: the attached ones (refreshed), and the changes not written yet (the
/// attaches of resumed sessions and the detaches of ended connections, in order).
#[derive(Debug, Default)]
pub struct Registry {
    attached: Mutex<HashMap<Topic, HashMap<SessionId, Local>>>,
    pending: Mutex<Vec<(Topic, Change)>>,
    /// Topics that got their first member here since the last beat: registered for sweeps
    /// at once, so a pod that dies right after still has its members swept.
    new_topics: Mutex<HashSet<Topic>>,
}

impl Registry {
    fn attach(&self, topic: &Topic, conn: ConnId, session: &SessionId, who: Who) {
        let mut attached = self.attached.lock().expect("presence lock");
        let members = attached.entry(topic.clone()).or_insert_with(|| {
            self.new_topics
                .lock()
                .expect("presence lock")
                .insert(topic.clone());
            HashMap::new()
        });
        members.insert(session.clone(), Local { conn, who });
    }

    /// Forgets the member; `true` when `conn` was the one holding it here.
    fn forget(&self, topic: &Topic, conn: ConnId, session: &SessionId) -> Option<Local> {
        let mut attached = self.attached.lock().expect("presence lock");
        let members = attached.get_mut(topic)?;
        if members.get(session).is_none_or(|l| l.conn != conn) {
            return None;
        }
        let local = members.remove(session);
        if members.is_empty() {
            attached.remove(topic);
        }
        local
    }

    fn detach(&self, topic: &Topic, conn: ConnId, session: &SessionId) {
        if let Some(local) = self.forget(topic, conn, session) {
            let change = Change {
                op: Op::Detach,
                session: session.to_string(),
                user: local.who.user,
                info: local.who.info,
            };
            self.pending
                .lock()
                .expect("presence lock")
                .push((topic.clone(), change));
        }
    }

    /// Attaches here now and writes it with the next batch: for resumed sessions, whose member
    /// is still present (detached, or owned by the pod they left), so nothing is lost meanwhile
    /// and a drain's thousands of resumes cost one call per topic and beat.
    fn attach_later(&self, topic: &Topic, conn: ConnId, session: &SessionId, who: Who) {
        self.attach(topic, conn, session, who.clone());
        let change = Change {
            op: Op::Attach,
            session: session.to_string(),
            user: who.user,
            info: who.info,
        };
        self.pending
            .lock()
            .expect("presence lock")
            .push((topic.clone(), change));
    }

    /// The changes of one beat, per topic: the pending ones, and with `refresh` every attached
    /// member again.
    fn batch(&self, refresh: bool) -> HashMap<Topic, Vec<Change>> {
        let mut out: HashMap<Topic, Vec<Change>> = HashMap::new();
        let pending = std::mem::take(&mut *self.pending.lock().expect("presence lock"));
        let attached = self.attached.lock().expect("presence lock");
        for (topic, change) in pending {
            let here = attached
                .get(&topic)
                .is_some_and(|m| m.keys().any(|s| s.as_str() == change.session));
            // A detach of a session attached here again (resumed on this pod) is dropped, and so
            // is an attach whose connection is gone already (unsubscribed, or ended: its detach
            // follows).
            let keep = match change.op {
                Op::Detach => !here,
                Op::Attach => here,
                Op::Leave => true,
            };
            if keep {
                out.entry(topic).or_default().push(change);
            }
        }
        if refresh {
            for (topic, members) in attached.iter() {
                let changes = out.entry(topic.clone()).or_default();
                changes.extend(members.iter().map(|(session, local)| Change {
                    op: Op::Attach,
                    session: session.to_string(),
                    user: local.who.user.clone(),
                    info: local.who.info.clone(),
                }));
            }
        }
        out
    }
}

/// The live pods of the fleet view, this one included.
pub fn live_pods(shared: &Shared) -> HashSet<String> {
    let mut live: HashSet<String> = shared
        .cluster
        .pods(crate::cluster::max_age(shared))
        .into_iter()
        .map(|p| p.beat.pod)
        .collect();
    live.insert(shared.pod.clone());
    live
}

/// Counts the events (metrics) and logs them; the store made each one exactly once. Logged
/// ones (join/leave topics) go out to the topic's subscribers on every pod.
async fn record(shared: &Shared, topic: &Topic, events: &[Event]) {
    for event in events {
        shared.metrics.presence.event(event.join, event.user_edge);
        tracing::debug!(%topic, join = event.join, session = %event.member.session, pseq = ?event.logged.as_ref().map(|l| l.pseq), "presence");
    }
    events::announce(shared, topic, events).await;
}

/// Writes one beat's batch (and, on `refresh`, registers the topics for sweeps).
async fn flush(shared: &Shared, refresh: bool) {
    let ttl = shared.config.resume_window;
    let registry = &shared.presence_registry;
    let batch = registry.batch(refresh);
    let mut topics: Vec<Topic> = std::mem::take(&mut *registry.new_topics.lock().expect("lock"))
        .into_iter()
        .collect();
    if refresh {
        topics.extend(batch.keys().cloned());
    }
    if !topics.is_empty()
        && let Err(e) = shared.presence.register(&topics).await
    {
        tracing::debug!(error = %e, "presence topics not registered");
        registry.new_topics.lock().expect("lock").extend(topics);
    }
    for (topic, changes) in batch {
        match shared
            .presence
            .apply(&topic, &shared.pod, ttl, &changes)
            .await
        {
            Ok(events) => {
                record(shared, &topic, &events).await;
                crate::events::hooks::presence(shared, &topic, &events).await;
            }
            Err(e) => {
                // Retried at the next beat (attaches and detaches alike, in order).
                tracing::debug!(%topic, error = %e, "presence batch not written");
                let mut pending = shared.presence_registry.pending.lock().expect("lock");
                let retry: Vec<(Topic, Change)> =
                    changes.into_iter().map(|c| (topic.clone(), c)).collect();
                pending.splice(0..0, retry);
            }
        }
    }
}

/// Removes expired members of every presence topic. Only the first live pod (by name) sweeps:
/// a sweep reads each topic's whole member hash, so one sweeper keeps the cost independent of
/// the fleet's size. (Pods whose views differ may both sweep; the store removes each member
/// once.)
async fn sweep(shared: &Shared) {
    let live = live_pods(shared);
    if live.iter().min() != Some(&shared.pod) {
        return;
    }
    let topics = match shared.presence.topics().await {
        Ok(topics) => topics,
        Err(e) => return tracing::debug!(error = %e, "presence topics not read"),
    };
    let live: Vec<String> = live.into_iter().collect();
    for topic in topics {
        match shared.presence.sweep(&topic, &live).await {
            Ok(events) => {
                record(shared, &topic, &events).await;
                crate::events::hooks::presence(shared, &topic, &events).await;
            }
            Err(e) => tracing::debug!(%topic, error = %e, "presence not swept"),
        }
    }
}

/// The pod's presence task: a batch every heartbeat interval, refreshes every third of the
/// resume window, sweeps every [`SWEEP_BEATS`] beats; a last batch at shutdown.
pub async fn run(shared: Arc<Shared>) {
    let interval = shared.config.heartbeat_interval;
    let refresh_beats =
        ((shared.config.resume_window / 3).as_millis() / interval.as_millis().max(1)).max(1) as u64;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut beat = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.cancelled() => break,
        }
        beat += 1;
        flush(&shared, beat.is_multiple_of(refresh_beats)).await;
        if beat.is_multiple_of(u64::from(SWEEP_BEATS)) {
            sweep(&shared).await;
        }
    }
    // The connections are closed by now (drain first, then shutdown): write their detaches, so
    // the members expire with their sessions' resume windows rather than linger as this pod's.
    let _ = tokio::time::timeout(Duration::from_secs(2), flush(&shared, false)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Topic {
        Topic::new("room").unwrap()
    }

    fn ops(batch: &HashMap<Topic, Vec<Change>>) -> Vec<(Op, String)> {
        batch
            .get(&t())
            .map(|c| c.iter().map(|c| (c.op, c.session.clone())).collect())
            .unwrap_or_default()
    }

    #[test]
    fn a_batch_keeps_only_changes_that_still_hold() {
        let r = Registry::default();
        let (s1, s2) = (SessionId::generate(), SessionId::generate());
        // Resumed here (attach later), then its connection ended: only the detach goes out.
        r.attach_later(&t(), 1, &s1, Who::default());
        r.detach(&t(), 1, &s1);
        // Ended, then resumed on this pod by a new connection: the detach is dropped, the
        // attach goes out.
        r.attach(&t(), 2, &s2, Who::default());
        r.detach(&t(), 2, &s2);
        let ann = Who {
            user: Some("ann".into()),
            info: Some("{}".into()),
        };
        r.attach_later(&t(), 3, &s2, ann);
        assert_eq!(
            ops(&r.batch(false)),
            vec![(Op::Detach, s1.to_string()), (Op::Attach, s2.to_string())]
        );
        assert!(r.batch(false).is_empty(), "a batch is written once");
        // A refresh rewrites every member attached here.
        assert_eq!(ops(&r.batch(true)), vec![(Op::Attach, s2.to_string())]);
        // An old connection's detach never touches the new one's member.
        r.detach(&t(), 2, &s2);
        assert!(r.batch(false).is_empty());
    }

    #[test]
    fn user_keys_tell_anonymous_sessions_apart() {
        assert_eq!(user_key(Some("ann"), "s1"), "u:ann");
        assert_eq!(user_key(None, "s1"), "s:s1");
        assert_eq!(member_of("s1", "u:ann", None).user.as_deref(), Some("ann"));
        assert_eq!(member_of("s1", "s:s1", None).user, None);
    }
}
