//! Where a connection is in each topic, and writing from history what it has not been sent.
//!
//! This is the last hop, and where "never a silent gap" is enforced: a connection writes a
//! topic's message only if it is the one right after the last it wrote (or the first of a newer
//! epoch, sent with its `epoch` so the client sees the break). Anything else (a message its
//! full queue had no room for, a gap the hub gave up on, a replay after `subscribed` or
//! `welcome`) is filled from history first, in bounded pages, each flushed before the next is
//! read. When history no longer has what is missing, the connection closes with 1013 and the
//! client resumes: the resume answers `recovered: false` for that topic. Nothing is skipped.
//!
//! Echo suppression: a message that excludes this connection's session (live or from history)
//! is written as a `skipped` frame in its place, so the client's position still moves past it
//! in order; on an ephemeral topic, where there is no position, it is not written at all.
//!
//! Positions advance in two steps: `fed` when a frame is handed to the socket, `sent` once the
//! socket flushed it. Only `sent` is ever saved in the session record, so a client resuming
//! without positions restarts from the first message it was not sent.

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{FutureExt, SinkExt};
use protocol::{Epoch, Payload, Position, SessionId, Topic, encode_message, encode_skipped};
use session_store::SessionStore;
use tokio::time::{Instant, timeout, timeout_at};

use crate::connection::{Close, Conn};
use crate::hub::Delivery;

/// Messages per history page a connection reads.
pub const PAGE: usize = 100;

/// Where a connection is in one topic.
#[derive(Debug, Clone)]
pub struct SubState {
    /// The last `seq` handed to the socket, in `epoch`.
    pub fed: u64,
    pub epoch: Epoch,
    /// Whether the next message written must carry `epoch` (the first of a new epoch).
    pub announce: bool,
    /// The last position the socket flushed: what the session record saves.
    pub sent: Position,
    /// An ephemeral topic: no positions, nothing to fill from history.
    pub ephemeral: bool,
}

impl SubState {
    /// A subscription whose client has everything up to `at`.
    pub fn at(at: Position) -> Self {
        Self {
            fed: at.seq,
            epoch: at.epoch.clone(),
            announce: false,
            sent: at,
            ephemeral: false,
        }
    }

    /// A subscription of an ephemeral topic: its position stays `{seq: 0, epoch: ""}`.
    pub fn ephemeral() -> Self {
        Self {
            ephemeral: true,
            ..Self::at(Position {
                seq: 0,
                epoch: Epoch::new(""),
            })
        }
    }

    /// The frame for message `seq` of this subscription's epoch (`skipped` when it excludes
    /// this session), and the position moved past it.
    fn frame(
        &mut self,
        topic: &Topic,
        seq: u64,
        data: &Payload,
        plain: Option<&Utf8Bytes>,
        skipped: bool,
    ) -> Message {
        let epoch = self.announce.then_some(&self.epoch);
        let frame = match plain {
            _ if skipped => Utf8Bytes::from(encode_skipped(topic, seq, epoch)),
            Some(frame) if !self.announce => frame.clone(),
            _ => Utf8Bytes::from(encode_message(topic, seq, epoch, data)),
        };
        self.announce = false;
        self.fed = seq;
        Message::Text(frame)
    }

    fn flushed(&mut self) {
        if self.sent.seq != self.fed || self.sent.epoch != self.epoch {
            self.sent = Position {
                seq: self.fed,
                epoch: self.epoch.clone(),
            };
        }
    }
}

/// A connection's subscriptions by topic: a sorted vector, because a connection has a few
/// (at most `--max-subscriptions`) and a hash map's smallest table is several times the size
/// of one entry, in every subscribed connection.
#[derive(Debug, Default)]
pub struct SubMap {
    entries: Vec<(Topic, SubState)>,
}

impl SubMap {
    fn index(&self, topic: &Topic) -> Result<usize, usize> {
        self.entries.binary_search_by(|(t, _)| t.cmp(topic))
    }

    pub fn get(&self, topic: &Topic) -> Option<&SubState> {
        self.index(topic).ok().map(|i| &self.entries[i].1)
    }

    pub fn get_mut(&mut self, topic: &Topic) -> Option<&mut SubState> {
        self.index(topic).ok().map(|i| &mut self.entries[i].1)
    }

    /// Adds or replaces `topic`'s state.
    pub fn insert(&mut self, topic: Topic, state: SubState) {
        match self.index(&topic) {
            Ok(i) => self.entries[i].1 = state,
            Err(i) => {
                // Exactly one more slot: the vector's first growth would take four.
                self.entries.reserve_exact(1);
                self.entries.insert(i, (topic, state));
            }
        }
    }

    pub fn remove(&mut self, topic: &Topic) -> Option<SubState> {
        let i = self.index(topic).ok()?;
        let (_, state) = self.entries.remove(i);
        if self.entries.is_empty() {
            self.entries = Vec::new();
        }
        Some(state)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &Topic> {
        self.entries.iter().map(|(t, _)| t)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&Topic, &SubState)> {
        self.entries.iter().map(|(t, s)| (t, s))
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut SubState> {
        self.entries.iter_mut().map(|(_, s)| s)
    }
}

/// What to do with one delivery from the queue.
pub enum Step {
    Write(Message),
    /// Not subscribed any more, already written, or from an older epoch.
    Skip,
    /// Messages before it are missing: fill from history first.
    Gap,
}

impl Conn {
    /// Whether a message excluding `exclude` is this connection's own to skip.
    fn excludes_me(&self, exclude: Option<&SessionId>) -> bool {
        match exclude {
            None => false,
            Some(excluded) => self.session.as_ref().is_some_and(|s| s.id == *excluded),
        }
    }

    /// Decides about `delivery` and, when it is the next message, moves the position past it.
    /// `now_us` is the batch's write time (read once per batch: a clock read per delivery is
    /// a measurable part of a delivery's cost).
    pub(crate) fn step(&mut self, delivery: &Delivery, now_us: u64) -> Step {
        let skipped = self.excludes_me(delivery.exclude.as_ref());
        let Some(sub) = self.subs.get_mut(&delivery.topic) else {
            return Step::Skip;
        };
        if delivery.ephemeral || sub.ephemeral {
            // No order to keep and nothing to fill: written as it comes (a mismatch means the
            // pods disagree about the namespace; the hub already warned). Excluded: not
            // written, there is no position to keep.
            if delivery.ephemeral != sub.ephemeral || skipped {
                return Step::Skip;
            }
            self.shared.metrics.conn.delivered.inc();
            return Step::Write(Message::Text(delivery.frame.clone()));
        }
        if delivery.epoch != sub.epoch {
            if !delivery.epoch.is_newer_than(&sub.epoch) {
                return Step::Skip;
            }
            if delivery.seq != 1 {
                return Step::Gap;
            }
            sub.epoch = delivery.epoch.clone();
            sub.announce = true;
        } else if delivery.seq <= sub.fed {
            return Step::Skip;
        } else if delivery.seq != sub.fed + 1 {
            return Step::Gap;
        }
        let message = sub.frame(
            &delivery.topic,
            delivery.seq,
            &delivery.data,
            Some(&delivery.frame),
            skipped,
        );
        let metrics = &self.shared.metrics.conn;
        if skipped {
            metrics.skipped.inc();
            return Step::Write(message);
        }
        metrics.delivered.inc();
        if let Some(published) = delivery.published_us {
            metrics
                .delivery_latency
                .observe(now_us.saturating_sub(published) as f64 / 1e6);
        }
        Step::Write(message)
    }

    /// Hands one frame to the socket (written at the next flush, or when the buffer fills).
    pub(crate) async fn feed(
        &mut self,
        socket: &mut WebSocket,
        message: Message,
    ) -> Result<(), Close> {
        let deadline = Instant::now() + self.shared.config.write_timeout;
        self.feed_by(socket, message, deadline).await
    }

    /// [`Conn::feed`] with the deadline of a whole batch (one clock read per batch).
    pub(crate) async fn feed_by(
        &mut self,
        socket: &mut WebSocket,
        message: Message,
        deadline: Instant,
    ) -> Result<(), Close> {
        // A socket that can take the frame now takes it without a timer: arming and dropping a
        // timeout per frame was a measurable part of a delivery's cost (perf, 1,000
        // subscribers). Only a socket whose buffer is full waits for the kernel, under the
        // deadline.
        match std::future::poll_fn(|cx| socket.poll_ready_unpin(cx)).now_or_never() {
            Some(Ok(())) => {
                return socket
                    .start_send_unpin(message)
                    .map_err(|e| self.write_failed(e));
            }
            Some(Err(e)) => return Err(self.write_failed(e)),
            None => {}
        }
        match timeout_at(deadline, socket.feed(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(self.write_failed(e)),
            Err(_) => Err(Close::Gone),
        }
    }

    /// How a failed write ends the connection. A frame larger than the socket's write cap cannot
    /// happen for a message accepted under this pod's `--max-message-size`; one published by a
    /// pod with a larger limit (or stored before the limit was checked) can: say so, loudly.
    pub(crate) fn write_failed(&self, e: axum::Error) -> Close {
        if let Ok(e) = e
            .into_inner()
            .downcast::<tokio_tungstenite::tungstenite::Error>()
            && let tokio_tungstenite::tungstenite::Error::WriteBufferFull(_) = *e
        {
            self.shared.metrics.hub.drop("too_large");
            tracing::warn!(
                conn = self.id,
                max_message_size = self.shared.config.max_message_size,
                "a frame is larger than this connection's write cap: dropping the connection \
                 (do all pods run with the same --max-message-size?)"
            );
        }
        Close::Gone
    }

    /// Flushes the socket and records that everything fed so far was sent.
    pub(crate) async fn flush(&mut self, socket: &mut WebSocket) -> Result<(), Close> {
        match timeout(self.shared.config.write_timeout, socket.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.write_failed(e)),
            Err(_) => return Err(Close::Gone),
        }
        for sub in self.subs.values_mut() {
            sub.flushed();
        }
        Ok(())
    }

    /// Writes `topic`'s messages after the connection's position from history, page by page,
    /// until it has reached the top the store reports. Moves to a newer epoch when the topic
    /// restarted (the first message written carries it). Fails with [`Close::Lagged`] when
    /// history no longer has the next message.
    pub(crate) async fn fill(
        &mut self,
        socket: &mut WebSocket,
        topic: &Topic,
    ) -> Result<(), Close> {
        loop {
            let Some(sub) = self.subs.get(topic).filter(|sub| !sub.ephemeral) else {
                return Ok(());
            };
            let (after, epoch) = (sub.fed, sub.epoch.clone());
            let started = std::time::Instant::now();
            let page = self.shared.store.history(topic, after, PAGE).await;
            self.shared.metrics.store.observe("history", started);
            let page = page.map_err(|e| {
                tracing::warn!(%topic, error = %e, "cannot read history for a subscriber");
                Close::Unavailable
            })?;
            if page.top.epoch != epoch {
                if !page.top.epoch.is_newer_than(&epoch) {
                    // The store answered from an older epoch than this client has seen: it is
                    // in flux; the hub follows the store and the next delivery tries again.
                    return Ok(());
                }
                // The topic restarted: whatever came after `after` in the old epoch is gone.
                // The client learns it from the `epoch` on the next message it gets.
                let sub = self.subs.get_mut(topic).expect("checked above");
                sub.epoch = page.top.epoch;
                sub.fed = 0;
                sub.announce = true;
                continue;
            }
            let Some(first) = page.messages.first() else {
                if page.top.seq > after {
                    tracing::info!(%topic, after, top = page.top.seq, "history no longer has what a subscriber missed");
                    return Err(Close::Lagged);
                }
                return Ok(());
            };
            if first.seq != after + 1 {
                tracing::info!(%topic, after, first = first.seq, "history no longer has what a subscriber missed");
                return Err(Close::Lagged);
            }
            let last = page.messages.last().map_or(after, |m| m.seq);
            for m in &page.messages {
                let skipped = self.excludes_me(m.exclude.as_ref());
                let sub = self.subs.get_mut(topic).expect("checked above");
                let message = sub.frame(topic, m.seq, &m.data, None, skipped);
                self.feed(socket, message).await?;
                let metrics = &self.shared.metrics.conn;
                if skipped {
                    metrics.skipped.inc();
                } else {
                    metrics.delivered.inc();
                }
            }
            self.flush(socket).await?;
            if last >= page.top.seq {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_subscription_map_finds_inserts_and_removes_by_topic() {
        let at = |seq| {
            SubState::at(Position {
                seq,
                epoch: Epoch::generate(),
            })
        };
        let mut subs = SubMap::default();
        for (name, seq) in [("m", 1), ("a", 2), ("z", 3), ("a", 4)] {
            subs.insert(Topic::new(name).unwrap(), at(seq));
        }
        assert_eq!(subs.len(), 3);
        let names: Vec<&str> = subs.keys().map(|t| t.as_str()).collect();
        assert_eq!(names, ["a", "m", "z"]);
        assert_eq!(subs.get(&Topic::new("a").unwrap()).unwrap().fed, 4);
        subs.get_mut(&Topic::new("z").unwrap()).unwrap().fed = 9;
        assert_eq!(
            subs.iter().map(|(_, s)| s.fed).collect::<Vec<_>>(),
            [4, 1, 9]
        );
        assert!(subs.remove(&Topic::new("m").unwrap()).is_some());
        assert!(subs.remove(&Topic::new("m").unwrap()).is_none());
        assert!(subs.get(&Topic::new("q").unwrap()).is_none());
        assert_eq!(subs.len(), 2);
    }
}
