//! The task of one topic with local subscribers: its backplane subscription, `seq` order and
//! catch-ups from history, and its join/leave notes put back in `pseq` order
//! ([`crate::presence::order`]).
//!
//! Arrivals go through a [`Sequencer`]. What it cannot release at once is filled from history:
//! after `--gap-timeout` for a gap, at once when the hold is full, and whenever `resync` finds
//! the store ahead of what was released. A catch-up reads history in pages (releasing each page
//! before reading the next, and yielding between them, so a burst is spread out) and checks the
//! store against what this pod already delivered:
//! - the store reports another epoch: the topic restarted (flushed, expired, or the store's
//!   incarnation changed): follow it from its beginning;
//! - same epoch but a top *below* what was released: the store went backwards without noticing
//!   (e.g. data restored under the same process): move the topic to a new epoch in the store,
//!   atomically, so every pod and client sees the break instead of reused `seq`s.
//!
//! The order ([`Order`]) is shared with this pod's publishers: a publish whose append completed
//! releases its message to the local subscribers itself ([`release_local`]), before it goes on
//! the backplane, so a message published on the pod that serves its readers makes no hop
//! through this task (the publisher's task writes into the readers' queues, as a plain
//! broadcast server would). Its backplane copy comes back here as a duplicate. Offers are made
//! under the order's lock, so the readers' queues get messages in `seq` order whoever
//! releases them; what a publisher cannot release (a gap, a full hold) is left to this task.

use std::sync::{Arc, Mutex, MutexGuard};

use backplane::{Backplane, Subject, Subscription};
use futures_util::StreamExt;
use protocol::{Epoch, Payload, Position, SessionId, Topic};
use session_store::SessionStore;
use tokio::sync::watch;
use tokio::time::{Duration, Instant, sleep_until};

use super::{Delivery, HubInner, Readiness, TopicEntry};
use crate::envelope::Envelope;
use crate::outbound::Offer;
use crate::presence::order::NoteOrder;
use crate::sequencer::{Arrival, Sequencer};

/// Messages per history page read by a catch-up.
const PAGE: usize = 100;
/// Pages one catch-up reads at most: history is capped, so this is only a guard against a
/// store that keeps moving under the reader.
const MAX_PAGES: usize = 1_000;

/// A message held or released: its data, when it was published (`None` from history) and the
/// session it excludes.
pub(super) type Item = (Payload, Option<u64>, Option<SessionId>);

/// A topic's `seq` order on this pod, shared by its task and the pod's publishers (see the
/// module doc). `None` in the entry until the task has read the store's top.
#[derive(Debug)]
pub(super) struct Order {
    seq: Sequencer<Item>,
    /// The last `seq` this pod's publishers released, and its epoch: the backplane copies of
    /// those messages are expected duplicates, not counted as dropped.
    local_top: Option<(Epoch, u64)>,
}

impl Order {
    fn note_local(&mut self, epoch: &Epoch, seq: u64) {
        match &mut self.local_top {
            Some((e, top)) if e == epoch => *top = (*top).max(seq),
            _ => self.local_top = Some((epoch.clone(), seq)),
        }
    }
}

/// The entry's order, set once the task started.
pub(super) type SharedOrder = Mutex<Option<Order>>;

fn lock(entry: &TopicEntry) -> MutexGuard<'_, Option<Order>> {
    entry.order.lock().expect("order lock")
}

struct TopicTask {
    topic: Topic,
    entry: Arc<TopicEntry>,
    hub: Arc<HubInner>,
    /// Join/leave notes put back in order before the subscribers see them.
    notes: NoteOrder,
}

/// What a backplane arrival asks of the task once the order's lock is released.
enum Then {
    Nothing,
    CatchUp,
    CheckSoon,
}

/// Runs the topic until its last subscriber leaves or the pod shuts down.
pub(super) async fn run(
    topic: Topic,
    entry: Arc<TopicEntry>,
    hub: Arc<HubInner>,
    ready: watch::Sender<Readiness>,
) {
    let subject = Subject::Topic(topic.clone());
    // Subscribe before reading the top: whatever is published after the top was read then
    // arrives on the subscription, so nothing falls between the two.
    let started = async {
        let sub = hub
            .backplane
            .subscribe(&subject)
            .await
            .map_err(|e| e.to_string())?;
        let top = hub.store.top(&topic).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((sub, top))
    };
    // Boxed: it is done once the topic runs, and inlined it would take room in the task.
    let (sub, top) = tokio::select! {
        _ = entry.stop.cancelled() => return,
        started = Box::pin(started) => match started {
            Ok(ok) => ok,
            Err(why) => {
                tracing::warn!(%topic, %why, "cannot open topic");
                hub.remove(&topic, &entry);
                let _ = ready.send(Readiness::Failed(why));
                return;
            }
        },
    };
    *entry.released.lock().expect("released lock") = Some(top.clone());
    *lock(&entry) = Some(Order {
        seq: Sequencer::new(top.seq, top.epoch),
        local_top: None,
    });
    let mut task = TopicTask {
        notes: NoteOrder::default(),
        topic,
        entry,
        hub,
    };
    let _ = ready.send(Readiness::Ready);
    task.serve(sub, subject).await;
}

impl TopicTask {
    async fn serve(&mut self, mut sub: Subscription, subject: Subject) {
        let gap_timeout = self.hub.config.gap_timeout;
        let mut gap_deadline: Option<Instant> = None;
        loop {
            let notes_due = self.notes.deadline();
            tokio::select! {
                _ = self.entry.stop.cancelled() => return,
                msg = sub.next() => {
                    let Some(bytes) = msg else {
                        // The backplane ended the subscription (it should not): open a new one
                        // and catch up from history. Boxed, like the catch-up.
                        if let Some(s) = Box::pin(self.resubscribe(&subject)).await {
                            sub = s;
                        }
                        self.catch_up_boxed().await;
                        continue;
                    };
                    if crate::presence::events::is_note(&bytes) {
                        self.note(&bytes);
                        continue;
                    }
                    let then = match Envelope::decode(&bytes) {
                        Ok(env) => self.arrive(env),
                        Err(e) => {
                            self.hub.metrics.hub.drop("malformed");
                            tracing::warn!(topic = %self.topic, error = %e, "dropping backplane message");
                            Then::Nothing
                        }
                    };
                    match then {
                        Then::Nothing => {}
                        // The hold is at its bound: fill the gap now.
                        Then::CatchUp => self.catch_up_boxed().await,
                        Then::CheckSoon => {
                            gap_deadline.get_or_insert_with(|| Instant::now() + gap_timeout);
                        }
                    }
                    if self.has_gap() {
                        gap_deadline.get_or_insert_with(|| Instant::now() + gap_timeout);
                    }
                }
                // A publisher of this pod left a message held behind a gap.
                _ = self.entry.held.notified() => {
                    if self.has_gap() {
                        gap_deadline.get_or_insert_with(|| Instant::now() + gap_timeout);
                    }
                }
                _ = async { sleep_until(gap_deadline.expect("guarded")).await }, if gap_deadline.is_some() => {
                    gap_deadline = None;
                    if self.has_gap() {
                        self.hub.metrics.hub.gap_fills.inc();
                    }
                    self.catch_up_boxed().await;
                }
                _ = async { sleep_until(notes_due.expect("guarded")).await }, if notes_due.is_some() => {
                    let notes = self.notes.release();
                    self.offer_notes(&notes);
                }
                _ = self.entry.behind.notified() => self.catch_up_boxed().await,
            }
        }
    }

    /// A message from the backplane, put in order.
    fn arrive(&self, env: Envelope) -> Then {
        let size = env.data.len();
        let mut order = lock(&self.entry);
        let order = order.as_mut().expect("set before the task serves");
        if env.epoch.is_newer_than(order.seq.epoch()) {
            tracing::info!(topic = %self.topic, from = ?order.seq.epoch(), to = ?env.epoch, "topic has a new epoch");
            self.hub.metrics.hub.epoch_change("new_epoch");
        }
        let item = (env.data, Some(env.published_us), env.exclude);
        match order.seq.arrive(env.seq, &env.epoch, item, size) {
            Arrival::Release(items) => {
                release(&self.hub, &self.topic, &self.entry, order, items);
                Then::Nothing
            }
            Arrival::Duplicate => {
                let own = order
                    .local_top
                    .as_ref()
                    .is_some_and(|(epoch, top)| *epoch == env.epoch && env.seq <= *top);
                if !own {
                    self.hub.metrics.hub.drop("duplicate");
                }
                Then::Nothing
            }
            Arrival::Held => Then::Nothing,
            Arrival::Full => Then::CatchUp,
            // A straggler from an older epoch, or the store moved on while this pod missed it:
            // check against the store soon.
            Arrival::Stale => {
                self.hub.metrics.hub.drop("stale_epoch");
                Then::CheckSoon
            }
        }
    }

    fn has_gap(&self) -> bool {
        lock(&self.entry).as_ref().is_some_and(|o| o.seq.has_gap())
    }

    /// A join/leave note from the backplane: passed on in `pseq` order (see [`NoteOrder`]).
    fn note(&mut self, bytes: &[u8]) {
        let Some(note) = crate::presence::events::decode(&self.topic, bytes) else {
            tracing::warn!(topic = %self.topic, "dropping a malformed join/leave note");
            self.hub.metrics.hub.drop("malformed");
            return;
        };
        let notes = self.notes.arrive(Arc::new(note), Instant::now());
        self.offer_notes(&notes);
    }

    fn offer_notes(&self, notes: &[Arc<crate::presence::events::Note>]) {
        if notes.is_empty() {
            return;
        }
        let subs = self.entry.subscribers.read().expect("subscribers lock");
        crate::presence::events::offer_local(notes, subs.values());
    }

    async fn resubscribe(&self, subject: &Subject) -> Option<Subscription> {
        tokio::time::sleep(Duration::from_millis(500)).await;
        match self.hub.backplane.subscribe(subject).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "resubscribe failed");
                None
            }
        }
    }

    /// [`TopicTask::catch_up`] on the heap: inlined, its history reads would be reserved in
    /// every topic task (about 14 KiB each) for something that runs now and then.
    async fn catch_up_boxed(&mut self) {
        Box::pin(self.catch_up()).await;
    }

    /// Reads history after the last released `seq`, page by page, and releases what was
    /// missing. Whatever is still held after that is ahead of messages history no longer has:
    /// released as is (subscribers see the jump: see `connection`). The order is locked only
    /// between reads: a publisher of this pod may release meanwhile, and what it released
    /// comes back in the page as duplicates.
    async fn catch_up(&mut self) {
        let hub = self.hub.clone();
        let Ok(_permit) = hub.catch_ups.acquire().await else {
            return;
        };
        let started = std::time::Instant::now();
        let mut pages = 0;
        while pages < MAX_PAGES {
            pages += 1;
            let (after, read_in) = {
                let order = lock(&self.entry);
                let order = order.as_ref().expect("set");
                (order.seq.released(), order.seq.epoch().clone())
            };
            let page = match self.hub.store.history(&self.topic, after, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "history read failed; will retry");
                    let mut order = lock(&self.entry);
                    let order = order.as_mut().expect("set");
                    if order.seq.is_full() {
                        // History cannot be read and the hold is at its bound: deliver what is
                        // held rather than stall the topic.
                        self.give_up_gap(order, "history unreadable and the hold is full");
                    }
                    // Keep holding below the bound: the next arrival, gap timer or resync round
                    // tries again.
                    note_released(&self.entry, order);
                    return;
                }
            };
            let behind = {
                let mut order = lock(&self.entry);
                let order = order.as_mut().expect("set");
                if *order.seq.epoch() != read_in {
                    // A publisher of this pod released a message of a newer epoch while the
                    // page was read: `after` belongs to the old one. Read again from where the
                    // order is now.
                    continue;
                }
                if page.top.epoch != *order.seq.epoch() {
                    // The store is the truth about the topic's epoch: follow it from its start.
                    tracing::info!(topic = %self.topic, from = ?order.seq.epoch(), to = ?page.top.epoch, "topic has a new epoch");
                    self.hub.metrics.hub.epoch_change("new_epoch");
                    order.seq.restart(page.top.epoch);
                    continue;
                }
                // `after` was released before the page was read, so history holds it unless the
                // store went backwards (what was released since may be past the page's top).
                page.top.seq < after
            };
            if behind {
                // History is behind what this pod already delivered in the same epoch: the store
                // went backwards. Reusing those seqs would be a silent gap for every subscriber.
                tracing::warn!(topic = %self.topic, delivered = after, top = page.top.seq, epoch = ?page.top.epoch,
                    "store is behind what was delivered: moving the topic to a new epoch");
                self.hub.metrics.hub.epoch_change("store_behind");
                match self.hub.store.new_epoch(&self.topic, &page.top.epoch).await {
                    Ok(top) => lock(&self.entry)
                        .as_mut()
                        .expect("set")
                        .seq
                        .restart(top.epoch),
                    Err(e) => {
                        tracing::warn!(topic = %self.topic, error = %e, "cannot move the topic to a new epoch; will retry");
                        return;
                    }
                }
                continue;
            }
            let Some(last) = page.messages.last().map(|m| m.seq) else {
                break;
            };
            {
                let mut order = lock(&self.entry);
                let order = order.as_mut().expect("set");
                if let Some(first) = page.messages.first()
                    && first.seq > order.seq.next()
                {
                    tracing::warn!(topic = %self.topic, missing = first.seq - order.seq.next(), "gap no longer in history");
                    self.hub.metrics.hub.drop("gap_unfillable");
                }
                let epoch = page.top.epoch.clone();
                for m in page.messages {
                    let size = m.data.len();
                    match order
                        .seq
                        .arrive(m.seq, &epoch, (m.data, None, m.exclude), size)
                    {
                        Arrival::Release(items) => {
                            release(&self.hub, &self.topic, &self.entry, order, items);
                        }
                        Arrival::Full => {
                            let items = order.seq.skip_gap();
                            release(&self.hub, &self.topic, &self.entry, order, items);
                        }
                        Arrival::Duplicate | Arrival::Held | Arrival::Stale => {}
                    }
                }
                if order.seq.has_gap() {
                    // The page starts after a trimmed part: nothing can fill what is before it.
                    let items = order.seq.skip_gap();
                    release(&self.hub, &self.topic, &self.entry, order, items);
                }
            }
            if last >= page.top.seq {
                break;
            }
            // Spread a large catch-up: let connections write what was released.
            tokio::task::yield_now().await;
        }
        self.hub.metrics.store.observe("history", started);
        let mut order = lock(&self.entry);
        let order = order.as_mut().expect("set");
        if order.seq.has_gap() {
            self.give_up_gap(order, "gap no longer in history");
        }
        note_released(&self.entry, order);
    }

    /// Releases what is held past a gap that cannot be filled. Subscribers see the jump and
    /// fill it from history themselves, or resume and are told `recovered: false`.
    fn give_up_gap(&self, order: &mut Order, why: &'static str) {
        let items = order.seq.skip_gap();
        tracing::warn!(topic = %self.topic, count = items.len(), why, "releasing held messages past a gap");
        self.hub.metrics.hub.drop("gap_unfillable");
        release(&self.hub, &self.topic, &self.entry, order, items);
    }
}

/// A message this pod's publisher appended, released to the local subscribers at once when it
/// is the next in order. What it cannot release is left to the topic's task: held behind a gap
/// (the task fills it), at the hold's bound (the task catches up now), from an older epoch (the
/// task checks the store). Nothing to do before the task has started: the backplane brings it.
pub(super) fn release_local(
    hub: &HubInner,
    topic: &Topic,
    entry: &TopicEntry,
    seq: u64,
    epoch: &Epoch,
    item: Item,
) {
    let size = item.0.len();
    let mut order = lock(entry);
    let Some(order) = order.as_mut() else {
        return;
    };
    match order.seq.arrive(seq, epoch, item, size) {
        Arrival::Release(items) => {
            order.note_local(epoch, seq);
            hub.metrics.hub.released_locally.inc_by(items.len() as u64);
            release(hub, topic, entry, order, items);
        }
        Arrival::Duplicate => {}
        Arrival::Held => {
            order.note_local(epoch, seq);
            entry.held.notify_one();
        }
        Arrival::Full | Arrival::Stale => entry.behind.notify_one(),
    }
}

fn note_released(entry: &TopicEntry, order: &Order) {
    *entry.released.lock().expect("released lock") = Some(Position {
        seq: order.seq.released(),
        epoch: order.seq.epoch().clone(),
    });
}

/// Hands `items` to every subscriber, under the order's lock (`order` is borrowed from it). A
/// subscriber whose queue is full, in messages or in bytes, is marked lagging instead: it reads
/// the messages from history itself.
fn release(
    hub: &HubInner,
    topic: &Topic,
    entry: &TopicEntry,
    order: &Order,
    items: Vec<(u64, Item)>,
) {
    if items.is_empty() {
        return;
    }
    let epoch = order.seq.epoch();
    let limits = hub.config.queue;
    let subs = entry.subscribers.read().expect("subscribers lock");
    for (s, (data, published_us, exclude)) in items {
        let delivery = Arc::new(Delivery::new(
            topic.clone(),
            s,
            epoch.clone(),
            data,
            published_us,
            exclude,
        ));
        for sub in subs.values() {
            if let Offer::Full = sub.control.offer(&delivery, limits) {
                hub.metrics.hub.lagged.inc();
            }
        }
    }
    drop(subs);
    note_released(entry, order);
}
