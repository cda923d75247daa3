//! Past one machine: gateways on a Redis Cluster, behind Sentinel and on a NATS cluster, with
//! nodes killed, a slot moved and a master failed over while clients publish. Witness clients
//! must go on receiving: every acknowledged publish delivered once with its `seq`, never the
//! same `(epoch, seq)` twice, never a hole inside an epoch, and every epoch change announced
//! (see `support::scale::check`).
//!
//! The figures (failover times, refused publishes, epoch changes, subjects per pod) are printed
//! with `--nocapture`; only behaviour is asserted.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::json;
use support::scale::{PubLog, Publisher, TopicReport, Witness, check, nats_subjects};
use support::{TestGateway, seqs};
use test_support::{NatsCluster, NatsServer, RedisCluster, Sentinels};

async fn pod(name: &str, redis_url: String, nats_urls: Vec<String>) -> TestGateway {
    let name = name.to_owned();
    TestGateway::with(move |c| {
        c.redis_url = Some(redis_url);
        c.nats_url = nats_urls;
        c.pod_name = Some(name);
        c.topic_resync_interval = Duration::from_millis(500);
        c.store_timeout = Duration::from_secs(1);
    })
    .await
}

/// One topic per master: names whose hash slots land on masters 0, 1 and 2.
fn topics_on_each_master(redis: &RedisCluster, prefix: &str) -> Vec<String> {
    let mut picked: Vec<Option<String>> = vec![None; 3];
    for i in 0..1_000 {
        let name = format!("{prefix}-{i}");
        let master = redis.master_for_key(&name);
        let at = redis.masters().iter().position(|&m| m == master).unwrap();
        picked[at].get_or_insert(name);
        if picked.iter().all(Option::is_some) {
            return picked.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("no topic names on every master");
}

/// A Redis Cluster, a 3-node NATS cluster and pods `pod-<i>` on them, each given the NATS
/// URLs `nats_urls(cluster, i)`; `topics` has one topic per master.
struct Fleet {
    redis: RedisCluster,
    nats: NatsCluster,
    pods: Vec<TestGateway>,
    topics: Vec<String>,
}

async fn fleet(prefix: &str, nats_urls: impl Fn(&NatsCluster, usize) -> Vec<String>) -> Fleet {
    fleet_of(3, prefix, nats_urls).await
}

async fn fleet_of(
    n: usize,
    prefix: &str,
    nats_urls: impl Fn(&NatsCluster, usize) -> Vec<String>,
) -> Fleet {
    let redis = RedisCluster::start();
    let nats = NatsCluster::start(3);
    let topics = topics_on_each_master(&redis, prefix);
    let mut pods = Vec::new();
    for i in 0..n {
        pods.push(pod(&format!("pod-{i}"), redis.url(), nats_urls(&nats, i)).await);
    }
    Fleet {
        redis,
        nats,
        pods,
        topics,
    }
}

/// Waits until every pod's readiness probe passes (store and backplane connected).
async fn all_ready(pods: &[TestGateway]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for p in pods {
        while support::http(p.public, "GET", "/readyz", None, None)
            .await
            .0
            != 200
        {
            assert!(Instant::now() < deadline, "pod not ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn report(what: &str, reports: &[TopicReport], publishers: &[&PubLog]) {
    for r in reports {
        eprintln!(
            "{what}: topic {}: {} delivered, {} acked, {} acked lost, {} epoch change(s)",
            r.topic,
            r.delivered,
            r.acked,
            r.lost,
            r.epoch_changes()
        );
    }
    for p in publishers {
        let mut by_code: Vec<String> = p
            .errors
            .iter()
            .map(|(_, t, c, _)| format!("{t}:{c}"))
            .collect();
        by_code.sort();
        by_code.dedup();
        eprintln!(
            "{what}: publisher {}: {} acked, {} refused ({:?})",
            p.name,
            p.acked.len(),
            p.errors.len(),
            by_code
        );
    }
}

/// The pod's repair counters: gap fills, dropped messages and epoch changes, as exposed.
async fn repairs(pod: &TestGateway) -> String {
    let (_, metrics) = pod.admin_get("/metrics").await;
    let lines: Vec<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            ["gap_fills", "messages_dropped", "topic_epoch_changes"]
                .iter()
                .any(|m| l.contains(m))
        })
        .collect();
    lines.join(", ")
}

/// The refused publishes after `t`: how long after it, the topic and the message.
fn refusals(what: &str, t: Instant, publishers: &[&PubLog]) {
    for p in publishers {
        for (at, topic, _, message) in &p.errors {
            eprintln!(
                "{what}: {} refused on {topic} at +{:?}: {message}",
                p.name,
                at.saturating_duration_since(t)
            );
        }
    }
}

/// From `t` to the first acknowledged publish on `topics` after it, per publisher.
fn outage(t: Instant, topics: &[String], publishers: &[&PubLog]) -> Vec<Duration> {
    publishers
        .iter()
        .map(|p| {
            p.first_ack_after(t, topics)
                .map(|a| a.at - t)
                .expect("acknowledged after the fault")
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_pods_on_a_redis_cluster_and_a_nats_cluster_deliver_every_topic_gap_free() {
    let f = fleet("spread", |nats, i| vec![nats.url(i)]).await;
    let masters: BTreeSet<usize> = f.topics.iter().map(|t| f.redis.master_for_key(t)).collect();
    assert_eq!(masters.len(), 3, "one topic per master");
    all_ready(&f.pods).await;

    let witness = Witness::start(&f.pods[2], &f.topics).await;
    // Pod 0 has local subscribers on one topic only.
    let (mut one_topic, _) = f.pods[0].hello().await;
    one_topic.subscribe(&f.topics[0]).await;
    let a = Publisher::start(&f.pods[0], "a", f.topics.clone()).await;
    let b = Publisher::start(&f.pods[1], "b", f.topics.clone()).await;
    let started = Instant::now();
    a.wait_acks_after(started, 90).await;
    b.wait_acks_after(started, 90).await;

    // Interest on NATS follows local subscribers: each pod has its topics' subjects, its
    // control subject, the fleet-wide commands and the heartbeats, nothing else.
    let subject = |t: &str| format!("gw.t.{t}");
    let common = |pod: &str| {
        BTreeSet::from([
            "gw.hb".to_owned(),
            "gw.fleet".to_owned(),
            format!("gw.ctl.{pod}"),
        ])
    };
    let mut expected = [common("pod-0"), common("pod-1"), common("pod-2")];
    expected[0].insert(subject(&f.topics[0]));
    for t in &f.topics {
        expected[2].insert(subject(t));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for (i, want) in expected.iter().enumerate() {
        let pod = format!("pod-{i}");
        loop {
            // Round-trip probes (`gw.rtt.*`) come and go; wait for a quiet moment.
            let seen = nats_subjects(&f.nats, &pod);
            if let Some((node, subs)) = &seen
                && subs == want
            {
                assert_eq!(*node, i, "{pod} is on its own NATS node");
                eprintln!(
                    "nats interest: {pod} on node n{node}: {} subjects {subs:?}",
                    subs.len()
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{pod}: subjects {seen:?}, expected {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let (a, b) = (a.stop().await, b.stop().await);
    assert!(witness.wait_for(&[&a, &b]).await, "witness got every ack");
    let reports: Vec<_> = f
        .topics
        .iter()
        .map(|t| check(&witness.log(t), t, &[&a, &b]))
        .collect();
    report("spread", &reports, &[&a, &b]);
    for r in &reports {
        assert_eq!(r.epoch_changes(), 0, "{}: nothing failed", r.topic);
        assert!(r.acked >= 60, "{}: {} acks", r.topic, r.acked);
    }
    assert!(a.errors.is_empty() && b.errors.is_empty());
    assert!(witness.odd().is_empty(), "{:?}", witness.odd());
    // The one-topic subscriber got its topic, gap-free, and nothing else.
    let n = reports[0].delivered;
    let msgs = one_topic.messages(n).await;
    assert!(msgs.iter().all(|m| m["topic"] == f.topics[0].as_str()));
    assert_eq!(seqs(&msgs), (1..=n as u64).collect::<Vec<_>>());
    witness.stop().await;

    // A session stored in the cluster resumes on another pod, with what it missed.
    let topic = &f.topics[1];
    let (mut c, welcome) = f.pods[2].hello().await;
    let sub = c.subscribe(topic).await;
    let top = sub["seq"].as_u64().unwrap();
    f.pods[1].publish_api(topic, json!("seen")).await;
    assert_eq!(c.expect("message").await["seq"], top + 1);
    c.ws.close(None).await.unwrap();
    drop(c);
    let session = welcome["session"].as_str().unwrap();
    let key = format!("gw:session:{session}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let holder = f.redis.master_for_key(&key);
    while f.redis.node(holder).cmd(&["HEXISTS", &key, "r"]) != "1" {
        assert!(Instant::now() < deadline, "session {key} not saved");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "session {key} is on node {holder} (slot {})",
        f.redis.key_slot(&key)
    );
    for i in 0..3 {
        f.pods[1]
            .publish_api(topic, json!(format!("missed {i}")))
            .await;
    }
    let mut resumed = f.pods[0].client().await;
    resumed
        .send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    let w = resumed.expect("welcome").await;
    assert_eq!(
        (w["resumed"].as_bool(), w["pod"].as_str()),
        (Some(true), Some("pod-0"))
    );
    assert_eq!(w["topics"][topic.as_str()]["recovered"], true);
    let missed = resumed.messages(3).await;
    assert_eq!(seqs(&missed), vec![top + 2, top + 3, top + 4]);
    assert_eq!(missed[0]["data"], "missed 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_nats_node_of_a_publishing_pod_loses_no_acked_message() {
    // The publishing pods list all three seeds; their clients pick one at random.
    let mut f = fleet_of(2, "natskill", |nats, _| nats.urls()).await;
    all_ready(&f.pods).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let node_of =
        |nats: &NatsCluster, pod: usize| nats_subjects(nats, &format!("pod-{pod}")).map(|(n, _)| n);
    let mut nodes = Vec::new();
    for i in 0..2 {
        loop {
            if let Some(n) = node_of(&f.nats, i) {
                nodes.push(n);
                break;
            }
            assert!(Instant::now() < deadline, "pod-{i} not on NATS");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The node of pod 0 dies. The subscriber-only pod 2 is given the other two nodes, so it is
    // surely on a node that survives; pod 1 may share pod 0's node or not.
    let (victim_pod, victim) = (0, nodes[0]);
    let survivors: Vec<String> = (0..3)
        .filter(|&n| n != victim)
        .map(|n| f.nats.url(n))
        .collect();
    f.pods.push(pod("pod-2", f.redis.url(), survivors).await);
    all_ready(&f.pods).await;
    eprintln!("nats kill: pods 0 and 1 on nodes {nodes:?}; killing n{victim} (pod-{victim_pod})");

    let witnesses = [
        Witness::start(&f.pods[0], &f.topics).await,
        Witness::start(&f.pods[1], &f.topics).await,
        Witness::start(&f.pods[2], &f.topics).await,
    ];
    let a = Publisher::start(&f.pods[0], "a", f.topics.clone()).await;
    let b = Publisher::start(&f.pods[1], "b", f.topics.clone()).await;
    let started = Instant::now();
    a.wait_acks_after(started, 30).await;
    b.wait_acks_after(started, 30).await;

    let killed = Instant::now();
    f.nats.kill(victim);
    // The pod's client moves to another seed.
    let deadline = Instant::now() + Duration::from_secs(30);
    let moved_to = loop {
        if let Some(n) = node_of(&f.nats, victim_pod) {
            break n;
        }
        assert!(
            Instant::now() < deadline,
            "pod-{victim_pod} never reconnected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    eprintln!(
        "nats kill: pod-{victim_pod} reconnected to n{moved_to} {:?} after the kill",
        killed.elapsed()
    );
    a.wait_acks_after(killed, 60).await;
    b.wait_acks_after(killed, 60).await;
    let (a, b) = (a.stop().await, b.stop().await);
    for (i, w) in witnesses.iter().enumerate() {
        assert!(
            w.wait_for(&[&a, &b]).await,
            "witness on pod-{i} got every ack"
        );
        let reports: Vec<_> = f
            .topics
            .iter()
            .map(|t| check(&w.log(t), t, &[&a, &b]))
            .collect();
        report(&format!("nats kill, witness on pod-{i}"), &reports, &[]);
        for r in &reports {
            assert_eq!(r.epoch_changes(), 0, "the store did not fail");
        }
        assert!(w.odd().is_empty(), "{:?}", w.odd());
    }
    report("nats kill", &[], &[&a, &b]);
    for (i, p) in f.pods.iter().enumerate() {
        eprintln!("nats kill: pod-{i} repairs: {}", repairs(p).await);
    }
    assert!(
        a.errors.is_empty() && b.errors.is_empty(),
        "publishes need the store only"
    );
}

/// After a fault at `at`: waits for 60 more acks from each publisher, stops them, waits until
/// the witness (on the third pod) has every ack, and checks and reports each topic.
async fn settle(
    what: &str,
    f: &Fleet,
    witness: &Witness,
    [a, b]: [Publisher; 2],
    at: Instant,
) -> (Vec<TopicReport>, PubLog, PubLog) {
    a.wait_acks_after(at, 60).await;
    b.wait_acks_after(at, 60).await;
    let (a, b) = (a.stop().await, b.stop().await);
    assert!(witness.wait_for(&[&a, &b]).await, "witness got every ack");
    let reports: Vec<_> = f
        .topics
        .iter()
        .map(|t| check(&witness.log(t), t, &[&a, &b]))
        .collect();
    report(what, &reports, &[&a, &b]);
    eprintln!("{what}: witness pod repairs: {}", repairs(&f.pods[2]).await);
    refusals(what, at, &[&a, &b]);
    (reports, a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_master_of_a_topic_slot_mid_publish_never_duplicates_or_hides_a_seq() {
    let mut f = fleet("failover", |nats, i| vec![nats.url(i)]).await;
    all_ready(&f.pods).await;
    let witness = Witness::start(&f.pods[2], &f.topics).await;
    let a = Publisher::start(&f.pods[0], "a", f.topics.clone()).await;
    let b = Publisher::start(&f.pods[1], "b", f.topics.clone()).await;
    let started = Instant::now();
    a.wait_acks_after(started, 30).await;
    b.wait_acks_after(started, 30).await;

    let hit = f.topics[0].clone();
    let slot = f.redis.key_slot(&hit);
    let victim = f.redis.master_for_slot(slot);
    let killed = Instant::now();
    f.redis.kill_9(victim);
    let promoted = tokio::task::block_in_place(|| f.redis.wait_failover(slot, victim));
    eprintln!(
        "cluster failover: node {victim} killed, node {promoted} serves slot {slot} after {:?}",
        killed.elapsed()
    );
    let (reports, a, b) = settle("cluster failover", &f, &witness, [a, b], killed).await;
    eprintln!(
        "cluster failover: kill to first ack on {hit}: {:?}; on the other topics: {:?}",
        outage(killed, std::slice::from_ref(&hit), &[&a, &b]),
        outage(killed, &f.topics[1..], &[&a, &b]),
    );
    if let Some(at) = witness.log(&hit).first_new_epoch_at() {
        eprintln!(
            "cluster failover: new epoch of {hit} seen {:?} after the kill",
            at - killed
        );
    }
    assert_eq!(
        reports[0].epoch_changes(),
        1,
        "the promoted replica is another process: a new epoch"
    );
    for r in &reports[1..] {
        assert_eq!(r.epoch_changes(), 0, "{}: its master stayed", r.topic);
    }
    assert!(witness.odd().is_empty(), "{:?}", witness.odd());
    for e in a.errors.iter().chain(&b.errors) {
        assert_eq!(e.2, "unavailable", "{e:?}");
    }
    witness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moving_a_topic_slot_to_another_master_mid_publish_starts_a_visible_epoch() {
    let f = fleet("reshard", |nats, i| vec![nats.url(i)]).await;
    all_ready(&f.pods).await;
    let witness = Witness::start(&f.pods[2], &f.topics).await;
    let a = Publisher::start(&f.pods[0], "a", f.topics.clone()).await;
    let b = Publisher::start(&f.pods[1], "b", f.topics.clone()).await;
    let started = Instant::now();
    a.wait_acks_after(started, 30).await;
    b.wait_acks_after(started, 30).await;

    let moved = f.topics[0].clone();
    let slot = f.redis.key_slot(&moved);
    let from = f.redis.master_for_slot(slot);
    let to = f.redis.master_for_key(&f.topics[1]);
    let resharding = Instant::now();
    tokio::task::block_in_place(|| f.redis.reshard(slot, from, to));
    eprintln!(
        "reshard: slot {slot} moved from node {from} to node {to} in {:?}",
        resharding.elapsed()
    );
    let (reports, a, b) = settle("reshard", &f, &witness, [a, b], resharding).await;
    eprintln!(
        "reshard: start to first ack on {moved}: {:?}",
        outage(resharding, std::slice::from_ref(&moved), &[&a, &b]),
    );
    assert_eq!(
        reports[0].epoch_changes(),
        1,
        "the keys now live in another process: a new epoch"
    );
    for r in &reports[1..] {
        assert_eq!(r.epoch_changes(), 0, "{}: not moved", r.topic);
    }
    assert!(witness.odd().is_empty(), "{:?}", witness.odd());
    for e in a.errors.iter().chain(&b.errors) {
        assert_eq!(e.2, "unavailable", "{e:?}");
    }
    witness.stop().await;
}

/// Two pods on `redis-sentinel://` and one NATS server, a witness on each pod, a publisher on
/// each pod; `fault` fails the master over and returns when it started and when the pods
/// should be on the new master.
async fn sentinel_case(what: &str, fault: impl FnOnce(&mut Sentinels) -> (Instant, Instant)) {
    let mut sentinels = Sentinels::start();
    let nats = NatsServer::start();
    let topic = vec![what.replace(' ', "-")];
    let pods = [
        pod("pod-0", sentinels.url(), vec![nats.url()]).await,
        pod("pod-1", sentinels.url(), vec![nats.url()]).await,
    ];
    all_ready(&pods).await;
    let witnesses = [
        Witness::start(&pods[0], &topic).await,
        Witness::start(&pods[1], &topic).await,
    ];
    let a = Publisher::start(&pods[0], "a", topic.clone()).await;
    let b = Publisher::start(&pods[1], "b", topic.clone()).await;
    let started = Instant::now();
    a.wait_acks_after(started, 30).await;
    b.wait_acks_after(started, 30).await;

    let (faulted, moved) = tokio::task::block_in_place(|| fault(&mut sentinels));
    a.wait_acks_after(moved, 40).await;
    b.wait_acks_after(moved, 40).await;
    let (a, b) = (a.stop().await, b.stop().await);
    for (i, w) in witnesses.iter().enumerate() {
        assert!(
            w.wait_for(&[&a, &b]).await,
            "witness on pod-{i} got every ack"
        );
        let r = check(&w.log(&topic[0]), &topic[0], &[&a, &b]);
        report(
            &format!("{what}, witness on pod-{i}"),
            std::slice::from_ref(&r),
            &[],
        );
        assert_eq!(r.epoch_changes(), 1, "a new master is a new epoch");
        assert!(w.odd().is_empty(), "{:?}", w.odd());
    }
    report(what, &[], &[&a, &b]);
    for (i, p) in pods.iter().enumerate() {
        eprintln!("{what}: pod-{i} repairs: {}", repairs(p).await);
    }
    refusals(what, faulted, &[&a, &b]);
    eprintln!(
        "{what}: from the fault to the first ack after it: {:?}",
        outage(faulted, &topic, &[&a, &b])
    );
    for (i, w) in witnesses.iter().enumerate() {
        if let Some(at) = w.log(&topic[0]).first_new_epoch_at() {
            eprintln!(
                "{what}: witness on pod-{i}: first message of the new epoch {:?} after the fault",
                at.saturating_duration_since(faulted)
            );
        }
    }
    for e in a.errors.iter().chain(&b.errors) {
        assert_eq!(e.2, "unavailable", "{e:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_graceful_failover_mid_publish_never_duplicates_or_hides_a_seq() {
    sentinel_case("sentinel failover", |s| {
        let asked = Instant::now();
        let old = s.current_master();
        let new = s.failover();
        eprintln!(
            "sentinel failover: node {new} promoted {:?} after SENTINEL FAILOVER",
            asked.elapsed()
        );
        // The old master accepts writes until the sentinels demote it (and disconnect its
        // clients), some seconds later: only then do the pods move.
        s.wait_replica(old);
        eprintln!(
            "sentinel failover: old master {old} demoted {:?} after the request",
            asked.elapsed()
        );
        (asked, Instant::now())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_master_killed_mid_publish_never_duplicates_or_hides_a_seq() {
    sentinel_case("sentinel kill", |s| {
        let killed = Instant::now();
        let old = s.kill_9_master();
        let new = s.wait_failover(old);
        eprintln!(
            "sentinel kill: node {new} promoted {:?} after the kill",
            killed.elapsed()
        );
        (killed, killed)
    })
    .await;
}
