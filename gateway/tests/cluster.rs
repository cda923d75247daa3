//! Cluster mode: several gateways sharing a real redis-server and nats-server.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Client, TestGateway, seqs};
use test_support::{NatsServer, RedisServer};

struct Fleet {
    redis: RedisServer,
    nats: NatsServer,
    pods: Vec<TestGateway>,
}

async fn fleet(n: usize) -> Fleet {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let mut pods = Vec::new();
    for i in 0..n {
        pods.push(pod(&redis, &nats, &format!("pod-{i}"), |_| {}).await);
    }
    Fleet { redis, nats, pods }
}

async fn pod(
    redis: &RedisServer,
    nats: &NatsServer,
    name: &str,
    edit: impl FnOnce(&mut gateway::Config),
) -> TestGateway {
    let (r, n, name) = (redis.url(), nats.url(), name.to_owned());
    TestGateway::with(move |c| {
        c.redis_url = Some(r);
        c.nats_url = vec![n];
        c.pod_name = Some(name);
        c.topic_resync_interval = Duration::from_millis(500);
        c.store_timeout = Duration::from_millis(500);
        edit(c);
    })
    .await
}

#[tokio::test]
async fn a_message_published_anywhere_reaches_subscribers_everywhere_in_order() {
    let f = fleet(3).await;
    let (mut a, w) = f.pods[0].hello().await;
    assert_eq!(w["pod"], "pod-0");
    a.subscribe("news").await;
    let (mut a2, _) = f.pods[2].hello().await;
    a2.subscribe("news").await;
    let (mut b, _) = f.pods[1].hello().await;
    assert_eq!(b.publish("news", json!("from b")).await, 1);
    assert_eq!(
        f.pods[2].publish_api("news", json!("from c api")).await["seq"],
        2
    );
    assert_eq!(b.publish("news", json!("from b again")).await, 3);
    for c in [&mut a, &mut a2] {
        let msgs = c.messages(3).await;
        assert_eq!(seqs(&msgs), vec![1, 2, 3]);
        assert_eq!(msgs[1]["data"], "from c api");
    }
}

#[tokio::test]
async fn concurrent_publishers_on_three_pods_give_one_contiguous_sequence() {
    let f = fleet(3).await;
    let mut subs = Vec::new();
    for p in &f.pods {
        for _ in 0..3 {
            let (mut c, _) = p.hello().await;
            c.subscribe("race").await;
            subs.push(c);
        }
    }
    let mut publishers = Vec::new();
    for (i, p) in f.pods.iter().enumerate() {
        let url = p.ws_url();
        publishers.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            c.send(json!({"type": "hello"})).await;
            c.expect("welcome").await;
            for n in 0..60 {
                c.send(json!({"type": "publish", "topic": "race", "data": {"pod": i, "n": n}}))
                    .await;
            }
            let mut acked = 0;
            while acked < 60 {
                if c.next().await["type"] == "published" {
                    acked += 1;
                }
            }
        }));
    }
    for p in publishers {
        p.await.unwrap();
    }
    let mut reference = None;
    for s in &mut subs {
        let msgs = s.messages(180).await;
        assert_eq!(seqs(&msgs), (1..=180).collect::<Vec<_>>());
        let payloads: Vec<_> = msgs.iter().map(|m| m["data"].clone()).collect();
        match &reference {
            None => reference = Some(payloads),
            Some(r) => assert_eq!(r, &payloads, "subscribers disagree on payload order"),
        }
    }
}

#[tokio::test]
async fn resume_on_another_pod_after_a_clean_disconnect() {
    let f = fleet(2).await;
    let (mut a, welcome) = f.pods[0].hello().await;
    a.subscribe("t").await;
    let (mut p, _) = f.pods[1].hello().await;
    p.publish("t", json!(1)).await;
    a.expect("message").await;
    a.ws.close(None).await.unwrap();
    drop(a);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 2..=5 {
        p.publish("t", json!(i)).await;
    }
    let mut b = f.pods[1].client().await;
    b.send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    let w = b.expect("welcome").await;
    assert_eq!(
        (w["resumed"].as_bool(), w["pod"].as_str()),
        (Some(true), Some("pod-1"))
    );
    assert_eq!(w["topics"]["t"]["recovered"], true);
    assert_eq!(seqs(&b.messages(4).await), vec![2, 3, 4, 5]);
    p.publish("t", json!(6)).await;
    assert_eq!(b.expect("message").await["seq"], 6);
}

#[tokio::test]
async fn resume_while_the_old_socket_is_open_takes_it_over_across_pods() {
    let f = fleet(2).await;
    let (mut a, welcome) = f.pods[0].hello().await;
    a.subscribe("t").await;
    let mut b = f.pods[1].client().await;
    b.send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    assert_eq!(b.expect("welcome").await["resumed"], true);
    let closed = a.closed().await;
    assert_eq!(
        (closed.code, closed.reason["error"].as_str()),
        (1000, Some("session_taken_over"))
    );
}

#[tokio::test]
async fn pod_killed_without_goodbye_client_resumes_from_its_positions() {
    let f = fleet(2).await;
    let (mut a, welcome) = f.pods[0].hello().await;
    let epoch = a.subscribe("t").await["epoch"].clone();
    let (mut p, _) = f.pods[1].hello().await;
    for i in 1..=3 {
        p.publish("t", json!(i)).await;
    }
    let got = seqs(&a.messages(3).await);
    // Kill pod 0: its task and listeners vanish; the client's socket is dropped uncleanly.
    let mut pods = f.pods;
    let dead = pods.remove(0);
    drop(dead);
    drop(a);
    for i in 4..=7 {
        p.publish("t", json!(i)).await;
    }
    let mut b = pods[0].client().await;
    b.send(json!({"type": "hello", "resume": welcome["resume"],
                  "positions": {"t": {"seq": got.last().unwrap(), "epoch": epoch}}}))
        .await;
    let w = b.expect("welcome").await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["topics"]["t"]["recovered"], true);
    assert_eq!(seqs(&b.messages(4).await), vec![4, 5, 6, 7]);
}

#[tokio::test]
async fn past_history_across_pods_is_not_recovered_and_expired_tokens_are_fresh() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let edit = |c: &mut gateway::Config| {
        c.history_size = 3;
        c.resume_window = Duration::from_millis(800);
    };
    let a_pod = pod(&redis, &nats, "a", edit).await;
    let b_pod = pod(&redis, &nats, "b", edit).await;
    let (mut a, welcome) = a_pod.hello().await;
    a.subscribe("t").await;
    a.ws.close(None).await.unwrap();
    drop(a);
    let (mut p, _) = b_pod.hello().await;
    for i in 1..=6 {
        p.publish("t", json!(i)).await;
    }
    let mut b = b_pod.client().await;
    b.send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    let w = b.expect("welcome").await;
    assert_eq!(
        (w["resumed"].as_bool(), &w["topics"]["t"]["recovered"]),
        (Some(true), &json!(false))
    );
    b.ws.close(None).await.unwrap();
    drop(b);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let mut c = a_pod.client().await;
    c.send(json!({"type": "hello", "resume": welcome["resume"]}))
        .await;
    assert_eq!(c.expect("welcome").await["resumed"], false);
}

#[tokio::test]
async fn redis_restart_keeps_connections_reports_unavailable_then_recovers() {
    let mut f = fleet(2).await;
    let (mut sub, _) = f.pods[0].hello().await;
    sub.subscribe("r").await;
    let (mut p, _) = f.pods[1].hello().await;
    assert_eq!(p.publish("r", json!(1)).await, 1);
    sub.expect("message").await;

    f.redis.kill();
    p.send(json!({"type": "publish", "topic": "r", "data": 2, "ref": 5}))
        .await;
    let e = p.expect("error").await;
    assert_eq!(
        (e["code"].as_str(), e["ref"].as_u64()),
        (Some("unavailable"), Some(5))
    );
    support::wait_readyz(f.pods[0].public, 503).await;
    // A new session cannot be created while the store is down: told to come back later.
    let mut newcomer = f.pods[0].client().await;
    newcomer.send(json!({"type": "hello"})).await;
    assert_eq!(newcomer.expect("error").await["code"], "unavailable");
    assert_eq!(newcomer.closed().await.code, 1013);

    f.redis.restart();
    let started = std::time::Instant::now();
    loop {
        p.send(json!({"type": "publish", "topic": "r", "data": "back", "ref": 6}))
            .await;
        let v = p.next().await;
        if v["type"] == "published" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "store did not come back: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "redis outage: service back {:?} after restart",
        started.elapsed()
    );
    // The restarted Redis is empty: a new epoch, announced on the first message.
    let m = sub.expect("message").await;
    assert_eq!(m["data"], "back");
    assert!(
        m.get("epoch").is_some(),
        "epoch change must be announced: {m}"
    );
    support::wait_readyz(f.pods[0].public, 200).await;
    // Connections survived throughout.
    sub.send(json!({"type": "ping"})).await;
    sub.expect("pong").await;
}

#[tokio::test]
async fn nats_restart_loses_nothing_for_connected_clients() {
    let mut f = fleet(2).await;
    let (mut sub, _) = f.pods[0].hello().await;
    sub.subscribe("n").await;
    let (mut p, _) = f.pods[1].hello().await;
    p.publish("n", json!(0)).await;
    sub.expect("message").await;

    f.nats.kill();
    // Published while the backplane is down: in history, not on NATS.
    for i in 1..=5 {
        assert_eq!(p.publish("n", json!(i)).await, i + 1);
    }
    support::wait_readyz(f.pods[0].public, 503).await;
    let started = std::time::Instant::now();
    f.nats.restart();
    for i in 6..=8 {
        p.publish("n", json!(i)).await;
    }
    let msgs = sub.messages(8).await;
    eprintln!(
        "nats outage: all missed messages delivered {:?} after restart",
        started.elapsed()
    );
    assert_eq!(seqs(&msgs), (2..=9).collect::<Vec<_>>());
}

/// The second line of defence against a store that went backwards: history's top is below what
/// a pod already delivered in the same epoch (here: the `seq` key rewound by hand, as a restore
/// of keys into the same Redis process would). The pod moves the topic to a new epoch instead
/// of letting seqs be reused; its subscribers see the `epoch` on the next message.
#[tokio::test]
async fn a_store_behind_what_was_delivered_moves_the_topic_to_a_new_epoch() {
    let f = fleet(1).await;
    let (mut witness, _) = f.pods[0].hello().await;
    let subscribed = witness.subscribe("rewound").await;
    let old_epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    for i in 0..5 {
        f.pods[0].publish_api("rewound", json!(i)).await;
    }
    assert_eq!(seqs(&witness.messages(5).await), vec![1, 2, 3, 4, 5]);

    let key = "gw:seq:{rewound}";
    assert_eq!(f.redis.cmd(&["SET", key, "2", "KEEPTTL"]), "OK");
    // The periodic resync (500 ms here) reads the top, finds 2 < 5 and starts a new epoch.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let new_epoch = loop {
        let (_, metrics) = f.pods[0].admin_get("/metrics").await;
        if metrics.contains(r#"gateway_topic_epoch_changes_total{reason="store_behind"} 1"#) {
            let stored = f.redis.cmd(&["GET", "gw:epoch:{rewound}"]);
            break stored.split('|').next().unwrap().to_owned();
        }
        assert!(tokio::time::Instant::now() < deadline, "no new epoch");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(new_epoch, old_epoch);
    assert!(
        new_epoch.as_str() > old_epoch.as_str(),
        "epochs move forward"
    );

    let appended = f.pods[0].publish_api("rewound", json!("after")).await;
    assert_eq!(appended["seq"], 1);
    assert_eq!(appended["epoch"], new_epoch.as_str());
    let next = witness.expect("message").await;
    assert_eq!(
        (next["seq"].as_u64(), next["epoch"].as_str()),
        (Some(1), Some(new_epoch.as_str()))
    );
    assert_eq!(next["data"], "after");

    // A client that had seq 5 of the old epoch is told it cannot be recovered.
    let mut late = f.pods[0].client().await;
    late.send(json!({"type": "hello"})).await;
    late.expect("welcome").await;
    late.send(
        json!({"type": "subscribe", "topic": "rewound", "since": {"seq": 5, "epoch": old_epoch}}),
    )
    .await;
    let sub = late.expect("subscribed").await;
    assert_eq!(sub["recovered"], false);
    assert_eq!(sub["epoch"], new_epoch.as_str());
}
