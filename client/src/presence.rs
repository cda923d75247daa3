//! Join/leave events (namespaces with `join_leave`): each topic's presence position (`pseq` in a
//! presence epoch), kept so a resume or re-subscribe asks the gateway for what was missed, and
//! so an event already reflected is dropped. Pure: no I/O.

use std::collections::BTreeMap;

use crate::queries::PresenceMember;

/// A member joined or left a topic, in `pseq` order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceEvent {
    pub topic: String,
    /// `true` for a join, `false` for a leave.
    pub join: bool,
    pub pseq: u64,
    /// The topic's presence epoch (not the messages' epoch).
    pub epoch: String,
    pub member: PresenceMember,
}

/// A topic's place in its join/leave events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresencePosition {
    pub pseq: u64,
    pub epoch: String,
}

/// The presence position of every subscribed join/leave topic.
#[derive(Debug, Default)]
pub(crate) struct PresencePositions {
    at: BTreeMap<String, PresencePosition>,
}

impl PresencePositions {
    pub fn get(&self, topic: &str) -> Option<&PresencePosition> {
        self.at.get(topic)
    }

    /// The position the gateway says the connection follows from (`subscribed`, `welcome`, a
    /// fresh list).
    pub fn set(&mut self, topic: &str, pseq: u64, epoch: String) {
        self.at
            .insert(topic.to_owned(), PresencePosition { pseq, epoch });
    }

    pub fn remove(&mut self, topic: &str) {
        self.at.remove(topic);
    }

    /// An event: `true` when it is new (the position moves to it), `false` when already seen.
    pub fn event(&mut self, topic: &str, pseq: u64, epoch: &str) -> bool {
        if let Some(at) = self.at.get(topic)
            && at.epoch == epoch
            && pseq <= at.pseq
        {
            return false;
        }
        self.set(topic, pseq, epoch.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_move_the_position_once() {
        let mut p = PresencePositions::default();
        assert!(p.event("room", 3, "p1"));
        assert!(p.event("room", 4, "p1"));
        assert!(!p.event("room", 4, "p1"), "a replayed event is dropped");
        assert!(!p.event("room", 2, "p1"));
        // A new epoch starts over.
        assert!(p.event("room", 1, "p2"));
        assert_eq!(
            p.get("room"),
            Some(&PresencePosition {
                pseq: 1,
                epoch: "p2".into()
            })
        );
        p.remove("room");
        assert!(p.get("room").is_none());
    }
}
