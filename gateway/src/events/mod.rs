//! Lifecycle events delivered at least once to the application's webhook (design §13,
//! `docs/backend.md` "Lifecycle events").
//!
//! An event is recorded where its cause happens (a fresh `hello`, a session's end, a topic's
//! first subscriber session or its last, a presence join/leave, a publish in a namespace that
//! asks for it) by appending it to a log partitioned by user, so each user's events are in one
//! partition, in order. Delivery is separate: on every pod one task per partition competes for
//! that partition's lease; the holder posts the partition's oldest undelivered events in signed
//! batches, marks them delivered only after a 2xx, and retries the same batch with backoff until
//! it is taken. A pod that dies holding a lease loses it after the lease's TTL; the next holder
//! first takes over what the dead one had read but not delivered.
//!
//! Topic occupancy and session ends are decided on *sessions*, not sockets: a drain (1001) or a
//! rebalance (1012) moves sockets, the sessions stay, and no event is recorded. A session whose
//! connection ended is *detached*, with a deadline one resume window ahead; the sweeper (one pod
//! at a time, by lease) ends detached sessions whose deadline passed (`session.ended` with
//! `why: "expired"`), and detaches the sessions of pods whose liveness key is gone (killed).
//!
//! Layout: this file ([`Event`], its types, partitioning, and [`Events`], what the rest of the
//! gateway calls); [`store`] (the traits: [`store::EventLog`], [`store::EventQueue`],
//! [`store::Tracker`], and their memory-or-Redis dispatch); [`memory`] (the embedded default);
//! [`redis_log`] and [`redis_tracker`] (Redis streams, leases, session and occupancy keys);
//! [`delivery`] (the per-partition delivery task); [`sweeper`] (expired sessions, dead pods);
//! [`hooks`] (the calls made from connections, presence, the server API and publishing) and
//! `conn` (a connection's calls, and what "closed for good" means);
//! [`metrics`].

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

mod conn;
pub mod delivery;
pub mod hooks;
pub mod memory;
pub mod metrics;
pub mod outbox;
pub mod redis_log;
pub mod redis_tracker;
pub mod store;
pub mod sweeper;
#[cfg(test)]
mod tests_stores;

pub use metrics::EventMetrics;

use crate::{ConfigError, Store};
use outbox::RedisOutbox;
use store::{AnyLog, AnyTracker, EventLog, Tracker};

/// Why a log or tracker call failed.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    #[error("corrupt event store reply: {0}")]
    Corrupt(String),
}

/// The event types of design §13.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SessionStarted,
    SessionEnded,
    TopicOccupied,
    TopicVacated,
    PresenceJoin,
    PresenceLeave,
    Publish,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::SessionStarted => "session.started",
            Kind::SessionEnded => "session.ended",
            Kind::TopicOccupied => "topic.occupied",
            Kind::TopicVacated => "topic.vacated",
            Kind::PresenceJoin => "presence.join",
            Kind::PresenceLeave => "presence.leave",
            Kind::Publish => "publish",
        }
    }
}

/// Why a session ended (`session.ended`'s `data.why`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// Detached and not resumed within the resume window (its pod may have died).
    Expired,
    /// `POST /api/disconnect`.
    Disconnected,
    /// The client closed the socket with 1000: the application ended it for good.
    Closed,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Expired => "expired",
            Why::Disconnected => "disconnected",
            Why::Closed => "closed",
        }
    }
}

/// One lifecycle event, as the webhook receives it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    /// Unique per event (32 hex digits): a redelivery carries the same id.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// When the gateway recorded it (RFC 3339, UTC, milliseconds).
    pub at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl Event {
    pub fn new(kind: Kind) -> Self {
        Self {
            id: protocol::SessionId::generate().to_string(),
            kind: kind.as_str(),
            at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
            user: None,
            session: None,
            topic: None,
            data: None,
        }
    }

    pub fn user(mut self, user: Option<&str>) -> Self {
        self.user = user.map(str::to_owned);
        self
    }

    pub fn session(mut self, session: &str) -> Self {
        self.session = Some(session.to_owned());
        self
    }

    pub fn topic(mut self, topic: &str) -> Self {
        self.topic = Some(topic.to_owned());
        self
    }

    pub fn data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// `topic.vacated` for `topic`.
    pub fn vacated(topic: &protocol::Topic) -> Self {
        Self::new(Kind::TopicVacated).topic(topic.as_str())
    }

    pub fn json(&self) -> String {
        serde_json::to_string(self).expect("an event serializes")
    }

    /// The partition key: the user, else the session, else the topic. A user's events (all
    /// its sessions') are in one partition, in the order they were appended.
    pub fn key(&self) -> &str {
        self.user
            .as_deref()
            .or(self.session.as_deref())
            .or(self.topic.as_deref())
            .unwrap_or("")
    }
}

/// The partition of `key` among `partitions`: FNV-1a, stable across builds and pods.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// Delivery settings, from the flags.
#[derive(Clone)]
pub struct Settings {
    pub url: String,
    pub secret: Vec<u8>,
    pub timeout: Duration,
    pub batch_max: usize,
    pub retry_max: Duration,
    pub partitions: u32,
    pub backlog_max: u64,
    /// How long a pod's cover of an outbox lasts (see [`outbox`]).
    pub outbox_cover: Duration,
}

/// Events of a pod: the log, the session tracker and the delivery settings. Absent (no
/// `--webhook-url`) nothing is recorded.
#[derive(Debug, Clone)]
pub struct Events {
    pub log: AnyLog,
    pub tracker: AnyTracker,
    /// With Redis: where the store's scripts stage the events they decide.
    pub outbox: Option<RedisOutbox>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl std::fmt::Debug for Settings {
    /// Everything but the secret.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("url", &protocol::redact_url(&self.url))
            .field("secret", &"(from --webhook-secret-file)")
            .field("timeout", &self.timeout)
            .field("batch_max", &self.batch_max)
            .field("retry_max", &self.retry_max)
            .field("partitions", &self.partitions)
            .field("backlog_max", &self.backlog_max)
            .field("outbox_cover", &self.outbox_cover)
            .finish()
    }
}

impl Settings {
    /// The settings when the flags ask for events, the secret file read (a bad one fails the
    /// start naming the flag).
    pub fn from_config(config: &crate::Config) -> Result<Option<Self>, ConfigError> {
        let flags = &config.events;
        let Some(url) = flags.webhook_url.clone() else {
            return Ok(None);
        };
        let secret = flags
            .secret()?
            .ok_or(crate::config::EventsConfigError::SecretMissing)?;
        Ok(Some(Self {
            url,
            secret,
            timeout: flags.webhook_timeout,
            batch_max: flags.webhook_batch_max,
            retry_max: flags.webhook_retry_max,
            partitions: flags.webhook_partitions,
            backlog_max: flags.webhook_backlog_max,
            outbox_cover: RedisOutbox::cover_of(config.heartbeat_interval),
        }))
    }
}

impl Events {
    /// The events of a pod, on the pod's store (Redis or memory).
    pub fn new(settings: Settings, store: &Store, metrics: Arc<crate::metrics::Metrics>) -> Self {
        let outbox = match store {
            Store::Redis(store) => Some(RedisOutbox::new(store.clone(), settings.outbox_cover)),
            Store::Memory(_) => None,
        };
        Self {
            log: AnyLog::for_store(store, settings.partitions),
            tracker: AnyTracker::for_store(store, outbox.as_ref()),
            outbox,
            settings: Arc::new(settings),
            metrics,
        }
    }

    /// Appends an event its cause staged in the outbox of `tag` (in memory: just decided), then
    /// removes it from there. Either failure leaves it staged, for the sweeper to relay; it is
    /// counted and logged, never the caller's problem: the cause (a hello, a close) happened.
    pub async fn record(&self, tag: &str, event: &Event) {
        self.record_json(tag, event.kind, &event.id, event.key(), &event.json())
            .await;
    }

    /// [`Self::record`] of an event staged as JSON (by a presence script).
    pub async fn record_json(
        &self,
        tag: &str,
        kind: &'static str,
        id: &str,
        key: &str,
        json: &str,
    ) {
        if !self.append_json(kind, id, key, json).await {
            return;
        }
        if let Some(outbox) = &self.outbox
            && let Err(e) = Box::pin(outbox.settle(&outbox.key(tag), &[id])).await
        {
            // Relayed again by the sweeper: a duplicate with the same id, not a loss.
            tracing::debug!(kind, %id, error = %e, "staged event not removed");
        }
    }

    async fn append_json(&self, kind: &'static str, id: &str, key: &str, json: &str) -> bool {
        let partition = partition_of(key, self.settings.partitions);
        let label = metrics::TypeLabel { r#type: kind };
        match self.log.append(partition, json).await {
            Ok(()) => {
                self.metrics.events.appended.get_or_create(&label).inc();
                true
            }
            Err(e) => {
                self.metrics
                    .events
                    .append_failed
                    .get_or_create(&label)
                    .inc();
                tracing::warn!(kind, %id, error = %e, "event not appended");
                false
            }
        }
    }

    /// Appends the events that pods staged but did not append (died, or the store failed
    /// them), and forgets the outboxes emptied: rounds of [`outbox::SWEEP_MAX`] outboxes, up
    /// to ten per call. Returns how many events were relayed.
    pub async fn relay_stranded(&self) -> Result<usize, EventError> {
        let Some(outbox) = &self.outbox else {
            return Ok(0);
        };
        let mut relayed = 0;
        for _ in 0..10 {
            let round = outbox.stranded().await?;
            let full = round.len() >= outbox::SWEEP_MAX;
            let mut emptied = Vec::new();
            for stranded in round {
                let mut ids = Vec::new();
                for (id, json) in &stranded.events {
                    let (kind, key) = kind_and_key(json);
                    if !self.append_json(kind, id, &key, json).await {
                        break;
                    }
                    ids.push(id.as_str());
                }
                if !ids.is_empty() {
                    outbox.settle(&stranded.key, &ids).await?;
                    relayed += ids.len();
                    self.metrics.events.relayed.inc_by(ids.len() as u64);
                }
                if ids.len() == stranded.events.len() {
                    emptied.push(stranded);
                }
            }
            for stranded in &emptied {
                outbox.forget(stranded).await?;
            }
            if !full {
                break;
            }
        }
        Ok(relayed)
    }
}

/// The type (as a metric label) and partition key of a staged event's JSON.
fn kind_and_key(json: &str) -> (&'static str, String) {
    let value: Value = serde_json::from_str(json).unwrap_or(Value::Null);
    let kind = [
        Kind::SessionStarted,
        Kind::SessionEnded,
        Kind::TopicOccupied,
        Kind::TopicVacated,
        Kind::PresenceJoin,
        Kind::PresenceLeave,
        Kind::Publish,
    ]
    .into_iter()
    .map(Kind::as_str)
    .find(|k| value["type"].as_str() == Some(k))
    .unwrap_or("unknown");
    let key = ["user", "session", "topic"]
        .iter()
        .find_map(|f| value[f].as_str())
        .unwrap_or("")
        .to_owned();
    (kind, key)
}

/// Starts a pod's events, before it takes clients: marks the pod alive, detaches what a
/// previous run under this pod's name left attached (so it expires), then spawns the delivery
/// tasks (one per partition) and the sweeper. Nothing without `--webhook-url`.
pub async fn start(shared: &Arc<crate::Shared>) {
    let Some(events) = &shared.events else { return };
    let pod = &shared.pod;
    if let Err(e) = events.tracker.alive(pod, sweeper::alive_ttl(shared)).await {
        tracing::warn!(error = %e, "events: pod not marked alive yet; retrying");
    }
    let deadline = session_store::now_ms() + shared.config.resume_window.as_millis() as u64;
    match events.tracker.detach_pod(pod, deadline).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            sessions = n,
            "events: sessions of this pod's previous run detached"
        ),
        Err(e) => tracing::warn!(error = %e, "events: previous sessions not detached"),
    }
    let transport = match crate::hooks::HttpTransport::new() {
        Ok(t) => t,
        Err(e) => {
            return tracing::error!(error = %e, "events: no HTTP client; nothing is delivered");
        }
    };
    for partition in 0..events.settings.partitions {
        tokio::spawn(delivery::run(shared.clone(), transport.clone(), partition));
    }
    tokio::spawn(sweeper::run(shared.clone()));
    tracing::info!(url = %protocol::redact_url(&events.settings.url), partitions = events.settings.partitions, "lifecycle events on");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_users_events_share_a_partition_whatever_the_session() {
        let a = Event::new(Kind::SessionStarted)
            .user(Some("ann"))
            .session("s1");
        let b = Event::new(Kind::PresenceJoin)
            .user(Some("ann"))
            .session("s2")
            .topic("t");
        assert_eq!(a.key(), "ann");
        assert_eq!(partition_of(a.key(), 16), partition_of(b.key(), 16));
        let anonymous = Event::new(Kind::SessionStarted).session("s3");
        assert_eq!(anonymous.key(), "s3");
        let topic = Event::new(Kind::TopicOccupied).topic("room");
        assert_eq!(topic.key(), "room");
        assert!((0..1000).all(|i| partition_of(&i.to_string(), 7) < 7));
    }

    #[test]
    fn events_serialize_without_absent_fields() {
        let e = Event::new(Kind::SessionEnded)
            .session("s1")
            .data(serde_json::json!({"why": Why::Closed.as_str()}));
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "session.ended");
        assert_eq!(v["data"]["why"], "closed");
        assert!(v.get("user").is_none() && v.get("topic").is_none());
        assert_eq!(v["id"].as_str().unwrap().len(), 32);
    }
}
