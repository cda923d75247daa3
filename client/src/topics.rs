//! Per-topic bookkeeping: positions, de-duplication by `seq`, and gap detection, following the
//! client rules of docs/protocol.md ("Ordering and de-duplication"). Pure: no I/O, so every rule
//! is unit-tested here.

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use crate::presence::PresencePositions;
use crate::wire::{Position, RestoredTopic, SentPosition};

/// Why messages may be missing on a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The gateway could not replay everything after the client's position (`recovered:false`):
    /// the position left the history, or the session and position were gone.
    NotRecovered,
    /// The topic moved to a new epoch (its history was lost on the server): `seq` restarts at 1.
    EpochChanged,
    /// A `seq` arrived more than one past the last (should never happen; reported, not hidden).
    Skipped,
}

impl GapReason {
    /// The reason's name, as the other SDKs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            GapReason::NotRecovered => "not_recovered",
            GapReason::EpochChanged => "epoch_changed",
            GapReason::Skipped => "skipped",
        }
    }
}

/// Messages on `topic` between `from` and `to` may be lost: reload the topic's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub topic: String,
    pub reason: GapReason,
    /// The client's position before the gap (none if it had none).
    pub from: Option<Position>,
    /// The position delivery continues from.
    pub to: Position,
}

/// One message of a topic, delivered once and in `seq` order.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub seq: u64,
    pub epoch: String,
    /// The message's JSON exactly as published.
    pub data: Box<RawValue>,
}

impl Message {
    /// Parses the data into `T`.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }
}

/// What one frame did to a topic's state, for the client to report.
#[derive(Debug)]
pub(crate) enum Outcome {
    Deliver(Message),
    Duplicate {
        seq: u64,
    },
    /// A `skipped` frame (the message excluded this session): the position moved past it,
    /// nothing to hand to the application.
    Skipped,
}

#[derive(Debug, Default)]
struct TopicState {
    seq: Option<u64>,
    epoch: Option<String>,
}

impl TopicState {
    fn position(&self) -> Option<Position> {
        Some(Position {
            seq: self.seq?,
            epoch: self.epoch.clone()?,
        })
    }
}

/// The subscribed topics and their positions.
#[derive(Debug, Default)]
pub(crate) struct Topics {
    topics: BTreeMap<String, TopicState>,
    /// Where each join/leave topic is in its events.
    pub presence: PresencePositions,
}

fn gap_reason(sent: &Position, epoch: &str) -> GapReason {
    if sent.epoch != epoch {
        GapReason::EpochChanged
    } else {
        GapReason::NotRecovered
    }
}

impl Topics {
    /// Adds a topic (no-op if present), starting from `since` when given.
    pub fn add(&mut self, topic: &str, since: Option<Position>) {
        self.topics
            .entry(topic.to_owned())
            .or_insert_with(|| TopicState {
                seq: since.as_ref().map(|p| p.seq),
                epoch: since.map(|p| p.epoch),
            });
    }

    pub fn remove(&mut self, topic: &str) -> bool {
        self.presence.remove(topic);
        self.topics.remove(topic).is_some()
    }

    /// The position to send for `topic`, with its presence position when it has one.
    pub fn sent_position(&self, topic: &str) -> Option<SentPosition> {
        let at = self.position(topic)?;
        let presence = self.presence.get(topic);
        Some(SentPosition {
            at,
            pseq: presence.map(|p| p.pseq),
            pepoch: presence.map(|p| p.epoch.clone()),
        })
    }

    /// Every topic's position as `hello` sends it.
    pub fn sent_positions(&self) -> BTreeMap<String, SentPosition> {
        self.topics
            .keys()
            .filter_map(|t| Some((t.clone(), self.sent_position(t)?)))
            .collect()
    }

    pub fn contains(&self, topic: &str) -> bool {
        self.topics.contains_key(topic)
    }

    pub fn names(&self) -> Vec<String> {
        self.topics.keys().cloned().collect()
    }

    pub fn position(&self, topic: &str) -> Option<Position> {
        self.topics.get(topic)?.position()
    }

    /// Every topic's position (the `positions` of `hello`).
    pub fn positions(&self) -> BTreeMap<String, Position> {
        self.topics
            .iter()
            .filter_map(|(t, s)| Some((t.clone(), s.position()?)))
            .collect()
    }

    /// A topic restored by a resumed `welcome`; `sent` is the position the `hello` carried.
    pub fn restored(
        &mut self,
        topic: &str,
        restored: &RestoredTopic,
        sent: Option<&Position>,
    ) -> Option<Gap> {
        let state = self.topics.get_mut(topic)?;
        let top = Position {
            seq: restored.seq,
            epoch: restored.epoch.clone(),
        };
        let mut gap = None;
        if restored.recovered {
            // The missed messages follow, from the position the gateway resumed from.
            if sent.is_none() {
                state.seq = None;
            }
        } else {
            if let Some(sent) = sent.filter(|s| **s != top) {
                gap = Some(Gap {
                    topic: topic.to_owned(),
                    reason: gap_reason(sent, &top.epoch),
                    from: Some(sent.clone()),
                    to: top.clone(),
                });
            }
            state.seq = Some(top.seq);
        }
        state.epoch = Some(top.epoch);
        gap
    }

    /// A `subscribed` reply to a `subscribe` that carried `since`.
    pub fn subscribed(
        &mut self,
        topic: &str,
        top: Position,
        recovered: Option<bool>,
        since: Option<&Position>,
    ) -> Option<Gap> {
        let state = self.topics.get_mut(topic)?;
        let mut gap = None;
        match since {
            Some(since) if recovered == Some(false) => {
                if *since != top {
                    gap = Some(Gap {
                        topic: topic.to_owned(),
                        reason: gap_reason(since, &top.epoch),
                        from: Some(since.clone()),
                        to: top.clone(),
                    });
                }
                state.seq = Some(top.seq);
            }
            // Recovered: the missing messages follow; keep the position.
            Some(_) => {}
            None => state.seq = Some(top.seq),
        }
        state.epoch = Some(top.epoch);
        gap
    }

    /// A `message` (`data`) or a `skipped` frame (no `data`): delivered or skipped, dropped as
    /// a duplicate, or preceded by a gap. A skipped one moves the position like a message: the
    /// next `seq` is no gap.
    pub fn message(
        &mut self,
        topic: &str,
        seq: u64,
        epoch: Option<String>,
        data: Option<Box<RawValue>>,
    ) -> (Option<Gap>, Option<Outcome>) {
        let Some(state) = self.topics.get_mut(topic) else {
            return (None, None);
        };
        let mut gap = None;
        match (epoch, &state.epoch) {
            (Some(new), Some(old)) if new != *old => {
                gap = Some(Gap {
                    topic: topic.to_owned(),
                    reason: GapReason::EpochChanged,
                    from: state.position(),
                    to: Position {
                        seq: seq.saturating_sub(1),
                        epoch: new.clone(),
                    },
                });
                state.seq = Some(seq.saturating_sub(1));
                state.epoch = Some(new);
            }
            (Some(new), _) => state.epoch = Some(new),
            (None, _) => {}
        }
        if let Some(last) = state.seq {
            if seq <= last {
                return (gap, Some(Outcome::Duplicate { seq }));
            }
            if seq > last + 1 && gap.is_none() {
                gap = Some(Gap {
                    topic: topic.to_owned(),
                    reason: GapReason::Skipped,
                    from: state.position(),
                    to: Position {
                        seq: seq - 1,
                        epoch: state.epoch.clone().unwrap_or_default(),
                    },
                });
            }
        }
        state.seq = Some(seq);
        let Some(data) = data else {
            return (gap, Some(Outcome::Skipped));
        };
        let message = Message {
            topic: topic.to_owned(),
            seq,
            epoch: state.epoch.clone().unwrap_or_default(),
            data,
        };
        (gap, Some(Outcome::Deliver(message)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(seq: u64, epoch: &str) -> Position {
        Position {
            seq,
            epoch: epoch.into(),
        }
    }

    fn data() -> Box<RawValue> {
        RawValue::from_string("1".into()).unwrap()
    }

    fn delivered(out: Option<Outcome>) -> Option<u64> {
        match out {
            Some(Outcome::Deliver(m)) => Some(m.seq),
            _ => None,
        }
    }

    #[test]
    fn duplicates_are_dropped_and_order_kept() {
        let mut t = Topics::default();
        t.add("a", None);
        assert!(t.subscribed("a", pos(2, "e"), None, None).is_none());
        assert_eq!(delivered(t.message("a", 3, None, Some(data())).1), Some(3));
        assert!(matches!(
            t.message("a", 3, None, Some(data())).1,
            Some(Outcome::Duplicate { seq: 3 })
        ));
        assert!(matches!(
            t.message("a", 1, None, Some(data())).1,
            Some(Outcome::Duplicate { seq: 1 })
        ));
        assert_eq!(t.position("a"), Some(pos(3, "e")));
    }

    #[test]
    fn epoch_change_is_a_gap_and_restarts_at_one() {
        let mut t = Topics::default();
        t.add("a", Some(pos(7, "e1")));
        t.subscribed("a", pos(7, "e1"), Some(true), Some(&pos(7, "e1")));
        let (gap, out) = t.message("a", 1, Some("e2".into()), Some(data()));
        let gap = gap.unwrap();
        assert_eq!(gap.reason, GapReason::EpochChanged);
        assert_eq!(gap.from, Some(pos(7, "e1")));
        assert_eq!(delivered(out), Some(1));
        assert_eq!(t.position("a"), Some(pos(1, "e2")));
    }

    #[test]
    fn not_recovered_is_a_gap_and_skipped_seqs_are_reported() {
        let mut t = Topics::default();
        t.add("a", Some(pos(3, "e")));
        let gap = t
            .subscribed("a", pos(13, "e"), Some(false), Some(&pos(3, "e")))
            .unwrap();
        assert_eq!(gap.reason, GapReason::NotRecovered);
        assert_eq!(gap.to, pos(13, "e"));
        let (gap, out) = t.message("a", 15, None, Some(data()));
        assert_eq!(gap.unwrap().reason, GapReason::Skipped);
        assert_eq!(delivered(out), Some(15));
    }

    #[test]
    fn a_skipped_frame_moves_the_position_without_a_message_or_a_gap() {
        let mut t = Topics::default();
        t.add("a", None);
        t.subscribed("a", pos(2, "e"), None, None);
        let (gap, out) = t.message("a", 3, None, None);
        assert!(gap.is_none());
        assert!(matches!(out, Some(Outcome::Skipped)));
        assert_eq!(t.position("a"), Some(pos(3, "e")));
        let (gap, out) = t.message("a", 4, None, Some(data()));
        assert!(gap.is_none(), "the skipped seq is no gap");
        assert_eq!(delivered(out), Some(4));
        // A repeat of it is a duplicate, like a message's; one after a hole is still a gap.
        assert!(matches!(
            t.message("a", 3, None, None).1,
            Some(Outcome::Duplicate { seq: 3 })
        ));
        let (gap, out) = t.message("a", 6, None, None);
        assert_eq!(gap.unwrap().reason, GapReason::Skipped);
        assert!(matches!(out, Some(Outcome::Skipped)));
        assert_eq!(t.position("a"), Some(pos(6, "e")));
    }

    #[test]
    fn sent_positions_carry_the_presence_position() {
        let mut t = Topics::default();
        t.add("a", Some(pos(4, "e")));
        t.add("b", Some(pos(1, "e")));
        t.presence.set("a", 7, "p".into());
        let sent = t.sent_positions();
        assert_eq!(
            (sent["a"].pseq, sent["a"].pepoch.as_deref()),
            (Some(7), Some("p"))
        );
        assert_eq!(sent["b"].pseq, None);
        assert!(t.remove("a"));
        assert!(t.presence.get("a").is_none(), "forgotten with the topic");
    }

    #[test]
    fn resumed_topics_keep_positions_when_recovered() {
        let mut t = Topics::default();
        t.add("a", None);
        t.subscribed("a", pos(4, "e"), None, None);
        let restored = RestoredTopic {
            seq: 9,
            epoch: "e".into(),
            recovered: true,
            pseq: None,
            pepoch: None,
        };
        assert!(t.restored("a", &restored, Some(&pos(4, "e"))).is_none());
        assert_eq!(t.position("a"), Some(pos(4, "e")));
        let lost = RestoredTopic {
            recovered: false,
            ..restored
        };
        let gap = t.restored("a", &lost, Some(&pos(4, "e"))).unwrap();
        assert_eq!(gap.reason, GapReason::NotRecovered);
        assert_eq!(t.position("a"), Some(pos(9, "e")));
    }
}
