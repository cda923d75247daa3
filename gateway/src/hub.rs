//! Local fan-out: topic → the connections on this pod that subscribe to it.
//!
//! A topic with local subscribers has one task. It holds the pod's backplane subscription for the
//! topic (so a pod's traffic grows with its own interest, not the fleet's), restores `seq` order
//! with a [`Sequencer`], fills gaps from the store's history, and hands each message to every
//! subscriber's bounded queue as one shared [`Delivery`] (the frame is serialized once per pod).
//! A subscriber whose queue is full is asked to close with 1013 instead of growing memory.
//! The last unsubscribe stops the task, which drops the backplane subscription.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use backplane::{Backplane, Subject};
use futures_util::StreamExt;
use protocol::{CloseAdvice, CloseCode, Epoch, Payload, Topic, encode_message};
use session_store::SessionStore;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::control::ConnControl;
use crate::envelope::Envelope;
use crate::metrics::Metrics;
use crate::sequencer::{Arrival, Sequencer};
use crate::{Bus, Store};

/// Identifies a connection on this pod.
pub type ConnId = u64;

/// One message on its way to the local subscribers of its topic, shared by all of them.
#[derive(Debug)]
pub struct Delivery {
    pub topic: Topic,
    pub seq: u64,
    pub epoch: Epoch,
    /// The `message` frame without `epoch`, ready to write.
    pub frame: Utf8Bytes,
    /// Kept to re-encode the frame with `epoch` for a subscriber that has not seen this epoch.
    pub data: Payload,
    /// When it was published (Unix µs), or `None` when it came from history.
    pub published_us: Option<u64>,
}

impl Delivery {
    pub fn new(
        topic: Topic,
        seq: u64,
        epoch: Epoch,
        data: Payload,
        published_us: Option<u64>,
    ) -> Self {
        let frame = Utf8Bytes::from(encode_message(&topic, seq, None, &data));
        Self {
            topic,
            seq,
            epoch,
            frame,
            data,
            published_us,
        }
    }
}

/// A connection's place in a topic's subscriber list.
#[derive(Debug, Clone)]
pub struct Subscriber {
    pub tx: mpsc::Sender<Arc<Delivery>>,
    pub control: Arc<ConnControl>,
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("topic unavailable: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone)]
enum Readiness {
    Pending,
    Ready,
    Failed(String),
}

#[derive(Debug)]
struct TopicEntry {
    subscribers: RwLock<HashMap<ConnId, Subscriber>>,
    ready: watch::Receiver<Readiness>,
    stop: CancellationToken,
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub gap_timeout: Duration,
    pub resync_interval: Duration,
}

/// The pod's topic table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    topics: Mutex<HashMap<Topic, Arc<TopicEntry>>>,
    store: Store,
    backplane: Bus,
    metrics: Arc<Metrics>,
    config: HubConfig,
    shutdown: CancellationToken,
}

impl Hub {
    pub fn new(
        store: Store,
        backplane: Bus,
        metrics: Arc<Metrics>,
        config: HubConfig,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            inner: Arc::new(HubInner {
                topics: Mutex::new(HashMap::new()),
                store,
                backplane,
                metrics,
                config,
                shutdown,
            }),
        }
    }

    /// Adds `conn` to `topic`. Returns once the pod receives the topic's messages: everything
    /// published after this returns reaches the subscriber's queue, in `seq` order.
    pub async fn subscribe(
        &self,
        topic: &Topic,
        conn: ConnId,
        subscriber: Subscriber,
    ) -> Result<(), HubError> {
        let entry = {
            let mut topics = self.inner.topics.lock().expect("hub lock");
            let entry = match topics.get(topic) {
                Some(entry) => entry.clone(),
                None => {
                    let entry = self.start_topic(topic);
                    topics.insert(topic.clone(), entry.clone());
                    self.inner.metrics.hub.topics.set(topics.len() as i64);
                    entry
                }
            };
            entry
                .subscribers
                .write()
                .expect("subscribers lock")
                .insert(conn, subscriber);
            entry
        };
        let mut ready = entry.ready.clone();
        let outcome = ready
            .wait_for(|r| !matches!(r, Readiness::Pending))
            .await
            .map(|r| r.clone());
        match outcome {
            Ok(Readiness::Ready) => Ok(()),
            Ok(Readiness::Failed(why)) => {
                self.unsubscribe(topic, conn);
                Err(HubError::Unavailable(why))
            }
            Ok(Readiness::Pending) | Err(_) => {
                self.unsubscribe(topic, conn);
                Err(HubError::Unavailable("topic task stopped".into()))
            }
        }
    }

    /// Removes `conn` from `topic`; the last one out stops the topic's task.
    pub fn unsubscribe(&self, topic: &Topic, conn: ConnId) {
        let mut topics = self.inner.topics.lock().expect("hub lock");
        if let Some(entry) = topics.get(topic) {
            let mut subs = entry.subscribers.write().expect("subscribers lock");
            subs.remove(&conn);
            if subs.is_empty() {
                drop(subs);
                entry.stop.cancel();
                topics.remove(topic);
                self.inner.metrics.hub.topics.set(topics.len() as i64);
            }
        }
    }

    fn start_topic(&self, topic: &Topic) -> Arc<TopicEntry> {
        let (ready_tx, ready_rx) = watch::channel(Readiness::Pending);
        let entry = Arc::new(TopicEntry {
            subscribers: RwLock::new(HashMap::new()),
            ready: ready_rx,
            stop: self.inner.shutdown.child_token(),
        });
        let task = TopicTask {
            topic: topic.clone(),
            entry: entry.clone(),
            hub: self.inner.clone(),
        };
        tokio::spawn(task.run(ready_tx));
        entry
    }
}

struct TopicTask {
    topic: Topic,
    entry: Arc<TopicEntry>,
    hub: Arc<HubInner>,
}

impl TopicTask {
    async fn run(self, ready: watch::Sender<Readiness>) {
        let subject = Subject::Topic(self.topic.clone());
        // Subscribe before reading the top: whatever is published after the top was read then
        // arrives on the subscription, so nothing falls between the two.
        let started = async {
            let sub = self
                .hub
                .backplane
                .subscribe(&subject)
                .await
                .map_err(|e| e.to_string())?;
            let top = self
                .hub
                .store
                .top(&self.topic)
                .await
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((sub, top))
        };
        let (mut sub, top) = tokio::select! {
            _ = self.entry.stop.cancelled() => return,
            started = started => match started {
                Ok(ok) => ok,
                Err(why) => {
                    tracing::warn!(topic = %self.topic, %why, "cannot open topic");
                    self.remove_self();
                    let _ = ready.send(Readiness::Failed(why));
                    return;
                }
            },
        };
        let mut seq = Sequencer::new(top.seq, top.epoch);
        let _ = ready.send(Readiness::Ready);

        let mut reconnects = self.hub.backplane.reconnects();
        reconnects.borrow_and_update();
        let resync_every = self.hub.config.resync_interval;
        let mut next_resync = Instant::now() + resync_every;
        let mut gap_deadline: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = self.entry.stop.cancelled() => return,
                msg = sub.next() => {
                    let Some(bytes) = msg else {
                        // The backplane ended the subscription (it should not): open a new one and
                        // catch up from history.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        match self.hub.backplane.subscribe(&subject).await {
                            Ok(s) => sub = s,
                            Err(e) => tracing::warn!(topic = %self.topic, error = %e, "resubscribe failed"),
                        }
                        self.catch_up(&mut seq).await;
                        continue;
                    };
                    match Envelope::decode(&bytes) {
                        Ok(env) => {
                            let data = env.data;
                            let arrival = seq.arrive(env.seq, &env.epoch, (data, Some(env.published_us)));
                            self.handle(arrival, &seq);
                        }
                        Err(e) => {
                            self.hub.metrics.hub.drop("malformed");
                            tracing::warn!(topic = %self.topic, error = %e, "dropping backplane message");
                        }
                    }
                    if seq.has_gap() && gap_deadline.is_none() {
                        gap_deadline = Some(Instant::now() + self.hub.config.gap_timeout);
                    }
                    if !seq.has_gap() {
                        gap_deadline = None;
                    }
                }
                _ = async { sleep_until(gap_deadline.expect("guarded")).await }, if gap_deadline.is_some() => {
                    self.hub.metrics.hub.gap_fills.inc();
                    self.catch_up(&mut seq).await;
                    gap_deadline = None;
                }
                changed = reconnects.changed() => {
                    if changed.is_ok() {
                        self.catch_up(&mut seq).await;
                    }
                }
                _ = sleep_until(next_resync) => {
                    next_resync = Instant::now() + resync_every;
                    self.catch_up(&mut seq).await;
                }
            }
        }
    }

    /// Reads history after the last released `seq` and releases what was missing. Whatever is
    /// still held after that is ahead of messages history no longer has: released as is.
    async fn catch_up(&self, seq: &mut Sequencer<(Payload, Option<u64>)>) {
        let started = std::time::Instant::now();
        let after = seq.next().saturating_sub(1);
        let mut page = match self.hub.store.history(&self.topic, after).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(topic = %self.topic, error = %e, "history read failed; will retry");
                return;
            }
        };
        if page.top.epoch != *seq.epoch() {
            // The history restarted under a new epoch: read it from its beginning.
            match self.hub.store.history(&self.topic, 0).await {
                Ok(fresh) => page = fresh,
                Err(e) => {
                    tracing::warn!(topic = %self.topic, error = %e, "history read failed; will retry");
                    return;
                }
            }
        }
        self.hub.metrics.store.observe("history", started);
        for m in page.messages {
            let arrival = seq.arrive(m.seq, &page.top.epoch, (m.data, None));
            self.handle(arrival, seq);
        }
        if seq.has_gap() {
            let skipped = seq.skip_gap();
            tracing::warn!(topic = %self.topic, count = skipped.len(), "gap no longer in history");
            self.hub.metrics.hub.drop("gap_unfillable");
            self.release(skipped, seq.epoch());
        }
    }

    fn handle(
        &self,
        arrival: Arrival<(Payload, Option<u64>)>,
        seq: &Sequencer<(Payload, Option<u64>)>,
    ) {
        match arrival {
            Arrival::Release(items) => self.release(items, seq.epoch()),
            Arrival::Duplicate => self.hub.metrics.hub.drop("duplicate"),
            Arrival::Held => {}
        }
    }

    fn release(&self, items: Vec<(u64, (Payload, Option<u64>))>, epoch: &Epoch) {
        let subs = self.entry.subscribers.read().expect("subscribers lock");
        for (s, (data, published_us)) in items {
            let delivery = Arc::new(Delivery::new(
                self.topic.clone(),
                s,
                epoch.clone(),
                data,
                published_us,
            ));
            for sub in subs.values() {
                match sub.tx.try_send(delivery.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        self.hub.metrics.hub.drop("slow_consumer");
                        sub.control.request_close(
                            CloseCode::TryAgainLater,
                            CloseAdvice::reconnect(Some(1_000)).with_error("slow_consumer"),
                        );
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
            }
        }
    }

    fn remove_self(&self) {
        let mut topics = self.hub.topics.lock().expect("hub lock");
        if topics
            .get(&self.topic)
            .is_some_and(|e| Arc::ptr_eq(e, &self.entry))
        {
            topics.remove(&self.topic);
            self.hub.metrics.hub.topics.set(topics.len() as i64);
        }
    }
}
