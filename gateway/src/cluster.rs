//! The fleet as one pod sees it: heartbeats, the load view, control messages and rebalancing.
//!
//! Every pod publishes a [`Heartbeat`] each `--heartbeat-interval` on the backplane and keeps
//! the latest one of every pod; an entry missing three beats is dropped. The view feeds
//! `/admin/cluster`, `/scaler` and rebalancing ([`rebalance`]): a pod above the fleet mean by
//! more than `--rebalance-tolerance` closes its excess with 1012 at `--rebalance-rate` per
//! second, with jitter, once the view has held still for `--rebalance-stable-beats` heartbeat
//! rounds, so after a scale-out the new pods fill up without a reconnect storm, and placement
//! churn during a ramp-up never turns into reconnects.
//!
//! Pods also address each other on their control subject (`session_taken_over` when a session
//! resumes on another pod while its old socket is still open).
//!
//! Both subscriptions (heartbeats, control) outlive their streams: when the backplane ends one,
//! the pod subscribes again after a short backoff ([`Feed`]) instead of going deaf.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use backplane::{Backplane, Subject, Subscription};
use bytes::Bytes;
use futures_util::StreamExt;
use protocol::SessionId;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Shared;

mod rebalance;

use rebalance::Load;
pub use rebalance::run_rebalancer;

/// What a pod says about itself every heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub pod: String,
    /// The public address the pod listens on.
    pub addr: String,
    pub connections: u64,
    pub capacity: u64,
    pub draining: bool,
}

/// Messages on a pod's control subject.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ControlMessage {
    /// Close the connection holding `session` if it holds a generation older than
    /// `generation`: the session was claimed again on another pod.
    Takeover { session: SessionId, generation: u64 },
}

/// The latest heartbeat of every live pod.
#[derive(Debug, Default)]
pub struct ClusterView {
    inner: Mutex<Pods>,
}

#[derive(Debug, Default)]
struct Pods {
    latest: HashMap<String, Entry>,
    /// Stamp of the last beat recorded, of any pod: tells the rebalancer which beats are new.
    stamp: u64,
}

#[derive(Debug)]
struct Entry {
    beat: Heartbeat,
    at: Instant,
    stamp: u64,
}

/// One pod in the fleet view, as the admin endpoints report it.
#[derive(Debug, Clone, Serialize)]
pub struct PodView {
    #[serde(flatten)]
    pub beat: Heartbeat,
    /// Share of the fleet's connections, in percent.
    pub share: f64,
    pub heartbeat_age_ms: u64,
}

impl ClusterView {
    fn record(&self, beat: Heartbeat) {
        let mut pods = self.inner.lock().expect("cluster view lock");
        pods.stamp += 1;
        let entry = Entry {
            stamp: pods.stamp,
            at: Instant::now(),
            beat,
        };
        pods.latest.insert(entry.beat.pod.clone(), entry);
    }

    /// The view with entries older than `max_age` dropped.
    fn live(&self, max_age: Duration) -> MutexGuard<'_, Pods> {
        let now = Instant::now();
        let mut pods = self.inner.lock().expect("cluster view lock");
        pods.latest
            .retain(|_, e| now.duration_since(e.at) <= max_age);
        pods
    }

    /// Live pods, sorted by name, entries older than `max_age` dropped.
    pub fn pods(&self, max_age: Duration) -> Vec<PodView> {
        let now = Instant::now();
        let pods = self.live(max_age);
        let total: u64 = pods.latest.values().map(|e| e.beat.connections).sum();
        let mut out: Vec<PodView> = pods
            .latest
            .values()
            .map(|e| PodView {
                share: if total == 0 {
                    0.0
                } else {
                    e.beat.connections as f64 * 100.0 / total as f64
                },
                heartbeat_age_ms: now.duration_since(e.at).as_millis() as u64,
                beat: e.beat.clone(),
            })
            .collect();
        out.sort_by(|a, b| a.beat.pod.cmp(&b.beat.pod));
        out
    }

    /// Every live pod's load with the stamp of its latest beat (a later beat, of any pod, has
    /// a larger stamp).
    fn loads(&self, max_age: Duration) -> BTreeMap<String, (Load, u64)> {
        self.live(max_age)
            .latest
            .iter()
            .map(|(pod, e)| {
                let load = Load {
                    connections: e.beat.connections,
                    draining: e.beat.draining,
                };
                (pod.clone(), (load, e.stamp))
            })
            .collect()
    }
}

/// This pod's heartbeat, now.
pub fn heartbeat(shared: &Shared) -> Heartbeat {
    Heartbeat {
        pod: shared.pod.clone(),
        addr: shared
            .config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| shared.public_addr.to_string()),
        connections: shared.connections.len() as u64,
        capacity: shared.config.max_connections as u64,
        draining: shared.drain.is_draining(),
    }
}

/// How long a pod stays in the view without a heartbeat: three missed beats.
pub fn max_age(shared: &Shared) -> Duration {
    shared.config.heartbeat_interval * 3
}

/// First wait before subscribing again after a subscription ended or failed.
const RESUBSCRIBE_MIN: Duration = Duration::from_millis(100);
/// The wait doubles, up to this, while subscriptions keep failing or ending before a message.
const RESUBSCRIBE_MAX: Duration = Duration::from_secs(1);

/// A subscription to one subject that outlives its stream: when the backplane ends the stream
/// (or refuses to subscribe), it subscribes again after a short backoff. Ends only on shutdown.
pub(crate) struct Feed<'a, B> {
    backplane: &'a B,
    shutdown: &'a CancellationToken,
    subject: Subject,
    sub: Option<Subscription>,
    backoff: Duration,
    /// The stream ended or a subscription failed since the last successful subscription.
    lost: bool,
}

impl<'a, B: Backplane> Feed<'a, B> {
    /// A feed of `subject`, starting from `ready` when the caller subscribed already.
    pub(crate) fn new(
        backplane: &'a B,
        shutdown: &'a CancellationToken,
        subject: Subject,
        ready: Option<Subscription>,
    ) -> Self {
        Self {
            backplane,
            shutdown,
            subject,
            sub: ready,
            backoff: RESUBSCRIBE_MIN,
            lost: false,
        }
    }

    /// The next message; `None` once shutdown is requested.
    pub(crate) async fn next(&mut self) -> Option<Bytes> {
        loop {
            if self.sub.is_none() {
                self.sub = Some(self.subscribe().await?);
            }
            let sub = self.sub.as_mut().expect("subscribed");
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                msg = sub.next() => match msg {
                    Some(bytes) => {
                        self.backoff = RESUBSCRIBE_MIN;
                        return Some(bytes);
                    }
                    None => {
                        tracing::warn!(subject = %self.subject, "backplane subscription ended; subscribing again");
                        self.sub = None;
                        self.lost = true;
                        self.pause().await?;
                    }
                },
            }
        }
    }

    async fn subscribe(&mut self) -> Option<Subscription> {
        loop {
            match self.backplane.subscribe(&self.subject).await {
                Ok(sub) => {
                    if std::mem::take(&mut self.lost) {
                        tracing::info!(subject = %self.subject, "backplane subscription restored");
                    }
                    return Some(sub);
                }
                Err(e) => {
                    tracing::warn!(subject = %self.subject, error = %e, "cannot subscribe on the backplane; retrying");
                    self.lost = true;
                    self.pause().await?;
                }
            }
        }
    }

    /// Waits out the backoff (`None` on shutdown) and doubles it for the next attempt.
    async fn pause(&mut self) -> Option<()> {
        let wait = self.backoff;
        self.backoff = (self.backoff * 2).min(RESUBSCRIBE_MAX);
        tokio::select! {
            _ = self.shutdown.cancelled() => None,
            _ = tokio::time::sleep(wait) => Some(()),
        }
    }
}

/// Publishes heartbeats and records everyone's, until shutdown.
pub async fn run_heartbeats(shared: Arc<Shared>) {
    // Publishing and receiving run side by side: a slow or lost subscription never delays this
    // pod's own beats, and a beat never cancels a subscription attempt.
    let publish = async {
        let mut tick = tokio::time::interval(shared.config.heartbeat_interval);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let beat = heartbeat(&shared);
            // Our own view must not depend on the backplane echoing our beat back.
            shared.cluster.record(beat.clone());
            let payload = Bytes::from(serde_json::to_vec(&beat).expect("heartbeat serializes"));
            if let Err(e) = shared.backplane.publish(&Subject::Heartbeat, payload).await {
                tracing::debug!(error = %e, "heartbeat not published");
            }
        }
    };
    let receive = async {
        let mut beats = Feed::new(
            &shared.backplane,
            &shared.shutdown,
            Subject::Heartbeat,
            None,
        );
        while let Some(bytes) = beats.next().await {
            match serde_json::from_slice::<Heartbeat>(&bytes) {
                Ok(beat) => shared.cluster.record(beat),
                Err(e) => tracing::warn!(error = %e, "malformed heartbeat"),
            }
        }
    };
    tokio::join!(publish, receive);
}

/// Handles this pod's control subject until shutdown.
pub async fn run_control(shared: Arc<Shared>, ready: Option<backplane::Subscription>) {
    let subject = Subject::Control(shared.pod.clone());
    let mut control = Feed::new(&shared.backplane, &shared.shutdown, subject, ready);
    while let Some(bytes) = control.next().await {
        match serde_json::from_slice::<ControlMessage>(&bytes) {
            Ok(ControlMessage::Takeover {
                session,
                generation,
            }) => {
                shared.connections.take_over_older(&session, generation);
            }
            Err(e) => tracing::warn!(error = %e, "malformed control message"),
        }
    }
}

/// Asks `pod` to close its connection of `session` if that one holds a generation older than
/// `generation`.
pub async fn send_takeover(shared: &Shared, pod: &str, session: &SessionId, generation: u64) {
    let msg = ControlMessage::Takeover {
        session: session.clone(),
        generation,
    };
    let payload = Bytes::from(serde_json::to_vec(&msg).expect("control message serializes"));
    if let Err(e) = shared
        .backplane
        .publish(&Subject::Control(pod.to_owned()), payload)
        .await
    {
        tracing::warn!(%pod, error = %e, "takeover not sent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use backplane::MemoryBackplane;

    use crate::config::Config;
    use crate::control::ConnControl;
    use crate::{Bus, Store, auth};

    /// A pod named `pod` on the shared in-process backplane `bus`, beating every 20 ms.
    fn pod(bus: &MemoryBackplane, pod: &str) -> Arc<Shared> {
        let mut config = Config::embedded_default();
        config.heartbeat_interval = Duration::from_millis(20);
        let store = Store::Memory(session_store::MemoryStore::new(config.history_limits()));
        let auth = auth::Authenticator::new(config.security.auth_config()).unwrap();
        let app = crate::AppSetup {
            namespaces: config.namespaces().unwrap(),
            hooks: None,
            events: None,
        };
        Shared::new(
            config,
            app,
            pod.to_owned(),
            store,
            Bus::Memory(bus.clone()),
            auth,
            "127.0.0.1:1".parse().unwrap(),
        )
    }

    /// Polls `done` every 10 ms, at most 500 times.
    async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        for _ in 0..500 {
            if done() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never happened: {what}");
    }

    /// Connections `a` sees pod `b` holding, if `b` is in its view.
    fn seen(a: &Shared, b: &str) -> Option<u64> {
        a.cluster
            .pods(max_age(a))
            .into_iter()
            .find(|p| p.beat.pod == b)
            .map(|p| p.beat.connections)
    }

    #[tokio::test]
    async fn a_feed_resubscribes_when_its_stream_ends() {
        let bus = MemoryBackplane::new();
        let shutdown = CancellationToken::new();
        let subject = Subject::Control("p".into());
        let mut feed = Feed::new(&bus, &shutdown, subject.clone(), None);
        let sent = std::sync::atomic::AtomicU64::new(0);
        let publish = async {
            for _ in 0..500 {
                let n = sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let payload = Bytes::from(n.to_string());
                bus.publish(&subject, payload).await.unwrap();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let receive = async {
            let number = |b: Bytes| std::str::from_utf8(&b).unwrap().parse::<u64>().unwrap();
            number(feed.next().await.unwrap());
            assert_eq!(bus.close_subscriptions(&subject), 1);
            // Anything published after the close reaches only a new subscription; what was
            // buffered before it comes first.
            let closed_at = sent.load(std::sync::atomic::Ordering::SeqCst);
            while number(feed.next().await.unwrap()) <= closed_at {}
            shutdown.cancel();
            assert_eq!(feed.next().await, None);
        };
        tokio::select! {
            _ = publish => panic!("the feed never heard from a new subscription"),
            _ = receive => {}
        }
    }

    #[tokio::test]
    async fn heartbeats_keep_arriving_after_the_subscription_ends() {
        let bus = MemoryBackplane::new();
        let (a, b) = (pod(&bus, "a"), pod(&bus, "b"));
        tokio::spawn(run_heartbeats(a.clone()));
        tokio::spawn(run_heartbeats(b.clone()));
        eventually("a sees b", || seen(&a, "b") == Some(0)).await;
        // Both pods' heartbeat streams end.
        assert_eq!(bus.close_subscriptions(&Subject::Heartbeat), 2);
        // b's next beats carry a new count: a hears them only if it subscribed again.
        let _conn = b
            .connections
            .register(Arc::new(ConnControl::new()), crate::control::LOOPBACK);
        eventually("a sees b's new count", || seen(&a, "b") == Some(1)).await;
        eventually("b still sees a", || seen(&b, "a") == Some(0)).await;
        a.shutdown.cancel();
        b.shutdown.cancel();
    }

    #[tokio::test]
    async fn takeovers_arrive_after_the_control_subscription_ends() {
        let bus = MemoryBackplane::new();
        let (a, b) = (pod(&bus, "a"), pod(&bus, "b"));
        let ready = a
            .backplane
            .subscribe(&Subject::Control("a".into()))
            .await
            .ok();
        let control = tokio::spawn(run_control(a.clone(), ready));
        let conn = Arc::new(ConnControl::new());
        let id = a
            .connections
            .register(conn.clone(), crate::control::LOOPBACK);
        let session = SessionId::generate();
        assert!(matches!(
            a.connections.bind_session(id, session.clone(), 1),
            crate::control::Bind::Bound(None)
        ));

        assert_eq!(bus.close_subscriptions(&Subject::Control("a".into())), 1);
        // Control messages are at most once: one sent before a subscribed again is lost, so
        // keep sending until one lands.
        for _ in 0..500 {
            send_takeover(&b, "a", &session, 2).await;
            if conn.is_taken_over() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(conn.is_taken_over(), "the takeover never arrived");
        a.shutdown.cancel();
        control.await.unwrap();
    }
}
