//! Local fan-out: topic → the connections on this pod that subscribe to it.
//!
//! Layout:
//! - this file: the topic table ([`Hub`]), subscribing and unsubscribing, [`Delivery`].
//! - `topic`: the task of one topic: its backplane subscription, `seq` order, catch-ups.
//! - `resync`: the pod-wide check that finds topics whose store top moved past what they
//!   delivered (a trailing message the backplane dropped, a backplane reconnect).
//!
//! A topic with local subscribers has one task. It holds the pod's backplane subscription for the
//! topic (so a pod's traffic grows with its own interest, not the fleet's), restores `seq` order
//! with a [`Sequencer`](crate::sequencer::Sequencer), fills gaps from the store's history, and
//! hands each message to every subscriber's bounded queue as one shared [`Delivery`] (the frame
//! is serialized once per pod). A subscriber whose queue is full (in messages or bytes) is not
//! closed: the message is left out of its queue and the connection reads it from history after
//! writing what is queued (`connection`), so a burst never costs a healthy reader its socket.
//! The last unsubscribe stops the task, which drops the backplane subscription. A message
//! published on this pod does not wait for the task: its publisher releases it to the local
//! subscribers when it is next in order ([`Hub::release_local`]).
//!
//! An ephemeral topic (a namespace with `history = false`) has a task too, but no sequencer and
//! no store: its messages carry no `seq`, are handed on as they arrive, and are never caught up
//! (see `ephemeral`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use protocol::{
    Epoch, Payload, Position, SessionId, Topic, encode_ephemeral_message, encode_message,
};
use tokio::sync::{Notify, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use crate::control::ConnControl;
use crate::metrics::Metrics;
use crate::outbound::QueueLimits;
use crate::{Bus, Store};

mod ephemeral;
mod resync;
mod topic;

#[cfg(test)]
mod tests;

/// Catch-ups (history reads by topic tasks) running at once on a pod: a backplane reconnect
/// or a resync round that finds many topics behind reads them a few at a time.
const CATCH_UP_CONCURRENCY: usize = 8;

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
    /// A message of an ephemeral topic: no `seq` (it is 0), written as it comes.
    pub ephemeral: bool,
    /// The session the publisher excluded: it is written a `skipped` frame instead (nothing,
    /// on an ephemeral topic). Checked once per delivery; `None` for almost every message.
    pub exclude: Option<SessionId>,
}

impl Delivery {
    pub fn new(
        topic: Topic,
        seq: u64,
        epoch: Epoch,
        data: Payload,
        published_us: Option<u64>,
        exclude: Option<SessionId>,
    ) -> Self {
        let frame = Utf8Bytes::from(encode_message(&topic, seq, None, &data));
        Self {
            topic,
            seq,
            epoch,
            frame,
            data,
            published_us,
            ephemeral: false,
            exclude,
        }
    }

    /// A message of an ephemeral topic.
    pub fn ephemeral(
        topic: Topic,
        data: Payload,
        published_us: u64,
        exclude: Option<SessionId>,
    ) -> Self {
        let frame = Utf8Bytes::from(encode_ephemeral_message(&topic, &data));
        Self {
            topic,
            seq: 0,
            epoch: Epoch::new(""),
            frame,
            data,
            published_us: Some(published_us),
            ephemeral: true,
            exclude,
        }
    }
}

/// A connection's place in a topic's subscriber list: its control, which holds its outbound
/// queue.
#[derive(Debug, Clone)]
pub struct Subscriber {
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
    /// What the topic task released last: compared with the store's top by `resync`.
    released: Mutex<Option<Position>>,
    /// Set by `resync` when the store is ahead, or by a publisher at the hold's bound: the task
    /// catches up.
    behind: Notify,
    /// `seq` order, shared by the task and this pod's publishers (`topic::release_local`).
    order: topic::SharedOrder,
    /// Set by a publisher that left a message held behind a gap: the task arms its gap timer.
    held: Notify,
    /// No history: never compared with the store.
    ephemeral: bool,
}

#[derive(Debug, Clone)]
pub struct HubConfig {
    pub gap_timeout: Duration,
    pub resync_interval: Duration,
    /// The bounds of each subscriber's queue.
    pub queue: QueueLimits,
    /// Which topics are ephemeral.
    pub namespaces: crate::Namespaces,
}

impl HubConfig {
    pub fn from_config(config: &crate::Config, namespaces: &crate::Namespaces) -> Self {
        Self {
            gap_timeout: config.gap_timeout,
            resync_interval: config.topic_resync_interval,
            queue: QueueLimits {
                messages: config.outbound_queue,
                bytes: config.outbound_queue_bytes,
            },
            namespaces: namespaces.clone(),
        }
    }
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
    catch_ups: Semaphore,
}

impl Hub {
    pub fn new(
        store: Store,
        backplane: Bus,
        metrics: Arc<Metrics>,
        config: HubConfig,
        shutdown: CancellationToken,
    ) -> Self {
        let hub = Self {
            inner: Arc::new(HubInner {
                topics: Mutex::new(HashMap::new()),
                store,
                backplane,
                metrics,
                config,
                shutdown,
                catch_ups: Semaphore::new(CATCH_UP_CONCURRENCY),
            }),
        };
        tokio::spawn(resync::run(hub.inner.clone()));
        hub
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

    /// This pod's connections subscribed to `topic`.
    pub fn local_count(&self, topic: &Topic) -> usize {
        let topics = self.inner.topics.lock().expect("hub lock");
        topics
            .get(topic)
            .map_or(0, |e| e.subscribers.read().expect("subscribers lock").len())
    }

    /// This pod's subscriber count of every topic it has subscribers for.
    pub fn local_counts(&self) -> HashMap<Topic, usize> {
        let topics = self.inner.topics.lock().expect("hub lock");
        topics
            .iter()
            .map(|(t, e)| {
                (
                    t.clone(),
                    e.subscribers.read().expect("subscribers lock").len(),
                )
            })
            .collect()
    }

    /// A message this pod appended to `topic`, released to the pod's subscribers at once if it
    /// is next in `seq` order (see `topic`): the publisher's task writes it into their queues
    /// without a hop through the topic's task. Anything else is left to that task, which also
    /// gets the message from the backplane.
    pub fn release_local(
        &self,
        topic: &Topic,
        seq: u64,
        epoch: &Epoch,
        data: Payload,
        published_us: u64,
        exclude: Option<SessionId>,
    ) {
        let entry = self
            .inner
            .topics
            .lock()
            .expect("hub lock")
            .get(topic)
            .cloned();
        let Some(entry) = entry.filter(|e| !e.ephemeral) else {
            return;
        };
        topic::release_local(
            &self.inner,
            topic,
            &entry,
            seq,
            epoch,
            (data, Some(published_us), exclude),
        );
    }

    fn start_topic(&self, topic: &Topic) -> Arc<TopicEntry> {
        let (ready_tx, ready_rx) = watch::channel(Readiness::Pending);
        let ephemeral = self.inner.config.namespaces.of(topic).is_ephemeral();
        let entry = Arc::new(TopicEntry {
            ephemeral,
            subscribers: RwLock::new(HashMap::new()),
            ready: ready_rx,
            stop: self.inner.shutdown.child_token(),
            released: Mutex::new(None),
            behind: Notify::new(),
            order: Mutex::new(None),
            held: Notify::new(),
        });
        if ephemeral {
            tokio::spawn(ephemeral::run(
                topic.clone(),
                entry.clone(),
                self.inner.clone(),
                ready_tx,
            ));
        } else {
            tokio::spawn(topic::run(
                topic.clone(),
                entry.clone(),
                self.inner.clone(),
                ready_tx,
            ));
        }
        entry
    }
}

impl HubInner {
    /// Removes `entry` from the table if it is still the topic's entry (a task that failed).
    fn remove(&self, topic: &Topic, entry: &Arc<TopicEntry>) {
        let mut topics = self.topics.lock().expect("hub lock");
        if topics.get(topic).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            topics.remove(topic);
            self.metrics.hub.topics.set(topics.len() as i64);
        }
    }
}
