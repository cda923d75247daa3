//! Isolation between look-alike topics across a cluster, and between users presenting each
//! other's resume tokens.

use std::time::Duration;

use serde_json::json;
use test_support::{NatsServer, RedisServer};

use super::{auth_gateway, witness};
use crate::support::hostile::{Outcome, Witness, granting, hello, hello_on, hs256};
use crate::support::{Client, TestGateway, seqs};

async fn cluster_pod(redis: &RedisServer, nats: &NatsServer, name: &str) -> TestGateway {
    let (r, n, name) = (redis.url(), nats.url(), name.to_owned());
    TestGateway::with(move |c| {
        c.redis_url = Some(r);
        c.nats_url = vec![n];
        c.pod_name = Some(name);
        c.store_timeout = Duration::from_secs(2);
        // Rebalancing would close clients with 1012 mid-test.
        c.rebalance_rate = 0;
    })
    .await
}

#[tokio::test]
async fn look_alike_topics_never_receive_each_others_messages_across_a_cluster() {
    let redis = RedisServer::start();
    let nats = NatsServer::start();
    let a = cluster_pod(&redis, &nats, "a").await;
    let b = cluster_pod(&redis, &nats, "b").await;
    let mut w = Witness::join(&a.ws_url(), b.admin, None).await;
    // Names that collide under naive subject or key schemes: separators, escapes, case.
    let topics = [
        "a.b",
        "a:b",
        "a_b",
        "a-b",
        "a..b",
        "a.b.",
        ".a.b",
        "a.b.c",
        "a",
        "b",
        "ab",
        "A.B",
        "a_2Eb",
        "a-2Eb",
        "a2Eb",
        "a~b.x",
        ".",
        "..",
        ":",
        "_",
        "-",
        "seq:a",
        "hist:a",
        "a:seq",
        "t.a.b",
        "gw.t.a~2Eb",
        "gw.t.a_2Eb",
        "a.b:",
    ];
    let topics: Vec<&str> = topics
        .into_iter()
        .filter(|t| protocol::Topic::new(t).is_ok())
        .collect();
    assert!(topics.len() >= 25);
    let mut subs = Vec::new();
    for (i, topic) in topics.iter().enumerate() {
        let pod = if i % 2 == 0 { &a } else { &b };
        let (mut c, _) = pod.hello().await;
        let epoch = c.subscribe(topic).await["epoch"].clone();
        let other = if i % 2 == 0 { &b } else { &a };
        let (mut c2, _) = other.hello().await;
        c2.subscribe(topic).await;
        subs.push((topic, c, c2, epoch));
    }
    let (mut pa, _) = a.hello().await;
    let (mut pb, _) = b.hello().await;
    for topic in &topics {
        pa.publish(topic, json!({"for": topic, "via": "a"})).await;
        pb.publish(topic, json!({"for": topic, "via": "b"})).await;
    }
    w.check().await;
    for (topic, c, c2, _) in &mut subs {
        for c in [c, c2] {
            let got = c.messages(2).await;
            for m in &got {
                assert_eq!(m["topic"], **topic, "{m}");
                assert_eq!(m["data"]["for"], **topic, "cross-delivery: {m}");
            }
            assert_eq!(seqs(&got), vec![1, 2], "{topic}");
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (_, c, c2, _) in &mut subs {
        c.silent_for(Duration::from_millis(1)).await;
        c2.silent_for(Duration::from_millis(1)).await;
    }
    // The stored histories are as separate as the live subjects.
    let (mut late, _) = b.hello().await;
    for (topic, _, _, epoch) in &subs {
        late.send(
            json!({"type": "subscribe", "topic": topic, "since": {"seq": 0, "epoch": epoch}}),
        )
        .await;
        let s = late.expect("subscribed").await;
        assert_eq!(s["recovered"], true, "{s}");
        let got = late.messages(2).await;
        for m in &got {
            assert_eq!(m["data"]["for"], **topic, "history cross-talk: {m}");
        }
    }
    w.check().await;
}

#[tokio::test]
async fn a_resume_token_presented_by_another_user_yields_a_fresh_session() {
    let gw = auth_gateway(|_| {}).await;
    let mut w = witness(&gw).await;
    let alice_token = hs256(&granting("alice", &["chat.*"], &[]));
    let (mut alice, welcome) = hello(&gw.ws_url(), Some(&alice_token)).await.welcome();
    let resume = welcome["resume"].as_str().unwrap().to_owned();
    let session = welcome["session"].as_str().unwrap().to_owned();
    alice.subscribe("chat.secret").await;

    let mallory = hs256(&granting("mallory", &["chat.*"], &[]));
    let forged_secret = format!("{session}.{}", "0".repeat(64));
    for (what, token, resume) in [
        (
            "another user, alice still connected",
            &mallory,
            resume.clone(),
        ),
        (
            "alice's session id with a guessed secret",
            &alice_token,
            forged_secret,
        ),
        (
            "a malformed resume token",
            &alice_token,
            format!("{resume}x"),
        ),
    ] {
        let outcome = hello_on(
            Client::connect(&gw.ws_url()).await,
            Some(token),
            json!({"resume": resume, "positions": {"chat.secret": {"seq": 0, "epoch": "x"}}}),
        )
        .await;
        let (mut c, w2) = match outcome {
            Outcome::Welcome(c, w2) => (c, w2),
            _ => panic!("{what}: no welcome"),
        };
        assert_eq!(w2["resumed"], false, "{what}: {w2}");
        assert_ne!(w2["session"], session.as_str(), "{what}");
        assert_eq!(w2.get("topics"), None, "{what}: {w2}");
        gw.publish_api("chat.secret", json!(what)).await;
        // Alice keeps her connection and her messages; the impostor gets nothing.
        assert_eq!(alice.expect("message").await["data"], what);
        c.silent_for(Duration::from_millis(100)).await;
        w.check().await;
    }
    // Alice's own resume still works after all that.
    alice.ws.close(None).await.unwrap();
    drop(alice);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut back, welcome) = hello_on(
        Client::connect(&gw.ws_url()).await,
        Some(&alice_token),
        json!({"resume": resume}),
    )
    .await
    .welcome();
    assert_eq!(welcome["resumed"], true, "{welcome}");
    assert_eq!(welcome["session"], session.as_str());
    gw.publish_api("chat.secret", json!("back")).await;
    assert_eq!(back.expect("message").await["data"], "back");
    w.check().await;
}
