//! Per-topic ordering of arrivals from the backplane.
//!
//! The backplane is at-most-once and may reorder messages from different publishers; the store
//! assigns every message its `seq` before it is published. A [`Sequencer`] turns arrivals back
//! into the gap-free `seq` order: it releases the next expected message at once, drops what it
//! has already released, and holds anything ahead of a gap until the gap is filled, either by the
//! late arrival itself or from history (see `hub`). Pure logic: no I/O, no clock.
//!
//! Epochs are ordered ([`Epoch::is_newer_than`]): an arrival from a newer epoch starts the
//! sequence over at 1 (the topic's history restarted), one from an older epoch is a straggler
//! from before and is ignored, never a reset. The hold is bounded in count and bytes: at the
//! bound the hub stops waiting for the gap and recovers at once.

use std::collections::BTreeMap;

use protocol::Epoch;

/// Most arrivals held behind one gap.
pub const MAX_HELD: usize = 4_096;
/// Most payload bytes held behind one gap.
pub const MAX_HELD_BYTES: usize = 8 << 20;

/// What the sequencer made of an arrival.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival<T> {
    /// Deliver these, in order.
    Release(Vec<(u64, T)>),
    /// Already released (or older): drop it.
    Duplicate,
    /// Ahead of a gap: held until the gap is filled or [`Sequencer::skip_gap`] gives up on it.
    Held,
    /// Held, and the hold is at its bound: fill the gap now or give up on it.
    Full,
    /// From an epoch older than the current one: ignored.
    Stale,
}

#[derive(Debug)]
pub struct Sequencer<T> {
    /// The next `seq` to release.
    next: u64,
    epoch: Epoch,
    held: BTreeMap<u64, (T, usize)>,
    held_bytes: usize,
}

impl<T> Sequencer<T> {
    /// A sequencer for a topic whose latest released `seq` is `top`.
    pub fn new(top: u64, epoch: Epoch) -> Self {
        Self {
            next: top + 1,
            epoch,
            held: BTreeMap::new(),
            held_bytes: 0,
        }
    }

    pub fn next(&self) -> u64 {
        self.next
    }

    /// The last released `seq` (0 before the first).
    pub fn released(&self) -> u64 {
        self.next - 1
    }

    pub fn epoch(&self) -> &Epoch {
        &self.epoch
    }

    /// Whether anything is held behind a gap.
    pub fn has_gap(&self) -> bool {
        !self.held.is_empty()
    }

    /// Whether the hold is at its bound.
    pub fn is_full(&self) -> bool {
        self.held.len() >= MAX_HELD || self.held_bytes >= MAX_HELD_BYTES
    }

    /// Starts `epoch` over from its beginning: the store says the topic is in it now.
    pub fn restart(&mut self, epoch: Epoch) {
        self.epoch = epoch;
        self.held.clear();
        self.held_bytes = 0;
        self.next = 1;
    }

    /// Accepts one arrival of `bytes` payload bytes.
    pub fn arrive(&mut self, seq: u64, epoch: &Epoch, item: T, bytes: usize) -> Arrival<T> {
        if *epoch != self.epoch {
            if !epoch.is_newer_than(&self.epoch) {
                return Arrival::Stale;
            }
            // The topic's history restarted: its sequence starts over at 1 (what arrives first
            // may be a later message; the gap is filled from the new history). Anything held
            // belonged to the old history and can never be filled.
            self.restart(epoch.clone());
        }
        if seq < self.next || self.held.contains_key(&seq) {
            return Arrival::Duplicate;
        }
        if seq > self.next {
            self.held.insert(seq, (item, bytes));
            self.held_bytes += bytes;
            if self.is_full() {
                return Arrival::Full;
            }
            return Arrival::Held;
        }
        let mut out = vec![(seq, item)];
        self.next += 1;
        self.release_held(&mut out);
        Arrival::Release(out)
    }

    /// Gives up on the current gap (its messages are gone from history, or history cannot be
    /// read): releases everything held, in order, from the first held `seq` on. Subscribers see
    /// the jump and fill it themselves or resume (`connection`), so it is never silent.
    pub fn skip_gap(&mut self) -> Vec<(u64, T)> {
        let mut out = Vec::new();
        if let Some((&first, _)) = self.held.first_key_value() {
            self.next = first;
            self.release_held(&mut out);
        }
        out
    }

    fn release_held(&mut self, out: &mut Vec<(u64, T)>) {
        while let Some((item, bytes)) = self.held.remove(&self.next) {
            self.held_bytes -= bytes;
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
        Epoch::at(1_000, 0)
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
        assert_eq!(seqs(s.arrive(1, &e(), (), 1)), vec![1]);
        assert_eq!(s.arrive(3, &e(), (), 1), Arrival::Held);
        assert_eq!(s.arrive(3, &e(), (), 1), Arrival::Duplicate);
        assert_eq!(seqs(s.arrive(2, &e(), (), 1)), vec![2, 3]);
        assert_eq!(s.arrive(2, &e(), (), 1), Arrival::Duplicate);
        assert!(!s.has_gap());
    }

    #[test]
    fn skip_gap_and_epoch_change() {
        let mut s = Sequencer::new(5, e());
        assert_eq!(s.arrive(8, &e(), (), 1), Arrival::Held);
        assert_eq!(s.skip_gap().len(), 1);
        assert_eq!(s.next(), 9);
        let new = Epoch::at(2_000, 0);
        assert_eq!(s.arrive(2, &new, (), 1), Arrival::Held);
        assert_eq!(s.epoch(), &new);
        assert_eq!(seqs(s.arrive(1, &new, (), 1)), vec![1, 2]);
    }

    #[test]
    fn an_older_epoch_never_resets() {
        let mut s = Sequencer::new(5, e());
        assert_eq!(s.arrive(1, &Epoch::at(999, 7), (), 1), Arrival::Stale);
        assert_eq!(s.arrive(1, &Epoch::new("deadbeef"), (), 1), Arrival::Stale);
        assert_eq!((s.next(), s.epoch()), (6, &e()));
    }

    #[test]
    fn the_hold_is_bounded() {
        let mut s = Sequencer::new(0, e());
        for seq in 2..MAX_HELD as u64 + 1 {
            assert_eq!(s.arrive(seq, &e(), (), 1), Arrival::Held);
        }
        assert_eq!(s.arrive(MAX_HELD as u64 + 1, &e(), (), 1), Arrival::Full);
        let mut s = Sequencer::new(0, e());
        assert_eq!(s.arrive(2, &e(), (), MAX_HELD_BYTES / 2), Arrival::Held);
        assert_eq!(s.arrive(3, &e(), (), MAX_HELD_BYTES / 2), Arrival::Full);
        assert_eq!(s.skip_gap().len(), 2);
        assert_eq!(
            s.arrive(4, &e(), (), MAX_HELD_BYTES / 2),
            Arrival::Release(vec![(4, ())])
        );
    }

    /// One step of the property test's input.
    #[derive(Debug, Clone)]
    enum Step {
        /// An arrival of (epoch index, seq).
        Arrive(usize, u64),
        /// The hub gives up on a gap.
        Skip,
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
                released.extend(seqs(s.arrive(seq, &e(), (), 1)));
            }
            prop_assert_eq!(released, (1..=40).collect::<Vec<_>>());
        }

        /// Random arrivals over three epochs, with drops, duplicates, reorderings, stragglers
        /// from older epochs and given-up gaps: what is released is strictly increasing within
        /// an epoch, never goes back to an older epoch, and every jump (a seq that is not the
        /// previous + 1, or a new epoch not starting at 1) happens only at a `skip_gap`, where
        /// the connections see it and fill it or resume.
        #[test]
        fn released_output_is_ordered_and_every_jump_is_a_skip(
            steps in prop::collection::vec(
                prop_oneof![
                    8 => (0..3usize, 1..30u64).prop_map(|(e, s)| Step::Arrive(e, s)),
                    1 => Just(Step::Skip),
                ],
                0..200,
            ),
        ) {
            let epochs = [Epoch::at(1, 0), Epoch::at(2, 0), Epoch::at(3, 0)];
            let mut s = Sequencer::new(0, epochs[0].clone());
            let mut last: Option<(usize, u64)> = None;
            for step in steps {
                let (out, skipped) = match step {
                    Step::Arrive(ei, seq) => match s.arrive(seq, &epochs[ei], ei, 1) {
                        Arrival::Release(v) => (v, false),
                        _ => (Vec::new(), false),
                    },
                    Step::Skip => (s.skip_gap(), true),
                };
                for (i, (seq, ei)) in out.into_iter().enumerate() {
                    if let Some((le, ls)) = last {
                        prop_assert!(ei >= le, "went back to an older epoch");
                        if ei == le {
                            prop_assert!(seq > ls, "not increasing: {} after {}", seq, ls);
                        }
                        let contiguous = (ei == le && seq == ls + 1) || (ei > le && seq == 1);
                        prop_assert!(contiguous || (skipped && i == 0), "silent jump to {}", seq);
                    } else {
                        prop_assert!(seq == 1 || (skipped && i == 0), "first release {}", seq);
                    }
                    last = Some((ei, seq));
                }
            }
        }
    }
}
