//! Asking a connection to close from outside its task (hub, drain, rebalancing, takeover), and
//! the pod's table of open connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use protocol::{CloseAdvice, CloseCode, SessionId};
use tokio::sync::Notify;

use crate::hub::ConnId;

/// A close request: the first one wins.
#[derive(Debug)]
pub struct ConnControl {
    closing: AtomicBool,
    /// Set when a newer connection (on this pod or another) resumed the session: this one must
    /// not save the session record over the newer one's.
    taken_over: AtomicBool,
    request: Mutex<Option<(CloseCode, CloseAdvice)>>,
    notify: Notify,
}

impl ConnControl {
    pub fn new() -> Self {
        Self {
            closing: AtomicBool::new(false),
            taken_over: AtomicBool::new(false),
            request: Mutex::new(None),
            notify: Notify::new(),
        }
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

    /// Waits for a close request and returns it.
    pub async fn requested(&self) -> (CloseCode, CloseAdvice) {
        loop {
            if let Some(req) = self.request.lock().expect("close request lock").clone() {
                return req;
            }
            self.notify.notified().await;
        }
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
    session: Option<SessionId>,
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
    sessions: HashMap<SessionId, ConnId>,
}

impl Connections {
    pub fn register(&self, control: Arc<ConnControl>) -> ConnId {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        self.inner.lock().expect("connections lock").conns.insert(
            id,
            Entry {
                control,
                session: None,
            },
        );
        id
    }

    /// Binds a session to a connection; returns the control of the connection that held the
    /// session before, if any (it must be closed: a session lives on one connection).
    pub fn bind_session(&self, id: ConnId, session: SessionId) -> Option<Arc<ConnControl>> {
        let mut t = self.inner.lock().expect("connections lock");
        let previous = t.sessions.insert(session.clone(), id);
        if let Some(entry) = t.conns.get_mut(&id) {
            entry.session = Some(session);
        }
        previous
            .filter(|p| *p != id)
            .and_then(|p| t.conns.get(&p).map(|e| e.control.clone()))
    }

    /// The connection holding `session` on this pod, if any.
    pub fn session_control(&self, session: &SessionId) -> Option<Arc<ConnControl>> {
        let t = self.inner.lock().expect("connections lock");
        let id = t.sessions.get(session)?;
        t.conns.get(id).map(|e| e.control.clone())
    }

    /// Whether `id` still holds `session` (it does not after a takeover).
    pub fn holds_session(&self, id: ConnId, session: &SessionId) -> bool {
        self.inner
            .lock()
            .expect("connections lock")
            .sessions
            .get(session)
            == Some(&id)
    }

    pub fn remove(&self, id: ConnId) {
        let mut t = self.inner.lock().expect("connections lock");
        if let Some(entry) = t.conns.remove(&id)
            && let Some(session) = entry.session
            && t.sessions.get(&session) == Some(&id)
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
}
