//! A connection's outbound queue: the deliveries the hub handed over, waiting for the
//! connection's task to write them.
//!
//! Bounded in messages (`--outbound-queue`) and in payload bytes (`--outbound-queue-bytes`).
//! A delivery that does not fit is not queued: its topic is noted as lagging and the connection
//! reads it from history after writing the queue (see `replay`), so a full queue costs the
//! reader latency, not its socket.
//!
//! Why not a channel: a tokio `mpsc` channel allocates its state and a first block of slots
//! up front, about 0.8 KiB per connection, most of an idle subscriber's footprint. This queue
//! allocates nothing until the first delivery, and the writer takes everything queued with one
//! lock (one lock per batch instead of one per message); the emptied buffer comes back for
//! the next batch while it is small, so a steady trickle does not allocate per message either.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use protocol::Topic;

use crate::hub::Delivery;

/// A written batch's buffer is reused for the next one up to this many slots; a larger one
/// (after a burst) is freed, so a quiet connection does not keep a burst's memory.
const REUSE_SLOTS: usize = 64;

/// The bounds of one connection's queue.
#[derive(Debug, Clone, Copy)]
pub struct QueueLimits {
    pub messages: usize,
    pub bytes: usize,
}

/// What [`Outbound::offer`] did with a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Queued; `wake` when the queue was empty, so the writer must be woken.
    Queued { wake: bool },
    /// The queue is full: the topic is marked lagging (the writer fills it from history).
    Full,
    /// The connection is ending: nothing is queued any more.
    Closed,
}

/// Everything queued, taken at once by the writer.
#[derive(Debug, Default)]
pub struct Batch {
    pub deliveries: VecDeque<Arc<Delivery>>,
    /// Topics with deliveries that did not fit: to be read from history after `deliveries`.
    pub lagging: Vec<Topic>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.deliveries.is_empty() && self.lagging.is_empty()
    }
}

#[derive(Debug, Default)]
pub struct Outbound {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    queued: Batch,
    /// Payload bytes in `queued`: the batch being written no longer counts.
    bytes: usize,
    closed: bool,
}

impl Outbound {
    /// Queues `delivery` if it fits `limits`. One delivery always fits an empty queue, however
    /// large.
    pub fn offer(&self, delivery: &Arc<Delivery>, limits: QueueLimits) -> Offer {
        self.offer_marking(delivery, limits, true)
    }

    /// Like [`Outbound::offer`], but a full queue drops `delivery` without marking its topic
    /// lagging: an ephemeral topic has no history to fill the gap from (at-most-once).
    pub fn offer_or_drop(&self, delivery: &Arc<Delivery>, limits: QueueLimits) -> Offer {
        self.offer_marking(delivery, limits, false)
    }

    fn offer_marking(&self, delivery: &Arc<Delivery>, limits: QueueLimits, lag: bool) -> Offer {
        let size = delivery.data.len();
        let mut s = self.state.lock().expect("outbound lock");
        if s.closed {
            return Offer::Closed;
        }
        let len = s.queued.deliveries.len();
        if len > 0 && (len >= limits.messages || s.bytes + size > limits.bytes) {
            if lag && !s.queued.lagging.contains(&delivery.topic) {
                s.queued.lagging.push(delivery.topic.clone());
            }
            return Offer::Full;
        }
        let wake = s.queued.is_empty();
        s.queued.deliveries.push_back(delivery.clone());
        s.bytes += size;
        Offer::Queued { wake }
    }

    /// Takes everything queued (and the lagging topics), leaving the queue empty.
    pub fn take(&self) -> Batch {
        let mut s = self.state.lock().expect("outbound lock");
        s.bytes = 0;
        std::mem::take(&mut s.queued)
    }

    /// Gives a written batch's buffer back for the next batch, if it is small and the queue
    /// has none yet.
    pub fn reuse(&self, mut buffer: VecDeque<Arc<Delivery>>) {
        buffer.clear();
        if buffer.capacity() > REUSE_SLOTS {
            return;
        }
        let mut s = self.state.lock().expect("outbound lock");
        if !s.closed && s.queued.deliveries.capacity() == 0 {
            s.queued.deliveries = buffer;
        }
    }

    /// The connection is ending: drops what is queued and refuses what comes.
    pub fn close(&self) {
        let mut s = self.state.lock().expect("outbound lock");
        s.closed = true;
        s.bytes = 0;
        s.queued = Batch::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Epoch, Payload};

    fn delivery(topic: &str, seq: u64, bytes: usize) -> Arc<Delivery> {
        let data = Payload::parse(&format!("\"{}\"", "x".repeat(bytes - 2))).unwrap();
        assert_eq!(data.len(), bytes);
        Arc::new(Delivery::new(
            Topic::new(topic).unwrap(),
            seq,
            Epoch::generate(),
            data,
            None,
            None,
        ))
    }

    #[test]
    fn bounded_in_messages_and_bytes_and_always_admits_one() {
        let q = Outbound::default();
        let limits = QueueLimits {
            messages: 3,
            bytes: 100,
        };
        let big = delivery("a", 1, 1_000);
        assert_eq!(q.offer(&big, limits), Offer::Queued { wake: true });
        assert_eq!(q.offer(&delivery("b", 1, 10), limits), Offer::Full);
        let batch = q.take();
        assert_eq!(batch.deliveries.len(), 1);
        assert_eq!(batch.lagging, vec![Topic::new("b").unwrap()]);
        assert!(q.take().is_empty());

        // Three by count, then full; the byte bound is counted again after a take.
        for seq in 1..=3 {
            let wake = seq == 1;
            assert_eq!(
                q.offer(&delivery("a", seq, 10), limits),
                Offer::Queued { wake }
            );
        }
        assert_eq!(q.offer(&delivery("a", 4, 10), limits), Offer::Full);
        assert_eq!(q.offer(&delivery("a", 5, 10), limits), Offer::Full);
        let batch = q.take();
        assert_eq!(batch.deliveries.len(), 3);
        assert_eq!(batch.lagging.len(), 1, "a topic is noted once");
        assert_eq!(
            q.offer(&delivery("a", 1, 60), limits),
            Offer::Queued { wake: true }
        );
        assert_eq!(
            q.offer(&delivery("a", 2, 40), limits),
            Offer::Queued { wake: false }
        );
        assert_eq!(q.offer(&delivery("a", 3, 2), limits), Offer::Full);
    }

    #[test]
    fn an_idle_queue_holds_no_buffer_and_a_closed_one_refuses() {
        let q = Outbound::default();
        let limits = QueueLimits {
            messages: 1_000,
            bytes: 1 << 20,
        };
        assert_eq!(q.take().deliveries.capacity(), 0);
        for seq in 1..=200 {
            q.offer(&delivery("a", seq, 10), limits);
        }
        // A burst's buffer is not kept; a small one is reused.
        q.reuse(q.take().deliveries);
        assert_eq!(q.take().deliveries.capacity(), 0);
        q.offer(&delivery("a", 1, 10), limits);
        q.reuse(q.take().deliveries);
        assert!(q.take().deliveries.capacity() > 0);
        q.offer(&delivery("a", 2, 10), limits);
        q.close();
        assert!(q.take().is_empty());
        assert_eq!(q.offer(&delivery("a", 3, 10), limits), Offer::Closed);
    }
}
