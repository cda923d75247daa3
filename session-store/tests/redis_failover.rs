//! The store across a failover to a replica, on real redis-servers: without
//! `min_replicas` every topic starts a new epoch on the promoted replica (it may lack what clients
//! were sent); with it ("lineage" mode) acknowledged appends are on the replica, so topics keep
//! their epochs, and an append that was not acknowledged was never readable.

use std::time::Duration;

use protocol::{Payload, PublishId, Topic};
use session_store::{HistoryLimits, RedisConfig, RedisStore, SessionStore, StoreError, recover};
use test_support::{FaultProxy, RedisReplica, RedisServer};

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("topic")
}

fn json(text: &str) -> Payload {
    Payload::parse(text).expect("json")
}

async fn store(url: String, min_replicas: u32) -> RedisStore {
    RedisStore::connect(RedisConfig {
        limits: HistoryLimits::default(),
        // Generous: under load a replica's acknowledgement can take a while, and an append
        // that times out here would fail the test for the wrong reason.
        call_timeout: Duration::from_secs(2),
        pool_size: 1,
        min_replicas,
        ..RedisConfig::new(url)
    })
    .await
    .expect("connect")
}

#[tokio::test]
async fn without_min_replicas_a_promoted_replica_starts_new_epochs() {
    let primary = RedisServer::start();
    let replica = RedisReplica::start(&primary);
    replica.wait_in_sync();
    let before = store(primary.url(), 0).await;
    let t = topic("failover.strict");
    let mut last = None;
    for i in 0..3 {
        last = Some(
            before
                .append(&t, &json(&i.to_string()), None)
                .await
                .expect("append"),
        );
    }
    let last = last.unwrap();
    replica.wait_in_sync();
    drop(primary);
    replica.promote();

    let after = store(replica.url(), 0).await;
    let top = after.top(&t).await.expect("top");
    assert!(
        top.epoch.is_newer_than(&last.epoch),
        "{top:?} after {last:?}"
    );
    assert_eq!(top.seq, 0);
    let old = protocol::Position {
        seq: last.seq,
        epoch: last.epoch.clone(),
    };
    assert!(
        !recover(
            &old,
            after.history(&t, old.seq, 100).await.expect("history")
        )
        .recovered
    );
}

#[tokio::test]
async fn with_min_replicas_a_promoted_replica_keeps_epochs_and_every_acknowledged_append() {
    let primary = RedisServer::start();
    // Replication goes through a proxy, so the test can stall it.
    let link = FaultProxy::start(&primary);
    let replica = RedisReplica::start_via(&link);
    replica.wait_in_sync();
    let before = store(primary.url(), 1).await;
    let t = topic("failover.lineage");
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(
            before
                .append(&t, &json(&i.to_string()), None)
                .await
                .expect("append"),
        );
    }
    let epoch = acked[0].epoch.clone();
    assert!(acked.iter().all(|a| a.epoch == epoch));

    // With replication stalled, an append is stored on the primary but not acknowledged: it
    // fails, and nobody can read it.
    link.pause();
    let id = PublishId::new("stalled-1").unwrap();
    match before.append(&t, &json("\"stalled\""), Some(&id)).await {
        Err(StoreError::Unavailable(why)) => assert!(why.contains("replicas"), "{why}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert_eq!(
        before.top(&t).await.expect("top").seq,
        5,
        "unacknowledged is not readable"
    );
    let page = before.history(&t, 0, 100).await.expect("history");
    assert_eq!(page.messages.len(), 5);

    // The primary dies before replication resumes; the replica is promoted.
    drop(before);
    drop(primary);
    replica.promote();
    let after = store(replica.url(), 1).await;
    let top = after.top(&t).await.expect("top");
    assert_eq!(
        top.epoch, epoch,
        "a promoted replica of the lineage keeps the epoch"
    );
    assert_eq!(top.seq, 5, "every acknowledged append is there");
    let position = protocol::Position {
        seq: 2,
        epoch: epoch.clone(),
    };
    let recovery = recover(&position, after.history(&t, 2, 100).await.expect("history"));
    assert!(recovery.recovered);
    assert_eq!(
        recovery.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    // The publisher retries the failed one with its id: the new primary never had it, so it is
    // stored now, as the next seq of the same epoch. (The promoted replica has no replica of its
    // own here, so this store does not wait for one.)
    let strict_after = store(replica.url(), 0).await;
    drop(after);
    let retried = strict_after
        .append(&t, &json("\"stalled\""), Some(&id))
        .await
        .expect("append");
    // Strict mode on the new primary: the epoch was carried over to its incarnation, so it is
    // still the same epoch.
    assert_eq!(
        (retried.seq, &retried.epoch, retried.duplicate),
        (6, &epoch, false)
    );
}
