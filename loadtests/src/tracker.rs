//! Delivery bookkeeping, kept pure (no I/O, no clocks) so it can be unit-tested exactly.
//!
//! A *stream* is what one subscriber expects in order: a gateway topic (numbered by the
//! gateway's `seq`) or, against the raw baseline, one publisher's messages on a topic (numbered
//! by a counter inside the payload). A subscriber opens a stream at the position it subscribed
//! at (`start`): it expects exactly the numbers `start+1 ..= top`, once each, ascending, where
//! `top` is learnt when publishing has stopped. Against that:
//! - a number received twice (or at/below `start`) is a **duplicate**;
//! - a new number below one already received is an **order violation**;
//! - a number in `start+1 ..= top` never received is **lost**.

use std::collections::HashMap;

use serde::Serialize;

/// What one delivery turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    New,
    Duplicate,
    OutOfOrder,
}

/// Counts summed over streams and subscribers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Deliveries the subscribers should have received.
    pub expected: u64,
    /// Distinct expected deliveries received.
    pub delivered: u64,
    pub duplicates: u64,
    pub order_violations: u64,
    pub lost: u64,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.expected += other.expected;
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        self.order_violations += other.order_violations;
        self.lost += other.lost;
    }
}

/// One subscriber's view of one stream.
#[derive(Debug, Clone)]
pub struct Stream {
    start: u64,
    /// Bit `i` set: `start + 1 + i` was received. Grows with the highest number seen.
    bits: Vec<u64>,
    max_seen: u64,
    duplicates: u64,
    order_violations: u64,
}

impl Stream {
    pub fn new(start: u64) -> Self {
        Self {
            start,
            bits: Vec::new(),
            max_seen: start,
            duplicates: 0,
            order_violations: 0,
        }
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// The highest number received (or `start`): the position a resuming client reports.
    pub fn last(&self) -> u64 {
        self.max_seen
    }

    fn is_set(&self, index: u64) -> bool {
        let (word, bit) = ((index / 64) as usize, index % 64);
        self.bits.get(word).is_some_and(|w| w & (1 << bit) != 0)
    }

    pub fn record(&mut self, seq: u64) -> Outcome {
        if seq <= self.start {
            self.duplicates += 1;
            return Outcome::Duplicate;
        }
        let index = seq - self.start - 1;
        if self.is_set(index) {
            self.duplicates += 1;
            return Outcome::Duplicate;
        }
        let word = (index / 64) as usize;
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        self.bits[word] |= 1 << (index % 64);
        if seq < self.max_seen {
            self.order_violations += 1;
            return Outcome::OutOfOrder;
        }
        self.max_seen = seq;
        Outcome::New
    }

    /// Whether everything up to `top` has arrived.
    pub fn complete(&self, top: u64) -> bool {
        top <= self.start || self.received_up_to(top) == top - self.start
    }

    fn received_up_to(&self, top: u64) -> u64 {
        if top <= self.start {
            return 0;
        }
        let n = top - self.start;
        let full = (n / 64) as usize;
        let mut count: u64 = self
            .bits
            .iter()
            .take(full)
            .map(|w| u64::from(w.count_ones()))
            .sum();
        let rest = n % 64;
        if rest > 0
            && let Some(w) = self.bits.get(full)
        {
            count += u64::from((w & ((1u64 << rest) - 1)).count_ones());
        }
        count
    }

    /// This stream's totals once `top` is known.
    pub fn totals(&self, top: u64) -> Totals {
        let expected = top.saturating_sub(self.start);
        let delivered = self.received_up_to(top);
        Totals {
            expected,
            delivered,
            duplicates: self.duplicates,
            order_violations: self.order_violations,
            lost: expected - delivered,
        }
    }
}

/// One subscriber's streams, by key (topic, or `topic/publisher` against the baseline).
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    streams: HashMap<String, Stream>,
    /// Deliveries on streams never opened (not subscribed): counted as duplicates.
    strays: u64,
}

impl Tracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens `key` at `start` unless it is open already (a resumed subscription keeps its
    /// original start, so a replay of what was already received counts as duplicates).
    pub fn open(&mut self, key: &str, start: u64) {
        if !self.streams.contains_key(key) {
            self.streams.insert(key.to_owned(), Stream::new(start));
        }
    }

    pub fn is_open(&self, key: &str) -> bool {
        self.streams.contains_key(key)
    }

    /// Records a delivery on an opened stream; a delivery on an unknown stream is a stray.
    pub fn record(&mut self, key: &str, seq: u64) -> Outcome {
        match self.streams.get_mut(key) {
            Some(s) => s.record(seq),
            None => {
                self.strays += 1;
                Outcome::Duplicate
            }
        }
    }

    /// Records a delivery, opening the stream at 0 first if needed (the baseline, where every
    /// publisher's counter starts at 1 and subscribers join before anyone publishes).
    pub fn record_open(&mut self, key: &str, seq: u64) -> Outcome {
        self.open(key, 0);
        self.record(key, seq)
    }

    pub fn stream(&self, key: &str) -> Option<&Stream> {
        self.streams.get(key)
    }

    pub fn streams(&self) -> impl Iterator<Item = (&String, &Stream)> {
        self.streams.iter()
    }

    /// Whether every expected stream has reached its top.
    pub fn complete(&self, expected: &[(String, u64)]) -> bool {
        expected
            .iter()
            .all(|(key, top)| self.streams.get(key).is_none_or(|s| s.complete(*top)))
    }

    /// Totals against `expected` (key, top) pairs. A stream expected but never opened counts as
    /// entirely lost from 0 (the subscriber never got anything of it).
    pub fn totals(&self, expected: &[(String, u64)]) -> Totals {
        let mut t = Totals {
            duplicates: self.strays,
            ..Totals::default()
        };
        for (key, top) in expected {
            match self.streams.get(key) {
                Some(s) => t.add(&s.totals(*top)),
                None => t.add(&Stream::new(0).totals(*top)),
            }
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(key: &str, top: u64) -> Vec<(String, u64)> {
        vec![(key.to_owned(), top)]
    }

    #[test]
    fn in_order_delivery_is_clean() {
        let mut t = Tracker::new();
        t.open("a", 3);
        for seq in 4..=10 {
            assert_eq!(t.record("a", seq), Outcome::New);
        }
        assert!(t.complete(&ex("a", 10)));
        let totals = t.totals(&ex("a", 10));
        assert_eq!(
            totals,
            Totals {
                expected: 7,
                delivered: 7,
                ..Totals::default()
            }
        );
        assert_eq!(t.stream("a").unwrap().last(), 10);
    }

    #[test]
    fn a_dropped_message_is_lost() {
        let mut t = Tracker::new();
        t.open("a", 0);
        for seq in [1, 2, 4, 5] {
            t.record("a", seq);
        }
        assert!(!t.complete(&ex("a", 5)));
        let totals = t.totals(&ex("a", 5));
        assert_eq!((totals.expected, totals.delivered, totals.lost), (5, 4, 1));
        assert_eq!(totals.order_violations, 0);
        // The tail counts too: nothing of 6..=8 arrived.
        assert_eq!(t.totals(&ex("a", 8)).lost, 4);
    }

    #[test]
    fn a_duplicated_message_is_a_duplicate() {
        let mut t = Tracker::new();
        t.open("a", 10);
        assert_eq!(t.record("a", 11), Outcome::New);
        assert_eq!(t.record("a", 11), Outcome::Duplicate);
        // At or below the subscribe position: also a duplicate, never "new".
        assert_eq!(t.record("a", 10), Outcome::Duplicate);
        assert_eq!(t.record("a", 12), Outcome::New);
        let totals = t.totals(&ex("a", 12));
        assert_eq!(
            (totals.duplicates, totals.lost, totals.delivered),
            (2, 0, 2)
        );
    }

    #[test]
    fn an_out_of_order_message_is_an_order_violation() {
        let mut t = Tracker::new();
        t.open("a", 0);
        assert_eq!(t.record("a", 1), Outcome::New);
        assert_eq!(t.record("a", 3), Outcome::New);
        assert_eq!(t.record("a", 2), Outcome::OutOfOrder);
        let totals = t.totals(&ex("a", 3));
        assert_eq!(
            (totals.order_violations, totals.lost, totals.duplicates),
            (1, 0, 0)
        );
        assert_eq!(t.stream("a").unwrap().last(), 3);
    }

    #[test]
    fn resume_keeps_the_original_start() {
        let mut t = Tracker::new();
        t.open("a", 5);
        t.record("a", 6);
        t.open("a", 6); // re-subscribed after a reconnect: still expects 6.. from the first start
        t.record("a", 6); // replayed
        t.record("a", 7);
        let totals = t.totals(&ex("a", 7));
        assert_eq!((totals.expected, totals.duplicates, totals.lost), (2, 1, 0));
    }

    #[test]
    fn unknown_and_never_opened_streams() {
        let mut t = Tracker::new();
        assert_eq!(t.record("x", 1), Outcome::Duplicate);
        let totals = t.totals(&ex("b", 4));
        assert_eq!((totals.lost, totals.duplicates), (4, 1));
        // The baseline opens lazily at 0.
        assert_eq!(t.record_open("p/1", 1), Outcome::New);
        assert_eq!(t.totals(&ex("p/1", 2)).lost, 1);
    }

    #[test]
    fn bitmap_crosses_word_boundaries() {
        let mut s = Stream::new(100);
        for seq in (101..=300).filter(|s| s % 97 != 0) {
            assert_eq!(s.record(seq), Outcome::New);
        }
        let totals = s.totals(300);
        assert_eq!(totals.expected, 200);
        assert_eq!(totals.lost, 2); // 194 and 291
        assert!(s.complete(193));
        assert!(!s.complete(194));
    }
}
