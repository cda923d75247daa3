//! The same behaviour asked of both implementations: the log and the tracker in memory and in
//! a real redis-server.

use std::time::Duration;

use protocol::Topic;

use super::memory::{MemoryLog, MemoryTracker};
use super::redis_log::RedisLog;
use super::redis_tracker::RedisTracker;
use super::store::{EventLog, EventQueue, Tracker};
use super::{Event, Kind};

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
        log.append(1, &e).await.unwrap();
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

async fn occupancy_counts_sessions_and_ends_are_reported_once(tr: &impl Tracker) {
    assert!(tr.attach("s1", Some("ann"), "a", 1).await.unwrap());
    assert!(!tr.attach("s1", Some("ann"), "a", 1).await.unwrap());
    tr.attach("s2", None, "a", 2).await.unwrap();
    assert!(tr.subscribe("s1", &t("room")).await.unwrap());
    assert!(!tr.subscribe("s2", &t("room")).await.unwrap());
    assert!(!tr.subscribe("s1", &t("room")).await.unwrap());
    assert!(tr.subscribe("s1", &t("other")).await.unwrap());
    assert!(!tr.unsubscribe("s2", &t("room")).await.unwrap());
    // A drain: detached on one pod, attached on another before the deadline; the late
    // detach of the old pod changes nothing.
    tr.detach("s1", "a", Some(1), 100).await.unwrap();
    tr.attach("s1", Some("ann"), "b", 7).await.unwrap();
    tr.detach("s1", "a", Some(1), 100).await.unwrap();
    // Taken over on the same pod by a newer connection: the old one's detach is ignored.
    tr.attach("s1", Some("ann"), "b", 8).await.unwrap();
    tr.detach("s1", "b", Some(7), 100).await.unwrap();
    assert_eq!(tr.end("s1", true).await.unwrap(), None, "attached on b");
    assert!(tr.expired(1_000, 10).await.unwrap().is_empty());
    // Detached for good: expired after its deadline, ended once.
    tr.detach("s1", "b", Some(8), 200).await.unwrap();
    assert!(tr.expired(199, 10).await.unwrap().is_empty());
    assert_eq!(tr.expired(200, 10).await.unwrap(), vec!["s1".to_owned()]);
    let ended = tr.end("s1", true).await.unwrap().unwrap();
    assert_eq!(ended.user.as_deref(), Some("ann"));
    assert_eq!(ended.vacated, vec![t("other"), t("room")]);
    assert_eq!(tr.end("s1", false).await.unwrap(), None);
    assert!(tr.expired(1_000, 10).await.unwrap().is_empty());
    // Ended while attached (a goodbye, a disconnect): the topic it held is vacated.
    assert!(tr.subscribe("s2", &t("room")).await.unwrap());
    let ended = tr.end("s2", false).await.unwrap().unwrap();
    assert_eq!((ended.user, ended.vacated), (None, vec![t("room")]));
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
    let tr = RedisTracker::new(store);
    occupancy_counts_sessions_and_ends_are_reported_once(&tr).await;
    // A pod that stopped renewing its mark is dead; its sessions are detached once.
    let ttl = Duration::from_secs(30);
    for pod in ["live", "a", "b"] {
        tr.alive(pod, ttl).await.unwrap();
    }
    tr.attach("s7", None, "live", 1).await.unwrap();
    tr.attach("s8", None, "gone", 1).await.unwrap();
    tr.attach("s9", None, "gone", 2).await.unwrap();
    assert_eq!(tr.dead_pods().await.unwrap(), vec!["gone".to_owned()]);
    assert_eq!(tr.detach_pod("gone", 500).await.unwrap(), 2);
    assert!(tr.dead_pods().await.unwrap().is_empty());
    let mut expired = tr.expired(500, 10).await.unwrap();
    expired.sort();
    assert_eq!(expired, vec!["s8".to_owned(), "s9".to_owned()]);
    assert!(tr.sweeper_lease("live", ttl).await.unwrap());
    assert!(!tr.sweeper_lease("other", ttl).await.unwrap());
}
