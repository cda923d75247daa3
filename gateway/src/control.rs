//! Reaching a connection from outside its task (hub, drain, rebalancing, takeover), and the
//! pod's table of open connections with the session generation each one holds.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::IpAddr;
#[cfg(test)]
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use protocol::{CloseAdvice, CloseCode, SessionId, Topic};
use tokio::sync::Notify;

use crate::hub::{ConnId, Delivery};
use crate::outbound::{Batch, Offer, Outbound, QueueLimits};

/// What the rest of the pod may ask of a connection: close (the first request wins), and
/// write deliveries (its outbound queue). One `Notify` wakes the connection's task for both.
#[derive(Debug)]
pub struct ConnControl {
    closing: AtomicBool,
    /// Set when a newer connection (on this pod or another) resumed the session: this one must
    /// not save the session record over the newer one's.
    taken_over: AtomicBool,
    request: Mutex<Option<(CloseCode, CloseAdvice)>>,
    notify: Notify,
    outbound: Outbound,
    /// Set by the server API's `disconnect`: the session must not be saved (it was deleted so
    /// the client cannot resume it).
    disconnected: AtomicBool,
    /// Server-side subscription changes for the connection's task to apply.
    commands: Mutex<Vec<ServerCommand>>,
    /// Whether `commands` may hold any: checked on every wake-up (each delivery batch), so the
    /// common case, no commands, costs a load rather than a lock.
    has_commands: AtomicBool,
    /// Join/leave events of its topics (see `presence::events`).
    presence: crate::presence::events::PresenceQueue,
}

/// A change the server asks of a connection's subscriptions (`/api/subscribe`,
/// `/api/unsubscribe`); applied by the connection's task, which owns them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerCommand {
    Subscribe(Topic),
    Unsubscribe(Topic),
}

impl ConnControl {
    pub fn new() -> Self {
        Self {
            closing: AtomicBool::new(false),
            taken_over: AtomicBool::new(false),
            request: Mutex::new(None),
            notify: Notify::new(),
            outbound: Outbound::default(),
            disconnected: AtomicBool::new(false),
            commands: Mutex::new(Vec::new()),
            has_commands: AtomicBool::new(false),
            presence: Default::default(),
        }
    }

    /// Queues a join/leave event for the connection and wakes its task.
    pub fn offer_presence(&self, note: &Arc<crate::presence::events::Note>) {
        if self.is_closing() {
            return;
        }
        self.presence.offer(note);
        self.notify.notify_one();
    }

    /// The queued join/leave events, and whether some did not fit (see `presence::events`).
    pub fn take_presence(&self) -> Option<(Vec<Arc<crate::presence::events::Note>>, bool)> {
        self.presence.take()
    }

    /// Closes the connection for the server API's `disconnect`: 1008 without reconnect, and its
    /// session is not saved on the way out.
    pub fn disconnect(&self) {
        self.disconnected.store(true, Ordering::Release);
        self.request_close(CloseCode::Policy, CloseAdvice::stop("disconnected"));
    }

    pub fn is_disconnected(&self) -> bool {
        self.disconnected.load(Ordering::Acquire)
    }

    /// Queues a server-side subscription change (at most a few hundred wait; more are dropped
    /// with a warning: an operator loop gone wrong must not grow a connection without bound).
    pub fn command(&self, command: ServerCommand) {
        let mut commands = self.commands.lock().expect("commands lock");
        if commands.len() >= 256 {
            tracing::warn!(?command, "server command dropped: 256 already queued");
            return;
        }
        commands.push(command);
        self.has_commands.store(true, Ordering::Release);
        drop(commands);
        self.notify.notify_one();
    }

    /// The queued server commands, in order (taken when [`ConnControl::changed`] wakes the
    /// connection's task).
    pub fn take_commands(&self) -> Vec<ServerCommand> {
        if !self.has_commands.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        std::mem::take(&mut *self.commands.lock().expect("commands lock"))
    }

    /// Queues `delivery` for the connection (see [`Outbound::offer`]), waking its task when
    /// the queue was empty.
    pub fn offer(&self, delivery: &Arc<Delivery>, limits: QueueLimits) -> Offer {
        let offer = self.outbound.offer(delivery, limits);
        if let Offer::Queued { wake: true } = offer {
            self.notify.notify_one();
        }
        offer
    }

    /// Queues a delivery of an ephemeral topic: dropped when the queue is full (see
    /// [`Outbound::offer_or_drop`]).
    pub fn offer_ephemeral(&self, delivery: &Arc<Delivery>, limits: QueueLimits) -> Offer {
        let offer = self.outbound.offer_or_drop(delivery, limits);
        if let Offer::Queued { wake: true } = offer {
            self.notify.notify_one();
        }
        offer
    }

    /// Everything queued for the connection, taken at once.
    pub fn take_queued(&self) -> Batch {
        self.outbound.take()
    }

    /// Gives a written batch's buffer back (see [`Outbound::reuse`]).
    pub fn reuse_buffer(&self, buffer: VecDeque<Arc<Delivery>>) {
        self.outbound.reuse(buffer);
    }

    /// The connection's task no longer writes deliveries: stop queueing them.
    pub fn close_queue(&self) {
        self.outbound.close();
    }

    /// Asks the connection to close with `code`. Once asked, the connection delivers nothing
    /// more (a subscriber that missed a message must not receive the ones after it).
    pub fn request_close(&self, code: CloseCode, advice: CloseAdvice) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        *self.request.lock().expect("close request lock") = Some((code, advice));
        self.notify.notify_one();
    }

    /// Closes the connection because its session was resumed elsewhere.
    pub fn take_over(&self) {
        self.taken_over.store(true, Ordering::Release);
        self.request_close(CloseCode::Normal, CloseAdvice::stop("session_taken_over"));
    }

    pub fn is_taken_over(&self) -> bool {
        self.taken_over.load(Ordering::Acquire)
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The close request, if one was made.
    pub fn requested(&self) -> Option<(CloseCode, CloseAdvice)> {
        // Asked on every wake-up, deliveries' included: no lock until a close was asked for.
        // (`closing` is set before the request is stored, and the wake-up comes after it.)
        if !self.is_closing() {
            return None;
        }
        self.request.lock().expect("close request lock").clone()
    }

    /// Waits until a close was requested or deliveries were queued since the last wake-up
    /// (only the connection's own task waits here).
    pub async fn changed(&self) {
        self.notify.notified().await;
    }
}

impl Default for ConnControl {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug)]
struct Entry {
    control: Arc<ConnControl>,
    /// The socket peer: the load balancer's address behind `--proxy-listen`.
    tcp_peer: IpAddr,
    /// The session and the generation this connection claimed for it.
    session: Option<(SessionId, u64)>,
    /// The session's user, for the server API's per-user commands.
    user: Option<String>,
}

/// The outcome of [`Connections::bind_session`].
#[derive(Debug)]
pub enum Bind {
    /// This connection holds the session now; the one that held it before (an older
    /// generation) must be closed.
    Bound(Option<Arc<ConnControl>>),
    /// A connection on this pod already holds a newer generation: this one lost the race.
    Superseded,
}

/// Every open connection of the pod, for drain, rebalancing and session takeover.
#[derive(Debug, Default)]
pub struct Connections {
    next_id: AtomicU64,
    inner: Mutex<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    conns: HashMap<ConnId, Entry>,
    sessions: HashMap<SessionId, (ConnId, u64)>,
}

impl Connections {
    pub fn register(&self, control: Arc<ConnControl>, tcp_peer: IpAddr) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.lock().expect("connections lock").conns.insert(
            id,
            Entry {
                control,
                tcp_peer,
                session: None,
                user: None,
            },
        );
        id
    }

    /// Binds `session` at `generation` (claimed from the store) to connection `id`, unless a
    /// connection of this pod already holds a newer generation of it.
    pub fn bind_session(&self, id: ConnId, session: SessionId, generation: u64) -> Bind {
        let mut t = self.inner.lock().expect("connections lock");
        let previous = match t.sessions.get(&session) {
            Some(&(holder, held)) if holder != id && held > generation => {
                return Bind::Superseded;
            }
            Some(&(holder, _)) if holder != id => t.conns.get(&holder).map(|e| e.control.clone()),
            _ => None,
        };
        t.sessions.insert(session.clone(), (id, generation));
        if let Some(entry) = t.conns.get_mut(&id) {
            entry.session = Some((session, generation));
        }
        Bind::Bound(previous)
    }

    /// Takes over the connection holding `session` if it holds a generation older than
    /// `generation`: a takeover that arrives late never closes a newer connection.
    pub fn take_over_older(&self, session: &SessionId, generation: u64) -> bool {
        let t = self.inner.lock().expect("connections lock");
        let Some(&(id, held)) = t.sessions.get(session) else {
            return false;
        };
        if held >= generation {
            return false;
        }
        if let Some(entry) = t.conns.get(&id) {
            entry.control.take_over();
            return true;
        }
        false
    }

    /// Notes the user of connection `id` (after `hello`).
    pub fn set_user(&self, id: ConnId, user: Option<String>) {
        if let Some(entry) = self
            .inner
            .lock()
            .expect("connections lock")
            .conns
            .get_mut(&id)
        {
            entry.user = user;
        }
    }

    /// Controls of `user`'s open connections on this pod.
    pub fn of_user(&self, user: &str) -> Vec<Arc<ConnControl>> {
        self.inner
            .lock()
            .expect("connections lock")
            .conns
            .values()
            .filter(|e| e.user.as_deref() == Some(user) && !e.control.is_closing())
            .map(|e| e.control.clone())
            .collect()
    }

    /// Whether `id` still holds `session` (it does not after a takeover).
    pub fn holds_session(&self, id: ConnId, session: &SessionId) -> bool {
        self.inner
            .lock()
            .expect("connections lock")
            .sessions
            .get(session)
            .is_some_and(|(holder, _)| *holder == id)
    }

    pub fn remove(&self, id: ConnId) {
        let mut t = self.inner.lock().expect("connections lock");
        if let Some(entry) = t.conns.remove(&id)
            && let Some((session, _)) = entry.session
            && t.sessions
                .get(&session)
                .is_some_and(|(holder, _)| *holder == id)
        {
            t.sessions.remove(&session);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("connections lock").conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Controls of every open connection not yet asked to close.
    pub fn open_controls(&self) -> Vec<Arc<ConnControl>> {
        self.inner
            .lock()
            .expect("connections lock")
            .conns
            .values()
            .filter(|e| !e.control.is_closing())
            .map(|e| e.control.clone())
            .collect()
    }

    /// Controls of the open connections whose socket peer is `peer`, not yet asked to close.
    pub fn open_controls_from(&self, peer: IpAddr) -> Vec<Arc<ConnControl>> {
        self.inner
            .lock()
            .expect("connections lock")
            .conns
            .values()
            .filter(|e| e.tcp_peer == peer && !e.control.is_closing())
            .map(|e| e.control.clone())
            .collect()
    }

    /// Open connections (closing or not) whose socket peer is `peer`.
    pub fn count_from(&self, peer: IpAddr) -> usize {
        self.inner
            .lock()
            .expect("connections lock")
            .conns
            .values()
            .filter(|e| e.tcp_peer == peer)
            .count()
    }
}

/// The peer of connections that have none (unit tests).
#[cfg(test)]
pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(table: &Connections) -> (ConnId, Arc<ConnControl>) {
        let control = Arc::new(ConnControl::new());
        (table.register(control.clone(), LOOPBACK), control)
    }

    #[test]
    fn only_older_generations_are_taken_over() {
        let table = Connections::default();
        let session = SessionId::generate();
        let (a, a_ctl) = conn(&table);
        assert!(matches!(
            table.bind_session(a, session.clone(), 1),
            Bind::Bound(None)
        ));
        // A newer claim on this pod closes the older connection.
        let (b, _b_ctl) = conn(&table);
        match table.bind_session(b, session.clone(), 3) {
            Bind::Bound(Some(previous)) => assert!(Arc::ptr_eq(&previous, &a_ctl)),
            other => panic!("{other:?}"),
        }
        // A slower, older claim loses instead of closing the newer one.
        let (c, c_ctl) = conn(&table);
        assert!(matches!(
            table.bind_session(c, session.clone(), 2),
            Bind::Superseded
        ));
        assert!(!c_ctl.is_closing());
        assert!(table.holds_session(b, &session));
        // A late takeover (generation 2) never closes generation 3; a newer one does.
        assert!(!table.take_over_older(&session, 2));
        assert!(!table.take_over_older(&session, 3));
        assert!(table.take_over_older(&session, 4));
    }
}
