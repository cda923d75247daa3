//! Per-topic ordering of arrivals from the backplane.
//!
//! The backplane is at-most-once and may reorder messages from different publishers; the store
//! assigns every message its `seq` before it is published. A [`Sequencer`] turns arrivals back
//! into the gap-free `seq` order: it releases the next expected message at once, drops what it
//! has already released, and holds anything ahead of a gap until the gap is filled, either by the
//! late arrival itself or from history (see `hub`). Pure logic: no I/O, no clock.

use std::collections::BTreeMap;

use protocol::Epoch;

/// What the sequencer made of an arrival.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// Deliver these, in order.
    Release(Vec<(u64, T)>),
    /// Already released (or older): drop it.
    Duplicate,
    /// Ahead of a gap: held until the gap is filled or [`Sequencer::skip_gap`] gives up on it.
    Held,
}

#[derive(Debug)]
pub struct Sequencer<T> {
    /// The next `seq` to release.
    next: u64,
    epoch: Epoch,
    held: BTreeMap<u64, T>,
}

impl<T> Sequencer<T> {
    /// A sequencer for a topic whose latest released `seq` is `top`.
    pub fn new(top: u64, epoch: Epoch) -> Self {
        Self {
            next: top + 1,
            epoch,
            held: BTreeMap::new(),
        }
    }

    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// Whether anything is held behind a gap.
    pub fn has_gap(&self) -> bool {
        !self.held.is_empty()
    }

    /// Accepts one arrival.
    pub fn arrive(&mut self, seq: u64, epoch: &Epoch, item: T) -> Arrival<T> {
        if *epoch != self.epoch {
            // The topic's history was lost and restarted: its sequence starts over at 1 (what
            // arrives first may be a later message; the gap is filled from the new history).
            // Anything held belonged to the old history and can never be filled.
            self.epoch = epoch.clone();
            self.held.clear();
            self.next = 1;
        }
        if seq < self.next || self.held.contains_key(&seq) {
            return Arrival::Duplicate;
        }
        if seq > self.next {
            self.held.insert(seq, item);
            return Arrival::Held;
        }
        let mut out = vec![(seq, item)];
        self.next += 1;
        self.release_held(&mut out);
        Arrival::Release(out)
    }

    /// Gives up on the current gap (its messages are gone from history too): releases everything
    /// held, in order, from the first held `seq` on.
    pub fn skip_gap(&mut self) -> Vec<(u64, T)> {
        let mut out = Vec::new();
        if let Some((&first, _)) = self.held.first_key_value() {
            self.next = first;
            self.release_held(&mut out);
        }
        out
    }

    fn release_held(&mut self, out: &mut Vec<(u64, T)>) {
        while let Some(item) = self.held.remove(&self.next) {
            out.push((self.next, item));
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn e() -> Epoch {
        Epoch::new("e")
    }

    fn seqs(a: Arrival<()>) -> Vec<u64> {
        match a {
            Arrival::Release(v) => v.into_iter().map(|(s, _)| s).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn holds_and_releases_in_order() {
        let mut s = Sequencer::new(0, e());
        assert_eq!(seqs(s.arrive(1, &e(), ())), vec![1]);
        assert_eq!(s.arrive(3, &e(), ()), Arrival::Held);
        assert_eq!(s.arrive(3, &e(), ()), Arrival::Duplicate);
        assert_eq!(seqs(s.arrive(2, &e(), ())), vec![2, 3]);
        assert_eq!(s.arrive(2, &e(), ()), Arrival::Duplicate);
        assert!(!s.has_gap());
    }

    #[test]
    fn skip_gap_and_epoch_change() {
        let mut s = Sequencer::new(5, e());
        assert_eq!(s.arrive(8, &e(), ()), Arrival::Held);
        assert_eq!(s.skip_gap().len(), 1);
        assert_eq!(s.next(), 9);
        let new = Epoch::new("f");
        assert_eq!(s.arrive(2, &new, ()), Arrival::Held);
        assert_eq!(s.epoch(), &new);
        assert_eq!(seqs(s.arrive(1, &new, ())), vec![1, 2]);
    }

    proptest! {
        /// Any arrival order, with duplicates, releases every seq exactly once, in order.
        #[test]
        fn any_order_releases_each_once_in_order(
            mut order in Just((1..=40u64).collect::<Vec<_>>()).prop_shuffle(),
            dups in prop::collection::vec(1..=40u64, 0..20),
        ) {
            order.extend(dups);
            let mut s = Sequencer::new(0, e());
            let mut released = Vec::new();
            for seq in order {
                released.extend(seqs(s.arrive(seq, &e(), ())));
            }
            prop_assert_eq!(released, (1..=40).collect::<Vec<_>>());
        }
    }
}
