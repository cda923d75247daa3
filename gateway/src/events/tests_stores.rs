//! The same behaviour asked of both implementations: the log and the tracker in memory and in
//! a real redis-server.

use std::sync::Arc;
use std::time::Duration;

use fred::interfaces::ClientLike;
use fred::types::{ClusterHash, CustomCommand, Value};
use protocol::Topic;

use super::memory::{MemoryLog, MemoryTracker};
use super::outbox::RedisOutbox;
use super::redis_log::RedisLog;
use super::redis_tracker::RedisTracker;
use super::store::{Ended, EventLog, EventQueue, Tracker};
use super::{Event, Events, Kind, Settings};

fn t(name: &str) -> Topic {
    Topic::new(name).unwrap()
}

async fn redis() -> (test_support::RedisServer, session_store::RedisStore) {
    let server = test_support::RedisServer::start();
    let store = session_store::RedisStore::connect(session_store::RedisConfig::new(server.url()))
        .await
        .unwrap();
    (server, store)
}

async fn the_log_hands_out_the_oldest_first_until_acknowledged(log: &(impl EventLog + EventQueue)) {
    for i in 0..5 {
        let e = Event::new(Kind::SessionStarted).session(&format!("s{i}"));
        log.append(1, &e.json()).await.unwrap();
    }
    let first = log.next_batch(1, "a", 2).await.unwrap();
    assert_eq!(first.len(), 2);
    assert!(first[0].json.contains("\"s0\"") && first[1].json.contains("\"s1\""));
    // Not acknowledged: the same batch again, for this pod or the next holder.
    assert_eq!(log.next_batch(1, "a", 2).await.unwrap(), first);
    assert_eq!(log.next_batch(1, "b", 5).await.unwrap(), first);
    let ids: Vec<String> = first.iter().map(|e| e.id.clone()).collect();
    log.ack(1, &ids).await.unwrap();
    let next = log.next_batch(1, "b", 10).await.unwrap();
    assert_eq!(next.len(), 3);
    assert!(next[0].json.contains("\"s2\"") && next[2].json.contains("\"s4\""));
    assert!(log.next_batch(0, "b", 10).await.unwrap().is_empty());
    // Above the bound the oldest go, and are counted.
    assert_eq!(log.bound(1, 1).await.unwrap(), (3, 2));
    let kept = log.next_batch(1, "b", 10).await.unwrap();
    assert_eq!(kept.len(), 1);
    assert!(kept[0].json.contains("\"s4\""));
    log.ack(1, &[kept[0].id.clone()]).await.unwrap();
    assert!(log.next_batch(1, "b", 10).await.unwrap().is_empty());
    assert_eq!(log.bound(1, 1).await.unwrap(), (0, 0));
}

fn occupied(topic: &str) -> Event {
    Event::new(Kind::TopicOccupied).topic(topic)
}

fn vacated(topic: &str) -> Event {
    Event::vacated(&t(topic))
}

fn ending(session: &str) -> Event {
    Event::new(Kind::SessionEnded).session(session)
}

fn vacated_topics(ended: &Ended) -> Vec<String> {
    let topics = ended.vacated.iter().map(|e| e.topic.clone().unwrap());
    topics.collect()
}

async fn occupancy_counts_sessions_and_ends_are_reported_once(tr: &impl Tracker) {
    let started = Event::new(Kind::SessionStarted).session("s1");
    assert!(
        tr.attach("s1", Some("ann"), "a", 1, Some(&started))
            .await
            .unwrap()
    );
    assert!(!tr.attach("s1", Some("ann"), "a", 1, None).await.unwrap());
    tr.attach("s2", None, "a", 2, None).await.unwrap();
    assert!(
        tr.subscribe("s1", &t("room"), &occupied("room"))
            .await
            .unwrap()
    );
    assert!(
        !tr.subscribe("s2", &t("room"), &occupied("room"))
            .await
            .unwrap()
    );
    assert!(
        !tr.subscribe("s1", &t("room"), &occupied("room"))
            .await
            .unwrap()
    );
    assert!(
        tr.subscribe("s1", &t("other"), &occupied("other"))
            .await
            .unwrap()
    );
    assert!(
        !tr.unsubscribe("s2", &t("room"), &vacated("room"))
            .await
            .unwrap()
    );
    // A drain: detached on one pod, attached on another before the deadline; the late
    // detach of the old pod changes nothing.
    tr.detach("s1", "a", Some(1), 100).await.unwrap();
    tr.attach("s1", Some("ann"), "b", 7, None).await.unwrap();
    tr.detach("s1", "a", Some(1), 100).await.unwrap();
    // Taken over on the same pod by a newer connection: the old one's detach is ignored.
    tr.attach("s1", Some("ann"), "b", 8, None).await.unwrap();
    tr.detach("s1", "b", Some(7), 100).await.unwrap();
    assert_eq!(
        tr.end("s1", true, &ending("s1")).await.unwrap(),
        None,
        "attached on b"
    );
    assert!(tr.expired(1_000, 10).await.unwrap().is_empty());
    // Detached for good: expired after its deadline, ended once.
    tr.detach("s1", "b", Some(8), 200).await.unwrap();
    assert!(tr.expired(199, 10).await.unwrap().is_empty());
    assert_eq!(tr.expired(200, 10).await.unwrap(), vec!["s1".to_owned()]);
    let ended = tr.end("s1", true, &ending("s1")).await.unwrap().unwrap();
    assert_eq!(ended.user.as_deref(), Some("ann"));
    let event = ended.ended.clone().expect("decided by this call");
    assert_eq!(
        event.user.as_deref(),
        Some("ann"),
        "the user the tracker kept"
    );
    assert_eq!(vacated_topics(&ended), ["other", "room"]);
    assert_eq!(tr.end("s1", false, &ending("s1")).await.unwrap(), None);
    assert!(tr.expired(1_000, 10).await.unwrap().is_empty());
    // Ended while attached (a goodbye, a disconnect): the topic it held is vacated.
    assert!(
        tr.subscribe("s2", &t("room"), &occupied("room"))
            .await
            .unwrap()
    );
    let ended = tr.end("s2", false, &ending("s2")).await.unwrap().unwrap();
    assert_eq!(ended.user, None);
    assert_eq!(vacated_topics(&ended), ["room"]);
}

#[tokio::test]
async fn memory_log() {
    the_log_hands_out_the_oldest_first_until_acknowledged(&MemoryLog::new(2)).await;
}

#[tokio::test]
async fn memory_tracker() {
    occupancy_counts_sessions_and_ends_are_reported_once(&MemoryTracker::default()).await;
}

#[tokio::test]
async fn redis_log_and_leases() {
    let (_server, store) = redis().await;
    let log = RedisLog::new(store);
    the_log_hands_out_the_oldest_first_until_acknowledged(&log).await;
    let ttl = Duration::from_secs(30);
    assert!(log.lease(3, "a", ttl).await.unwrap());
    assert!(
        !log.lease(3, "b", ttl).await.unwrap(),
        "one holder at a time"
    );
    assert!(
        log.lease(3, "a", ttl).await.unwrap(),
        "renewed by its holder"
    );
    log.release(3, "b").await.unwrap();
    assert!(
        !log.lease(3, "b", ttl).await.unwrap(),
        "only the holder releases"
    );
    log.release(3, "a").await.unwrap();
    assert!(log.lease(3, "b", ttl).await.unwrap());
}

#[tokio::test]
async fn redis_tracker_and_dead_pods() {
    let (_server, store) = redis().await;
    let outbox = RedisOutbox::new(store.clone(), Duration::from_secs(60));
    let tr = RedisTracker::new(store, outbox);
    occupancy_counts_sessions_and_ends_are_reported_once(&tr).await;
    // A pod that stopped renewing its mark is dead; its sessions are detached once.
    let ttl = Duration::from_secs(30);
    for pod in ["live", "a", "b"] {
        tr.alive(pod, ttl).await.unwrap();
    }
    tr.attach("s7", None, "live", 1, None).await.unwrap();
    tr.attach("s8", None, "gone", 1, None).await.unwrap();
    tr.attach("s9", None, "gone", 2, None).await.unwrap();
    assert_eq!(tr.dead_pods().await.unwrap(), vec!["gone".to_owned()]);
    assert_eq!(tr.detach_pod("gone", 500).await.unwrap(), 2);
    assert!(tr.dead_pods().await.unwrap().is_empty());
    let mut expired = tr.expired(500, 10).await.unwrap();
    expired.sort();
    assert_eq!(expired, vec!["s8".to_owned(), "s9".to_owned()]);
    assert!(tr.sweeper_lease("live", ttl).await.unwrap());
    assert!(!tr.sweeper_lease("other", ttl).await.unwrap());
}

/// Redis with a short call timeout, so an outbox turns stale within seconds.
async fn quick_redis() -> (test_support::RedisServer, session_store::RedisStore) {
    let server = test_support::RedisServer::start();
    let mut config = session_store::RedisConfig::new(server.url());
    config.call_timeout = Duration::from_millis(300);
    let store = session_store::RedisStore::connect(config).await.unwrap();
    (server, store)
}

async fn raw(store: &session_store::RedisStore, name: &'static str, args: Vec<String>) -> Value {
    let command = CustomCommand::new(name, ClusterHash::FirstKey, false);
    store.pool().next().custom(command, args).await.unwrap()
}

fn events_on(store: &session_store::RedisStore) -> Events {
    let settings = Settings {
        url: "http://127.0.0.1:9/".into(),
        secret: b"s".to_vec(),
        timeout: Duration::from_secs(1),
        batch_max: 10,
        retry_max: Duration::from_secs(1),
        partitions: 1,
        backlog_max: 1_000,
        outbox_cover: Duration::from_secs(1),
    };
    let metrics = Arc::new(crate::metrics::Metrics::new());
    Events::new(settings, &crate::Store::Redis(store.clone()), metrics)
}

/// The decision and its event are one script: when the append after it fails (the partition's
/// key has the wrong type, so `XADD` fails), the event stays staged, the sweeper's relay
/// appends it with its id once the outbox's cover is stale, and the outbox is forgotten.
#[tokio::test]
async fn a_staged_event_whose_append_failed_is_relayed_with_its_id() {
    let (_server, store) = quick_redis().await;
    let events = events_on(&store);
    let stream = format!("{}:events:{{0}}", store.key_prefix());
    raw(&store, "SET", vec![stream.clone(), "not a stream".into()]).await;
    let occupied = occupied("room");
    let tracker = &events.tracker;
    assert!(
        tracker
            .subscribe("s1", &t("room"), &occupied)
            .await
            .unwrap()
    );
    events.record("room", &occupied).await;
    let label = super::metrics::TypeLabel {
        r#type: "topic.occupied",
    };
    assert_eq!(
        events
            .metrics
            .events
            .append_failed
            .get_or_create(&label)
            .get(),
        1
    );
    raw(&store, "DEL", vec![stream]).await;
    // Covered: a live pod may still be appending it.
    assert_eq!(events.relay_stranded().await.unwrap(), 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while events.relay_stranded().await.unwrap() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "never relayed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(events.metrics.events.relayed.get(), 1);
    let batch = events.log.next_batch(0, "a", 10).await.unwrap();
    assert_eq!(batch.len(), 1);
    let relayed: serde_json::Value = serde_json::from_str(&batch[0].json).unwrap();
    assert_eq!(relayed, serde_json::to_value(&occupied).unwrap());
    // Nothing staged is left, and the outbox is no longer indexed.
    let outbox = format!("{}:ev-outbox:{{room}}", store.key_prefix());
    assert_eq!(raw(&store, "EXISTS", vec![outbox]).await.as_i64(), Some(0));
    let index = format!("{}:ev-outboxes", store.key_prefix());
    assert_eq!(raw(&store, "ZCARD", vec![index]).await.as_i64(), Some(0));
}

/// An event appended as it should be leaves nothing staged; a session's end, which adds the
/// user it kept, is staged as the JSON the pod appends.
#[tokio::test]
async fn appended_events_leave_nothing_staged_and_an_end_stages_its_user() {
    let (_server, store) = quick_redis().await;
    let events = events_on(&store);
    let tracker = &events.tracker;
    let started = Event::new(Kind::SessionStarted)
        .user(Some("ann"))
        .session("s1");
    assert!(
        tracker
            .attach("s1", Some("ann"), "a", 1, Some(&started))
            .await
            .unwrap()
    );
    events.record("s1", &started).await;
    let outbox = format!("{}:ev-outbox:{{s1}}", store.key_prefix());
    assert_eq!(
        raw(&store, "HLEN", vec![outbox.clone()]).await.as_i64(),
        Some(0)
    );
    let ended = tracker
        .end("s1", false, &ending("s1"))
        .await
        .unwrap()
        .unwrap();
    let event = ended.ended.unwrap();
    let staged = raw(&store, "HGET", vec![outbox, event.id.clone()]).await;
    let staged: serde_json::Value = serde_json::from_str(&staged.into_string().unwrap()).unwrap();
    assert_eq!(staged, serde_json::to_value(&event).unwrap());
    assert_eq!(staged["user"], "ann");
    // Finishing an end another call decided stages nothing new and reports no end.
    assert_eq!(tracker.end("s1", false, &ending("s1")).await.unwrap(), None);
}

/// A join staged by the presence script is the JSON the memory store's join would give.
#[tokio::test]
async fn a_staged_join_is_the_event_the_gateway_would_build() {
    use crate::presence::{Change, EventLog as PresenceLog, Op, PresenceStore};
    let (_server, store) = quick_redis().await;
    let outbox = RedisOutbox::new(store.clone(), Duration::from_secs(60));
    let mut ns = crate::Config::embedded_default()
        .app
        .default_namespace(session_store::HistoryLimits::default())
        .unwrap();
    ns.presence = true;
    let log = PresenceLog::new(crate::Namespaces::single(ns), 100, Duration::from_secs(60));
    let presence = crate::presence::redis::RedisPresence::new(store.clone(), log, Some(outbox));
    let join = Change {
        op: Op::Attach,
        session: "s1".into(),
        user: Some("ann/\"x\"".into()),
        info: Some(r#"{"name":"Ann","tags":[]}"#.into()),
    };
    let changes = presence
        .apply(&t("room"), "a", Duration::from_secs(60), &[join])
        .await
        .unwrap();
    let (id, json) = changes[0].staged.clone().expect("staged");
    let staged: serde_json::Value = serde_json::from_str(&json).unwrap();
    let expected = Event::new(Kind::PresenceJoin)
        .user(Some("ann/\"x\""))
        .session("s1")
        .topic("room")
        .data(serde_json::json!({"user_edge": true, "info": {"name": "Ann", "tags": []}}));
    let mut expected = serde_json::to_value(&expected).unwrap();
    expected["id"] = id.clone().into();
    expected["at"] = staged["at"].clone();
    assert_eq!(staged, expected);
    assert_eq!(id.len(), 32);
    assert!(humantime::parse_rfc3339(staged["at"].as_str().unwrap()).is_ok());
}

/// A message and its `publish` event are one script: the event is in the outbox with the
/// message's seq and epoch as the append returned them; a duplicate stages nothing.
#[tokio::test]
async fn a_message_is_stored_with_its_publish_event() {
    use session_store::SessionStore;
    let (_server, store) = quick_redis().await;
    let outbox = format!("{}:ev-outbox:{{room}}", store.key_prefix());
    let event = Event::new(Kind::Publish).topic("room").session("s1");
    let json = event.json();
    let stage = session_store::Stage {
        key: outbox.clone(),
        id: event.id.clone(),
        head: format!(r#"{},"data":{{"seq":"#, &json[..json.len() - 1]),
    };
    let data = protocol::Payload::parse(r#"{"text":"hi","n":[]}"#).unwrap();
    let id = protocol::PublishId::new("p-1").unwrap();
    let extras = session_store::Extras {
        exclude: None,
        stage: Some(&stage),
    };
    let topic = t("room");
    let appended = store
        .append_with(&topic, &data, Some(&id), extras)
        .await
        .unwrap();
    let staged = raw(&store, "HGET", vec![outbox.clone(), event.id.clone()]).await;
    let staged: serde_json::Value = serde_json::from_str(&staged.into_string().unwrap()).unwrap();
    let expected = event.clone().data(serde_json::json!({
        "seq": appended.seq,
        "epoch": appended.epoch.as_str(),
        "data": {"text": "hi", "n": []},
    }));
    assert_eq!(staged, serde_json::to_value(&expected).unwrap());
    // The retry: no second message, no second event.
    raw(&store, "DEL", vec![outbox.clone()]).await;
    let again = store
        .append_with(&topic, &data, Some(&id), extras)
        .await
        .unwrap();
    assert!(again.duplicate);
    assert_eq!(raw(&store, "EXISTS", vec![outbox]).await.as_i64(), Some(0));
}
