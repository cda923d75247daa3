//! Pipelined publishing against real servers (redis-server, nats-server, two pods): a client
//! that sends many `publish` frames without waiting gets its `published` replies in frame order
//! with contiguous seqs, and subscribers on another pod see them in that order; concurrent
//! `/api/publish` callers on several topics each get a seq of their own; and when Redis stalls
//! or its connections are cut mid-pipeline, the publisher gets error replies (in frame order),
//! retries them with the same ids, and a witness on the other pod sees no gap and no duplicate;
//! on a Redis Cluster, a topic's slot moved to another master mid-pipeline changes the epoch
//! visibly and hides nothing.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde_json::{Value, json};
use support::faults::{Witness, check_witness, pod};
use support::{Client, TestGateway, http};
use test_support::{FaultProxy, NatsServer, RedisCluster, RedisServer};

/// Sends `publish` frames for `frames` (topic, n) with refs 0.. and ids `{prefix}-{n}`, all
/// before reading anything, then reads one reply per frame: returns them in arrival order.
async fn burst(client: &mut Client, prefix: &str, frames: &[(String, u64)]) -> Vec<Value> {
    for (i, (topic, n)) in frames.iter().enumerate() {
        let frame = json!({"type": "publish", "topic": topic, "data": {"n": n},
                           "id": format!("{prefix}-{n}"), "ref": i});
        client.send(frame).await;
    }
    let mut replies = Vec::new();
    while replies.len() < frames.len() {
        let v = client.next().await;
        if v["type"] == "published" || v["type"] == "error" {
            replies.push(v);
        }
    }
    replies
}

/// Collects messages until each topic of `wanted` has its count, grouped by topic.
async fn messages_of(client: &mut Client, wanted: &[(&str, usize)]) -> HashMap<String, Vec<Value>> {
    let mut out: HashMap<String, Vec<Value>> = HashMap::new();
    let done = |out: &HashMap<String, Vec<Value>>| {
        wanted
            .iter()
            .all(|(t, n)| out.get(*t).map_or(0, Vec::len) >= *n)
    };
    while !done(&out) {
        let v = client.next().await;
        if v["type"] == "message" {
            out.entry(v["topic"].as_str().unwrap().to_owned())
                .or_default()
                .push(v);
        }
    }
    out
}

#[tokio::test]
async fn publishes_in_flight_are_answered_and_delivered_in_frame_order() {
    let (redis, nats) = (RedisServer::start(), NatsServer::start());
    let a = pod(redis.url(), Some(nats.url()), "a", |_| {}).await;
    let b = pod(redis.url(), Some(nats.url()), "b", |_| {}).await;
    let (mut subscriber, _) = b.hello().await;
    subscriber.subscribe("left").await;
    subscriber.subscribe("right").await;
    let (mut publisher, _) = a.hello().await;
    // 400 frames over two topics, more than `--max-publishes-in-flight` (32) at once, then a
    // ping, which is answered after every publish before it.
    let frames: Vec<(String, u64)> = (0..400)
        .map(|n| (if n % 3 == 0 { "left" } else { "right" }.to_owned(), n))
        .collect();
    for (i, (topic, n)) in frames.iter().enumerate() {
        let frame = json!({"type": "publish", "topic": topic, "data": {"n": n}, "ref": i});
        publisher.send(frame).await;
    }
    publisher.send(json!({"type": "ping", "ref": 1000})).await;
    let mut expected_seq: HashMap<&str, u64> = HashMap::new();
    for (i, (topic, n)) in frames.iter().enumerate() {
        let reply = publisher.expect("published").await;
        assert_eq!(reply["ref"], i, "replies in frame order: {reply}");
        assert_eq!(reply["topic"], topic.as_str(), "frame {n}: {reply}");
        let seq = expected_seq.entry(topic).or_insert(0);
        *seq += 1;
        assert_eq!(
            reply["seq"], *seq,
            "contiguous seqs in frame order: {reply}"
        );
    }
    assert_eq!(publisher.expect("pong").await["ref"], 1000);
    let sent = |topic: &str| -> Vec<u64> {
        frames
            .iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, n)| *n)
            .collect()
    };
    let wanted = [("left", sent("left").len()), ("right", sent("right").len())];
    let mut received = messages_of(&mut subscriber, &wanted).await;
    for topic in ["left", "right"] {
        let sent = sent(topic);
        let got = received.remove(topic).unwrap();
        let seqs: Vec<u64> = got.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=sent.len() as u64).collect::<Vec<_>>(), "{topic}");
        let data: Vec<u64> = got
            .iter()
            .map(|m| m["data"]["n"].as_u64().unwrap())
            .collect();
        assert_eq!(data, sent, "{topic}: delivered in frame order");
    }
}

#[tokio::test]
async fn concurrent_api_publishers_on_several_topics_each_get_their_own_seq() {
    let (redis, nats) = (RedisServer::start(), NatsServer::start());
    let a = pod(redis.url(), Some(nats.url()), "a", |_| {}).await;
    let b = pod(redis.url(), Some(nats.url()), "b", |_| {}).await;
    let topics = ["t0", "t1", "t2", "t3"];
    let (mut subscriber, _) = b.hello().await;
    for topic in topics {
        subscriber.subscribe(topic).await;
    }
    // 16 callers at once, half on each pod, each publishing 25 messages over all four topics.
    let mut callers = Vec::new();
    for caller in 0..16u64 {
        let admin = if caller % 2 == 0 { a.admin } else { b.admin };
        callers.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for n in 0..25u64 {
                let topic = topics[((caller + n) % 4) as usize];
                let data = json!({"caller": caller, "n": n});
                let body = json!({"topic": topic, "data": data}).to_string();
                let (status, reply) = http(admin, "POST", "/api/publish", Some(&body), None).await;
                assert_eq!(status, 200, "{reply}");
                let reply: Value = serde_json::from_str(&reply).unwrap();
                acks.push((topic, reply["seq"].as_u64().unwrap(), data));
            }
            acks
        }));
    }
    let mut by_topic: BTreeMap<&str, BTreeMap<u64, Value>> = BTreeMap::new();
    for caller in callers {
        for (topic, seq, data) in caller.await.unwrap() {
            let previous = by_topic.entry(topic).or_default().insert(seq, data);
            assert!(previous.is_none(), "{topic}: seq {seq} given twice");
        }
    }
    let wanted: Vec<(&str, usize)> = by_topic
        .iter()
        .map(|(t, acked)| (*t, acked.len()))
        .collect();
    let mut received = messages_of(&mut subscriber, &wanted).await;
    for (topic, acked) in by_topic {
        let n = acked.len();
        assert_eq!(
            acked.keys().copied().collect::<Vec<_>>(),
            (1..=n as u64).collect::<Vec<_>>()
        );
        let got = received.remove(topic).unwrap();
        for (m, (seq, data)) in got.iter().zip(&acked) {
            assert_eq!(
                (&m["seq"], &m["data"]),
                (&json!(seq), data),
                "{topic}: in seq order"
            );
        }
    }
}

/// One phase of the fault test: what happens to Redis while a burst is in flight.
#[derive(Debug, Clone, Copy)]
enum Fault {
    None,
    /// Forwarding stops for longer than the store timeout, then resumes (what waited goes on).
    Stall,
    /// Every connection through the proxy is reset.
    Cut,
}

#[tokio::test]
async fn a_redis_stall_or_cut_mid_pipeline_leaves_no_gap_and_no_duplicate() {
    let (redis, nats) = (RedisServer::start(), NatsServer::start());
    let proxy = FaultProxy::start(redis.addr());
    // The publisher's pod reaches Redis through the proxy; the witness's pod directly.
    let a = pod(proxy.url("redis"), Some(nats.url()), "a", |_| {}).await;
    let b = pod(redis.url(), Some(nats.url()), "b", |_| {}).await;
    let witness = Witness::start("witness", &b, "faulty").await;
    let (mut publisher, _) = a.hello().await;
    let mut pending: Vec<u64> = Vec::new();
    let mut next = 0u64;
    let mut published: BTreeMap<u64, u64> = BTreeMap::new();
    let (mut errors, mut retried) = (0, 0);
    let phases = [
        Fault::None,
        Fault::Stall,
        Fault::None,
        Fault::Cut,
        Fault::None,
        Fault::None,
    ];
    for (phase, fault) in phases.into_iter().enumerate() {
        // Every id refused before goes again first, with the same id; then new ones.
        retried += pending.len();
        let mut ns = std::mem::take(&mut pending);
        ns.extend(next..next + 40);
        next += 40;
        let frames: Vec<(String, u64)> = ns.iter().map(|&n| ("faulty".to_owned(), n)).collect();
        let sending = burst(&mut publisher, "p", &frames);
        let replies = match fault {
            Fault::None => sending.await,
            Fault::Stall => {
                proxy.pause();
                let replies = sending.await;
                proxy.resume();
                replies
            }
            Fault::Cut => {
                let (replies, ()) = tokio::join!(sending, async {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    proxy.cut();
                });
                replies
            }
        };
        for (i, (reply, n)) in replies.iter().zip(&ns).enumerate() {
            assert_eq!(
                reply["ref"], i,
                "phase {phase}: replies in frame order: {reply}"
            );
            match reply["type"].as_str() {
                Some("published") => {
                    published.insert(*n, reply["seq"].as_u64().unwrap());
                }
                _ => {
                    assert_eq!(reply["code"], "unavailable", "{reply}");
                    assert!(
                        reply["message"]
                            .as_str()
                            .unwrap()
                            .contains("same publish id")
                    );
                    errors += 1;
                    pending.push(*n);
                }
            }
        }
        println!(
            "phase {phase} ({fault:?}): {} replies, {} refused",
            replies.len(),
            pending.len()
        );
    }
    assert!(errors > 0, "the stall and the cut refused something");
    // Whatever is still refused goes again until it is published.
    for round in 0..20 {
        if pending.is_empty() {
            break;
        }
        assert!(round < 19, "still refused: {pending:?}");
        let frames: Vec<(String, u64)> =
            pending.iter().map(|&n| ("faulty".to_owned(), n)).collect();
        let replies = burst(&mut publisher, "p", &frames).await;
        pending.clear();
        for (reply, (_, n)) in replies.iter().zip(&frames) {
            match reply["seq"].as_u64() {
                Some(seq) => {
                    published.insert(*n, seq);
                }
                None => pending.push(*n),
            }
        }
    }
    assert_eq!(
        published.len() as u64,
        next,
        "every id published in the end"
    );
    println!("{errors} refusals, {retried} retries");
    let seq_of: HashMap<u64, u64> = published.iter().map(|(n, seq)| (*seq, *n)).collect();
    assert_eq!(seq_of.len(), published.len(), "no two ids share a seq");
    witness
        .wait_for("every published id", |log| {
            published
                .values()
                .all(|&seq| log.seen.iter().any(|s| s.seq == seq))
        })
        .await;
    let log = witness.stop().await;
    let epochs = check_witness(&log);
    assert_eq!(
        epochs.len(),
        1,
        "no epoch change without a restart: {}",
        log.summary()
    );
    for s in &log.seen {
        // Everything the witness saw is a published id, under the seq its publisher was told.
        let n = s.data["n"].as_u64().unwrap();
        assert_eq!(
            seq_of.get(&s.seq),
            Some(&n),
            "seq {} carries {}",
            s.seq,
            s.data
        );
    }
    drop((a, b));
}

/// In some runs, after `TRYAGAIN` during the migration, the pooled Redis client the connection
/// publishes on stops answering (every call times out). A lane whose append timed out moves to
/// the next pooled client, so the connection's later publishes succeed again; without that,
/// this test failed in about one run of two (the connection stayed refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_mid_pipeline_changes_the_epoch_visibly_and_hides_nothing() {
    let (cluster, nats) = (RedisCluster::start(), NatsServer::start());
    let a = pod(cluster.url(), Some(nats.url()), "a", |_| {}).await;
    let b = pod(cluster.url(), Some(nats.url()), "b", |_| {}).await;
    let witness = Witness::start("witness", &b, "moving").await;
    let (mut publisher, _) = a.hello().await;
    let slot = cluster.key_slot("{moving}");
    let from = cluster.master_for_slot(slot);
    let to = cluster
        .masters()
        .into_iter()
        .find(|&m| m != from)
        .expect("another master");
    let (mut pending, mut next, mut published) = (Vec::new(), 0u64, BTreeMap::new());
    for phase in 0..12 {
        if phase >= 4 && pending.is_empty() {
            break;
        }
        let mut ns: Vec<u64> = std::mem::take(&mut pending);
        if phase < 4 {
            ns.extend(next..next + 30);
            next += 30;
        }
        let frames: Vec<(String, u64)> = ns.iter().map(|&n| ("moving".to_owned(), n)).collect();
        let replies = if phase == 1 {
            // The frames go out, then the slot moves while they are in flight.
            let (replies, ()) = tokio::join!(burst(&mut publisher, "m", &frames), async {
                tokio::task::block_in_place(|| cluster.reshard(slot, from, to));
            });
            replies
        } else {
            burst(&mut publisher, "m", &frames).await
        };
        for (i, (reply, n)) in replies.iter().zip(&ns).enumerate() {
            assert_eq!(
                reply["ref"], i,
                "phase {phase}: replies in frame order: {reply}"
            );
            match reply["seq"].as_u64() {
                Some(seq) => {
                    published.insert(*n, seq);
                }
                None => {
                    assert_eq!(reply["code"], "unavailable", "{reply}");
                    if pending.is_empty() {
                        println!("phase {phase}: first refusal {}", reply["message"]);
                    }
                    pending.push(*n);
                }
            }
        }
        println!(
            "phase {phase}: {} replies, {} refused",
            replies.len(),
            pending.len()
        );
    }
    assert!(pending.is_empty(), "still refused: {pending:?}");
    assert_eq!(
        published.len() as u64,
        next,
        "every id published in the end"
    );
    witness
        .wait_for("every published id", |log| {
            published
                .keys()
                .all(|n| log.seen.iter().any(|s| s.data["n"].as_u64() == Some(*n)))
        })
        .await;
    let log = witness.stop().await;
    // Gap-free within each epoch, a new epoch announced and starting at 1, nothing twice.
    let epochs = check_witness(&log);
    assert!(
        epochs.len() <= 2,
        "at most the one epoch change: {}",
        log.summary()
    );
    println!("{}", log.summary());
}

/// The bound of publishes in flight is a flag, and `1` waits for each publish as before.
#[tokio::test]
async fn one_publish_in_flight_still_answers_every_frame_in_order() {
    let gateway = TestGateway::with(|c| c.max_publishes_in_flight = 1).await;
    let (mut client, _) = gateway.hello().await;
    let frames: Vec<(String, u64)> = (0..50).map(|n| ("solo".to_owned(), n)).collect();
    let replies = burst(&mut client, "s", &frames).await;
    for (i, reply) in replies.iter().enumerate() {
        assert_eq!(
            (&reply["ref"], &reply["seq"]),
            (&json!(i), &json!(i + 1)),
            "{reply}"
        );
    }
}
