//! Join/leave events: fan-out to every pod, per-connection order, and recovery.
//!
//! The store gives each join and leave of a `join_leave` topic its `pseq` in the step that
//! decides it ([`super::Event::logged`]). The pod whose call caused the events publishes each
//! on the topic's backplane subject as `p <pseq> <epoch>\n<frame>` (the `join`/`leave` frame,
//! encoded once), next to the topic's messages; every pod's topic task puts the notes back in
//! `pseq` order (holding one that arrives early for a moment: [`super::order`]) and hands them
//! to its local subscribers' [`PresenceQueue`]s. The backplane is at-most-once and events from
//! different pods may cross, so each connection keeps its own position per topic and writes an
//! event only when it is the next one; anything else is filled from the store's log, in order, or, when the log
//! no longer has it (trimmed, lost, another epoch), replaced by a fresh `presence` list with
//! `recovered: false`. A full queue is never a silent loss either: it marks the connection
//! behind and every join/leave topic of it is filled from the log.
//!
//! Drains and rebalances change no presence (the sessions stay members), so they emit nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use backplane::{Backplane, Subject};
use bytes::Bytes;
use protocol::{Epoch, ErrorCode, PresencePosition, ServerFrame, Topic};

use super::{Event, PresenceStore, live_pods, max_list};
use crate::Shared;
use crate::connection::{Close, Conn};

/// Events a connection's queue holds before it is marked behind (and fills from the log).
pub const QUEUE_LIMIT: usize = 1_024;
/// Events per log read of a catch-up.
pub const PAGE: usize = 200;
/// Most log pages one catch-up reads: past it the connection gets a fresh list instead.
pub const MAX_PAGES: usize = 50;

/// One join or leave on its way to the local subscribers of its topic.
#[derive(Debug)]
pub struct Note {
    pub topic: Topic,
    pub pseq: u64,
    pub epoch: Epoch,
    /// The `join`/`leave` frame, ready to write.
    pub frame: Utf8Bytes,
}

/// The frame of a logged event.
pub fn frame(topic: &Topic, event: &Event, at: &PresencePosition) -> ServerFrame {
    let (topic, pseq, epoch, member) = (
        topic.clone(),
        at.pseq,
        at.epoch.clone(),
        event.member.clone(),
    );
    if event.join {
        ServerFrame::Join {
            topic,
            pseq,
            epoch,
            member,
        }
    } else {
        ServerFrame::Leave {
            topic,
            pseq,
            epoch,
            member,
        }
    }
}

/// Encodes a note for the backplane.
fn encode(pseq: u64, epoch: &Epoch, frame: &str) -> Bytes {
    Bytes::from(format!("p {pseq} {}\n{frame}", epoch.as_str()))
}

/// Whether a backplane payload is a join/leave note rather than a message envelope (whose
/// header starts with a digit).
pub fn is_note(bytes: &[u8]) -> bool {
    bytes.starts_with(b"p ")
}

/// Decodes a note of `topic`; `None` when malformed.
pub fn decode(topic: &Topic, bytes: &[u8]) -> Option<Note> {
    let text = std::str::from_utf8(bytes).ok()?;
    let (header, frame) = text.strip_prefix("p ")?.split_once('\n')?;
    let (pseq, epoch) = header.split_once(' ')?;
    Some(Note {
        topic: topic.clone(),
        pseq: pseq.parse().ok()?,
        epoch: Epoch::new(epoch),
        frame: Utf8Bytes::from(frame.to_owned()),
    })
}

/// Publishes the logged ones of `events` to the topic's subscribers on every pod. A publish
/// that fails is not retried: the subscribers find the gap at the next event, or when they
/// resume, and fill it from the log.
pub async fn announce(shared: &Shared, topic: &Topic, events: &[Event]) {
    for event in events {
        let Some(at) = &event.logged else { continue };
        let text = frame(topic, event, at).to_json();
        let payload = encode(at.pseq, &at.epoch, &text);
        if let Err(e) = shared
            .backplane
            .publish(&Subject::Topic(topic.clone()), payload)
            .await
        {
            tracing::debug!(%topic, pseq = at.pseq, error = %e, "join/leave not published; subscribers fill it from the log");
        }
    }
}

/// A connection's queue of join/leave notes (bounded: see [`QUEUE_LIMIT`]).
#[derive(Debug, Default)]
pub struct PresenceQueue {
    notes: Mutex<VecDeque<Arc<Note>>>,
    /// Set when a note did not fit: the connection fills every join/leave topic from the log.
    behind: AtomicBool,
    pending: AtomicBool,
}

impl PresenceQueue {
    /// Queues `note` (the caller wakes the connection's task).
    pub fn offer(&self, note: &Arc<Note>) {
        let mut notes = self.notes.lock().expect("presence queue lock");
        if notes.len() >= QUEUE_LIMIT {
            self.behind.store(true, Ordering::Release);
        } else {
            notes.push_back(note.clone());
        }
        self.pending.store(true, Ordering::Release);
    }

    /// Everything queued, and whether the queue overflowed since the last take.
    pub fn take(&self) -> Option<(Vec<Arc<Note>>, bool)> {
        if !self.pending.swap(false, Ordering::Acquire) {
            return None;
        }
        let notes = std::mem::take(&mut *self.notes.lock().expect("presence queue lock"));
        Some((notes.into(), self.behind.swap(false, Ordering::AcqRel)))
    }
}

/// Hands notes (in the order given) to a topic's local subscribers.
pub fn offer_local<'a>(
    notes: &[Arc<Note>],
    subscribers: impl Iterator<Item = &'a crate::hub::Subscriber> + Clone,
) {
    for note in notes {
        for sub in subscribers.clone() {
            sub.control.offer_presence(note);
        }
    }
}

/// Where a connection is in each of its join/leave topics. Boxed: most connections have none.
pub type Positions = Option<Box<HashMap<Topic, PresencePosition>>>;

impl Conn {
    /// Whether `topic` logs join/leave events for this connection's subscription.
    pub(crate) fn join_leave(&self, topic: &Topic) -> bool {
        let ns = self.shared.namespaces.of(topic);
        ns.presence && ns.join_leave
    }

    pub(crate) fn presence_position(&self, topic: &Topic) -> Option<&PresencePosition> {
        self.presence_at.as_ref()?.get(topic)
    }

    fn set_presence_position(&mut self, topic: &Topic, at: PresencePosition) {
        self.presence_at
            .get_or_insert_with(Default::default)
            .insert(topic.clone(), at);
    }

    pub(crate) fn forget_presence_position(&mut self, topic: &Topic) {
        if let Some(map) = &mut self.presence_at {
            map.remove(topic);
            if map.is_empty() {
                self.presence_at = None;
            }
        }
    }

    /// Starts following `topic`'s join/leave events after subscribing (or restoring it on a
    /// resume): from `since` when the client sent one (the caller then writes what was missed
    /// with [`Conn::presence_catch_up`] after its reply), else from `joined` (the position of
    /// this subscription's own join), else from the topic's position now. Returns the position
    /// for `subscribed`/`welcome`; `None` when the topic has no events.
    pub(crate) async fn presence_start(
        &mut self,
        topic: &Topic,
        since: Option<PresencePosition>,
        joined: Option<PresencePosition>,
    ) -> Option<PresencePosition> {
        if !self.join_leave(topic) {
            return None;
        }
        let at = match since.or(joined) {
            Some(at) => at,
            None => match self
                .shared
                .presence
                .events_since(topic, &super::nowhere(), 1)
                .await
            {
                Ok(read) => read.top,
                // Unknown: the first event that arrives is a gap, filled with a fresh list.
                Err(e) => {
                    tracing::debug!(%topic, error = %e, "presence position not read");
                    super::nowhere()
                }
            },
        };
        self.set_presence_position(topic, at.clone());
        Some(at)
    }

    /// Writes the notes that follow on from this connection's positions, and fills any gap
    /// (or, with `behind`, every join/leave topic) from the log. The batch is put in order
    /// first: events decided by concurrent calls may arrive crossed, and a crossing inside one
    /// batch is then no gap (otherwise every connection of the topic would read the log for
    /// it). The frames are fed and flushed once, not written one by one.
    pub(crate) async fn presence_notes(
        &mut self,
        socket: &mut WebSocket,
        mut notes: Vec<Arc<Note>>,
        behind: bool,
    ) -> Result<(), Close> {
        // Epochs are time-ordered text: an older epoch's notes sort first.
        notes.sort_by(|a, b| {
            (&a.topic, a.epoch.as_str(), a.pseq).cmp(&(&b.topic, b.epoch.as_str(), b.pseq))
        });
        let mut fed = false;
        for note in notes {
            let Some(at) = self.presence_position(&note.topic) else {
                continue;
            };
            let same_epoch = note.epoch == at.epoch;
            // Written already (or filled from the log), or a straggler from an older epoch.
            let old = if same_epoch {
                note.pseq <= at.pseq
            } else {
                !at.epoch.as_str().is_empty() && !note.epoch.is_newer_than(&at.epoch)
            };
            if old {
                continue;
            }
            if note.epoch == at.epoch && note.pseq == at.pseq + 1 {
                self.feed(socket, Message::Text(note.frame.clone())).await?;
                fed = true;
                self.set_presence_position(
                    &note.topic,
                    PresencePosition {
                        pseq: note.pseq,
                        epoch: note.epoch.clone(),
                    },
                );
            } else {
                self.presence_catch_up(socket, &note.topic).await?;
            }
        }
        if fed {
            self.flush(socket).await?;
        }
        if behind {
            let topics: Vec<Topic> = self
                .presence_at
                .as_ref()
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            for topic in topics {
                self.presence_catch_up(socket, &topic).await?;
            }
        }
        Ok(())
    }

    /// Writes the events after this connection's position in `topic`, in order, from the log;
    /// when they are gone, a fresh `presence` list with `recovered: false`.
    pub(crate) async fn presence_catch_up(
        &mut self,
        socket: &mut WebSocket,
        topic: &Topic,
    ) -> Result<(), Close> {
        for _ in 0..MAX_PAGES {
            let Some(at) = self.presence_position(topic).cloned() else {
                return Ok(());
            };
            let read = match self.shared.presence.events_since(topic, &at, PAGE).await {
                Ok(read) => read,
                Err(e) => {
                    // The next event (or resume) tries again: the position did not move.
                    tracing::debug!(%topic, error = %e, "presence log not read");
                    return Ok(());
                }
            };
            let Some(events) = read.events else {
                return self.presence_fresh_list(socket, topic).await;
            };
            if events.is_empty() {
                return Ok(());
            }
            for event in &events {
                let Some(logged) = &event.logged else {
                    continue;
                };
                let text = frame(topic, event, logged).to_json();
                self.feed(socket, Message::Text(text.into())).await?;
                self.set_presence_position(topic, logged.clone());
            }
            // One flush per page (it also sends what the caller fed before).
            self.flush(socket).await?;
            if self.presence_position(topic).map(|p| p.pseq) >= Some(read.top.pseq) {
                return Ok(());
            }
        }
        self.presence_fresh_list(socket, topic).await
    }

    /// Replaces the events a connection missed with the members now: `presence` with
    /// `recovered: false` and the position the list is at. Above the namespace's
    /// `presence_max_list` an `error` (`limit_reached`, no `ref`) says the list is not sent;
    /// the position still moves to the top, so the events after it follow.
    async fn presence_fresh_list(
        &mut self,
        socket: &mut WebSocket,
        topic: &Topic,
    ) -> Result<(), Close> {
        let max = max_list(&self.shared, topic);
        let live = live_pods(&self.shared);
        match self.shared.presence.members(topic, &live, max).await {
            Ok(Some(listing)) => {
                let at = listing.at.unwrap_or_else(super::nowhere);
                self.set_presence_position(topic, at.clone());
                let reply = ServerFrame::Presence {
                    topic: topic.clone(),
                    members: listing.members,
                    pseq: Some(at.pseq),
                    epoch: Some(at.epoch),
                    recovered: Some(false),
                    reference: None,
                };
                self.reply(socket, &reply).await
            }
            Ok(None) => {
                if let Ok(read) = self
                    .shared
                    .presence
                    .events_since(topic, &super::nowhere(), 1)
                    .await
                {
                    self.set_presence_position(topic, read.top);
                }
                let reply = ServerFrame::error(
                    ErrorCode::LimitReached,
                    format!(
                        "join/leave events of {topic} missed and more than {max} members: use presence_stats"
                    ),
                    None,
                );
                self.reply(socket, &reply).await
            }
            Err(e) => {
                tracing::debug!(%topic, error = %e, "presence list not read");
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip_and_are_told_from_messages() {
        let t = Topic::new("room.a").unwrap();
        let bytes = encode(7, &Epoch::new("e1"), r#"{"type":"join"}"#);
        assert!(is_note(&bytes));
        let note = decode(&t, &bytes).unwrap();
        assert_eq!((note.pseq, note.epoch.as_str()), (7, "e1"));
        assert_eq!(note.frame.as_str(), r#"{"type":"join"}"#);
        assert!(!is_note(b"3 e1 17\n{}"));
        assert!(decode(&t, b"p x e\n{}").is_none());
    }

    #[test]
    fn a_full_queue_marks_the_connection_behind() {
        let q = PresenceQueue::default();
        assert!(q.take().is_none());
        let note = Arc::new(Note {
            topic: Topic::new("a").unwrap(),
            pseq: 1,
            epoch: Epoch::new("e"),
            frame: Utf8Bytes::from_static("{}"),
        });
        for _ in 0..=QUEUE_LIMIT {
            q.offer(&note);
        }
        let (notes, behind) = q.take().unwrap();
        assert_eq!((notes.len(), behind), (QUEUE_LIMIT, true));
        assert!(q.take().is_none());
    }
}
