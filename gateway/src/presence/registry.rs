//! The pod's local registry: the members attached here, and the changes not written yet, which
//! the presence task writes in one batch per topic and beat.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use protocol::{SessionId, Topic};

use super::{Change, Op, Who};
use crate::hub::ConnId;

/// One attached member on this pod.
#[derive(Debug, Clone)]
pub(super) struct Local {
    conn: ConnId,
    who: Who,
}

/// This pod's members: the attached ones (refreshed), and the changes not written yet (the
/// attaches of resumed sessions and the detaches of ended connections, in order).
#[derive(Debug, Default)]
pub struct Registry {
    attached: Mutex<HashMap<Topic, HashMap<SessionId, Local>>>,
    pub(super) pending: Mutex<Vec<(Topic, Change)>>,
    /// Topics that got their first member here since the last beat: registered for sweeps
    /// at once, so a pod that dies right after still has its members swept.
    pub(super) new_topics: Mutex<HashSet<Topic>>,
}

impl Registry {
    pub(super) fn attach(&self, topic: &Topic, conn: ConnId, session: &SessionId, who: Who) {
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
    pub(super) fn forget(&self, topic: &Topic, conn: ConnId, session: &SessionId) -> Option<Local> {
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

    pub(super) fn detach(&self, topic: &Topic, conn: ConnId, session: &SessionId) {
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
    pub(super) fn attach_later(&self, topic: &Topic, conn: ConnId, session: &SessionId, who: Who) {
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
    pub(super) fn batch(&self, refresh: bool) -> HashMap<Topic, Vec<Change>> {
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
