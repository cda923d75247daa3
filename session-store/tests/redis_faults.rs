//! The Redis store against a real `redis-server` that comes back from its own files after a
//! `kill -9`: whatever the files kept, positions from before the restart are never recovered
//! and the topic goes on in a newer epoch from seq 1. And the contrast: a plain reconnect to
//! the same server process keeps the epoch.

use std::future::Future;
use std::time::{Duration, Instant};

use protocol::{Payload, Position, PublishId, Topic};
use session_store::{HistoryLimits, RedisConfig, RedisStore, SessionStore, StoreError, recover};
use test_support::{FaultProxy, Persistence, RedisReplica, RedisServer};

async fn connect(url: String) -> RedisStore {
    connect_waiting_for(url, 0).await
}

/// A store whose appends wait for `min_replicas` replicas.
async fn connect_waiting_for(url: String, min_replicas: u32) -> RedisStore {
    RedisStore::connect(RedisConfig {
        call_timeout: Duration::from_millis(500),
        pool_size: 2,
        limits: HistoryLimits::default(),
        min_replicas,
        ..RedisConfig::new(url)
    })
    .await
    .expect("connect")
}

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("topic")
}

fn json(text: &str) -> Payload {
    Payload::parse(text).expect("JSON")
}

/// Polls `f` until it succeeds (the store reconnects in the background), failing after 15 s.
async fn eventually<T, F, Fut>(mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) if Instant::now() > deadline => panic!("still failing after 15 s: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Whether everything after `since` can be recovered now.
async fn recovered(store: &RedisStore, t: &Topic, since: &Position) -> bool {
    let page = store.history(t, since.seq, 100).await.expect("history");
    recover(since, page).recovered
}

/// Appends 3, saves, appends 2 more (seq 4 and 5), kills the server with SIGKILL and restarts it
/// from its files; then checks the topic restarted in a newer epoch.
async fn restart_from_files_starts_a_newer_epoch(persistence: Persistence) {
    let mut server = RedisServer::start_persistent(persistence);
    let store = connect(server.url()).await;
    let t = topic("snapshot");
    for i in 1..=3u64 {
        let appended = store.append(&t, &json(&i.to_string()), None).await.unwrap();
        assert_eq!(appended.seq, i);
    }
    server.save();
    let mut last = None;
    for i in 4..=5u64 {
        let appended = store.append(&t, &json(&i.to_string()), None).await.unwrap();
        assert_eq!(appended.seq, i);
        last = Some(appended);
    }
    let old = last.expect("appended").epoch;
    let (at_save, at_kill) = (
        Position {
            seq: 3,
            epoch: old.clone(),
        },
        Position {
            seq: 5,
            epoch: old.clone(),
        },
    );
    assert!(recovered(&store, &t, &at_save).await, "before the restart");
    let run_before = server.run_id();

    server.kill_9();
    server.restart_from_files();
    assert_ne!(server.run_id(), run_before);
    // What the files kept: the seq as of the SAVE (RDB), or (AOF) normally every acknowledged
    // append; everysec may postpone a write while an fsync runs, so that one is only reported.
    let [seq_key, _, _] = store.topic_keys(&t);
    let kept = server.cmd(&["GET", &seq_key]);
    match persistence {
        Persistence::Rdb => assert_eq!(kept, "3", "the snapshot's seq"),
        Persistence::AofEverysec => eprintln!("the AOF kept seq {kept} of 5"),
    }

    let top = eventually(|| store.top(&t)).await;
    assert_eq!(
        top.seq, 0,
        "{persistence:?}: not seq {kept} in the old epoch"
    );
    assert!(
        top.epoch.is_newer_than(&old),
        "{persistence:?}: {:?} is not newer than {old:?}",
        top.epoch
    );
    assert!(!recovered(&store, &t, &at_kill).await, "{persistence:?}");
    assert!(!recovered(&store, &t, &at_save).await, "{persistence:?}");
    let page = store.history(&t, 0, 100).await.unwrap();
    assert_eq!(
        (page.top.clone(), page.messages.len()),
        (top.clone(), 0),
        "{persistence:?}: the old history is gone"
    );

    let next = store.append(&t, &json("\"after\""), None).await.unwrap();
    assert_eq!((next.seq, &next.epoch), (1, &top.epoch), "{persistence:?}");
    // And it stays there: the new epoch was written by this server process.
    let again = store.append(&t, &json("\"again\""), None).await.unwrap();
    assert_eq!(
        (again.seq, &again.epoch),
        (2, &top.epoch),
        "{persistence:?}"
    );
}

#[tokio::test]
async fn rdb_restart_from_a_stale_snapshot_starts_a_newer_epoch() {
    restart_from_files_starts_a_newer_epoch(Persistence::Rdb).await;
}

#[tokio::test]
async fn aof_restart_starts_a_newer_epoch_even_when_nothing_was_lost() {
    restart_from_files_starts_a_newer_epoch(Persistence::AofEverysec).await;
}

#[tokio::test]
async fn a_reconnect_to_the_same_server_keeps_the_epoch() {
    let server = RedisServer::start();
    let proxy = FaultProxy::start(&server);
    let store = connect(proxy.url("redis")).await;
    let t = topic("reconnect");
    for _ in 0..3 {
        store.append(&t, &json("1"), None).await.unwrap();
    }
    let before = store.top(&t).await.unwrap();
    let accepted = proxy.connections_accepted();

    proxy.cut();
    let after = eventually(|| store.top(&t)).await;
    assert!(
        proxy.connections_accepted() > accepted,
        "the store reconnected"
    );
    assert_eq!(after, before, "same server process: same epoch and seq");
    assert!(recovered(&store, &t, &before).await);
    let next = store.append(&t, &json("2"), None).await.unwrap();
    assert_eq!((next.seq, &next.epoch), (4, &before.epoch));
    // A second store (new connections) agrees.
    let other = connect(server.url()).await;
    assert_eq!(other.top(&t).await.unwrap().epoch, before.epoch);
}

#[tokio::test]
async fn with_min_replicas_a_retry_succeeds_only_once_a_replica_has_the_message() {
    let primary = RedisServer::start();
    let link = FaultProxy::start(&primary);
    let replica = RedisReplica::start_via(&link);
    replica.wait_in_sync();
    // Two stores: two pods, so the retry may come on other connections than the first try.
    let store = connect_waiting_for(primary.url(), 1).await;
    let other = connect_waiting_for(primary.url(), 1).await;
    let t = topic("replicated");
    let [seq_key, _, _] = store.topic_keys(&t);
    // Retried with its id like any refused append: on a loaded machine the replica's
    // acknowledgement may take longer than the short call timeout.
    let first_id = PublishId::new("first").unwrap();
    let one = json("1");
    let first = eventually(|| store.append(&t, &one, Some(&first_id))).await;
    assert_eq!(first.seq, 1);

    link.pause();
    let id = PublishId::new("stalled").unwrap();
    let refused = store.append(&t, &json("2"), Some(&id)).await;
    assert!(refused.is_err(), "acknowledged by no replica: {refused:?}");
    assert_eq!(
        primary.cmd(&["GET", &seq_key]),
        "2",
        "stored on the primary"
    );
    // Retries while the replica still lacks it are refused as well, on either store.
    for (who, s) in [("same store", &store), ("other store", &other)] {
        let retry = s.append(&t, &json("2"), Some(&id)).await;
        assert!(
            retry.is_err(),
            "{who}: a retry succeeded while no replica had the message: {retry:?}"
        );
    }

    link.resume();
    replica.wait_in_sync();
    let two = json("2");
    let retried = eventually(|| other.append(&t, &two, Some(&id))).await;
    assert_eq!((retried.seq, retried.duplicate), (2, true));
    assert_eq!(replica.cmd(&["GET", &seq_key]), "2", "stored once");
}
