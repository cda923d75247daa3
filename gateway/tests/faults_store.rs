//! Redis going backwards under a running fleet, against real servers: a restart from a stale
//! RDB snapshot, a FLUSHALL, a failover to a replica that lagged. Each test keeps a witness
//! subscriber connected on every pod while a publisher goes on publishing (and retrying what is
//! refused while Redis is away), then checks what the witnesses were sent:
//! - they stay connected, and see exactly one epoch change;
//! - within an epoch every message is the one after the previous, the new epoch starts at 1 and
//!   its first message carries `epoch`, and no `(epoch, seq)` comes twice or means two messages;
//! - every publish acknowledged in the new epoch reached every witness;
//! - a client resuming from a position before the fault is told `recovered: false`.
//!
//! And `--redis-min-replicas`: a publish no replica acknowledged is refused, and its retry with
//! the same id is acknowledged only once a replica has it, without storing it twice.

mod support;

use std::time::{Duration, Instant};

use protocol::Epoch;
use serde_json::{Value, json};
use support::faults::{
    Ack, DEADLINE, Publisher, Witness, assert_consistent, check_witness, epoch_of, pod, resume_at,
    wait_all_delivered,
};
use support::{Client, TestGateway, http};
use test_support::{FaultProxy, NatsServer, Persistence, RedisReplica, RedisServer, info_field};

const T: &str = "faults";
/// The topic's seq key in Redis (default prefix `gw`).
const SEQ_KEY: &str = "gw:seq:{faults}";
const EPOCH_KEY: &str = "gw:epoch:{faults}";
const HIST_KEY: &str = "gw:hist:{faults}";
/// Bound on any publisher's count; the tests stop them well before.
const MAX_PUBLISHES: u64 = 2_000;

async fn two_pods(redis_url: String, nats: &NatsServer) -> (TestGateway, TestGateway) {
    let a = pod(redis_url.clone(), Some(nats.url()), "pod-a", |_| {}).await;
    let b = pod(redis_url, Some(nats.url()), "pod-b", |_| {}).await;
    (a, b)
}

/// Witnesses on both pods, subscribed to [`T`] before anything is published; returns them and
/// the topic's epoch.
async fn witnesses(a: &TestGateway, b: &TestGateway) -> (Vec<Witness>, String) {
    let wa = Witness::start("witness on pod-a", a, T).await;
    let wb = Witness::start("witness on pod-b", b, T).await;
    let epoch = wa.log().initial_epoch;
    assert_eq!(wb.log().initial_epoch, epoch, "one epoch for both pods");
    (vec![wa, wb], epoch)
}

fn seq_now(redis: &RedisServer) -> u64 {
    redis.cmd(&["GET", SEQ_KEY]).parse().expect("seq key")
}

/// Each publisher's acknowledgements: some in `old`, then the rest in one newer epoch, which is
/// returned.
fn one_switch(publishers: &[&[Ack]], old: &str) -> String {
    let mut new = None;
    for acks in publishers {
        let first_new = acks
            .iter()
            .position(|a| a.epoch != old)
            .expect("acknowledged in a new epoch");
        assert!(first_new > 0, "nothing acknowledged before the fault");
        let epoch = epoch_of(&acks[first_new..]);
        assert!(
            Epoch::new(epoch.clone()).is_newer_than(&Epoch::new(old.to_owned())),
            "{epoch} is not newer than {old}"
        );
        assert_eq!(new.get_or_insert(epoch.clone()), &epoch, "one new epoch");
        let refused: u32 = acks.iter().map(|a| a.refused).sum();
        eprintln!(
            "publisher: {} acknowledged ({first_new} in the old epoch), {refused} refusals retried, \
             first in the new epoch after {:?}",
            acks.len(),
            acks[first_new].at
        );
    }
    new.expect("a publisher")
}

/// Waits until every witness has every publish acknowledged in the new epoch, stops them and
/// checks what they saw (see the module docs). Returns the new epoch and the last seq of the old
/// epoch that every witness saw.
async fn witnesses_went_through_one_break(
    witnesses: Vec<Witness>,
    publishers: &[&[Ack]],
    old: &str,
) -> (String, u64) {
    let new = one_switch(publishers, old);
    let acks: Vec<Ack> = publishers.iter().flat_map(|a| a.iter().cloned()).collect();
    let refs: Vec<&Witness> = witnesses.iter().collect();
    wait_all_delivered(&refs, &acks, &new).await;
    let mut logs = Vec::new();
    for w in witnesses {
        logs.push(w.stop().await);
    }
    let mut last_old = u64::MAX;
    for log in &logs {
        let epochs = check_witness(log);
        let names: Vec<&str> = epochs.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(names, [old, new.as_str()], "{}", log.summary());
        let old_seen = epochs[0].1.last().copied().unwrap_or(0);
        last_old = last_old.min(old_seen);
        // The old epoch may end before its last few messages reached a pod (they are from the
        // history that was lost): the break is announced, never silent.
        let lost = acks
            .iter()
            .filter(|a| a.epoch == old && a.seq > old_seen)
            .count();
        eprintln!("{}; old-epoch tail not delivered: {lost}", log.summary());
    }
    let logs: Vec<_> = logs.iter().collect();
    assert_consistent(&logs, &acks);
    (new, last_old)
}

/// Resumes on `pod` from each of `old_positions` (seqs in epoch `old`): none is recovered, and
/// the welcome reports the topic in `new`. A position in `new` is recovered.
async fn stale_positions_are_not_recovered(
    pod: &TestGateway,
    old: &str,
    old_positions: &[u64],
    new: &str,
) {
    for &seq in old_positions {
        let welcome = resume_at(pod, T, json!({"seq": seq, "epoch": old})).await;
        let topic = &welcome["topics"][T];
        assert_eq!(
            (&topic["recovered"], topic["epoch"].as_str()),
            (&json!(false), Some(new)),
            "resume from ({seq}, {old}): {welcome}"
        );
    }
    let welcome = resume_at(pod, T, json!({"seq": 1, "epoch": new})).await;
    assert_eq!(welcome["topics"][T]["recovered"], true, "{welcome}");
}

#[tokio::test]
async fn restart_from_a_stale_snapshot_is_one_announced_break_for_connected_subscribers() {
    let mut redis = RedisServer::start_persistent(Persistence::Rdb);
    let nats = NatsServer::start();
    let (a, b) = two_pods(redis.url(), &nats).await;
    let (witnesses, old) = witnesses(&a, &b).await;
    let publisher = Publisher::start("p", vec![a.admin, b.admin], T, MAX_PUBLISHES);

    publisher.wait_more(30).await;
    // In the snapshot: at least everything up to `saved`.
    let saved = seq_now(&redis);
    redis.save();
    // Not in the snapshot: what is acknowledged from here to the kill.
    publisher.wait_more(20).await;
    let refs: Vec<&Witness> = witnesses.iter().collect();
    wait_all_delivered(&refs, &publisher.acks(), &old).await;
    let refusals = publisher.refusals();
    redis.kill_9();
    publisher.wait_refused(refusals).await;
    redis.restart_from_files();
    publisher
        .wait_for("30 acknowledged after the restart", |acks| {
            acks.iter().filter(|a| a.epoch != old).count() >= 30
        })
        .await;
    let acks = publisher.stop().await;
    let before_kill = acks.iter().filter(|a| a.epoch == old).count() as u64;
    assert!(
        before_kill > saved,
        "writes after the SAVE were acknowledged"
    );

    let (new, last_old) = witnesses_went_through_one_break(witnesses, &[&acks], &old).await;
    assert!(
        last_old > saved,
        "the witnesses saw writes the snapshot lost"
    );
    stale_positions_are_not_recovered(&a, &old, &[saved, last_old], &new).await;
    stale_positions_are_not_recovered(&b, &old, &[saved, last_old], &new).await;
}

#[tokio::test]
async fn flushall_while_two_pods_publish_is_one_announced_break() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let (a, b) = two_pods(redis.url(), &nats).await;
    let (witnesses, old) = witnesses(&a, &b).await;
    let pa = Publisher::start("pa", vec![a.admin], T, MAX_PUBLISHES);
    let pb = Publisher::start("pb", vec![b.admin], T, MAX_PUBLISHES);
    pa.wait_more(25).await;
    pb.wait_more(25).await;

    assert_eq!(redis.cmd(&["FLUSHALL"]), "OK");
    for p in [&pa, &pb] {
        p.wait_for("25 acknowledged after the FLUSHALL", |acks| {
            acks.iter().filter(|a| a.epoch != old).count() >= 25
        })
        .await;
    }
    let (acks_a, acks_b) = (pa.stop().await, pb.stop().await);
    assert!(
        acks_a.iter().chain(&acks_b).all(|a| a.refused == 0),
        "a FLUSHALL refuses no publish"
    );

    let (new, last_old) =
        witnesses_went_through_one_break(witnesses, &[&acks_a, &acks_b], &old).await;
    stale_positions_are_not_recovered(&a, &old, &[1, last_old], &new).await;
}

#[tokio::test]
async fn failover_to_a_lagging_replica_is_one_announced_break() {
    let mut primary = RedisServer::start();
    let replication = FaultProxy::start(&primary);
    let replica = RedisReplica::start_via(&replication);
    replica.wait_in_sync();
    // What the pods connect to: the primary now, the replica after the failover.
    let service = FaultProxy::start(&primary);
    let nats = NatsServer::start();
    let (a, b) = two_pods(service.url("redis"), &nats).await;
    let (witnesses, old) = witnesses(&a, &b).await;
    let publisher = Publisher::start("p", vec![a.admin, b.admin], T, MAX_PUBLISHES);

    publisher.wait_more(25).await;
    replica.wait_in_sync();
    replication.pause();
    // The replica has at least this much; what is acknowledged from here on it never gets.
    let replicated: u64 = replica.cmd(&["GET", SEQ_KEY]).parse().expect("seq");
    publisher.wait_more(20).await;
    let refs: Vec<&Witness> = witnesses.iter().collect();
    wait_all_delivered(&refs, &publisher.acks(), &old).await;

    let refusals = publisher.refusals();
    let old_replid = info_field(&primary.cmd(&["INFO", "replication"]), "master_replid")
        .expect("master_replid")
        .to_owned();
    primary.kill_9();
    publisher.wait_refused(refusals).await;
    replica.promote();
    service.retarget(&replica);
    service.cut();
    publisher
        .wait_for("25 acknowledged after the failover", |acks| {
            acks.iter().filter(|a| a.epoch != old).count() >= 25
        })
        .await;
    let acks = publisher.stop().await;
    assert!(
        acks.iter().filter(|a| a.epoch == old).count() as u64 > replicated,
        "the primary acknowledged writes the replica never got"
    );

    let (new, last_old) = witnesses_went_through_one_break(witnesses, &[&acks], &old).await;
    assert!(
        last_old > replicated,
        "the witnesses saw writes the replica lacks"
    );
    stale_positions_are_not_recovered(&a, &old, &[replicated, last_old], &new).await;
    // The new epoch is the promoted replica's own: another replication id than the old
    // primary's (a promotion always starts a new one).
    let stored = replica.cmd(&["GET", EPOCH_KEY]);
    let new_replid = info_field(&replica.cmd(&["INFO", "replication"]), "master_replid")
        .expect("master_replid")
        .to_owned();
    assert_ne!(new_replid, old_replid);
    assert_eq!(stored, format!("{new}|{new_replid}"));
}

/// `/api/publish` of `{"id": id}` with publish id `id`: status and parsed body.
async fn publish(pod: &TestGateway, id: &str) -> (u16, Value) {
    let body = json!({"topic": T, "data": {"id": id}, "id": id}).to_string();
    let (status, reply) = http(pod.admin, "POST", "/api/publish", Some(&body), None).await;
    (status, serde_json::from_str(&reply).expect("JSON reply"))
}

/// [`publish`], retried with the same id until acknowledged, as clients are told to: on a
/// loaded machine a replica's acknowledgement can take longer than the short store timeout.
/// Returns the acknowledgement and whether a try was refused first.
async fn publish_acked(pod: &TestGateway, id: &str) -> (Value, bool) {
    let deadline = Instant::now() + DEADLINE;
    let mut refused = false;
    loop {
        match publish(pod, id).await {
            (200, ack) => return (ack, refused),
            (503, _) if Instant::now() < deadline => refused = true,
            (status, reply) => panic!("publish {id}: {status} {reply}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket publish with id `id`, retried with the same id until `published`; returns its
/// seq.
async fn ws_publish_acked(ws: &mut Client, id: &str) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        ws.send(json!({"type": "publish", "topic": T, "data": {"id": id}, "id": id, "ref": 8}))
            .await;
        let reply = ws.next().await;
        match reply["type"].as_str() {
            Some("published") => return reply["seq"].clone(),
            Some("error") if reply["code"] == "unavailable" && Instant::now() < deadline => {}
            _ => panic!("publish {id}: {reply}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn min_replicas_refuses_what_no_replica_has_and_the_retry_is_stored_once() {
    let primary = RedisServer::start();
    let link = FaultProxy::start(&primary);
    let replica = RedisReplica::start_via(&link);
    replica.wait_in_sync();
    let gw = pod(primary.url(), None, "pod-a", |c| {
        c.redis_min_replicas = 1;
        c.store_timeout = Duration::from_millis(500);
        // No resync to fall back on: a retried publish must reach subscribers by itself.
        c.topic_resync_interval = Duration::from_secs(3_600);
    })
    .await;
    let witness = Witness::start("witness", &gw, T).await;

    let (first, retried) = publish_acked(&gw, "first").await;
    assert_eq!(
        (&first["seq"], &first["duplicate"]),
        (&json!(1), &json!(retried)),
        "{first}"
    );
    replica.wait_in_sync();
    assert_eq!(replica.cmd(&["GET", SEQ_KEY]), "1");

    // The replication link stalls: appends are stored on the primary, but not acknowledged.
    link.pause();
    let (status, refused) = publish(&gw, "stalled").await;
    assert_eq!(
        (status, &refused["error"]),
        (503, &json!("unavailable")),
        "{refused}"
    );
    let (mut ws, _) = gw.hello().await;
    ws.send(
        json!({"type": "publish", "topic": T, "data": {"id": "ws-stalled"},
                   "id": "ws-stalled", "ref": 7}),
    )
    .await;
    let error = ws.expect("error").await;
    assert_eq!(
        (&error["code"], &error["ref"]),
        (&json!("unavailable"), &json!(7)),
        "{error}"
    );
    assert_eq!(primary.cmd(&["GET", SEQ_KEY]), "3", "stored on the primary");
    assert_eq!(replica.cmd(&["GET", SEQ_KEY]), "1", "not on the replica");
    // Retried while the link is still down: no replica has it yet, so still not acknowledged.
    let (status, again) = publish(&gw, "stalled").await;
    assert_eq!(
        (status, &again["error"]),
        (503, &json!("unavailable")),
        "a retry was acknowledged while no replica had the message: {again}"
    );

    link.resume();
    replica.wait_in_sync();
    let (retried, _) = publish_acked(&gw, "stalled").await;
    assert_eq!(
        (&retried["seq"], &retried["duplicate"]),
        (&json!(2), &json!(true)),
        "{retried}"
    );
    assert_eq!(ws_publish_acked(&mut ws, "ws-stalled").await, json!(3));
    // Nothing stored twice, on either server.
    for (server, seq, len) in [
        (
            "primary",
            primary.cmd(&["GET", SEQ_KEY]),
            primary.cmd(&["XLEN", HIST_KEY]),
        ),
        (
            "replica",
            replica.cmd(&["GET", SEQ_KEY]),
            replica.cmd(&["XLEN", HIST_KEY]),
        ),
    ] {
        assert_eq!((seq.as_str(), len.as_str()), ("3", "3"), "{server}");
    }
    // The retries that finally succeeded went out to subscribers (the first attempts never
    // did): the witness has them before anything later reveals a gap.
    witness
        .wait_for("the retried publishes", |log| log.seen.len() >= 3)
        .await;
    let (after, _) = publish_acked(&gw, "after").await;
    assert_eq!(after["seq"], 4, "{after}");

    // The subscriber gets each message once.
    witness
        .wait_for("seqs 1..=4", |log| log.seen.len() >= 4)
        .await;
    let log = witness.stop().await;
    let epochs = check_witness(&log);
    assert_eq!(epochs.len(), 1, "{}", log.summary());
    let ids: Vec<&Value> = log.seen.iter().map(|s| &s.data["id"]).collect();
    assert_eq!(
        ids,
        [
            &json!("first"),
            &json!("stalled"),
            &json!("ws-stalled"),
            &json!("after")
        ]
    );
}
