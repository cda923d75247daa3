//! Join/leave notes put back in `pseq` order once per pod, before its connections see them.
//!
//! Two calls that decide pseq n and n+1 (on this pod or two) publish their notes independently,
//! so n+1 may arrive first. Every connection that saw n+1 alone would read the store's log for
//! n (see [`super::events`]): one crossing, one log read per subscribed connection. The topic
//! task instead holds a note that arrives ahead of the next expected one for at most
//! [`HOLD`], releasing it as soon as the missing ones arrive; a note that never arrives (the
//! backplane is at-most-once) only delays the held ones by [`HOLD`], after which they go out
//! and the connections fill the gap from the log as before. Notes of another epoch, and
//! repeats, are passed on at once: the connections decide about those.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use protocol::Epoch;
use tokio::time::Instant;

use super::events::Note;

/// How long a note ahead of the next expected one waits for the missing ones.
pub const HOLD: Duration = Duration::from_millis(20);
/// Notes held at most; one more releases them all (the connections then fill the gaps).
const HOLD_MAX: usize = 256;

#[derive(Debug, Default)]
pub struct NoteOrder {
    /// The epoch and pseq of the last note passed on.
    last: Option<(Epoch, u64)>,
    held: BTreeMap<u64, Arc<Note>>,
    deadline: Option<Instant>,
}

impl NoteOrder {
    /// The notes to pass on now, in order, after `note` arrived.
    pub fn arrive(&mut self, note: Arc<Note>, now: Instant) -> Vec<Arc<Note>> {
        let Some((epoch, last)) = &self.last else {
            self.last = Some((note.epoch.clone(), note.pseq));
            return vec![note];
        };
        if note.epoch != *epoch {
            // Another epoch: whatever was held goes first, then this one starts the new order.
            let mut out = self.release();
            self.last = Some((note.epoch.clone(), note.pseq));
            out.push(note);
            return out;
        }
        let last = *last;
        if note.pseq <= last {
            return vec![note];
        }
        if note.pseq > last + 1 {
            if self.held.len() >= HOLD_MAX {
                let mut out = self.release();
                out.push(note.clone());
                self.last = Some((note.epoch.clone(), note.pseq));
                return out;
            }
            self.held.insert(note.pseq, note);
            self.deadline.get_or_insert(now + HOLD);
            return Vec::new();
        }
        let mut out = vec![note];
        let mut next = last + 1;
        while let Some(held) = self.held.remove(&(next + 1)) {
            out.push(held);
            next += 1;
        }
        if let Some((_, last)) = &mut self.last {
            *last = next;
        }
        if self.held.is_empty() {
            self.deadline = None;
        }
        out
    }

    /// When the held notes go out whatever arrives, if any are held.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Everything held, in order (its deadline passed): the order continues after it.
    pub fn release(&mut self) -> Vec<Arc<Note>> {
        self.deadline = None;
        let held: Vec<Arc<Note>> = std::mem::take(&mut self.held).into_values().collect();
        if let (Some(newest), Some((_, last))) = (held.last(), &mut self.last) {
            *last = (*last).max(newest.pseq);
        }
        held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(pseq: u64, epoch: &str) -> Arc<Note> {
        Arc::new(Note {
            topic: protocol::Topic::new("room").unwrap(),
            pseq,
            epoch: Epoch::new(epoch),
            frame: "{}".into(),
        })
    }

    fn seqs(notes: &[Arc<Note>]) -> Vec<u64> {
        notes.iter().map(|n| n.pseq).collect()
    }

    #[test]
    fn a_crossing_is_put_back_in_order_without_waiting() {
        let mut o = NoteOrder::default();
        let now = Instant::now();
        assert_eq!(seqs(&o.arrive(note(4, "e1"), now)), [4]);
        assert!(o.arrive(note(6, "e1"), now).is_empty(), "ahead: held");
        assert!(o.arrive(note(7, "e1"), now).is_empty());
        assert_eq!(o.deadline(), Some(now + HOLD));
        assert_eq!(seqs(&o.arrive(note(5, "e1"), now)), [5, 6, 7]);
        assert_eq!(o.deadline(), None);
        assert_eq!(seqs(&o.arrive(note(8, "e1"), now)), [8]);
    }

    #[test]
    fn a_lost_note_delays_the_held_ones_only_until_the_deadline() {
        let mut o = NoteOrder::default();
        let now = Instant::now();
        o.arrive(note(1, "e1"), now);
        assert!(o.arrive(note(3, "e1"), now).is_empty());
        assert_eq!(seqs(&o.release()), [3]);
        // The order continues after what was released; 2 arriving late is passed on (the
        // connections drop it as old or fill around it).
        assert_eq!(seqs(&o.arrive(note(4, "e1"), now)), [4]);
        assert_eq!(seqs(&o.arrive(note(2, "e1"), now)), [2]);
    }

    #[test]
    fn another_epoch_and_repeats_pass_at_once() {
        let mut o = NoteOrder::default();
        let now = Instant::now();
        o.arrive(note(5, "e1"), now);
        assert!(o.arrive(note(7, "e1"), now).is_empty());
        assert_eq!(
            seqs(&o.arrive(note(1, "e2"), now)),
            [7, 1],
            "held first, then the new epoch"
        );
        assert_eq!(o.deadline(), None);
        assert_eq!(seqs(&o.arrive(note(1, "e2"), now)), [1], "a repeat");
        assert_eq!(seqs(&o.arrive(note(2, "e2"), now)), [2]);
    }

    #[test]
    fn holding_is_bounded() {
        let mut o = NoteOrder::default();
        let now = Instant::now();
        o.arrive(note(1, "e1"), now);
        for p in 3..3 + HOLD_MAX as u64 {
            assert!(o.arrive(note(p, "e1"), now).is_empty());
        }
        let out = o.arrive(note(3 + HOLD_MAX as u64, "e1"), now);
        assert_eq!(out.len(), HOLD_MAX + 1);
        assert_eq!(
            seqs(&o.arrive(note(4 + HOLD_MAX as u64, "e1"), now)),
            [4 + HOLD_MAX as u64]
        );
    }
}
