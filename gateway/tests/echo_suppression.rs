//! Echo suppression (`exclude_self` on `publish`, `exclude_session` on the server API) on a fleet
//! of two gateways sharing a real redis-server and nats-server: the excluded session gets a
//! `skipped` frame in the message's place, live and on replays, so its position has no gap;
//! every other session, and every history read, gets the message.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use gateway_client::{ClientConfig, Event, PublishOptions};
use serde_json::{Value, json};
use support::{Client, TestGateway};
use test_support::{NatsServer, RedisServer};

struct Fleet {
    _redis: RedisServer,
    _nats: NatsServer,
    pods: Vec<TestGateway>,
}

async fn fleet(config_file: Option<std::path::PathBuf>) -> Fleet {
    let (redis, nats) = (RedisServer::start(), NatsServer::start());
    let mut pods = Vec::new();
    for i in 0..2 {
        let (r, n, f) = (redis.url(), nats.url(), config_file.clone());
        pods.push(
            TestGateway::with(move |c| {
                c.redis_url = Some(r);
                c.nats_url = vec![n];
                c.pod_name = Some(format!("pod-{i}"));
                c.topic_resync_interval = Duration::from_millis(500);
                c.app.config_file = f;
            })
            .await,
        );
    }
    for p in &pods {
        p.ready().await;
    }
    Fleet {
        _redis: redis,
        _nats: nats,
        pods,
    }
}

/// Reads frames until one of each of `kinds` arrived (in any order: a publisher's own delivery
/// may come before or after its `published` reply); returns them in `kinds` order.
async fn frames_of(c: &mut Client, kinds: &[&str]) -> Vec<Value> {
    let mut got: Vec<Option<Value>> = vec![None; kinds.len()];
    for _ in 0..kinds.len() {
        let v = c.next().await;
        let i = kinds
            .iter()
            .position(|k| v["type"] == *k)
            .unwrap_or_else(|| panic!("unexpected frame {v}"));
        assert!(got[i].is_none(), "a second {}: {v}", kinds[i]);
        got[i] = Some(v);
    }
    got.into_iter().map(Option::unwrap).collect()
}

fn skipped(topic: &str, seq: u64) -> Value {
    json!({"type": "skipped", "topic": topic, "seq": seq})
}

fn message(topic: &str, seq: u64, data: Value) -> Value {
    json!({"type": "message", "topic": topic, "seq": seq, "data": data})
}

#[tokio::test]
async fn a_publisher_excluding_itself_gets_skipped_and_everyone_else_the_message() {
    let f = fleet(None).await;
    let (mut me, _) = f.pods[0].hello().await;
    let (mut near, _) = f.pods[0].hello().await;
    let (mut far, _) = f.pods[1].hello().await;
    for c in [&mut me, &mut near, &mut far] {
        c.subscribe("chat").await;
    }
    me.send(json!({"type": "publish", "topic": "chat", "data": {"text": "hi"}, "exclude_self": true, "ref": 1}))
        .await;
    let got = frames_of(&mut me, &["published", "skipped"]).await;
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[1], skipped("chat", 1), "no data for the publisher");
    // Not excluding is the default: the next one reaches the publisher in full, right after.
    me.send(json!({"type": "publish", "topic": "chat", "data": "second", "ref": 2}))
        .await;
    let got = frames_of(&mut me, &["published", "message"]).await;
    assert_eq!(got[1], message("chat", 2, json!("second")));
    for c in [&mut near, &mut far] {
        assert_eq!(c.next().await, message("chat", 1, json!({"text": "hi"})));
        assert_eq!(c.next().await, message("chat", 2, json!("second")));
    }
}

#[tokio::test]
async fn the_server_api_excludes_a_session_connected_to_another_pod() {
    let f = fleet(None).await;
    let (mut target, welcome) = f.pods[1].hello().await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    let (mut other, _) = f.pods[0].hello().await;
    for c in [&mut target, &mut other] {
        c.subscribe("orders").await;
        c.subscribe("alerts").await;
    }
    let body = json!({"topic": "orders", "data": {"n": 1}, "exclude_session": session});
    let (status, reply) = f.pods[0]
        .admin_post("/api/publish", &body.to_string())
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(serde_json::from_str::<Value>(&reply).unwrap()["seq"], 1);
    let body = json!({"topics": ["orders", "alerts"], "data": "both", "exclude_session": session});
    let (status, reply) = f.pods[0]
        .admin_post("/api/broadcast", &body.to_string())
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(target.next().await, skipped("orders", 1));
    assert_eq!(target.next().await, skipped("orders", 2));
    assert_eq!(target.next().await, skipped("alerts", 1));
    assert_eq!(other.next().await, message("orders", 1, json!({"n": 1})));
    assert_eq!(other.next().await, message("orders", 2, json!("both")));
    assert_eq!(other.next().await, message("alerts", 1, json!("both")));
    // Only a session id is accepted: anything else is refused before anything is stored.
    for bad in [json!("not-a-session"), json!(7)] {
        let body = json!({"topic": "orders", "data": 1, "exclude_session": bad});
        let (status, reply) = f.pods[0]
            .admin_post("/api/publish", &body.to_string())
            .await;
        assert_eq!(status, 400, "{reply}");
    }
    let body = json!({"topics": ["orders"], "data": 1, "exclude_session": "x"});
    let (status, _) = f.pods[0]
        .admin_post("/api/broadcast", &body.to_string())
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        f.pods[0].publish_api("orders", json!("after")).await["seq"],
        3,
        "no seq was used by the refused ones"
    );
    assert_eq!(target.next().await, message("orders", 3, json!("after")));
}

#[tokio::test]
async fn a_resume_replays_skipped_in_place_and_others_replay_the_message() {
    let f = fleet(None).await;
    let (mut me, welcome) = f.pods[0].hello().await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    let subscribed = me.subscribe("log").await;
    let epoch = subscribed["epoch"].clone();
    me.send(json!({"type": "publish", "topic": "log", "data": 1, "exclude_self": true, "ref": 1}))
        .await;
    frames_of(&mut me, &["published", "skipped"]).await;
    me.leave().await;

    // Published while it is away, on the other pod: one of them excludes it.
    let (mut writer, _) = f.pods[1].hello().await;
    assert_eq!(writer.publish("log", json!(2)).await, 2);
    let body = json!({"topic": "log", "data": 3, "exclude_session": session});
    let (status, reply) = f.pods[1]
        .admin_post("/api/publish", &body.to_string())
        .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(writer.publish("log", json!(4)).await, 4);

    let mut back = f.pods[1].client().await;
    back.send(json!({"type": "hello", "resume": welcome["resume"], "positions": {"log": {"seq": 1, "epoch": epoch}}}))
        .await;
    let w = back.expect("welcome").await;
    assert_eq!(w["resumed"], true);
    assert_eq!(w["topics"]["log"]["recovered"], true, "{w}");
    assert_eq!(back.next().await, message("log", 2, json!(2)));
    assert_eq!(back.next().await, skipped("log", 3));
    assert_eq!(back.next().await, message("log", 4, json!(4)));

    // Anyone else replaying the same history gets every message in full.
    let (mut fresh, _) = f.pods[0].hello().await;
    fresh
        .send(json!({"type": "subscribe", "topic": "log", "since": {"seq": 0, "epoch": epoch}, "ref": 5}))
        .await;
    assert_eq!(fresh.expect("subscribed").await["recovered"], true);
    for seq in 1..=4 {
        assert_eq!(fresh.next().await, message("log", seq, json!(seq)));
    }
    // The excluded session rewinding with `since` gets its two skips again, in place.
    back.send(json!({"type": "unsubscribe", "topic": "log", "ref": 6}))
        .await;
    back.expect("unsubscribed").await;
    back.send(
        json!({"type": "subscribe", "topic": "log", "since": {"seq": 0, "epoch": epoch}, "ref": 7}),
    )
    .await;
    assert_eq!(back.expect("subscribed").await["recovered"], true);
    assert_eq!(back.next().await, skipped("log", 1));
    assert_eq!(back.next().await, message("log", 2, json!(2)));
    assert_eq!(back.next().await, skipped("log", 3));
    assert_eq!(back.next().await, message("log", 4, json!(4)));

    // History reads return the messages, whoever asks.
    back.send(json!({"type": "history", "topic": "log", "ref": 8}))
        .await;
    let page = back.expect("history").await;
    let data: Vec<&Value> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["data"])
        .collect();
    assert_eq!(data, [&json!(1), &json!(2), &json!(3), &json!(4)]);
    let (status, body) = f.pods[0].admin_get("/api/topics/log/history").await;
    assert_eq!(status, 200, "{body}");
    let api: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(api["messages"][2], json!({"seq": 3, "data": 3}));
}

#[tokio::test]
async fn an_ephemeral_topic_simply_leaves_the_excluded_session_out() {
    let dir = std::env::temp_dir().join(format!("gw-echo-{}", test_support::free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        "[[namespaces]]\nprefix = \"cursor.\"\nhistory = false\n",
    )
    .unwrap();
    let f = fleet(Some(file)).await;
    let (mut me, _) = f.pods[0].hello().await;
    let (mut far, _) = f.pods[1].hello().await;
    me.subscribe("cursor.1").await;
    far.subscribe("cursor.1").await;
    me.send(json!({"type": "publish", "topic": "cursor.1", "data": "mine", "exclude_self": true, "ref": 1}))
        .await;
    assert_eq!(me.expect("published").await.get("seq"), None);
    me.send(json!({"type": "publish", "topic": "cursor.1", "data": "echoed", "ref": 2}))
        .await;
    // The excluded one would have come first (one publisher, backplane order): the next frame
    // after the second reply is the second message, so nothing came for the first.
    let got = frames_of(&mut me, &["published", "message"]).await;
    assert_eq!(got[1]["data"], "echoed");
    assert_eq!(got[1].get("seq"), None);
    assert_eq!(far.expect("message").await["data"], "mine");
    assert_eq!(far.expect("message").await["data"], "echoed");
}

#[tokio::test]
async fn the_rust_sdk_moves_past_its_own_excluded_message_without_a_gap() {
    let f = fleet(None).await;
    let config = ClientConfig::new(vec![f.pods[0].ws_url()]);
    let (client, mut events) = gateway_client::connect(config);
    let subscribed = client.subscribe("sdk", None).await.unwrap();
    assert_eq!(subscribed.seq, 0);
    let options = PublishOptions {
        exclude_self: true,
        ..PublishOptions::default()
    };
    assert_eq!(
        client.publish_with("sdk", &"mine", options).await.unwrap(),
        1
    );
    let (mut other, _) = f.pods[1].hello().await;
    assert_eq!(other.publish("sdk", json!("theirs")).await, 2);
    // The first message event is seq 2; no gap is reported for the skipped seq 1.
    let deadline = tokio::time::Instant::now() + support::WAIT;
    let delivered = loop {
        let event = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("an event in time")
            .expect("events open");
        match event {
            Event::Message(m) => break m,
            Event::Gap(gap) => panic!("a gap was reported: {gap:?}"),
            _ => continue,
        }
    };
    assert_eq!((delivered.seq, delivered.data.get()), (2, "\"theirs\""));
    assert_eq!(client.positions()["sdk"].seq, 2);
    client.close().await;
}
