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
//! Layout: this file (the [`PresenceStore`] trait and its data, whether a topic has presence);
//! `any` ([`AnyPresence`], the store that goes with the pod's store); `registry` (the pod's
//! local [`Registry`]) and `task` (the pod's presence task, [`run`]); [`memory`] and [`redis`]
//! (the two stores); [`frames`] (the `presence` and `presence_stats` frames, and the
//! connection's hooks); [`events`] (join/leave fan-out, ordering and recovery); [`value`] (how a
//! member, its `info` included, is stored).

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use protocol::{Epoch, Member, PresencePosition, Topic};

use crate::Shared;

mod any;
pub mod events;
pub mod frames;
pub mod memory;
pub mod metrics;
pub mod order;
pub mod redis;
mod registry;
mod task;
pub mod value;

pub use any::AnyPresence;
pub use registry::Registry;
use task::record;
pub use task::{live_pods, run};
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use protocol::SessionId;

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
